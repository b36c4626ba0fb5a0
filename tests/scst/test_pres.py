"""Persistent reservations and SPC-2 RESERVE/RELEASE (scst_core.pres),
driven through a nullio device with real scst_session/scst_tgt objects
standing for two I_T nexuses."""
from __future__ import annotations

import struct

import pytest

from scst_core import pres
from scst_core.scst import scst_session, scst_tgt, scst_tgt_template
from tests.vdisk.conftest import make_dev, run_cmd
from vdisk.nullio import nullio_devtype

GOOD = 0
CONFLICT = 0x18


class _Isid:
    def __init__(self, isid: bytes) -> None:
        self.isid = isid


@pytest.fixture
def setup():
    tgt = scst_tgt(scst_tgt_template("t"), "iqn.t")
    a = scst_session(tgt, "iqn.a", tgt_priv=_Isid(b"\x00\x02\x3d\x00\x00\x01"))
    b = scst_session(tgt, "iqn.b", tgt_priv=_Isid(b"\x00\x02\x3d\x00\x00\x02"))
    dev = make_dev(nullio_devtype, "pr0", {"size": "1M"})
    yield dev, a, b
    dev.handler.detach(dev)


def cmd_as(dev, sess, cdb, data=b""):
    """One command on the nexus of sess: parse (the conflict check) and exec."""
    return run_cmd(dev, cdb, data, sess=sess)


def prout(sa, res_key, sa_key, ptype=0, aptpl=0):
    data = struct.pack(">QQ", res_key, sa_key) + bytes(4) + bytes((aptpl,)) + bytes(3)
    return [0x5F, sa, ptype, 0, 0, 0, 0, 0, 24, 0], data


def prin(sa):
    return [0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0]


def read10():
    return [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]


def write10():
    return [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]


def test_register_reserve_write_exclusive_blocks_other_writers_only(setup):
    dev, a, b = setup
    assert cmd_as(dev, a, *prout(0, 0, 0xA)).status == GOOD
    assert cmd_as(dev, a, *prout(1, 0xA, 0, ptype=pres.TYPE_WRITE_EXCLUSIVE)).status == GOOD
    assert cmd_as(dev, b, read10()).status == GOOD
    assert cmd_as(dev, b, write10(), bytes(512)).status == CONFLICT
    assert cmd_as(dev, a, write10(), bytes(512)).status == GOOD
    keys = cmd_as(dev, b, prin(0)).data
    assert struct.unpack(">II", keys[:8]) == (1, 8) and keys[8:16] == struct.pack(">Q", 0xA)
    res = cmd_as(dev, b, prin(1)).data
    assert res[8:16] == struct.pack(">Q", 0xA) and res[21] == pres.TYPE_WRITE_EXCLUSIVE


def test_register_with_wrong_key_conflicts_and_preempt_removes_the_holder(setup):
    dev, a, b = setup
    cmd_as(dev, a, *prout(0, 0, 0xA))
    cmd_as(dev, b, *prout(0, 0, 0xB))
    assert cmd_as(dev, b, *prout(0, 0x99, 0xC)).status == CONFLICT
    cmd_as(dev, a, *prout(1, 0xA, 0, ptype=pres.TYPE_EXCLUSIVE_ACCESS))
    assert cmd_as(dev, b, read10()).status == CONFLICT
    assert cmd_as(dev, b, *prout(4, 0xB, 0xA, ptype=pres.TYPE_EXCLUSIVE_ACCESS)).status == GOOD
    assert cmd_as(dev, b, read10()).status == GOOD
    assert cmd_as(dev, a, read10()).status == CONFLICT
    assert cmd_as(dev, a, *prout(0, 0xA, 0xD)).status == CONFLICT     # a was preempted


def test_all_registrants_reservation_lets_every_registrant_write(setup):
    dev, a, b = setup
    cmd_as(dev, a, *prout(0, 0, 0xA))
    cmd_as(dev, b, *prout(0, 0, 0xB))
    cmd_as(dev, a, *prout(1, 0xA, 0, ptype=pres.TYPE_WRITE_EXCLUSIVE_ALL_REG))
    assert cmd_as(dev, b, write10(), bytes(512)).status == GOOD
    cmd_as(dev, b, *prout(0, 0xB, 0))                                  # b unregisters
    assert cmd_as(dev, b, write10(), bytes(512)).status == CONFLICT


