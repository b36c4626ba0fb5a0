"""End to end: PERSISTENT RESERVE OUT with REGISTER AND MOVE (SPC-4
5.13.8, parameter list 6.16.4, iSCSI TransportIDs 7.6.4.6) over real TCP.

A real uscstd on 127.0.0.1 serving one file LUN; the project's own
initiator (tests/initiator.py) logs in under different initiator names
with fixed ISIDs, so each login is a known I_T nexus. A registers and
reserves, then moves the reservation to B, named by a TransportID: the
initiator name with its ISID (format 01b), or the name alone (00b). The
TransportIDs here are built by hand from the standard, not with
scst_core's own encoder, so an encoding mistake there cannot cancel out.
"""
from __future__ import annotations

import struct

import pytest

from initiator import Initiator
from pr_support import (READ_FULL_STATUS, REGISTER, REGISTER_AND_MOVE, RESERVE, login, prin,
                        prout, read_keys, read_reservation, write1)
from uscstd_support import UscstdServer

GOOD = 0x00
CHECK_CONDITION = 0x02
RESERVATION_CONFLICT = 0x18
ILLEGAL_REQUEST = 0x05
INVALID_FIELD_IN_CDB = (0x24, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)

WRITE_EXCLUSIVE, EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x1, 0x8

INI_A = ("iqn.1994-05.org.uscst.test:move-a", bytes.fromhex("023d000000a1"))
INI_B = ("iqn.1994-05.org.uscst.test:move-b", bytes.fromhex("023d000000b2"))
INI_C = ("iqn.1994-05.org.uscst.test:move-c", bytes.fromhex("023d000000c3"))
KEY_A, KEY_B, KEY_C = 0xA1A1A1A1A1A1A1A1, 0x00000000000000B2, 0xC3


# ---------------------------------------------------------------- helpers

