"""Persistent reservations and SPC-2 RESERVE/RELEASE (scst_core.pres),
driven through a nullio device with real scst_session/scst_tgt objects
standing for two I_T nexuses."""
from __future__ import annotations

import struct

import pytest

from scst_core import pres
from scst_core.scst import scst_session, scst_tgt, scst_tgt_template
from tests.vdisk.conftest import kernel, make_dev, run_cmd  # noqa: F401 (fixture)
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
