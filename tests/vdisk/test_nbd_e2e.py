"""End to end: vdisk_nbd (vdisk/nbd.py, vdisk/nbd_client.py) behind a real
uscstd, its blocks on a real NBD server on loopback: Debian's nbdkit
(memory and file plugins; error and blocksize-policy filters) and
qemu-nbd (on a unix socket), driven by qemu-img, libiscsi's iscsi-test-cu
and the project's initiator (tests/initiator.py).

What it checks, with structured replies (nbdkit's default) and without
(nbdkit --no-sr) where it matters: a qemu-img round trip through the LUN
is bit-identical;
libiscsi's conformance suite passes on the LUN (skips only for what an
NBD LUN is configured without); a server error becomes MEDIUM ERROR with
the failing request's first LBA; killing the NBD server mid-write and
starting it again loses no acknowledged block; a server gone longer than
reconnect_timeout gives NOT READY (02/04/00) until it is back; UNMAP
reads back zeros and GET LBA STATUS reports the blocks deallocated; FUA,
write-back and SYNCHRONIZE CACHE reach the server as FUA and FLUSH; the
server's block size constraints are honoured or refused with a clear
log line; a device is created through the management socket on an
nbd+unix:// URI.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.initiator import Initiator
from tests.vdisk.nbd_support import (NBD_TARGET, NbdFactory, need, nbd_config, sense_info)
from uscstd_support import uscstadmin_ok

GOOD, CHECK_CONDITION = 0x00, 0x02
MEDIUM_ERROR, NOT_READY = 0x3, 0x2
RECOVER_TIMEOUT_S = 60.0      # bound on waiting for a restarted server to be used again
CU_TIMEOUT_S = 900.0


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[NbdFactory]:
    f = NbdFactory(tmp_path)
    yield f
    f.close()


def _start(uscstd, tmp_path: Path, uri: str, *attrs: str, name: str = "nbd"):
    """A uscstd exporting the NBD LUN; its control socket is tmp_path/NAME.sock."""
    conf = tmp_path / f"{name}.conf"
    conf.write_text(nbd_config(uri, *attrs))
    return uscstd("--config", str(conf), "--control", str(tmp_path / f"{name}.sock"),
                  disk=None, size=None)


def _login(srv) -> Initiator:
    ini = Initiator(port=srv.port)
    ini.connect()
    ini.login(NBD_TARGET)
    return ini


def _write10(lba: int, nblocks: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, nblocks, 0)


def test_qemu_img_round_trip_through_an_nbdkit_memory_lun_is_bit_identical(
        uscstd, nbd_server, tmp_path: Path) -> None:
    need("qemu-img")
    nbd = nbd_server("nbdkit", "memory", "64M")
    srv = _start(uscstd, tmp_path, nbd.uri)
    src, back = tmp_path / "src.img", tmp_path / "back.img"
    src.write_bytes(os.urandom(64 << 20))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.url],
                   check=True, timeout=300, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.url, str(back)],
                   check=True, timeout=300, capture_output=True)
    assert back.read_bytes() == src.read_bytes()
    srv.assert_healthy()


# Why libiscsi may skip a test on the default NBD LUN: what it is not
# configured as (removable, read-only, several logical blocks per physical
# block), one URL (no multipath), no -S (no SANITIZE).
_ALLOWED_SKIPS = re.compile(
    r"not removable|Media is not removable|not write-protected|LBPPB < 2"
    r"|Multipath unavailable|[Ss]anitize")
# the families that need a thin LUN (UNMAP as NBD_CMD_WRITE_ZEROES)
THIN_FAMILIES = ("SCSI.Unmap", "SCSI.WriteSame10", "SCSI.WriteSame16", "SCSI.GetLBAStatus")


def _cu(exe: str, tmp_path: Path, url: str, test: str, log: str) -> str:
    p = subprocess.run([exe, "-d", "-t", test, "-v", "-i", "iqn.2026-11.org.uscst.test:nbd-1",
                        "-I", "iqn.2026-11.org.uscst.test:nbd-2", url],
                       capture_output=True, text=True, errors="replace", timeout=CU_TIMEOUT_S,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    (tmp_path / log).write_text(out)
    return out


def _cu_problems(out: str, min_tests: int, allowed_skips: re.Pattern) -> list[str]:
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    if not m:
        return [f"no CUnit summary in:\n{out[-3000:]}"]
    ran, failed = int(m.group(2)), int(m.group(4))
    problems = [f"ran {ran} (at least {min_tests} expected), {failed} failed:\n{out[-6000:]}"] \
        if ran < min_tests or failed else []
    return problems + [ln.strip() for ln in out.splitlines()
                       if "[SKIPPED]" in ln and not allowed_skips.search(ln)]


def test_libiscsi_conformance_suite_passes_on_nbd_luns(uscstd, nbd_server,
                                                       tmp_path: Path) -> None:
    """Every test on a default NBD LUN (thin: nbdkit's memory plugin has
    WRITE_ZEROES and block status), and the UNMAP, WRITE SAME and GET LBA
    STATUS families on a LUN made thin by hand on a server without
    structured replies (nbdkit --no-sr: simple replies, no block status)."""
    exe = need("iscsi-test-cu")
    thick = _start(uscstd, tmp_path, nbd_server("nbdkit", "memory", "16M").uri)
    thin = _start(uscstd, tmp_path, nbd_server("nbdkit", "--no-sr", "memory", "16M").uri,
                  "thin_provisioned 1", name="thin")
    problems = _cu_problems(_cu(exe, tmp_path, thick.url, "ALL", "cu-all.log"), 230,
                            _ALLOWED_SKIPS)
    for fam in THIN_FAMILIES:
        problems += _cu_problems(_cu(exe, tmp_path, thin.url, fam, f"cu-{fam}.log"), 3,
                                 re.compile("LBPPB < 2"))
    assert not problems, "\n".join(problems)
    thick.assert_healthy()
    thin.assert_healthy()


@pytest.mark.parametrize("replies", ["structured", "simple"])
def test_server_read_and_write_errors_become_medium_errors_naming_the_lba(
        uscstd, nbd_server, tmp_path: Path, replies: str) -> None:
    rd_trigger, wr_trigger = tmp_path / "fail-reads", tmp_path / "fail-writes"
    sr = ["--no-sr"] if replies == "simple" else []
    nbd = nbd_server("nbdkit", *sr, "--filter=error", "memory", "16M", "error=EIO",
                     "error-pread-rate=100%", f"error-pread-file={rd_trigger}",
                     "error-pwrite-rate=100%", f"error-pwrite-file={wr_trigger}")
    srv = _start(uscstd, tmp_path, nbd.uri)
    with _login(srv) as ini:
        assert ini.write10(100, b"\x5a" * 4096).ok
        rd_trigger.touch()
        r = ini.read10(100, 8)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, MEDIUM_ERROR, (0x11, 0))
        assert sense_info(r.sense) == 100
        rd_trigger.unlink()
        assert ini.read10(100, 8).data == b"\x5a" * 4096
        wr_trigger.touch()
        r = ini.write10(300, b"\xa5" * 1024)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, MEDIUM_ERROR, (0x0C, 0))
        assert sense_info(r.sense) == 300
        wr_trigger.unlink()
        assert ini.write10(300, b"\xa5" * 1024).ok
        assert ini.read10(300, 2).data == b"\xa5" * 1024
    assert "READ of 4096 bytes at 51200 failed: server error 5" in srv.stderr_text()
    srv.assert_healthy()


def _logged(log: Path, pattern: str) -> list[str]:
    """Lines of nbdkit's log filter output matching pattern, once the line
    for the last request is there (bounded wait: nbdkit writes after
    replying)."""
    deadline = time.monotonic() + 10.0
    # Bounded by the deadline; polls every 20 ms.
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "...Flush" in text:
            break
        time.sleep(0.02)
    return [ln for ln in text.splitlines() if re.search(pattern, ln)]


def test_fua_write_back_and_synchronize_cache_reach_the_server_as_fua_and_flush(
        uscstd, nbd_server, tmp_path: Path) -> None:
    """On a write-back LUN a plain WRITE goes out without FUA, a WRITE with
    FUA=1 with NBD_CMD_FLAG_FUA, SYNCHRONIZE CACHE as NBD_CMD_FLUSH
    (nbdkit's log filter records each request); a write-through LUN's
    plain WRITE carries FUA."""
    log = tmp_path / "nbdkit-requests.log"
    nbd = nbd_server("nbdkit", "--filter=log", "memory", "16M", f"logfile={log}")
    srv = _start(uscstd, tmp_path, nbd.uri, "write_through 0")
    with _login(srv) as ini:
        assert ini.scsi(_write10(10, 1), data_out=b"a" * 512).ok
        assert ini.scsi(_write10(20, 1, fua=True), data_out=b"b" * 512).ok
        assert ini.scsi(struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)).ok
    writes = _logged(log, r" Write id=\d+ offset=")
    assert [re.search(r"offset=(\S+) .*fua=(\d)", w).groups() for w in writes] == \
        [("0x1400", "0"), ("0x2800", "1")]
    assert len(_logged(log, r" Flush id=\d+")) == 1
    srv.assert_healthy()
    wt = _start(uscstd, tmp_path, nbd.uri, name="wt")
    with _login(wt) as ini:
        assert ini.scsi(_write10(30, 1), data_out=b"c" * 512).ok
        assert ini.scsi(struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)).ok
    assert any("offset=0x3c00" in w and "fua=1" in w
               for w in _logged(log, r" Write id=\d+ offset="))
    wt.assert_healthy()


def _lba_status(ini: Initiator, lba: int) -> tuple[int, int, int]:
    """(first LBA, blocks, provisioning status) of GET LBA STATUS's first
    descriptor."""
    d = ini.scsi(struct.pack(">BBQIBB", 0x9E, 0x12, lba, 32, 0, 0), read_len=32).check().data
    return int.from_bytes(d[8:16], "big"), int.from_bytes(d[16:20], "big"), d[20] & 0x0F


def test_unmapped_blocks_read_as_zeros_and_get_lba_status_reports_them_deallocated(
        uscstd, nbd_server, tmp_path: Path) -> None:
    """nbdkit's memory plugin: UNMAP goes out as WRITE_ZEROES, GET LBA
    STATUS as BLOCK_STATUS in the base:allocation context."""
    nbd = nbd_server("nbdkit", "memory", "16M")
    srv = _start(uscstd, tmp_path, nbd.uri)
    with _login(srv) as ini:
        assert ini.write10(0, os.urandom(256 << 10)).ok
        assert _lba_status(ini, 0) == (0, 512, 0)             # mapped
        # whole 32 KiB pages of nbdkit's sparse array, so it frees them
        unmap = struct.pack(">HHxxxx", 22, 16) + struct.pack(">QIxxxx", 128, 256)
        assert ini.scsi(struct.pack(">BBxxxxxHx", 0x42, 0, len(unmap)), data_out=unmap).ok
        assert ini.read10(128, 256).data == bytes(256 * 512)
        assert _lba_status(ini, 128) == (128, 256, 1)         # deallocated
        assert _lba_status(ini, 0) == (0, 128, 0)
    srv.assert_healthy()


def _block(lba: int, gen: int) -> bytes:
    return struct.pack(">QQ", lba, gen) * 32


def test_killing_and_restarting_the_nbd_server_mid_write_loses_no_acknowledged_block(
        uscstd, nbd_server, tmp_path: Path) -> None:
    """nbdkit's file plugin keeps the data; its delay filter holds each
    write 0.5 s, so the writes in flight when it is killed are unanswered
    and must be resent to the restarted server. Every WRITE that got GOOD
    must be in the file afterwards."""
    disk = tmp_path / "nbd-backing.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    nbd = nbd_server("nbdkit", "--filter=delay", "file", str(disk), "wdelay=500ms")
    srv = _start(uscstd, tmp_path, nbd.uri, "reconnect_timeout 100")
    acked: dict[int, bytes] = {}
    with _login(srv) as ini:
        ini.timeout = 100.0
        for rnd in range(4):
            itts = {}
            for i in range(8):
                lba = rnd * 64 + i * 8
                data = _block(lba, rnd) * 8
                itts[ini.submit(_write10(lba, 8), data_out=data)] = (lba, data)
            if rnd == 1:
                nbd.kill()          # the round's writes are held by the delay filter
                nbd.start()
            if rnd == 2:
                nbd.kill()          # and again, this time with nothing listening for a while
                for _ in range(3):
                    assert ini.test_unit_ready().ok    # within reconnect_timeout: not failed
                nbd.start()
            for itt, (lba, data) in itts.items():
                r = ini.wait(itt, timeout=100.0)
                assert r.ok, f"WRITE at {lba} failed: {r.sense.hex()}"
                acked[lba] = data
    on_disk = disk.read_bytes()
    for lba, data in acked.items():
        assert on_disk[lba * 512:lba * 512 + len(data)] == data, f"block {lba} lost"
    assert len(acked) == 32
    state = uscstadmin_ok(tmp_path / "nbd.sock", "get", "devices/nd0/nbd_state")
    assert "connected reconnects=2" in state
    srv.assert_healthy()


def test_server_gone_past_reconnect_timeout_gives_not_ready_until_it_is_back(
        uscstd, nbd_server, tmp_path: Path) -> None:
    disk = tmp_path / "nbd-backing.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    nbd = nbd_server("nbdkit", "file", str(disk))
    srv = _start(uscstd, tmp_path, nbd.uri, "reconnect_timeout 1")
    with _login(srv) as ini:
        assert ini.write10(8, b"\x11" * 512).ok
        nbd.kill()
        r = ini.read10(8, 1)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, NOT_READY, (0x04, 0))
        r = ini.test_unit_ready()
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, NOT_READY, (0x04, 0))
        assert uscstadmin_ok(tmp_path / "nbd.sock", "get",
                             "devices/nd0/nbd_state").startswith("unreachable")
        nbd.start()
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        # Bounded by the deadline; the reconnect backoff is at most 5 s.
        while not ini.test_unit_ready().ok:
            assert time.monotonic() < deadline, "the restarted server was not used again"
            time.sleep(0.2)
        assert ini.read10(8, 1).data == b"\x11" * 512
    assert "unreachable for 1 s" in srv.stderr_text()
    srv.assert_healthy()


def test_server_block_size_constraints_are_honoured_or_refused_with_a_reason(
        uscstd, nbd_server, tmp_path: Path) -> None:
    """blocksize-policy: minimum 4096 refuses a 512-byte LUN (clear log
    line) and serves a 4096-byte one; maximum 64 KiB splits a 1 MiB WRITE
    and READ into 16 requests each, the data intact."""
    nbd = nbd_server("nbdkit", "--filter=blocksize-policy", "memory", "16M",
                     "blocksize-minimum=4096", "blocksize-preferred=4096",
                     "blocksize-maximum=65536", "blocksize-error-policy=error")
    srv = _start(uscstd, tmp_path, nbd.uri, "blocksize 4096")
    r = subprocess.run([*_admin(tmp_path / "nbd.sock"), "open-dev", "nd512", "-H", "vdisk_nbd",
                        "-p", f"uri={nbd.uri}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "blocksize 512 does not fit (set blocksize)" in srv.stderr_text()
    data = os.urandom(1 << 20)
    with _login(srv) as ini:
        assert ini.write10(16, data, bs=4096).ok
        assert ini.read10(16, 256, bs=4096).data == data
    srv.assert_healthy()


def test_open_dev_over_the_control_socket_on_a_qemu_nbd_unix_socket(
        uscstd, nbd_server, tmp_path: Path) -> None:
    need("qemu-nbd")
    disk = tmp_path / "q.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)                 # sparse: holes qemu-nbd reports as such
    sock = tmp_path / "qemu-nbd.sock"
    nbd = nbd_server("qemu-nbd", "--persistent", "--shared=4", "-f", "raw", "-x", "ex",
                     str(disk), unix=sock)
    uri = f"nbd+unix:///ex?socket={sock}"
    ctl = tmp_path / "ctl.sock"
    srv = uscstd("--nullio", "--control", str(ctl), disk=None, size="1M")
    r = subprocess.run([*_admin(ctl), "open-dev", "bad", "-H", "vdisk_nbd", "-p",
                        "uri=nbd+unix:///ex"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "nbd+unix:// needs exactly one ?socket=PATH" in srv.stderr_text()
    r = subprocess.run([*_admin(ctl), "open-dev", "bad", "-H", "vdisk_nbd", "-p", f"uri={uri}",
                        "-p", "reconnect_timeout=1000"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "bad reconnect_timeout '1000' (seconds, 1..100)" in srv.stderr_text()
    uscstadmin_ok(ctl, "open-dev", "q0", "-H", "vdisk_nbd", "-p", f"uri={uri}")
    uscstadmin_ok(ctl, "add-lun", srv.iqn, "1", "q0")
    assert "connected" in uscstadmin_ok(ctl, "get", "devices/q0/nbd_state")
    assert uri in uscstadmin_ok(ctl, "get", "devices/q0/uri")
    assert uscstadmin_ok(ctl, "get", "devices/q0/reconnect_timeout").strip() == "30"
    with Initiator(port=srv.port) as ini:
        ini.connect()
        ini.login(srv.iqn)
        assert ini.write10(5, b"\x77" * 1024, lun=1).ok
        assert ini.read10(5, 2, lun=1).data == b"\x77" * 1024
        # qemu-nbd answers a read of never-written blocks with a hole chunk:
        # they must read as zeros, whatever the recycled buffer held before
        junk = os.urandom(64 << 10)
        assert ini.write10(2048, junk, lun=1).ok
        for _ in range(3):
            assert ini.read10(2048, 128, lun=1).data == junk
            assert ini.read10(8192, 128, lun=1).data == bytes(64 << 10)
    assert disk.read_bytes()[5 * 512:7 * 512] == b"\x77" * 1024
    assert nbd.proc is not None
    srv.assert_healthy()


def _admin(ctl: Path) -> list[str]:
    return [sys.executable, "-m", "tools.uscstadmin", "--socket", str(ctl)]