def test_reserve6_conflicts_for_the_other_nexus_until_released(setup):
    dev, a, b = setup
    assert cmd_as(dev, a, [0x16, 0, 0, 0, 0, 0]).status == GOOD
    assert cmd_as(dev, b, [0x16, 0, 0, 0, 0, 0]).status == CONFLICT
    assert cmd_as(dev, b, [0x17, 0, 0, 0, 0, 0]).status == GOOD      # a no-op
    assert cmd_as(dev, b, [0x1A, 0, 0x3F, 0, 0xFF, 0]).status == CONFLICT
    assert cmd_as(dev, b, [0x12, 0, 0, 0, 0xFF, 0]).status == GOOD   # INQUIRY allowed
    assert cmd_as(dev, a, [0x17, 0, 0, 0, 0, 0]).status == GOOD
    assert cmd_as(dev, b, [0x16, 0, 0, 0, 0, 0]).status == GOOD


def test_aptpl_state_survives_detach_and_a_torn_newer_slot_is_ignored(kernel, tmp_path):
    pres.scst_pr_dir = str(tmp_path)
    try:
        def body():
            tgt = scst_tgt(scst_tgt_template("t"), "iqn.t")
            a = scst_session(tgt, "iqn.a", tgt_priv=_Isid(b"\x01" * 6))
            dev = make_dev(nullio_devtype, "prp", {"size": "1M"})
            r1 = cmd_as(dev, a, *prout(0, 0, 0x77, aptpl=1)).status
            r2 = cmd_as(dev, a, *prout(1, 0x77, 0, ptype=pres.TYPE_EXCLUSIVE_ACCESS, aptpl=1)).status
            dev.handler.detach(dev)
            # A torn write of the next slot must not win.
            (tmp_path / "prp.pr1").write_text("uscst-pr 1\nfile_gen 99\nreg 00")
            dev2 = make_dev(nullio_devtype, "prp", {"size": "1M"})
            res = cmd_as(dev2, a, prin(1)).data
            dev2.handler.detach(dev2)
            return r1, r2, res
        r1, r2, res = kernel(body)
    finally:
        pres.scst_pr_dir = None
    assert (r1, r2) == (GOOD, GOOD)
    assert res[8:16] == struct.pack(">Q", 0x77) and res[21] == pres.TYPE_EXCLUSIVE_ACCESS


# ---------------------------------------------------------------- REGISTER AND MOVE

ISID_A = b"\x00\x02\x3d\x00\x00\x01"
ISID_B = b"\x00\x02\x3d\x00\x00\x02"
ILLEGAL_REQUEST = 0x05
INVALID_FIELD_IN_CDB = (ILLEGAL_REQUEST, 0x24, 0x00)
INVALID_FIELD_IN_PARM_LIST = (ILLEGAL_REQUEST, 0x26, 0x00)
PARM_LIST_LENGTH_ERROR = (ILLEGAL_REQUEST, 0x1A, 0x00)


def iscsi_tid(name: str, isid: bytes | None = None) -> bytes:
    """An iSCSI TransportID built by hand (SPC-4 7.6.4.6): format 01b
    name,i,0x<ISID> with an ISID, else format 00b name only."""
    text = (name if isid is None else f"{name},i,0x{isid.hex().upper()}").encode() + b"\x00"
    text = text.ljust(max(20, len(text) + 3 & ~3), b"\x00")
    return bytes((0x45 if isid is not None else 0x05, 0)) + struct.pack(">H", len(text)) + text


def prout_move(res_key, sa_key, tid, rel=1, unreg=0, aptpl=0, tid_len=None, plen=None):
    """PERSISTENT RESERVE OUT, REGISTER AND MOVE (SPC-4 6.16.4 table 217)."""
    tid_len = len(tid) if tid_len is None else tid_len
    data = struct.pack(">QQBBHI", res_key, sa_key, 0, (unreg << 1) | aptpl, rel, tid_len) + tid
    plen = len(data) if plen is None else plen
    return [0x5F, 0x07, 0, 0, 0] + list(struct.pack(">I", plen)) + [0], data[:plen]


