"""End to end: real initiators against a real uscstd.

libiscsi's command-line tools (iscsi-ls, iscsi-inq, iscsi-readcapacity16,
iscsi-test-cu, iscsi-perf) and qemu-img's iscsi block driver talk to uscstd
over loopback. None of them shares code with ours, so agreement here is
agreement with the initiators people use. Each test skips with a reason
when its binary is not installed; the `uscstd` fixture's teardown checks the
server exits 0 on SIGTERM with a clean log.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DISK_SIZE = 64 << 20
TOOL_TIMEOUT = 60


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def _run(argv: list[str], timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    # errors="replace": libiscsi prints binary designators as they are.
    return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _explain(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"


def test_iscsi_ls_shows_target_and_lun_size(uscstd_server) -> None:
    exe = _need("iscsi-ls")
    p = _run([exe, "-s", uscstd_server.target_url])
    assert p.returncode == 0, _explain(p)
    assert f"Target:{uscstd_server.iqn} Portal:{uscstd_server.host}:{uscstd_server.port},1" \
        in p.stdout, _explain(p)
    m = re.search(r"Lun:0\s+Type:DIRECT_ACCESS \(Size:(\d+)M\)", p.stdout)
    assert m, _explain(p)
    # iscsi-ls prints (last LBA * block size) >> 20: 64 MiB shows as 63.
    assert int(m.group(1)) == ((DISK_SIZE - 512) >> 20), _explain(p)


def test_iscsi_inq_prints_vendor_uscst(uscstd_server) -> None:
    exe = _need("iscsi-inq")
    p = _run([exe, uscstd_server.url])
    assert p.returncode == 0, _explain(p)
    assert re.search(r"^Vendor:USCST\s*$", p.stdout, re.M), _explain(p)
    assert "Peripheral Device Type:DIRECT_ACCESS" in p.stdout, _explain(p)
    # The Device Identification VPD page (0x83 = 131; popt reads decimal) too.
    p83 = _run([exe, "-e", "1", "-c", "131", uscstd_server.url])
    assert p83.returncode == 0, _explain(p83)
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in p83.stdout, _explain(p83)
    assert "Designator Type:(3) NAA" in p83.stdout, _explain(p83)


def test_iscsi_readcapacity16_prints_the_size(uscstd_server) -> None:
    exe = _need("iscsi-readcapacity16")
    p = _run([exe, uscstd_server.url])
    assert p.returncode == 0, _explain(p)
    assert re.search(r"^Total size:%d$" % DISK_SIZE, p.stdout, re.M), _explain(p)
    assert re.search(r"^LOGICAL BLOCK LENGTH IN BYTES:512$", p.stdout, re.M), _explain(p)
    assert re.search(r"^RETURNED LOGICAL BLOCK ADDRESS:%d$" % (DISK_SIZE // 512 - 1),
                     p.stdout, re.M), _explain(p)


def test_qemu_img_writes_and_reads_back_16mib_bit_identical(uscstd_server, tmp_path: Path) -> None:
    exe = _need("qemu-img")
    fmt = _run([exe, "--help"])
    if "iscsi" not in fmt.stdout:
        pytest.skip("qemu-img has no iscsi block driver")
    src = tmp_path / "src.raw"
    back = tmp_path / "back.raw"
    data = os.urandom(16 << 20)
    src.write_bytes(data)
    p = _run([exe, "convert", "-n", "-f", "raw", "-O", "raw", str(src), uscstd_server.url])
    assert p.returncode == 0, _explain(p)
    p = _run([exe, "convert", "-f", "raw", "-O", "raw", uscstd_server.url, str(back)])
    assert p.returncode == 0, _explain(p)
    got = back.read_bytes()
    assert len(got) == DISK_SIZE
    assert got[:len(data)] == data, "qemu-img read back different bytes"
    # And the backing file holds them too (an independent witness).
    disk = Path(uscstd_server.argv[uscstd_server.argv.index("--disk") + 1])
    with open(disk, "rb") as f:
        assert f.read(len(data)) == data


def _cu_summary(out: str) -> dict[str, tuple[int, int, int, int]]:
    """CUnit 'Run Summary' rows: kind -> (total, ran, passed, failed)."""
    rows: dict[str, tuple[int, int, int, int]] = {}
    for kind in ("suites", "tests", "asserts"):
        m = re.search(rf"^\s*(?:Run Summary:\s+Type\s+Total\s+Ran\s+Passed\s+Failed\s+Inactive\s*)?"
                      rf"{kind}\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)", out, re.M)
        if m:
            passed = int(m.group(3)) if m.group(3).isdigit() else -1
            rows[kind] = (int(m.group(1)), int(m.group(2)), passed, int(m.group(4)))
    return rows


def test_iscsi_test_cu_read_write_tur_capacity_inquiry_pass(uscstd_server) -> None:
    exe = _need("iscsi-test-cu")
    tests = "ALL.Read10,ALL.Write10,ALL.TestUnitReady,ALL.ReadCapacity16,ALL.Inquiry"
    p = _run([exe, "--dataloss", "-t", tests, uscstd_server.url], timeout=120)
    summary = _cu_summary(p.stdout)
    assert "tests" in summary, _explain(p)
    total, ran, passed, failed = summary["tests"]
    assert failed == 0, _explain(p)
    assert ran == total and total >= 20, _explain(p)
    assert passed == ran, _explain(p)
    assert summary["asserts"][3] == 0, _explain(p)
    assert p.returncode == 0, _explain(p)


def test_iscsi_perf_runs_2s_at_qd32_with_nonzero_iops(uscstd_server) -> None:
    exe = _need("iscsi-perf")
    p = _run([exe, "-t", "2", "-m", "32", "-r", uscstd_server.url], timeout=30)
    out = p.stdout + p.stderr
    assert p.returncode == 0, _explain(p)
    iops = [int(x) for x in re.findall(r"iops average (\d+)", out)]
    assert iops, _explain(p)
    assert iops[-1] > 0, _explain(p)
    assert "finished" in out, _explain(p)
