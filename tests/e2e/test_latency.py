"""SCST's measure_latency on a real run: per-stage figures per session and
LUN, through the live tree and `uscstadmin stats --latency`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from uscstd_support import uscstadmin_ok

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                reason="qemu-utils needed")


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv[0]}: {r.stdout}{r.stderr}"


def test_measure_latency_keeps_per_stage_figures_per_session_and_lun(uscstd, tmp_path):
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock))
    assert "turned on" in uscstadmin_ok(sock, "stats", "--latency")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(1 << 20))
    _run("qemu-img", "convert", "-n", "-O", "raw", str(src), srv.url)     # R2T writes
    _run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4k", "-c", "read -P 0x5a 0 4k", srv.url)
    figs = json.loads(uscstadmin_ok(sock, "--json", "stats", "--latency"))["latency"]
    by = {(f["session"], f["lun"], f["stage"]): f for f in figs}
    sessions = {f["session"] for f in figs}
    assert sessions == {"iqn.2008-11.org.linux-kvm"}     # QEMU's initiator name
    for sess in sessions:
        total = by[(sess, None, "total")]
        assert by[(sess, 0, "total")]["count"] == total["count"] > 0
        assert by[(sess, None, "parse")]["count"] == total["count"]
    for f in figs:
        assert f["min_ns"] <= f["sum_ns"] // f["count"] <= f["max_ns"]
        assert sum(f["hist_log2_ns"].values()) == f["count"]
    assert any(s == "rdy_to_xfer" for _x, _l, s in by)         # a WRITE waited for data
    for stage in ("parse", "alloc_buf", "pre_exec", "exec", "dev_done", "xmit"):
        assert any(k[2] == stage for k in by), stage
    text = uscstadmin_ok(sock, "stats", "--latency")
    assert "rdy_to_xfer" in text and "LUN 0" in text
    # Off: the figures stay as they were.
    uscstadmin_ok(sock, "set", "measure_latency", "0")
    before = uscstadmin_ok(sock, "get", "latency_raw")
    _run("qemu-io", "-f", "raw", "-c", "read 0 4k", srv.url)
    assert uscstadmin_ok(sock, "get", "latency_raw") == before