def read_full_status(dev, sess):
    d = cmd_as(dev, sess, [0x5E, 3, 0, 0, 0, 0, 0, 0x04, 0, 0]).data
    gen, n = struct.unpack_from(">II", d)
    regs, off = [], 8
    while off < 8 + n:
        tlen = struct.unpack_from(">I", d, off + 20)[0]
        regs.append((struct.unpack_from(">Q", d, off)[0], bool(d[off + 12] & 1), d[off + 13],
                     struct.unpack_from(">H", d, off + 18)[0], d[off + 24:off + 24 + tlen]))
        off += 24 + tlen
    return gen, regs


def reserved_by_a(dev, a, ptype=pres.TYPE_WRITE_EXCLUSIVE):
    assert cmd_as(dev, a, *prout(0, 0, 0xA)).status == GOOD
    assert cmd_as(dev, a, *prout(1, 0xA, 0, ptype=ptype)).status == GOOD


def test_register_and_move_registers_the_named_port_and_hands_it_the_reservation(setup):
    dev, a, b = setup
    reserved_by_a(dev, a)
    assert cmd_as(dev, b, write10(), bytes(512)).status == CONFLICT
    r = cmd_as(dev, a, *prout_move(0xA, 0xB, iscsi_tid("iqn.b", ISID_B)))
    assert (r.status, r.sense) == (GOOD, b"")
    res = cmd_as(dev, b, prin(1)).data
    assert struct.unpack(">II", res[:8]) == (2, 16)          # REGISTER 1, MOVE 2
    assert res[8:16] == struct.pack(">Q", 0xB) and res[21] == pres.TYPE_WRITE_EXCLUSIVE
    assert cmd_as(dev, b, write10(), bytes(512)).status == GOOD
    assert cmd_as(dev, a, write10(), bytes(512)).status == CONFLICT
    assert cmd_as(dev, a, read10()).status == GOOD
    gen, regs = read_full_status(dev, a)
    tid_a = pres.scst_iscsi_transport_id("iqn.a", ISID_A)
    tid_b = pres.scst_iscsi_transport_id("iqn.b", ISID_B)
    assert (gen, regs) == (2, [(0xA, False, 0, 1, tid_a), (0xB, True, pres.TYPE_WRITE_EXCLUSIVE, 1, tid_b)])
    # A, still registered but no longer the holder, may not move it back
    assert cmd_as(dev, a, *prout_move(0xA, 0xA, iscsi_tid("iqn.a", ISID_A))).status == CONFLICT


def test_register_and_move_with_unreg_unregisters_the_source(setup):
    dev, a, b = setup
    reserved_by_a(dev, a, pres.TYPE_EXCLUSIVE_ACCESS)
    assert cmd_as(dev, a, *prout_move(0xA, 0xB, iscsi_tid("iqn.b", ISID_B), unreg=1)).status == GOOD
    keys = cmd_as(dev, b, prin(0)).data
    assert struct.unpack(">II", keys[:8]) == (2, 8) and keys[8:16] == struct.pack(">Q", 0xB)
    assert cmd_as(dev, a, read10()).status == CONFLICT
    assert cmd_as(dev, b, read10()).status == GOOD
    assert cmd_as(dev, a, *prout(0, 0xA, 0xA1)).status == CONFLICT    # A is not registered


def test_register_and_move_to_a_port_not_logged_in_applies_when_it_logs_in(setup):
    dev, a, b = setup
    reserved_by_a(dev, a)
    isid_c = bytes.fromhex("80123456789a")
    assert cmd_as(dev, a, *prout_move(0xA, 0xC, iscsi_tid("IQN.C", isid_c))).status == GOOD
    assert cmd_as(dev, a, write10(), bytes(512)).status == CONFLICT
    assert cmd_as(dev, b, write10(), bytes(512)).status == CONFLICT
    c = scst_session(a.tgt, "iqn.c", tgt_priv=_Isid(isid_c))
    assert cmd_as(dev, c, write10(), bytes(512)).status == GOOD
    # another ISID of the same initiator is another port: not the holder
    c2 = scst_session(a.tgt, "iqn.c", tgt_priv=_Isid(b"\x80\x12\x34\x56\x78\x9b"))
    assert cmd_as(dev, c2, write10(), bytes(512)).status == CONFLICT


