"""tools/cmdcost counts a real uscstd's bytecodes and calls per command
under a real initiator (qemu-img bench over 127.0.0.1)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from uscstd_support import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-utils needed")
def test_cmdcost_counts_the_predicted_read_path():
    r = subprocess.run([sys.executable, "-m", "tools.cmdcost", "--count", "2000", "--top", "8",
                        "--port", str(free_port())], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) READs of 4096 bytes at QD32: ([\d.]+) bytecodes and ([\d.]+) Python "
                  r"calls per command", r.stdout)
    assert m, r.stdout
    assert int(m[1]) >= 2000
    # 4K READs from the page cache take READ prediction (decision 0072):
    # a few hundred bytecodes and a handful of calls, not the full path's
    # ~1,900 and ~30
    assert 300 < float(m[2]) < 1500 and 3 < float(m[3]) < 15, r.stdout
    assert "scst_cmd_fast (scst_core/fastpath.py:" in r.stdout
    assert "scst_process_active_cmd" not in r.stdout


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-utils needed")
def test_cmdcost_counts_predicted_blockio_writes_by_line():
    r = subprocess.run([sys.executable, "-m", "tools.cmdcost", "--count", "2000", "--top", "20",
                        "--write", "--blockio", "--by-line", "--port", str(free_port())],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) WRITEs of 4096 bytes at QD32: ([\d.]+) bytecodes and ([\d.]+) "
                  r"Python calls per command", r.stdout)
    assert m, r.stdout
    # started by WRITE prediction (decision 0073) as one direct I/O: the
    # blockio handler's start_fast, no state machine
    assert 500 < float(m[2]) < 3000 and 5 < float(m[3]) < 30, r.stdout
    assert "blockio_start_fast_list (vdisk/blockio.py:" in r.stdout
    assert "scst_process_active_cmd" not in r.stdout
    # by line: the header says so, and the receive path's function shows
    # up as several of its lines, not once
    assert "per command, by source line" in r.stdout, r.stdout
    lines = set(re.findall(r"_scsi_cmd_rx_start \(iscsi_scst/iscsi\.py:(\d+)\)", r.stdout))
    assert len(lines) >= 2, r.stdout


def test_cmdcost_rejects_a_bad_size_in_one_line():
    r = subprocess.run([sys.executable, "-m", "tools.cmdcost", "--size", "1000"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "multiple of 512" in r.stderr and "Traceback" not in r.stderr