def iscsi_tid(name: str, isid: bytes | None = None) -> bytes:
    """SPC-4 7.6.4.6: format 01b "name,i,0x<ISID hex>" with an ISID (the
    ISID in upper-case hex, as some initiators send it), format 00b the
    name alone; NUL-terminated, padded to a multiple of 4, at least 20."""
    text = (name if isid is None else f"{name},i,0x{isid.hex().upper()}").encode() + b"\x00"
    text = text.ljust(max(20, (len(text) + 3) // 4 * 4), b"\x00")
    return bytes(((0x40 if isid is not None else 0) | 0x05, 0)) + struct.pack(">H", len(text)) + text


def register_and_move(ini: Initiator, res_key: int, sa_key: int, tid: bytes, rel_tgt_id: int,
                      unreg: bool = False, tid_len: int | None = None, plen: int | None = None):
    """PERSISTENT RESERVE OUT, REGISTER AND MOVE; parameter list as in
    SPC-4 table 217. tid_len/plen override the honest lengths."""
    data = struct.pack(">QQxBHI", res_key, sa_key, 0x02 if unreg else 0, rel_tgt_id,
                       len(tid) if tid_len is None else tid_len) + tid
    plen = len(data) if plen is None else plen
    cdb = struct.pack(">BBBxxIB", 0x5F, REGISTER_AND_MOVE, 0, plen, 0)
    return ini.scsi(cdb, data_out=data[:plen])


def read_full_status(ini: Initiator) -> tuple[int, dict[str, dict]]:
    """(generation, {"name,i,0x<isid>": registration}) from READ FULL STATUS."""
    d = prin(ini, READ_FULL_STATUS, 4096)
    gen, n = struct.unpack_from(">II", d)
    out, off = {}, 8
    while off < 8 + n:
        tid_len = struct.unpack_from(">I", d, off + 20)[0]
        tid = d[off + 24:off + 24 + tid_len]
        assert tid[0] == 0x45, tid.hex()                  # iSCSI, initiator port format
        out[tid[4:].rstrip(b"\x00").decode()] = {
            "key": struct.unpack_from(">Q", d, off)[0], "holder": bool(d[off + 12] & 0x01),
            "type": d[off + 13] & 0x0F, "rel_tgt_id": struct.unpack_from(">H", d, off + 18)[0]}
        off += 24 + tid_len
    return gen, out


def port(who: tuple[str, bytes]) -> str:
    return f"{who[0]},i,0x{who[1].hex()}"


def field_pointer(sense: bytes) -> tuple[bool, int]:
    """(in CDB, byte) from fixed-format sense's sense-key specific bytes."""
    assert sense[0] & 0x7F == 0x70 and sense[15] & 0x80, sense.hex()
    return bool(sense[15] & 0x40), struct.unpack_from(">H", sense, 16)[0]


def a_reserves(srv: UscstdServer, ptype: int = WRITE_EXCLUSIVE) -> tuple[Initiator, Initiator, int]:
    """A registers and reserves; B logs in unregistered. Returns A, B and
    the relative target port id READ FULL STATUS shows for A."""
    a, b = login(srv, INI_A), login(srv, INI_B)
    assert prout(a, REGISTER, 0, KEY_A).ok
    assert prout(a, RESERVE, KEY_A, 0, ptype=ptype).ok
    _, regs = read_full_status(a)
    return a, b, regs[port(INI_A)]["rel_tgt_id"]


# ---------------------------------------------------------------- tests

def test_move_to_a_port_by_name_and_isid_makes_it_the_holder(uscstd) -> None:
    srv = uscstd(size="16M")
    a, b, rel = a_reserves(srv)
    assert write1(b) == RESERVATION_CONFLICT
    assert read_keys(b) == (1, [KEY_A])
    r = register_and_move(a, KEY_A, KEY_B, iscsi_tid(*INI_B), rel)
    assert r.ok, r
    assert read_reservation(a) == (2, (KEY_B, 0, WRITE_EXCLUSIVE))
    gen, regs = read_full_status(b)
    assert gen == 2 and set(regs) == {port(INI_A), port(INI_B)}
    assert regs[port(INI_B)] == {"key": KEY_B, "holder": True, "type": WRITE_EXCLUSIVE,
                                 "rel_tgt_id": rel}
    assert regs[port(INI_A)]["key"] == KEY_A and not regs[port(INI_A)]["holder"]
    # Write Exclusive now held by B: A (registered, not the holder) may only read
    assert write1(a) == RESERVATION_CONFLICT
    assert a.read10(8, 1).ok
    assert write1(b) == GOOD
    # A is no longer the holder: it cannot move the reservation back
    assert register_and_move(a, KEY_A, KEY_A, iscsi_tid(*INI_A), rel).status == RESERVATION_CONFLICT
    a.logout()
    b.logout()
    srv.assert_healthy()


def test_move_with_unreg_drops_the_source_and_a_name_only_tid_finds_the_logged_in_port(uscstd) -> None:
    srv = uscstd(size="16M")
    a, b, rel = a_reserves(srv)
    assert register_and_move(a, KEY_A, KEY_B, iscsi_tid(*INI_B), rel, unreg=True).ok
    assert read_keys(a) == (2, [KEY_B])
    assert prout(a, REGISTER, KEY_A, KEY_A + 1).status == RESERVATION_CONFLICT   # not registered
    assert write1(a) == RESERVATION_CONFLICT
    # B moves it back to A by name only (format 00b): A's one logged-in port
    assert register_and_move(b, KEY_B, KEY_A, iscsi_tid(INI_A[0]), rel, unreg=True).ok
    gen, regs = read_full_status(b)
    assert gen == 3 and list(regs) == [port(INI_A)] and regs[port(INI_A)]["holder"]
    assert write1(a) == GOOD
    assert write1(b) == RESERVATION_CONFLICT
    a.logout()
    b.logout()
    srv.assert_healthy()


def test_move_to_a_port_not_logged_in_takes_effect_when_it_logs_in(uscstd) -> None:
    srv = uscstd(size="16M")
    a, b, rel = a_reserves(srv)
    assert register_and_move(a, KEY_A, KEY_C, iscsi_tid(*INI_C), rel, unreg=True).ok
    assert read_reservation(b) == (2, (KEY_C, 0, WRITE_EXCLUSIVE))
    assert write1(a) == RESERVATION_CONFLICT
    assert write1(b) == RESERVATION_CONFLICT
    c = login(srv, INI_C)
    assert write1(c) == GOOD
    _, regs = read_full_status(c)
    assert list(regs) == [port(INI_C)] and regs[port(INI_C)]["holder"]
    # C holds it: C may move it on, to B
    assert register_and_move(c, KEY_C, KEY_B, iscsi_tid(*INI_B), rel).ok
    assert write1(b) == GOOD
    assert write1(c) == RESERVATION_CONFLICT
    for ini in (a, b, c):
        ini.logout()
    srv.assert_healthy()


_TID_B = iscsi_tid(*INI_B)

# (case, changes to A's REGISTER AND MOVE, expected status or (asc, ascq), field pointer byte)
_ERRORS = [
    ("wrong reservation key", dict(res_key=KEY_A + 1), RESERVATION_CONFLICT, None),
    ("service action key zero", dict(sa_key=0), INVALID_FIELD_IN_PARAMETER_LIST, 8),
    ("destination is the source port", dict(tid=iscsi_tid(*INI_A)), INVALID_FIELD_IN_PARAMETER_LIST, 24),
    ("unknown relative target port", dict(rel=0x7777), INVALID_FIELD_IN_PARAMETER_LIST, 18),
    ("TransportID length not a multiple of 4", dict(tid=_TID_B + b"\x00\x00", tid_len=len(_TID_B) + 2),
     INVALID_FIELD_IN_PARAMETER_LIST, 20),
    ("parameter list cuts the TransportID", dict(plen=24 + len(_TID_B) - 4),
     PARAMETER_LIST_LENGTH_ERROR, None),
    ("parameter list shorter than 24", dict(plen=16), PARAMETER_LIST_LENGTH_ERROR, None),
    ("TransportID truncated by its length", dict(tid=_TID_B[:24], tid_len=24), PARAMETER_LIST_LENGTH_ERROR,
     None),
    ("Fibre Channel TransportID", dict(tid=bytes((0x00,)) + _TID_B[1:]), INVALID_FIELD_IN_PARAMETER_LIST, 24),
    ("name no port is known by", dict(tid=iscsi_tid("iqn.1994-05.org.uscst.test:nobody")),
     INVALID_FIELD_IN_PARAMETER_LIST, 24),
]


@pytest.mark.parametrize("case,change,expected,field", _ERRORS, ids=[e[0] for e in _ERRORS])
def test_bad_register_and_move_gets_its_sense_and_changes_nothing(uscstd, case, change, expected,
                                                                  field) -> None:
    srv = uscstd(size="16M")
    a, b, rel = a_reserves(srv)
    kw = {"res_key": KEY_A, "sa_key": KEY_B, "tid": _TID_B, "rel": rel} | change
    r = register_and_move(a, kw.pop("res_key"), kw.pop("sa_key"), kw.pop("tid"), kw.pop("rel"), **kw)
    if expected == RESERVATION_CONFLICT:
        assert (r.status, r.sense) == (RESERVATION_CONFLICT, b""), r
    else:
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, expected), r
        if field is not None:
            assert field_pointer(r.sense) == (False, field)
    assert read_reservation(b) == (1, (KEY_A, 0, WRITE_EXCLUSIVE))
    assert read_keys(b) == (1, [KEY_A])
    assert write1(a) == GOOD and write1(b) == RESERVATION_CONFLICT
    a.logout()
    b.logout()
    srv.assert_healthy()


def test_register_and_move_from_others_than_the_holder_and_of_all_registrants_type(uscstd) -> None:
    srv = uscstd(size="16M")
    a, b = login(srv, INI_A), login(srv, INI_B)
    # unregistered nexus
    assert register_and_move(b, 0, KEY_B, iscsi_tid(*INI_A), 1).status == RESERVATION_CONFLICT
    # registered, but no reservation: INVALID FIELD IN CDB
    assert prout(a, REGISTER, 0, KEY_A).ok
    _, regs = read_full_status(a)
    rel = regs[port(INI_A)]["rel_tgt_id"]
    r = register_and_move(a, KEY_A, KEY_B, _TID_B, rel)
    assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
    assert field_pointer(r.sense)[0]
    # registered, not the holder
    assert prout(b, REGISTER, 0, KEY_B).ok
    assert prout(a, RESERVE, KEY_A, 0, ptype=WRITE_EXCLUSIVE).ok
    assert register_and_move(b, KEY_B, KEY_C, iscsi_tid(*INI_C), rel).status == RESERVATION_CONFLICT
    # an all-registrants reservation cannot be moved, even by a holder
    assert prout(a, 2, KEY_A, 0, ptype=WRITE_EXCLUSIVE).ok                  # RELEASE
    assert prout(a, RESERVE, KEY_A, 0, ptype=EXCLUSIVE_ACCESS_ALL_REGISTRANTS).ok
    r = register_and_move(a, KEY_A, KEY_C, iscsi_tid(*INI_C), rel)
    assert (r.status, r.sense) == (RESERVATION_CONFLICT, b""), r
    assert read_reservation(b) == (2, (0, 0, EXCLUSIVE_ACCESS_ALL_REGISTRANTS))
    assert sorted(read_keys(b)[1]) == sorted([KEY_A, KEY_B])
    a.logout()
    b.logout()
    srv.assert_healthy()
