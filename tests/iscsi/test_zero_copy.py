"""Zero-copy Data-In (decision 0067) against a real uscstd: real TCP on
127.0.0.1, a real backing file filled with random bytes, real initiators
(qemu-img's libiscsi driver, and tests/initiator.py where a test needs
DataDigest or a fault). Every read is compared with the file byte for byte;
the session's zero_copy attribute and /sys/kernel/net/sendfile show which
path the Data-In took. The band of READ sizes sent from the page cache is
opened to every size (module parameters fileio_sendfile_min/max) so that
any READ of a cached range takes it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from initiator import ConnectionClosed, Initiator
from tools.uscstadmin import Ctl
from uscstd_support import uscstadmin_ok

BS = 512
SIZE = 16 << 20
PARAMS = "module/scst_vdisk/parameters"
TOOL_TIMEOUT = 120


def _start(uscstd, tmp_path: Path, *faults: str) -> tuple:
    """uscstd on a 16 MiB file of random bytes, every cached READ sent from
    the page cache; (server, Ctl, the file's bytes)."""
    data = os.urandom(SIZE)
    disk = tmp_path / "zc.img"
    disk.write_bytes(data)
    sock = str(tmp_path / "ctl.sock")
    extra = ["--control", sock]
    for f in faults:
        extra += ["--fault", f]
    srv = uscstd(*extra, disk=disk, size="16M")
    deadline = time.monotonic() + 10.0
    while "uscstd: control socket" not in srv.stdout_text():
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr_text()
        time.sleep(0.05)
    uscstadmin_ok(sock, "set", f"{PARAMS}/fileio_sendfile_min", "0")
    uscstadmin_ok(sock, "set", f"{PARAMS}/fileio_sendfile_max", str(SIZE))
    return srv, Ctl(sock), data


def _login(srv, name: str, **kw) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0, initiator_name=name)
    ini.connect()
    ini.login(srv.iqn, **kw)
    return ini


def zero_copy_counts(ctl: Ctl, srv, name: str) -> dict[str, int]:
    """The session's zero_copy attribute (its one connection) as a dict."""
    text = ctl.read(f"targets/iscsi/{srv.iqn}/sessions/{name}/zero_copy")
    words = text.split()
    return {words[i]: int(words[i + 1]) for i in range(1, len(words) - 1, 2)}


def sendfile_counts(ctl: Ctl) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", ctl.read("kernel/net/sendfile"))}


def _read_all(ini: Initiator, blocks: int, lbas: range) -> bytes:
    out = bytearray()
    for lba in lbas:
        r = ini.read10(lba, blocks)
        assert r.ok, r
        out += r.data
    return bytes(out)


