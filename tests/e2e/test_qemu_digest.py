"""QEMU (its libiscsi block driver) with CRC32C header digests.

qemu-img opens the LUN through --image-opts / --target-image-opts with
driver=iscsi,transport=tcp,portal=...,target=...,lun=0,header-digest=crc32c
(QEMU's BlockdevOptionsIscsi; header-digest takes crc32c, none, crc32c-none
or none-crc32c), writes a 64 MiB random image and reads it back: both must
be bit-identical, and the backing file holds the same bytes.

That the digest was really in use is shown two ways:
  - on the wire: qemu talks to uscstd through a small TCP relay in this
    test, which keeps the first bytes of each direction of every
    connection. Parsed afterwards, the target's Login Response says
    HeaderDigest=CRC32C, and every PDU after the login (both directions,
    as far as the capture reaches) carries a correct CRC32C after its
    header (RFC 7143 13.1, 11.2);
  - in the log: uscstd at --log-level info names the negotiated
    HeaderDigest when a session starts (second test).
Skips when qemu-img or its iscsi driver is missing.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from initiator import OP_LOGIN_REQ, OP_LOGIN_RSP, Pdu, decode_keys, digest_bytes, pad4

IMAGE = 64 << 20
TOOL_TIMEOUT = 120
CAPTURE = 256 * 1024       # bytes kept per direction per connection


def _qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        pytest.skip("qemu-img is not installed")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    if " iscsi " not in f" {p.stdout} ".replace("\n", " "):
        pytest.skip("qemu-img has no iscsi block driver (qemu-block-extra)")
    return exe


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)


def _explain(p: subprocess.CompletedProcess, srv=None) -> str:
    text = f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    if srv is not None:
        text += f"\nuscstd stderr:\n{srv.stderr_text()[-3000:]}"
    return text


def _opts(portal: str, iqn: str) -> str:
    return (f"driver=iscsi,transport=tcp,portal={portal},target={iqn},lun=0,"
            f"header-digest=crc32c")


class _Relay:
    """A loopback TCP relay to one target, recording the first CAPTURE
    bytes of each direction of every connection it carries."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.captures: list[tuple[bytearray, bytearray]] = []    # (to target, from target)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        # Bounded: ends when stop is set (accept wakes every 0.2 s).
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                t = socket.create_connection(self.target, timeout=10)
            except OSError as e:
                self.errors.append(f"relay could not reach the target: {e}")
                c.close()
                continue
            cap = (bytearray(), bytearray())
            self.captures.append(cap)
            for src, dst, buf in ((c, t, cap[0]), (t, c, cap[1])):
                th = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                th.start()
                self.threads.append(th)

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        src.settimeout(TOOL_TIMEOUT)
        try:
            # Bounded by the peer closing, or the socket timeout.
            while True:
                chunk = src.recv(1 << 20)
                if not chunk:
                    break
                if len(buf) < CAPTURE:
                    buf += chunk[:CAPTURE - len(buf)]
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.lsock.close()
        self.acceptor.join(5)
        for th in self.threads:
            th.join(5)


def _pdus(buf: bytes, digest_after_login: bool, outbound: bool):
    """Walk the captured stream: yield (pdu, hdigest_ok or None) for each
    complete PDU. Login PDUs carry no digest; once the login is over (the
    first non-login PDU on the way out; after the final Login Response on
    the way in) every header is followed by its 4-byte CRC32C."""
    pos = 0
    digests = False
    # Bounded: every pass consumes at least 48 bytes or stops.
    while pos + 48 <= len(buf):
        bhs = bytes(buf[pos:pos + 48])
        op = bhs[0] & 0x3F
        if outbound and op != OP_LOGIN_REQ:
            digests = digest_after_login
        ahs_len = bhs[4] * 4
        dsl = int.from_bytes(bhs[5:8], "big")
        hd = 4 if digests else 0
        end = pos + 48 + ahs_len + hd + dsl + pad4(dsl)
        if end > len(buf):
            return
        pdu = Pdu(bhs, bytes(buf[pos + 48:pos + 48 + ahs_len]),
                  bytes(buf[pos + 48 + ahs_len + hd:pos + 48 + ahs_len + hd + dsl]))
        ok = None
        if digests:
            ok = bytes(buf[pos + 48 + ahs_len:pos + 48 + ahs_len + 4]) == \
                digest_bytes(bhs + pdu.ahs)
        yield pdu, ok
        pos = end
        if not outbound and op == OP_LOGIN_RSP and pdu.transit and pdu.nsg == 3 \
                and pdu.status_class == 0:
            digests = digest_after_login


