"""Task set management seen by two real sessions on one LUN (SAM-5 5.3,
5.6, 8.6; SPC-4 7.5.8 control mode page, 5.12.11.2.4 PREEMPT AND ABORT):
TAS, QErr, TST, TASK SET FULL / BUSY, and the aborts PREEMPT AND ABORT
makes.

A command is held outstanding at the target by a WRITE whose R2T the
initiator leaves unanswered (InitialR2T=Yes, no immediate data): the target
has it in its task set, waiting for Data-Out, until the test releases it."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from scst_core.targ import SCST_MAX_DEV_COMMANDS
from tests.initiator import (ATTR_ORDERED, SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION,
                             SAM_STAT_GOOD, SAM_STAT_TASK_SET_FULL, TMF_ABORT_TASK_SET,
                             TMF_CLEAR_TASK_SET, TMF_LUN_RESET, TMF_RSP_COMPLETE, Initiator,
                             TaskAborted, sn_add)

TIMEOUT = 10.0
SAM_STAT_TASK_ABORTED = 0x40
MODE_SENSE6_CONTROL = bytes((0x1A, 0x08, 0x0A, 0, 255, 0))
UA_CLEARED_BY_ANOTHER_INI = (0x2F, 0x00)
UA_MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
UA_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
UA_LUN_RESET = (0x29, 0x03)
PR_REGISTER, PR_PREEMPT, PR_PREEMPT_AND_ABORT = 0x00, 0x04, 0x05


class HoldingInitiator(Initiator):
    """An initiator that can leave a WRITE's R2T unanswered: hold_write()
    returns once the target has asked for the data (the command is then
    in its task set); release() sends the data."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.withheld: dict[int, list] = {}

    def _on_r2t(self, pdu) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or pdu.itt not in self.withheld:
            super()._on_r2t(pdu)
            return
        # Account for it as the base class does (ExpDataSN counts R2Ts),
        # but send nothing yet.
        task.result.r2ts += 1
        task.next_r2t_sn = sn_add(pdu.r2t_sn, 1)
        self.withheld[pdu.itt].append(pdu)

    def submit_held_write(self, lba: int) -> int:
        cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 1, 0)
        itt = self.submit(cdb, data_out=bytes([lba & 0xFF]) * 512, immediate=False)
        self.withheld[itt] = []
        return itt

    def wait_held(self, itts: list[int]) -> None:
        """Pump until every one of itts has had its R2T (bounded)."""
        deadline = time.monotonic() + TIMEOUT
        while any(not self.withheld[i] for i in itts):
            self._pump(deadline)

    def hold_write(self, lba: int) -> int:
        itt = self.submit_held_write(lba)
        self.wait_held([itt])
        return itt

    def release(self, itt: int) -> None:
        task = self.tasks[itt]
        for pdu in self.withheld.pop(itt):
            off, n = pdu.buffer_offset, pdu.desired_length
            self._send_data_out(task, pdu.ttt, off, off + n)

    def is_done(self, itt: int) -> bool:
        """Has the task been answered? A ping first, so any response the
        target queued before it has arrived."""
        self.nop_out()
        return self.tasks[itt].done

    def forget(self, itt: int) -> None:
        """A task the target aborted silently: stop tracking it."""
        self.withheld.pop(itt, None)
        del self.tasks[itt]


def _login(host: str, port: int, iqn: str, name: str) -> HoldingInitiator:
    ini = HoldingInitiator(host=host, port=port, initiator_name=name, timeout=TIMEOUT)
    ini.connect()
    ini.login(iqn)
    return ini


def _ua(ini: Initiator) -> tuple[int, int] | None:
    r = ini.test_unit_ready()
    return r.asc_ascq if r.sense_key == 0x06 else None


def _uas(ini: Initiator) -> list[tuple[int, int]]:
    """Every pending UA, oldest first (bounded)."""
    out = []
    for _ in range(8):
        ua = _ua(ini)
        if ua is None:
            return out
        out.append(ua)
    pytest.fail(f"unit attentions never stop: {out}")