def test_qemu_img_reads_the_lun_bit_identical_through_kernel_sendfile(uscstd, tmp_path):
    """qemu-img (libiscsi) copies the whole LUN: the copy equals the file,
    and kernel_sendfile sent at least the LUN's bytes."""
    qemu = shutil.which("qemu-img")
    if qemu is None:
        pytest.skip("qemu-img is not installed")
    srv, ctl, data = _start(uscstd, tmp_path)
    before = sendfile_counts(ctl)
    out = tmp_path / "copy.img"
    r = subprocess.run([qemu, "convert", "-f", "raw", "-O", "raw", srv.url, str(out)],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    if r.returncode and "Unknown protocol" in r.stderr:
        pytest.skip("qemu-img has no iscsi block driver (qemu-block-extra)")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    after = sendfile_counts(ctl)
    assert after["bytes"] - before["bytes"] >= SIZE, (before, after)
    assert after["errors"] == before["errors"]


def test_a_data_digest_session_reads_through_the_copy_path_and_a_plain_one_does_not(
        uscstd, tmp_path):
    """DataDigest=CRC32C needs the bytes to digest them: its READs go from
    the command's buffer; a session without it, same READs, same data,
    goes from the page cache, and so does one with HeaderDigest only (the
    initiator checks every header's CRC32C, the data following it comes
    by kernel_sendfile)."""
    srv, ctl, data = _start(uscstd, tmp_path)
    lbas = range(0, 4096, 97)
    names = ("iqn.2026-12.org.uscst:zc-digest", "iqn.2026-12.org.uscst:zc-plain",
             "iqn.2026-12.org.uscst:zc-hdigest")
    inis = [_login(srv, names[0], header_digest=True, data_digest=True),
            _login(srv, names[1]), _login(srv, names[2], header_digest=True)]
    try:
        assert inis[0].data_digest and inis[2].header_digest and not inis[2].data_digest
        want = b"".join(data[lba * BS:(lba + 64) * BS] for lba in lbas)
        for ini in inis:
            assert _read_all(ini, 64, lbas) == want
        d, p, h = (zero_copy_counts(ctl, srv, name) for name in names)
    finally:
        for ini in inis:
            ini.logout()
    n = len(lbas)
    assert (d["zero_copy_reads"], d["sendfile_bytes"]) == (0, 0)
    assert (p["zero_copy_reads"], p["sendfile_bytes"]) == (n, n * 64 * BS)
    assert (h["zero_copy_reads"], h["sendfile_bytes"]) == (n, n * 64 * BS)


def test_injected_short_sends_from_the_page_cache_resume_where_they_stopped_seed_16021(
        uscstd, tmp_path):
    """Seed 16021. Half of all sends are cut short (fail_sock_send
    error=short): every READ, one PDU or several (MaxRecvDataSegmentLength
    8 KiB), still brings the file's bytes, and the connection counted
    short sendfiles it resumed."""
    srv, ctl, data = _start(uscstd, tmp_path, "fail_sock_send:error=short,probability=50,"
                            "times=-1,seed=16021,verbose=0")
    name = "iqn.2026-12.org.uscst:zc-short"
    ini = _login(srv, name, keys={"MaxRecvDataSegmentLength": "8192"})
    try:
        for blocks, lbas in ((256, range(0, 8192, 509)), (8, range(3, 600, 37))):
            want = b"".join(data[lba * BS:(lba + blocks) * BS] for lba in lbas)
            assert _read_all(ini, blocks, lbas) == want, blocks
        counts = zero_copy_counts(ctl, srv, name)
    finally:
        ini.logout()
    n = len(range(0, 8192, 509)) + len(range(3, 600, 37))
    assert counts["sendfile_short"] > 0 and counts["zero_copy_reads"] == n, counts
    assert int(ctl.read("debug/fail_sock_send/injected")) > 0


def test_a_file_that_fails_under_a_zero_copy_send_drops_the_connection_not_the_data_seed_16022(
        uscstd, tmp_path):
    """Seed 16022. The page cache cannot be read mid-send (fail_sock_sendfile
    error=EIO): the Data-In already promised cannot be finished, so the
    connection closes (RFC 7143 lets the initiator retry); no READ ever
    completes with wrong data, and a new session reads the same range."""
    srv, ctl, data = _start(uscstd, tmp_path, "fail_sock_sendfile:error=EIO,probability=100,"
                            "times=1,seed=16022,verbose=0")
    ini = _login(srv, "iqn.2026-12.org.uscst:zc-eio")
    with pytest.raises(ConnectionClosed):
        ini.read10(64, 64)
    ini.close()
    again = _login(srv, "iqn.2026-12.org.uscst:zc-eio")
    try:
        r = again.read10(64, 64)
        assert r.ok and r.data == data[64 * BS:128 * BS]
    finally:
        again.logout()
    assert sendfile_counts(ctl)["calls"] >= 1
    assert ctl.read("debug/fail_sock_sendfile/injected").strip() == "1"


def test_a_file_ending_under_a_zero_copy_send_gives_the_zeros_a_read_past_its_end_reads_seed_16023(
        uscstd, tmp_path):
    """Seed 16023. The file ends where the send starts (fail_sock_sendfile
    error=eof, as a truncate between the READ and its send): the rest goes
    as zeros, what vdisk_fileio's READ path reads past the end of a file;
    the session counts them. The next READ is sent from the file again."""
    srv, ctl, data = _start(uscstd, tmp_path, "fail_sock_sendfile:error=eof,probability=100,"
                            "times=1,seed=16023,verbose=0")
    name = "iqn.2026-12.org.uscst:zc-eof"
    ini = _login(srv, name)
    try:
        r = ini.read10(128, 16)
        assert r.ok and r.data == bytes(16 * BS)
        r = ini.read10(128, 16)
        assert r.ok and r.data == data[128 * BS:144 * BS]
        counts = zero_copy_counts(ctl, srv, name)
    finally:
        ini.logout()
    assert counts["eof_zero_bytes"] == 16 * BS and counts["zero_copy_reads"] == 2, counts
