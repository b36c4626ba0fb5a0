"""File I/O on io_uring, and the worker pool when io_uring is refused: a real
uscstd, qemu-img writing through its iscsi driver, the statistics read from
the live tree (/sys/kernel/io/stats) with uscstadmin."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kshim import engine_uring
from uscstd_support import REPO_ROOT, UscstdServer

WRITES = 300
PATTERN = 0xA7


def _finished(st: dict[str, str]) -> int:
    """Jobs the ring finished: one CQE each, but one per chain of writes."""
    return int(st["completions"]) - int(st["sync_chains"]) + int(st["chained_writes"])


def _need_qemu_img() -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")


def _need_io_uring() -> engine_uring.uring:
    """A ring as uscstd would set it up (closed again), or skip."""
    ring = engine_uring.uring.open()
    if isinstance(ring, str):
        pytest.skip(f"io_uring is not usable here: {ring}")
    ring.close()
    return ring


def _stats(srv: UscstdServer, sock: Path) -> dict[str, str]:
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(sock), "get",
                        "kernel/io/stats"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        key, _, val = line.partition(" ")
        out[key] = val
    return out


def _write(srv: UscstdServer, depth: int) -> None:
    """WRITES 4 KiB writes of PATTERN from offset 0, `depth` at once."""
    r = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-d", str(depth),
                        "-c", str(WRITES), "-s", "4096", f"--pattern={PATTERN}", srv.url],
                       capture_output=True, text=True, timeout=120)
    if "Unknown protocol" in r.stderr or "Unknown driver" in r.stderr:
        pytest.skip("qemu-img has no iscsi block driver")
    assert r.returncode == 0, r.stdout + r.stderr


def _on_disk(srv: UscstdServer) -> bytes:
    return (Path(srv.argv[srv.argv.index("--disk") + 1])).read_bytes()[:WRITES * 4096]


def test_writes_go_through_io_uring_in_batches_and_reach_the_file(uscstd, tmp_path):
    _need_qemu_img()
    ring = _need_io_uring()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), "--log-level", "info")
    before = _stats(srv, sock)
    assert before["backend"].startswith("io_uring"), before
    # completions wait for the CPU thread's next system call, no IPI (5.19+)
    assert before["backend"].endswith(f"setup={ring.setup}"), before
    _write(srv, 32)
    st = _stats(srv, sock)
    # every write went through the ring; write-through, the writes of a pass
    # in chains, each chain linked to one fdatasync and ended by its CQE
    assert _finished(st) - _finished(before) >= WRITES
    chains = int(st["sync_chains"]) - int(before["sync_chains"])
    assert 0 < chains < int(st["chained_writes"]) - int(before["chained_writes"])
    assert int(st["in_flight"]) == 0
    assert int(st["high_water"]) > 1                     # more than one at a time
    assert float(st["ops_per_submit"]) > 1.0             # batched per engine pass
    assert "file I/O on io_uring" in srv.stderr_text()
    assert _on_disk(srv) == bytes([PATTERN]) * (WRITES * 4096)


def test_refused_io_uring_falls_back_to_the_worker_pool_and_says_why(uscstd, tmp_path):
    _need_qemu_img()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), "--log-level", "info", env={"USCST_IO_URING": "0"})
    _write(srv, 8)
    st = _stats(srv, sock)
    assert st["backend"].startswith("worker_pool"), st
    assert "refused by USCST_IO_URING=0" in st["backend"]
    assert "completions" not in st                       # no ring, no ring statistics
    assert "file I/O on worker_pool" in srv.stderr_text()
    assert _on_disk(srv) == bytes([PATTERN]) * (WRITES * 4096)


def test_io_uring_without_coop_taskrun_when_asked_still_completes_every_write(uscstd, tmp_path):
    _need_qemu_img()
    _need_io_uring()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), env={"USCST_IO_URING_SETUP": "ipi"})
    _write(srv, 32)
    st = _stats(srv, sock)
    assert st["backend"].endswith("setup=ipi"), st
    assert _finished(st) >= WRITES and int(st["in_flight"]) == 0
    assert _on_disk(srv) == bytes([PATTERN]) * (WRITES * 4096)


def test_submit_batch_comes_from_the_environment_and_a_bad_value_keeps_the_default(
        uscstd, tmp_path):
    _need_io_uring()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), env={"USCST_IO_URING_SUBMIT_BATCH": "8"})
    assert _stats(srv, sock)["submit_batch"] == "8"
    srv.stop()
    sock2 = tmp_path / "ctl2.sock"
    srv = uscstd("--control", str(sock2), env={"USCST_IO_URING_SUBMIT_BATCH": "eight"})
    assert _stats(srv, sock2)["submit_batch"] == str(engine_uring.URING_SUBMIT_BATCH)
    assert "USCST_IO_URING_SUBMIT_BATCH='eight' is not 0..256" in srv.stderr_text()