def test_register_and_move_by_name_only_picks_the_one_known_port_and_replaces_its_key(setup):
    dev, a, b = setup
    reserved_by_a(dev, a)
    assert cmd_as(dev, b, *prout(0, 0, 0xB0)).status == GOOD
    r = cmd_as(dev, a, *prout_move(0xA, 0xB1, iscsi_tid("iqn.b")))
    assert (r.status, r.sense) == (GOOD, b"")
    gen, regs = read_full_status(dev, b)
    assert gen == 3
    assert regs[1] == (0xB1, True, pres.TYPE_WRITE_EXCLUSIVE, 1,
                       pres.scst_iscsi_transport_id("iqn.b", ISID_B))
    assert cmd_as(dev, b, write10(), bytes(512)).status == GOOD


def test_register_and_move_by_name_only_is_refused_when_two_ports_have_that_name(setup):
    dev, a, b = setup
    reserved_by_a(dev, a)
    b2 = scst_session(a.tgt, "iqn.b", tgt_priv=_Isid(b"\x00\x02\x3d\x00\x00\x03"))
    assert cmd_as(dev, b, *prout(0, 0, 0xB0)).status == GOOD
    assert cmd_as(dev, b2, *prout(0, 0, 0xB2)).status == GOOD
    r = cmd_as(dev, a, *prout_move(0xA, 0xB1, iscsi_tid("iqn.b")))
    assert r.key_asc_ascq == INVALID_FIELD_IN_PARM_LIST and r.field_pointer[:2] == (False, 24)
    assert cmd_as(dev, a, *prout_move(0xA, 0xB1, iscsi_tid("iqn.b", ISID_B))).status == GOOD


def _tid_with(tid: bytes, off: int, val: bytes) -> bytes:
    return tid[:off] + val + tid[off + len(val):]


_TID_B = iscsi_tid("iqn.b", ISID_B)

# (case, PR OUT arguments from A's nexus, expected status or sense, field pointer)
_MOVE_ERRORS = [
    ("wrong reservation key", dict(res_key=0xAA), CONFLICT, None),
    ("service action key zero", dict(sa_key=0), INVALID_FIELD_IN_PARM_LIST, 8),
    ("destination is the source port", dict(tid=iscsi_tid("iqn.a", ISID_A)), INVALID_FIELD_IN_PARM_LIST, 24),
    ("unknown relative target port", dict(rel=7), INVALID_FIELD_IN_PARM_LIST, 18),
    ("TransportID length below 24", dict(tid=_TID_B[:20], tid_len=20), INVALID_FIELD_IN_PARM_LIST, 20),
    ("TransportID length not a multiple of 4", dict(tid=_TID_B + b"\x00\x00", tid_len=len(_TID_B) + 2),
     INVALID_FIELD_IN_PARM_LIST, 20),
    ("parameter list shorter than the TransportID", dict(plen=24 + len(_TID_B) - 4),
     PARM_LIST_LENGTH_ERROR, None),
    ("TransportID truncated by its length field", dict(tid=_TID_B[:24], tid_len=24),
     PARM_LIST_LENGTH_ERROR, None),
    ("parameter list shorter than 24", dict(plen=20), PARM_LIST_LENGTH_ERROR, None),
    ("not an iSCSI TransportID", dict(tid=_tid_with(_TID_B, 0, b"\x46")), INVALID_FIELD_IN_PARM_LIST, 24),
    ("reserved format code", dict(tid=_tid_with(_TID_B, 0, b"\x85")), INVALID_FIELD_IN_PARM_LIST, 24),
    ("ISID not hexadecimal", dict(tid=_tid_with(_TID_B, 4 + len("iqn.b,i,0x"), b"zz")),
     INVALID_FIELD_IN_PARM_LIST, 24 + 4 + len("iqn.b,i,0x")),
    ("no separator in a format 01b TransportID", dict(tid=_tid_with(iscsi_tid("iqn.b"), 0, b"\x45")),
     INVALID_FIELD_IN_PARM_LIST, 28),
    ("name no port is known by", dict(tid=iscsi_tid("iqn.nobody")), INVALID_FIELD_IN_PARM_LIST, 24),
    ("APTPL without a state directory", dict(aptpl=1), INVALID_FIELD_IN_PARM_LIST, 17),
]