def _check_capture(to_tgt: bytes, from_tgt: bytes) -> int:
    """Assert the login agreed HeaderDigest=CRC32C and every later header
    has a right digest; return how many digests were checked."""
    keys: dict[str, str] = {}
    inbound = list(_pdus(from_tgt, True, outbound=False))
    for pdu, _ok in inbound:
        if pdu.opcode == OP_LOGIN_RSP:
            keys.update(decode_keys(pdu.data))
    assert keys.get("HeaderDigest") == "CRC32C", f"target answered {keys}"
    checked = 0
    for direction, seen in (("the target", inbound),
                            ("qemu", list(_pdus(to_tgt, True, outbound=True)))):
        for pdu, ok in seen:
            if ok is not None:
                assert ok, f"bad header digest on {pdu!r} from {direction}"
                checked += 1
    return checked


def test_qemu_img_with_header_digest_crc32c_moves_64mib_bit_identical(uscstd,
                                                                      tmp_path: Path) -> None:
    exe = _qemu_img()
    srv = uscstd("--log-level", "info", size="64M")
    relay = _Relay(srv.host, srv.port)
    try:
        src = tmp_path / "src.raw"
        back = tmp_path / "back.raw"
        data = os.urandom(IMAGE)
        src.write_bytes(data)
        opts = _opts(f"127.0.0.1:{relay.port}", srv.iqn)
        p = _run([exe, "convert", "-n", "-f", "raw", str(src), "--target-image-opts", opts])
        assert p.returncode == 0, _explain(p, srv)
        p = _run([exe, "convert", "--image-opts", opts, "-O", "raw", str(back)])
        assert p.returncode == 0, _explain(p, srv)
    finally:
        relay.close()
    assert not relay.errors, relay.errors
    got = back.read_bytes()
    assert len(got) == IMAGE, len(got)
    assert got == data, "qemu-img read back different bytes"
    disk = Path(srv.argv[srv.argv.index("--disk") + 1])
    with open(disk, "rb") as f:
        assert f.read(IMAGE) == data, "the backing file holds different bytes"
    # Every connection qemu made negotiated the digest and used it.
    assert relay.captures, "qemu made no connection through the relay"
    total = 0
    for to_tgt, from_tgt in relay.captures:
        total += _check_capture(bytes(to_tgt), bytes(from_tgt))
    assert total >= 10, f"only {total} header digests seen on the wire"
    srv.assert_healthy()


def test_uscstd_info_log_names_the_negotiated_header_digest(uscstd) -> None:
    exe = _qemu_img()
    srv = uscstd("--log-level", "info", size="64M")
    p = _run([exe, "info", "--image-opts", _opts(srv.portal, srv.iqn)])
    assert p.returncode == 0, _explain(p, srv)
    assert "virtual size: 64 MiB" in p.stdout, _explain(p)
    log = srv.stderr_text()
    assert re.search(r"HeaderDigest\W+CRC32C", log, re.I), \
        ("uscstd --log-level info does not name the negotiated HeaderDigest of a new "
         "session (expected e.g. 'HeaderDigest=CRC32C' on the session/login line); log:\n"
         + log[-3000:])
    srv.assert_healthy()
