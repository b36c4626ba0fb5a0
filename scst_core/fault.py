"""fail_scsi_cmd: a fault point on SCSI commands, for initiator developers.

No SCST twin: SCST has no command-level fault injection. It is declared
the kernel way (DECLARE_FAULT_ATTR, as drivers declare fail_make_request or
fail_mmc_request) and driven like every point: debug/fail_scsi_cmd/ in the
live tree, --fault, USCST_FAULTS, tools/testing.py.

A command is eligible when its opcode is in `op` (READ, WRITE, ANY or hex
opcodes) and its LUN is `lun` (-1: any); the point's own rules (interval,
times, probability, seed) then pick which eligible commands fail:

- fail the 3rd WRITE with MEDIUM ERROR at its first LBA:
  op=WRITE,interval=3,times=1,probability=100,status=CHECK_CONDITION,sense=03/0C/00
- answer TASK SET FULL to the next 4 commands:
  op=ANY,times=4,probability=100,status=TASK_SET_FULL
- delay every READ by 50 ms: op=READ,times=-1,probability=100,status=delay,delay-ms=50

Contexts: scst_cmd_fault() is called by the state machine as the command is
about to reach its device, in whatever context that is; a delay sleeps
only in task context outside atomic sections (elsewhere it is skipped).
"""
from __future__ import annotations

from kshim.fault_inject import DECLARE_FAULT_ATTR, should_fail
from kshim.sched import in_atomic, in_task
from kshim.timer import msleep
from scst_core.const import (SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION,
                             SAM_STAT_RESERVATION_CONFLICT, SAM_STAT_TASK_SET_FULL)
from scst_core.lib import scst_set_cmd_error, scst_set_cmd_error_status
from scst_core.scst import scst_cmd

_READ_OPS = frozenset((0x08, 0x28, 0xA8, 0x88))
_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93))
_STATUS = {"CHECK_CONDITION": SAM_STAT_CHECK_CONDITION, "BUSY": SAM_STAT_BUSY,
           "TASK_SET_FULL": SAM_STAT_TASK_SET_FULL,
           "RESERVATION_CONFLICT": SAM_STAT_RESERVATION_CONFLICT}

fail_scsi_cmd = DECLARE_FAULT_ATTR("fail_scsi_cmd", {
    "op": (str, "ANY", None),
    "lun": (int, -1, None),
    "status": (str, "CHECK_CONDITION", tuple(_STATUS) + ("delay",)),
    "sense": (str, "03/11/00", None),
    "info": (str, "first-lba", ("first-lba", "none")),
    "delay-ms": (int, 50, None),
})


def _op_matches(spec: str, op: int) -> bool:
    for word in spec.replace(",", " ").split():
        w = word.upper()
        if w == "ANY" or (w == "READ" and op in _READ_OPS) or (w == "WRITE" and op in _WRITE_OPS):
            return True
        if w.startswith("0X") and int(w, 16) == op:
            return True
    return False


def _sense(text: str) -> tuple[int, int, int] | None:
    parts = text.split("/")
    if len(parts) != 3:
        return None
    try:
        key, asc, ascq = (int(p, 16) for p in parts)
    except ValueError:
        return None
    return key & 0x0F, asc & 0xFF, ascq & 0xFF


def _set_info(cmd: scst_cmd, info: int) -> None:
    """VALID and the INFORMATION field of the fixed-format sense just set."""
    sense = cmd.sense
    if sense is not None and cmd.sense_valid_len and sense[0] & 0x7F in (0x70, 0x71):
        sense[0] |= 0x80
        sense[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")


def scst_cmd_fault(cmd: scst_cmd) -> bool:
    """Should cmd fail (or wait) here? True: cmd's status is set and it
    must not reach its device. A delay returns False after the sleep.
    A command is looked at once, however often it passes this state."""
    cmd.fault_checked = True
    p = fail_scsi_cmd.params
    op = cmd.cdb[0] if cmd.cdb else -1
    if not _op_matches(p["op"], op) or (p["lun"] >= 0 and cmd.lun != p["lun"]):
        return False
    if not should_fail(fail_scsi_cmd, 1):
        return False
    status = p["status"]
    if status == "delay":
        if in_task() and not in_atomic():
            msleep(p["delay-ms"])
        return False
    if status != "CHECK_CONDITION":
        scst_set_cmd_error_status(cmd, _STATUS[status])
        return True
    scst_set_cmd_error(cmd, _sense(p["sense"]) or (0x03, 0x11, 0x00))
    if p["info"] == "first-lba":
        _set_info(cmd, cmd.lba)
    return True
