"""Hostile and broken iSCSI traffic against a running uscstd.

Each case sends something a correct initiator never sends (truncated or
malformed PDUs, connections cut mid-PDU, garbage login text, oversize data
segments, unknown tags, bad digests, duplicate tags, connection storms) and
then proves the target still serves: a NEW connection logs in and TEST UNIT
READY returns GOOD, the process is alive and its log holds no Traceback,
BUG: or Oops. The `uscstd` fixture's teardown adds a clean SIGTERM exit.

Expected reactions follow RFC 7143: a PDU the target cannot frame ends the
connection (7.x: at ErrorRecoveryLevel 0 a framing or digest error is a
connection failure); a well-framed PDU with an unsupported opcode is
answered with Reject reason 0x05 "Command not supported" (11.17.1) and the
connection stays; bad login text is a Login Response with status class 2
"initiator error" (11.13.5) after which the target closes.

Everything is bounded: fixed counts, and every wait has a timeout.
"""
from __future__ import annotations

import random
import socket
import struct

import pytest

from initiator import (
    OP_LOGIN_RSP,
    OP_REJECT,
    RESERVED_TAG,
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    ConnectionClosed,
    Initiator,
    build_pdu,
    encode_keys,
    pack_bhs,
    pack_data_out,
    pack_login_req,
    pack_nop_out,
    pack_scsi_cmd,
)

BS = 512
CLOSE_TIMEOUT = 5.0


def _write10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def _read10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def _raw(srv) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _new_ini(srv, **kw) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn, **kw)
    return ini


def _assert_serves(srv) -> None:
    """A fresh connection logs in and TEST UNIT READY is GOOD; log clean."""
    ini = _new_ini(srv)
    try:
        res = ini.test_unit_ready()
        assert res.ok, res
        assert ini.logout() == 0
    finally:
        ini.close()
    srv.assert_healthy()


def _login_pdu(ini: Initiator, text: bytes, *, transit: bool = True) -> bytes:
    bhs = pack_login_req(isid=ini.isid, itt=1, cmd_sn=1, exp_stat_sn=0,
                         csg=STAGE_OPERATIONAL, nsg=STAGE_FULL_FEATURE,
                         transit=transit, dsl=len(text))
    return build_pdu(bhs, text)


# --- broken framing ---------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    pytest.param(b"\x03\x87\x00\x00" + b"\x00" * 16, id="truncated-20-bytes"),
    pytest.param(bytes(random.Random(7).randrange(256) for _ in range(48)), id="random-48-bytes"),
    pytest.param(pack_bhs(0x03, immediate=True, flags=0x87, ahs_len=1020, itt=1), id="ahs-promised"),
    pytest.param(b"\x03" * 47, id="one-short"),
])
def test_malformed_bhs_then_close_leaves_target_serving(uscstd_server, payload: bytes) -> None:
    s = _raw(uscstd_server)
    s.sendall(payload)
    s.close()
    _assert_serves(uscstd_server)


def test_garbage_bhs_before_login_makes_target_drop_the_connection(uscstd_server) -> None:
    ini = Initiator(host=uscstd_server.host, port=uscstd_server.port, timeout=10.0)
    ini.connect()
    # A reserved initiator opcode with a reserved bit set in byte 0 (bit 7).
    ini.send_raw(pack_bhs(0x80 | 0x1A, flags=0xFF, dsl=0, itt=5))
    assert ini.expect_closed(CLOSE_TIMEOUT)
    _assert_serves(uscstd_server)


def test_connection_closed_in_the_middle_of_a_pdu_header(uscstd_server) -> None:
    ini = _new_ini(uscstd_server)
    bhs = pack_scsi_cmd(itt=0x100, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                        cdb=_read10_cdb(0, 8), edtl=4096, read=True)
    ini.send_raw(bhs[:30])
    ini.close()
    _assert_serves(uscstd_server)


def test_connection_closed_in_the_middle_of_a_data_segment(uscstd_server) -> None:
    ini = _new_ini(uscstd_server, keys={"ImmediateData": "Yes"})
    assert ini.negotiated["ImmediateData"] == "Yes"
    data = b"\xA5" * 4096
    bhs = pack_scsi_cmd(itt=0x101, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                        cdb=_write10_cdb(0, 8), edtl=4096, write=True, dsl=4096)
    ini.send_raw(bhs + data[:1000])
    ini.close()
    _assert_serves(uscstd_server)