def _control(ini: Initiator) -> bytearray:
    return bytearray(ini.scsi(MODE_SENSE6_CONTROL, read_len=255).check().data[4:16])


def _select_control(ini: Initiator, *, tas: bool | None = None, qerr: int | None = None,
                    tst: int | None = None):
    page = _control(ini)
    page[0] &= 0x7F                          # PS is reserved in MODE SELECT
    if tst is not None:
        page[2] = page[2] & 0x1F | tst << 5
    if qerr is not None:
        page[3] = page[3] & ~0x06 | qerr << 1
    if tas is not None:
        page[5] = page[5] & ~0x40 | (0x40 if tas else 0)
    return ini.scsi(bytes((0x15, 0x10, 0, 0, 16, 0)), data_out=bytes(4) + bytes(page))


@pytest.fixture
def two(uscstd_server):
    a = _login(uscstd_server.host, uscstd_server.port, uscstd_server.iqn, "iqn.2026-11.test:ts-a")
    b = _login(uscstd_server.host, uscstd_server.port, uscstd_server.iqn, "iqn.2026-11.test:ts-b")
    _uas(a)
    _uas(b)
    yield a, b
    for ini in (a, b):
        ini.logout()
        ini.close()


def _setup(a: Initiator, b: Initiator, **control) -> None:
    """A sets control page fields; both sessions then start without UAs
    (B had MODE PARAMETERS CHANGED if a value changed)."""
    _select_control(a, **control).check()
    assert _uas(b) in ([], [UA_MODE_PARAMETERS_CHANGED])
    assert _uas(a) == []


# -- the control page itself ----------------------------------------------------

def test_control_page_makes_tst_qerr_tas_changeable_and_rejects_reserved_values(two):
    a, _ = two
    changeable = bytearray(a.scsi(bytes((0x1A, 0x08, 0x4A, 0, 255, 0)),
                                  read_len=255).check().data[4:16])
    assert changeable[2] & 0xE0 == 0x20             # TST: 000b or 001b
    assert changeable[3] & 0x06 == 0x06             # QERR
    assert changeable[5] & 0x40                     # TAS
    for bad in (dict(qerr=2), dict(tst=2), dict(tst=3)):
        r = _select_control(a, **bad)
        assert r.status == SAM_STAT_CHECK_CONDITION and r.sense_key == 0x05, bad
        assert r.asc_ascq == (0x26, 0x00), bad      # INVALID FIELD IN PARAMETER LIST
    _select_control(a, qerr=3, tas=True, tst=1).check()
    page = _control(a)
    assert (page[2] >> 5, (page[3] >> 1) & 3, bool(page[5] & 0x40)) == (1, 3, True)


def test_extended_inquiry_reports_the_task_attributes_honoured(two):
    a, _ = two
    data = a.inquiry(evpd=True, page=0x86).check().data
    assert data[5] & 0x07 == 0x07                   # HEADSUP, ORDSUP, SIMPSUP


# -- TAS ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [TMF_CLEAR_TASK_SET, TMF_LUN_RESET])
def test_tas1_other_nexus_task_gets_task_aborted_own_is_silent(two, fn):
    a, b = two
    _setup(a, b, tas=True)
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    assert a.task_mgmt(fn) == TMF_RSP_COMPLETE
    # The TMF answer follows the aborted tasks, so B's status is on the wire.
    r = b.wait(theirs)
    assert r.status == SAM_STAT_TASK_ABORTED and not r.sense
    assert not a.is_done(mine)                      # the issuer's own: no status
    with pytest.raises(TaskAborted):
        a.wait(mine)
    if fn == TMF_LUN_RESET:
        assert _uas(b) == [UA_LUN_RESET] and _uas(a) == [UA_LUN_RESET]
    else:
        assert _uas(b) == [] and _uas(a) == []
    b.write10(2, b"\x02" * 512).check()             # the LUN goes on working


