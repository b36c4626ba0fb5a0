"""Unit attention conditions: queue one on an I_T_L nexus, report it on the
next command, clear the ones REPORT LUNS and REQUEST SENSE consume.

Twin of the UA parts of scst/src/scst_lib.c (scst_check_set_UA,
scst_alloc_set_UA, scst_report_luns_changed, scst_capacity_data_changed)
and of scst_targ.c's scst_set_pending_UA.

Contexts: every function here may be called from any context (they take
only dev_lock with bh disabled and never sleep). The management layer
queues UAs from task context; scst_check_ua runs on the command path.

Hooks the core needs (scst_core.targ, owned by its maintainer):
- scst_cmd_init_done, after the LUN lookup (cmd.tgt_dev set) and while the
  command is still in SCST_CMD_STATE_PARSE:
      if scst_check_ua(cmd):
          cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
- vdisk.vdisk.vdisk_pending_sense_hook = scst_ua_pending_sense, so REQUEST
  SENSE returns (and clears) a pending UA as SPC-4 5.12 asks.

Differs from SCST: a UA is its (key, asc, ascq) triple only, built into
sense at report time in the device's sense format; no per-UA flags (global
UA, "UA already reported") and no SCST_MAX_UA overflow UA: a nexus keeps
at most SCST_MAX_UA entries and drops a duplicate.

Tracepoint: scst_ua when a UA is queued, reported or cleared.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kshim.spinlock import spin_lock_bh, spin_unlock_bh
from kshim.tracepoint import TRACE_EVENT
from scst_core.const import (INQUIRY, REPORT_LUNS, REQUEST_SENSE, SCST_SENSE_BUFFERSIZE,
                             scst_sense_capacity_data_changed_UA,
                             scst_sense_reported_luns_data_changed_UA)
from scst_core.lib import scst_build_sense, scst_set_cmd_error

if TYPE_CHECKING:
    from scst_core.scst import scst_acg, scst_cmd, scst_device, scst_session, scst_tgt_dev

SCST_MAX_UA = 16

# Commands that neither report nor clear a pending UA (SAM-5 5.14, SPC-4
# 6.33: REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED, below).
_UA_TRANSPARENT_OPS = frozenset((INQUIRY, REPORT_LUNS, REQUEST_SENSE))

ua_stats = {"queued": 0, "reported": 0, "cleared": 0}

# what: queued, reported or cleared; sense is "key/asc/ascq" in hex
trace_scst_ua = TRACE_EVENT("scst_ua", ("sess", "lun", "what", "sense"))


def _trace_ua(tgt_dev: "scst_tgt_dev", what: str, sense: tuple[int, int, int]) -> None:
    trace_scst_ua(tgt_dev.sess.initiator_name, tgt_dev.lun, what,
                  "{:x}/{:02x}/{:02x}".format(*sense))


def scst_queue_ua(tgt_dev: "scst_tgt_dev", sense: tuple[int, int, int]) -> None:
    """Establish a unit attention with this sense on one I_T_L nexus."""
    lock = tgt_dev.dev.dev_lock
    spin_lock_bh(lock)
    lst = tgt_dev.UA_list
    new = sense not in lst and len(lst) < SCST_MAX_UA
    if new:
        lst.append(sense)
        ua_stats["queued"] += 1
    spin_unlock_bh(lock)
    if new and trace_scst_ua.enabled:
        _trace_ua(tgt_dev, "queued", sense)
    report_aen = tgt_dev.sess.tgt.tgtt.report_aen
    if new and report_aen is not None:
        # Tell the initiator now too; the UA stays for its next command.
        buf = bytearray(SCST_SENSE_BUFFERSIZE)
        n = scst_build_sense(buf, tgt_dev.dev.d_sense, *sense)
        report_aen(tgt_dev, bytes(buf[:n]))


def scst_queue_ua_sess(sess: "scst_session", sense: tuple[int, int, int]) -> None:
    """On every LUN the session sees."""
    for tgt_dev in list(sess.sess_tgt_dev_list.values()):
        scst_queue_ua(tgt_dev, sense)


def scst_report_luns_changed(acg: "scst_acg") -> None:
    """The LUN inventory of acg changed: tell every session in the group."""
    for sess in list(acg.acg_sess_list):
        scst_queue_ua_sess(sess, scst_sense_reported_luns_data_changed_UA)


def scst_capacity_data_changed(dev: "scst_device") -> None:
    """dev's size changed: tell every nexus that sees it."""
    for tgt_dev in list(dev.dev_tgt_dev_list):
        scst_queue_ua(tgt_dev, scst_sense_capacity_data_changed_UA)


def scst_clear_ua(tgt_dev: "scst_tgt_dev", sense: tuple[int, int, int]) -> bool:
    lock = tgt_dev.dev.dev_lock
    spin_lock_bh(lock)
    try:
        if sense in tgt_dev.UA_list:
            tgt_dev.UA_list.remove(sense)
            ua_stats["cleared"] += 1
            if trace_scst_ua.enabled:
                _trace_ua(tgt_dev, "cleared", sense)
            return True
        return False
    finally:
        spin_unlock_bh(lock)


def _pop_ua(tgt_dev: "scst_tgt_dev") -> tuple[int, int, int] | None:
    lock = tgt_dev.dev.dev_lock
    spin_lock_bh(lock)
    try:
        return tgt_dev.UA_list.pop(0) if tgt_dev.UA_list else None
    finally:
        spin_unlock_bh(lock)


def scst_check_ua(cmd: "scst_cmd") -> bool:
    """Report the oldest pending UA of the command's nexus as CHECK
    CONDITION; True if the command is thereby finished (sense set). REPORT
    LUNS clears REPORTED LUNS DATA HAS CHANGED on every LUN of the session."""
    op = cmd.cdb[0]
    if op in _UA_TRANSPARENT_OPS:
        if op == REPORT_LUNS:
            for tgt_dev in list(cmd.sess.sess_tgt_dev_list.values()):
                scst_clear_ua(tgt_dev, scst_sense_reported_luns_data_changed_UA)
        return False
    tgt_dev = cmd.tgt_dev
    if tgt_dev is None or not tgt_dev.UA_list:
        return False
    sense = _pop_ua(tgt_dev)
    if sense is None:
        return False
    scst_set_cmd_error(cmd, sense)
    ua_stats["reported"] += 1
    if trace_scst_ua.enabled:
        _trace_ua(tgt_dev, "reported", sense)
    return True


def scst_ua_pending_sense(cmd: "scst_cmd") -> bytes | None:
    """For REQUEST SENSE: the oldest pending UA of the nexus as fixed
    format sense bytes, removed from the queue."""
    tgt_dev = cmd.tgt_dev
    if tgt_dev is None or not tgt_dev.UA_list:
        return None
    sense = _pop_ua(tgt_dev)
    if sense is None:
        return None
    buf = bytearray(96)
    n = scst_build_sense(buf, False, *sense)
    ua_stats["reported"] += 1
    return bytes(buf[:n])