@pytest.mark.parametrize("case,args,expected,field", _MOVE_ERRORS, ids=[c[0] for c in _MOVE_ERRORS])
def test_register_and_move_rejects_a_bad_request_and_changes_nothing(setup, case, args, expected, field):
    dev, a, b = setup
    reserved_by_a(dev, a)
    kw = dict(res_key=0xA, sa_key=0xB, tid=_TID_B) | args
    r = cmd_as(dev, a, *prout_move(kw.pop("res_key"), kw.pop("sa_key"), kw.pop("tid"), **kw))
    if expected == CONFLICT:
        assert (r.status, r.sense) == (CONFLICT, b"")
    else:
        assert r.key_asc_ascq == expected, r.sense.hex()
        if field is not None:
            assert r.field_pointer[:2] == (False, field)
    gen, regs = read_full_status(dev, b)
    assert (gen, [(k, h) for k, h, *_ in regs]) == (1, [(0xA, True)])


def test_register_and_move_is_refused_to_nexuses_other_than_the_holder(setup):
    dev, a, b = setup
    tid_a = iscsi_tid("iqn.a", ISID_A)
    # unregistered, and no reservation either
    assert cmd_as(dev, b, *prout_move(0, 0xB, tid_a)).status == CONFLICT
    # registered, no reservation: ILLEGAL REQUEST, INVALID FIELD IN CDB
    assert cmd_as(dev, a, *prout(0, 0, 0xA)).status == GOOD
    r = cmd_as(dev, a, *prout_move(0xA, 0xB, _TID_B))
    assert r.key_asc_ascq == INVALID_FIELD_IN_CDB and r.field_pointer[0]
    # registered, not the holder
    assert cmd_as(dev, b, *prout(0, 0, 0xB)).status == GOOD
    assert cmd_as(dev, a, *prout(1, 0xA, 0, ptype=pres.TYPE_EXCLUSIVE_ACCESS)).status == GOOD
    assert cmd_as(dev, b, *prout_move(0xB, 0xB, tid_a)).status == CONFLICT
    assert cmd_as(dev, b, *prout_move(0xB, 0xB, tid_a)).sense == b""


@pytest.mark.parametrize("ptype", [pres.TYPE_WRITE_EXCLUSIVE_ALL_REG, pres.TYPE_EXCLUSIVE_ACCESS_ALL_REG])
def test_register_and_move_of_an_all_registrants_reservation_conflicts(setup, ptype):
    dev, a, b = setup
    reserved_by_a(dev, a, ptype)
    assert cmd_as(dev, a, *prout_move(0xA, 0xB, _TID_B)).status == CONFLICT
    res = cmd_as(dev, b, prin(1)).data
    assert res[21] == ptype


def test_register_and_move_with_aptpl_survives_detach(kernel, tmp_path):
    pres.scst_pr_dir = str(tmp_path)
    try:
        def body():
            tgt = scst_tgt(scst_tgt_template("t"), "iqn.t")
            a = scst_session(tgt, "iqn.a", tgt_priv=_Isid(ISID_A))
            b = scst_session(tgt, "iqn.b", tgt_priv=_Isid(ISID_B))
            dev = make_dev(nullio_devtype, "prm", {"size": "1M"})
            reserved_by_a(dev, a, pres.TYPE_EXCLUSIVE_ACCESS)
            r = cmd_as(dev, a, *prout_move(0xA, 0xB, _TID_B, unreg=1, aptpl=1)).status
            dev.handler.detach(dev)
            dev2 = make_dev(nullio_devtype, "prm", {"size": "1M"})
            out = r, read_full_status(dev2, b), cmd_as(dev2, b, read10()).status, \
                cmd_as(dev2, a, read10()).status
            dev2.handler.detach(dev2)
            return out
        r, (gen, regs), read_b, read_a = kernel(body)
    finally:
        pres.scst_pr_dir = None
    assert r == GOOD
    assert (gen, regs) == (2, [(0xB, True, pres.TYPE_EXCLUSIVE_ACCESS, 1,
                                pres.scst_iscsi_transport_id("iqn.b", ISID_B))])
    assert (read_b, read_a) == (GOOD, CONFLICT)