@pytest.mark.parametrize("fn", [TMF_CLEAR_TASK_SET, TMF_LUN_RESET])
def test_tas0_other_nexus_task_is_aborted_silently(two, fn):
    a, b = two
    _setup(a, b, tas=False)
    theirs = b.hold_write(2)
    assert a.task_mgmt(fn) == TMF_RSP_COMPLETE
    assert not b.is_done(theirs)
    b.forget(theirs)
    # CLEAR TASK SET says so with COMMANDS CLEARED BY ANOTHER INITIATOR; a
    # reset with its own UA.
    want = [UA_CLEARED_BY_ANOTHER_INI] if fn == TMF_CLEAR_TASK_SET else [UA_LUN_RESET]
    assert _uas(b) == want
    b.write10(2, b"\x02" * 512).check()


def test_abort_task_set_by_the_own_nexus_is_silent_even_with_tas1(two):
    a, b = two
    _setup(a, b, tas=True)
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    assert a.task_mgmt(TMF_ABORT_TASK_SET) == TMF_RSP_COMPLETE
    assert not a.is_done(mine)
    with pytest.raises(TaskAborted):
        a.wait(mine)
    b.release(theirs)                               # the other nexus is untouched
    assert b.wait(theirs).status == SAM_STAT_GOOD
    assert _uas(b) == []


# -- QErr --------------------------------------------------------------------------

def _fail(ini: Initiator) -> None:
    """A command that ends with CHECK CONDITION (LBA out of range)."""
    r = ini.scsi(struct.pack(">BBIBHB", 0x28, 0, 0xFFFFFF00, 0, 1, 0), read_len=512)
    assert r.status == SAM_STAT_CHECK_CONDITION and r.sense_key == 0x05


@pytest.mark.parametrize("tas", [False, True])
def test_qerr01_check_condition_aborts_every_task_of_the_task_set(two, tas):
    a, b = two
    _setup(a, b, qerr=1, tas=tas)
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    _fail(a)
    assert not a.is_done(mine)                      # own nexus: silent
    a.forget(mine)
    if tas:
        assert b.wait(theirs).status == SAM_STAT_TASK_ABORTED
        assert _uas(b) == []
    else:
        assert not b.is_done(theirs)
        b.forget(theirs)
        assert _uas(b) == [UA_CLEARED_BY_ANOTHER_INI]
    assert _uas(a) == []
    a.write10(1, b"\x01" * 512).check()


def test_qerr11_check_condition_aborts_only_its_own_nexus_tasks(two):
    a, b = two
    _setup(a, b, qerr=3)
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    _fail(a)
    assert not a.is_done(mine)
    a.forget(mine)
    b.release(theirs)
    assert b.wait(theirs).status == SAM_STAT_GOOD
    assert _uas(b) == []


def test_qerr00_check_condition_leaves_other_tasks_alone(two):
    a, b = two
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    _fail(a)
    for ini, itt in ((a, mine), (b, theirs)):
        ini.release(itt)
        assert ini.wait(itt).status == SAM_STAT_GOOD


# -- TST ---------------------------------------------------------------------------

@pytest.mark.parametrize("tst", [0, 1])
def test_ordered_waits_for_other_nexus_tasks_only_with_one_task_set(two, tst):
    a, b = two
    if tst:
        _setup(a, b, tst=1)
    mine = a.hold_write(1)
    ordered = b.submit(bytes(6), attr=ATTR_ORDERED)          # TEST UNIT READY
    if tst:
        assert b.wait(ordered).status == SAM_STAT_GOOD       # its own task set is empty
    else:
        assert not b.is_done(ordered)                        # behind A's WRITE
    a.release(mine)
    assert a.wait(mine).status == SAM_STAT_GOOD
    if not tst:
        assert b.wait(ordered).status == SAM_STAT_GOOD


def test_tst1_clear_task_set_and_qerr01_stay_within_the_nexus(two):
    a, b = two
    _setup(a, b, tst=1, qerr=1, tas=True)
    theirs = b.hold_write(2)
    mine = a.hold_write(1)
    assert a.task_mgmt(TMF_CLEAR_TASK_SET) == TMF_RSP_COMPLETE
    assert not a.is_done(mine)
    with pytest.raises(TaskAborted):
        a.wait(mine)
    mine = a.hold_write(1)
    _fail(a)
    assert not a.is_done(mine)
    a.forget(mine)
    b.release(theirs)
    assert b.wait(theirs).status == SAM_STAT_GOOD
    assert _uas(b) == []