def test_connection_closed_in_the_middle_of_a_data_out_after_r2t(uscstd_server) -> None:
    ini = _new_ini(uscstd_server, keys={"InitialR2T": "Yes", "ImmediateData": "No"})
    n = 64 * 1024
    bhs = pack_scsi_cmd(itt=0x102, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                        cdb=_write10_cdb(0, n // BS), edtl=n, write=True)
    ini.send_raw(bhs)
    r2t = ini.recv_pdu()
    assert r2t.opcode == 0x31 and r2t.itt == 0x102, r2t
    dout = pack_data_out(itt=0x102, ttt=r2t.ttt, exp_stat_sn=ini.exp_stat_sn, data_sn=0,
                         offset=0, dsl=min(n, ini.target_mrdsl))
    ini.send_raw(dout + b"\x5A" * 777)
    ini.close()
    _assert_serves(uscstd_server)


# --- full feature phase oddities ---------------------------------------------------

def test_unknown_opcode_in_full_feature_phase_is_rejected_and_connection_stays(
        uscstd_server) -> None:
    ini = _new_ini(uscstd_server)
    itt = 0x7001
    bad = pack_bhs(0x0B, immediate=True, flags=0x80, itt=itt,
                   rest=struct.pack(">III", RESERVED_TAG, ini.cmd_sn, ini.exp_stat_sn))
    ini.send_pdu(bad)
    pdu = ini.recv_pdu()
    assert pdu.opcode == OP_REJECT, pdu
    assert pdu.reason == 0x05, f"Reject reason {pdu.reason:#x}, want 0x05 (command not supported)"
    assert pdu.itt == RESERVED_TAG
    assert pdu.data[:48] == bad, "Reject must carry the rejected header"
    # The same connection keeps working.
    assert ini.test_unit_ready().ok
    assert ini.nop_out(b"still here").data == b"still here"
    assert ini.logout() == 0
    _assert_serves(uscstd_server)


def test_scsi_command_before_login_drops_the_connection(uscstd_server) -> None:
    ini = Initiator(host=uscstd_server.host, port=uscstd_server.port, timeout=10.0)
    ini.connect()
    ini.send_raw(pack_scsi_cmd(itt=1, cmd_sn=1, exp_stat_sn=0, cdb=bytes(6)))
    # Whatever the target says first (a Login Reject is allowed), it must close.
    got = []
    try:
        got.append(ini.recv_pdu(CLOSE_TIMEOUT))
    except (ConnectionClosed, TimeoutError):
        pass
    for p in got:
        assert p.opcode in (OP_LOGIN_RSP, OP_REJECT), p
        if p.opcode == OP_LOGIN_RSP:
            assert p.status_class == 2, p.status_class
    assert ini.expect_closed(CLOSE_TIMEOUT), "target kept a connection that skipped login"
    _assert_serves(uscstd_server)


@pytest.mark.parametrize("text", [
    pytest.param(b"NoEqualsSignHere\0", id="no-equals"),
    pytest.param(bytes(random.Random(11).randrange(1, 256) for _ in range(300)) + b"\0",
                 id="binary-junk"),
    pytest.param(b"K" * 4000 + b"=1\0", id="huge-key"),
    pytest.param(b"=value\0", id="empty-key"),
])
def test_login_with_garbage_key_text_gets_initiator_error_then_close(
        uscstd_server, text: bytes) -> None:
    ini = Initiator(host=uscstd_server.host, port=uscstd_server.port, timeout=10.0)
    ini.connect()
    good = encode_keys({"InitiatorName": "iqn.2026-11.org.uscst:bad-input",
                        "TargetName": uscstd_server.iqn, "SessionType": "Normal"})
    ini.send_raw(_login_pdu(ini, good + text))
    pdu = ini.recv_pdu(CLOSE_TIMEOUT)
    assert pdu.opcode == OP_LOGIN_RSP, pdu
    assert pdu.status_class == 2, \
        f"Login Response status {pdu.status_class:#04x}/{pdu.status_detail:#04x} " \
        f"to garbage key text {text[:40]!r}; want class 2 (initiator error)"
    assert ini.expect_closed(CLOSE_TIMEOUT), "target kept the connection after a login reject"
    _assert_serves(uscstd_server)


def test_oversize_data_segment_is_a_clean_drop(uscstd_server) -> None:
    ini = _new_ini(uscstd_server)
    limit = ini.target_mrdsl
    n = limit + 4096
    bhs = pack_nop_out(itt=0x55, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn, dsl=n)
    try:
        ini.send_raw(bhs + b"\0" * n, timeout=CLOSE_TIMEOUT)
    except (ConnectionClosed, TimeoutError):
        pass            # the target may close before taking it all
    assert ini.expect_closed(CLOSE_TIMEOUT), \
        f"target accepted a {n}-byte data segment over its MaxRecvDataSegmentLength {limit}"
    _assert_serves(uscstd_server)


def test_data_segment_length_of_16mib_is_a_clean_drop_without_reading_it(uscstd_server) -> None:
    ini = _new_ini(uscstd_server)
    bhs = pack_scsi_cmd(itt=0x56, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                        cdb=_write10_cdb(0, 8), edtl=4096, write=True, dsl=0xFFFFFF)
    ini.send_raw(bhs + b"\0" * 1024)
    assert ini.expect_closed(CLOSE_TIMEOUT)
    _assert_serves(uscstd_server)


def test_data_out_for_unknown_itt_is_discarded_and_connection_keeps_working(
        uscstd_server) -> None:
    srv = uscstd_server
    ini = _new_ini(srv)
    before = ini.read10(0, 1).check().data
    dout = pack_data_out(itt=0x6666, ttt=0x1234, exp_stat_sn=ini.exp_stat_sn, data_sn=0,
                         offset=0, dsl=BS)
    ini.send_pdu(dout, b"\xEE" * BS)
    # The connection still works, and the stray data went nowhere.
    assert ini.test_unit_ready().ok
    assert ini.nop_out(b"ping").data == b"ping"
    assert ini.read10(0, 1).check().data == before
    for rej in ini.rejects:          # a Reject is allowed; it must name the Data-Out
        assert rej.data[:48] == dout
    assert ini.logout() == 0
    _assert_serves(srv)


def test_bad_header_digest_drops_the_connection(uscstd_server) -> None:
    ini = _new_ini(uscstd_server, keys={"HeaderDigest": "CRC32C,None"})
    assert ini.header_digest, \
        f"target would not negotiate HeaderDigest=CRC32C (answered {ini.negotiated['HeaderDigest']})"
    assert ini.test_unit_ready().ok
    bhs = pack_scsi_cmd(itt=0x77, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn, cdb=bytes(6))
    ini.send_pdu(bhs, bad_header_digest=True)
    assert ini.expect_closed(CLOSE_TIMEOUT), "target kept a connection after a header digest error"
    _assert_serves(uscstd_server)


def test_duplicate_itt_of_an_outstanding_command_drops_the_connection(uscstd_server) -> None:
    ini = _new_ini(uscstd_server, keys={"InitialR2T": "Yes", "ImmediateData": "No"})
    itt = 0x900
    n = 8192
    first = pack_scsi_cmd(itt=itt, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                          cdb=_write10_cdb(0, n // BS), edtl=n, write=True)
    ini.send_pdu(first)
    r2t = ini.recv_pdu()                  # the write now waits for our Data-Out
    assert r2t.opcode == 0x31 and r2t.itt == itt, r2t
    second = pack_scsi_cmd(itt=itt, cmd_sn=ini.cmd_sn + 1, exp_stat_sn=ini.exp_stat_sn,
                           cdb=_read10_cdb(0, 1), edtl=BS, read=True)
    ini.send_pdu(second)
    assert ini.expect_closed(CLOSE_TIMEOUT), "target accepted a second task with a live ITT"
    _assert_serves(uscstd_server)


def test_burst_of_50_connections_opened_and_closed_at_once(uscstd_server) -> None:
    srv = uscstd_server
    socks = []
    try:
        for i in range(50):
            s = _raw(srv)
            socks.append(s)
            if i % 3 == 1:               # some start a login and vanish
                ini = Initiator(host=srv.host, port=srv.port)
                s.sendall(_login_pdu(ini, encode_keys({
                    "InitiatorName": f"iqn.2026-11.org.uscst:storm{i}",
                    "TargetName": srv.iqn, "SessionType": "Normal"}), transit=False))
            elif i % 3 == 2:             # some send half a header
                s.sendall(b"\x03" * 17)
    finally:
        for s in socks:
            s.close()
    _assert_serves(srv)
    # And while 10 more idle connections are held open, service goes on.
    held = [_raw(srv) for _ in range(10)]
    try:
        _assert_serves(srv)
    finally:
        for s in held:
            s.close()


def test_burst_of_50_full_sessions_then_all_dropped(uscstd_server) -> None:
    srv = uscstd_server
    inis = []
    try:
        for _ in range(50):
            inis.append(_new_ini(srv))
        for ini in inis[::7]:
            assert ini.test_unit_ready().ok
    finally:
        for ini in inis:
            ini.close()
    _assert_serves(srv)
