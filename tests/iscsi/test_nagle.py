"""Adaptive Nagle switched at run time through the live tree: a real uscstd,
iscsi-perf keeping one session busy, uscstadmin reading and writing the
session's nagle_mode and statistics and the target's nagle_mode."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from uscstd_support import UscstdServer, uscstadmin_ok, uscstadmin_run

INITIATOR = "iqn.2026-11.org.uscst:nagle-test"


def _stats(sock: Path, sess: str) -> dict[str, str]:
    out = uscstadmin_ok(sock, "get", f"{sess}/nagle")
    return dict(line.partition(" ")[::2] for line in out.splitlines() if line)


def _wait_for(pred, what: str, tries: int = 80) -> dict:
    """Poll (bounded: tries calls, 0.05 s apart) until pred() returns a true value."""
    for _ in range(tries):
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"never saw {what}")


def test_uscstadmin_switches_nagle_on_a_live_connection_and_its_statistics_follow(uscstd,
                                                                                 tmp_path):
    if not shutil.which("iscsi-perf"):
        pytest.skip("iscsi-perf (libiscsi-bin) is not installed")
    sock = tmp_path / "ctl.sock"
    srv: UscstdServer = uscstd("--control", str(sock))
    tgt = f"targets/iscsi/{srv.iqn}"
    sess = f"{tgt}/sessions/{INITIATOR}"
    assert uscstadmin_ok(sock, "get", f"{tgt}/nagle_mode").strip() == "off"
    thresholds = [uscstadmin_ok(sock, "get", f"module/iscsi_scst/parameters/nagle_{x}").strip()
                  for x in "TMQ"]
    assert thresholds == ["96", "40", "0"]
    perf = subprocess.Popen(["iscsi-perf", "-i", INITIATOR, "-m", "16", "-b", "1", "-t", "300",
                             "-r", srv.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # off (the target's default): TCP_NODELAY, no PDU counted in Nagle mode
        st = _wait_for(lambda: (s := _stats(sock, sess)) and int(s.get("pdus", 0)) > 1000 and s,
                       "traffic on the session")
        assert st["mode"] == "off (set: target)" and st["nagle_now"] == "0"
        assert float(st["nagle_share"]) == 0.0
        # on, for this session's connection: Nagle mode at its next idle,
        # and the PDUs received since then count as received in Nagle mode
        r = uscstadmin_run(sock, "set", f"{sess}/nagle_mode", "0 on")
        assert r.returncode == 0, r.stdout + r.stderr
        st = _wait_for(lambda: (s := _stats(sock, sess)) and float(s["nagle_share"]) > 0 and s,
                       "PDUs counted in Nagle mode")
        assert st["mode"] == "on (set: on)" and st["nagle_now"] == "1"
        assert uscstadmin_ok(sock, "get", f"{sess}/nagle_mode").strip() == "0 on"
        # back to the target's mode, which is now adaptive
        uscstadmin_ok(sock, "set", f"{tgt}/nagle_mode", "adaptive")
        uscstadmin_ok(sock, "set", f"{sess}/nagle_mode", "target")
        st = _wait_for(lambda: (s := _stats(sock, sess))["mode"].startswith("adaptive") and s,
                       "the target's adaptive mode")
        assert st["mode"] == "adaptive (set: target)"
        # off again: the share of Nagle-mode PDUs only falls from here
        uscstadmin_ok(sock, "set", f"{sess}/nagle_mode", "off")
        first = _wait_for(lambda: (s := _stats(sock, sess))["mode"].startswith("off") and s,
                          "mode off")
        later = _wait_for(lambda: (s := _stats(sock, sess)) and
                          int(s["pdus"]) > int(first["pdus"]) + 1000 and s, "more traffic")
        assert later["nagle_now"] == "0"
        assert float(later["nagle_share"]) < float(first["nagle_share"])
        hist = [int(x) for x in later["busy_at_idle_hist"].split()]
        assert sum(hist) == int(later["idle_count"])
    finally:
        perf.kill()
        perf.wait(10)


def test_bad_nagle_modes_are_refused_with_a_clear_error(uscstd, tmp_path):
    sock = tmp_path / "ctl.sock"
    srv: UscstdServer = uscstd("--control", str(sock))
    r = uscstadmin_run(sock, "set", f"targets/iscsi/{srv.iqn}/nagle_mode", "sometimes")
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert uscstadmin_ok(sock, "get", f"targets/iscsi/{srv.iqn}/nagle_mode").strip() == "off"
    srv.assert_healthy()


def test_a_target_nagle_mode_other_than_off_is_written_back_by_write_config(uscstd, tmp_path):
    sock = tmp_path / "ctl.sock"
    srv: UscstdServer = uscstd("--control", str(sock))
    out = tmp_path / "out.conf"
    uscstadmin_ok(sock, "write-config", str(out))
    def attr_lines() -> list[str]:
        return [ln.strip() for ln in out.read_text().splitlines()
                if ln.strip().startswith("nagle_mode")]
    assert attr_lines() == []                                   # off: the default
    uscstadmin_ok(sock, "set", f"targets/iscsi/{srv.iqn}/nagle_mode", "adaptive")
    uscstadmin_ok(sock, "write-config", str(out))
    assert attr_lines() == ["nagle_mode adaptive"]