# -- TASK SET FULL / BUSY --------------------------------------------------------------

IQN_TSF = "iqn.2026-11.org.uscst:tsf"


@pytest.fixture
def big_window(uscstd, tmp_path: Path):
    """A target whose sessions may queue more than the device holds."""
    cfg = tmp_path / "tsf.conf"
    cfg.write_text(f"""HANDLER vdisk_nullio {{
\tDEVICE null0 {{
\t\tsize 64M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN_TSF} {{
\t\tQueuedCommands {2 * SCST_MAX_DEV_COMMANDS}
\t\tLUN 0 null0
\t\tenabled 1
\t}}
}}
""")
    srv = uscstd("--config", str(cfg), disk=None, size=None, iqn=IQN_TSF)
    a = _login(srv.host, srv.port, IQN_TSF, "iqn.2026-11.test:tsf-a")
    b = _login(srv.host, srv.port, IQN_TSF, "iqn.2026-11.test:tsf-b")
    _uas(a)
    _uas(b)
    yield a, b
    for ini in (a, b):
        ini.logout()
        ini.close()


def test_full_task_set_answers_busy_or_task_set_full_and_recovers(big_window):
    a, b = big_window
    held = [a.submit_held_write(i) for i in range(SCST_MAX_DEV_COMMANDS)]
    a.wait_held(held)
    # B has nothing in the task set: BUSY; A has: TASK SET FULL. A UA
    # would not be reported (nor consumed) by a command turned away.
    assert b.test_unit_ready().status == SAM_STAT_BUSY
    assert a.test_unit_ready().status == SAM_STAT_TASK_SET_FULL
    a.release(held[0])
    assert a.wait(held[0]).status == SAM_STAT_GOOD
    assert b.test_unit_ready().status == SAM_STAT_GOOD     # room for one again
    for itt in held[1:]:
        a.release(itt)
    for itt in held[1:]:
        assert a.wait(itt).status == SAM_STAT_GOOD
    assert a.test_unit_ready().status == SAM_STAT_GOOD
    assert b.test_unit_ready().status == SAM_STAT_GOOD


# -- PREEMPT AND ABORT -------------------------------------------------------------------

def _prout(ini: Initiator, sa: int, key: int, sa_key: int, ptype: int = 0):
    cdb = bytes((0x5F, sa, ptype, 0, 0)) + (24).to_bytes(4, "big") + b"\0"
    return ini.scsi(cdb, data_out=struct.pack(">QQ8x", key, sa_key))


@pytest.mark.parametrize("sa, tas", [(PR_PREEMPT, False), (PR_PREEMPT_AND_ABORT, False),
                                     (PR_PREEMPT_AND_ABORT, True)])
def test_preempt_and_abort_aborts_the_preempted_nexus_commands(two, sa, tas):
    a, b = two
    if tas:
        _setup(a, b, tas=True)
    _prout(a, PR_REGISTER, 0, 0xA).check()
    _prout(b, PR_REGISTER, 0, 0xB).check()
    mine = a.hold_write(1)
    theirs = b.hold_write(2)
    _prout(a, sa, 0xA, 0xB, ptype=0x01).check()
    if sa == PR_PREEMPT:
        b.release(theirs)                           # a plain PREEMPT aborts nothing
        assert b.wait(theirs).status == SAM_STAT_GOOD
        assert _uas(b) == [UA_REGISTRATIONS_PREEMPTED]
    elif tas:
        assert b.wait(theirs).status == SAM_STAT_TASK_ABORTED
        assert _uas(b) == [UA_REGISTRATIONS_PREEMPTED]
    else:
        assert not b.is_done(theirs)
        b.forget(theirs)
        assert _uas(b) == [UA_REGISTRATIONS_PREEMPTED, UA_CLEARED_BY_ANOTHER_INI]
    a.release(mine)                                 # the preempting nexus keeps its own
    assert a.wait(mine).status == SAM_STAT_GOOD
    assert _uas(a) == []
