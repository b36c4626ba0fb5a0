"""RSS does not grow with back-to-back sessions (issue 16 section 5): a
short run of tools/soak.py against a real uscstd, judged by the RSS slope
per cycle over the second half of the run, not by time.

The defect this guards against grew RSS by ~116-330 KB per login/logout
(per-connection buffers pinned by reference cycles); the bound is 8 KB per
cycle, and test_slope_criterion_fails_on_linear_growth proves the
criterion catches linear growth. The garbage check counts what the cycle
collector finds after N logins: objects that reference counting cannot
free pile up until a collection, which decision 0005 makes rare (they were
the +10% RSS of the 10,000-cycle soak).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.soak import summarize
from tools.uscstadmin import Ctl

REPO = Path(__file__).resolve().parents[2]
MAX_SLOPE = 8192        # bytes per cycle, second half of the run


def _soak(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "tools.soak", *args, "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="libiscsi-bin not installed")
def test_rss_slope_of_1200_logins_and_logouts_is_flat() -> None:
    r = _soak("login", "--cycles", "1200", "--every", "40", "--warmup", "400")
    assert r["failures"] == 0 and r["alive"] and r["bug_lines"] == 0 and r["exit_status"] == 0
    assert r["slope_second_half_bytes_per_cycle"] < MAX_SLOPE, r


@pytest.mark.skipif(shutil.which("iscsi-ls") is None, reason="libiscsi-bin not installed")
def test_rss_slope_of_600_discovery_sessions_is_flat() -> None:
    r = _soak("discovery", "--cycles", "600", "--every", "20", "--warmup", "200")
    assert r["failures"] == 0 and r["alive"] and r["bug_lines"] == 0
    assert r["slope_second_half_bytes_per_cycle"] < MAX_SLOPE, r


def test_64_idle_sessions_pin_no_receive_buffers() -> None:
    r = _soak("idle", "--sessions", "64")
    assert r["alive"] and r["bug_lines"] == 0
    # 256 KiB receive buffers held while idle would be > 256 KiB a session.
    assert r["per_session_kib"] < 128, r
    assert r["rss_with_sessions_kib"] < 150 * 1024, r


def test_64_held_sessions_answer_nop_ins_and_all_stay_logged_in() -> None:
    """The --hold mode behind issue 12's 10-minute RSS check: the target
    pings every second and drops a session that does not answer within a
    second, so every session still up at the end answered its pings."""
    r = _soak("idle", "--sessions", "64", "--hold", "6", "--sample-every", "2",
              "--nop-in-interval", "1")
    assert r["alive"] and r["bug_lines"] == 0 and r["exit_status"] == 0
    assert r["sessions_up_at_end"] == 64 and r["nop_in_answered"] >= 64, r
    assert r["rss_peak_after_warmup_kib"] < 150 * 1024, r
    assert "slope_second_half_bytes_per_second" in r, r


GARBAGE_LOGINS = 40


@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="libiscsi-bin not installed")
def test_logins_and_logouts_leave_no_cyclic_garbage(uscstd, tmp_path: Path) -> None:
    sock = str(tmp_path / "ctl.sock")
    srv = uscstd("--control", sock)
    deadline = time.monotonic() + 10.0
    while "uscstd: control socket" not in srv.stdout_text():
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr_text()
        time.sleep(0.05)
    Ctl(sock).call("gc_collect")              # what boot and the first calls left
    for _ in range(GARBAGE_LOGINS):
        subprocess.run(["iscsi-inq", srv.url], capture_output=True, timeout=30, check=True)
    got = Ctl(sock).call("gc_collect")
    # Each login left 5 self-referencing list heads (connection, session,
    # PDUs) before list_head_release: 200 here.
    assert got["collected"] < GARBAGE_LOGINS, got


def test_slope_criterion_fails_on_linear_growth() -> None:
    leaking = [(i, 37000 + i * 116) for i in range(0, 1201, 40)]      # 116 KiB per cycle
    flat = [(i, 37000 + min(i, 400) * 8) for i in range(0, 1201, 40)]  # warm-up, then flat
    assert summarize(leaking, 400)["slope_second_half_bytes_per_cycle"] > MAX_SLOPE
    assert summarize(flat, 400)["slope_second_half_bytes_per_cycle"] < MAX_SLOPE
