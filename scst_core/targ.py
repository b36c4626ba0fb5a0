"""The SCSI command life cycle: from a target driver's new command to its
freed response.

Twin of scst/src/scst_targ.c.

States, in order (scst.h SCST_CMD_STATE_*): INIT (LUN lookup), PARSE (CDB
decode by cdbprobe, then the dev handler's parse), PREPARE_SPACE (data
buffer), RDY_TO_XFER (the driver fetches WRITE data and calls
scst_rx_data), REAL_EXEC (the dev handler's exec, or a core-local
command), DEV_DONE, PRE_XMIT_RESP, XMIT_RESP (the driver sends the
response and calls scst_tgt_cmd_done), FINISHED (freed).

Contexts: scst_rx_cmd, scst_cmd_init_done, scst_rx_data and
scst_tgt_cmd_done from any context. A command runs through its states in
the caller's context until it reaches a state that must sleep (the exec of
a dev handler that may sleep), where it is queued to the device's command
threads; a completion arriving in softirq context continues the same way.

Task set management (SAM-5 5.3, 5.6, 8.6; SPC-4 7.5.8 control mode page):
- SIMPLE, ORDERED and HEAD OF QUEUE are honoured at the exec state; ACA
  runs as SIMPLE. The task set is the device's (TST=000b) or, with
  TST=001b, each I_T nexus's own: ordering, CLEAR TASK SET and QErr then
  stay within the nexus.
- TASK SET FULL / BUSY: a device holds at most SCST_MAX_DEV_COMMANDS
  commands (from scst_cmd_init_done to their free); one more gets TASK
  SET FULL if its I_T nexus has other commands there, BUSY if not.
- Aborts (task management, QErr, PREEMPT AND ABORT) by the command's own
  nexus are silent. By another nexus's action: with TAS=1 the command is
  answered with TASK ABORTED; with TAS=0 silently, and, except for
  resets (which raise their own UA), a COMMANDS CLEARED BY ANOTHER
  INITIATOR unit attention goes to its nexus.
- QErr (when a command ends with CHECK CONDITION): 00b nothing else
  happens; 01b the other commands of the task set are aborted; 11b those
  of the same I_T nexus only.

Differs from SCST: no per-session/per-CPU thread pools, only the
per-device pool; a dev handler may offer exec_nowait(), a non-sleeping
attempt (a page-cache hit) run in the submitting context before the command
is handed to the device's threads, as io_uring tries IOCB_NOWAIT first.
Predicted commands in flight (scst_core.fastpath: WRITEs, blockio's
READs) have no scst_cmd: an ORDERED command waits for the device's to
finish, as for older commands, and a TMF's response for those of the
devices it covers (scst_fast_cmds_drained lets both go on). Unit
attentions live in scst_core.ua and are reported here, in
scst_cmd_init_done, followed by the ALUA access-state filter of
scst_core.tg; reservations (scst_core.pres) are checked in PARSE.
A dev handler's parse, exec or dev_done that raises is an oops naming its
module and context (scst_dev_handler_oops) and fails only that command
(HARDWARE ERROR), where a kernel oops would kill the thread running it: a
module under development must not take the other LUNs down.

Tracepoints (kshim.tracepoint): scst_cmd_init_done, one scst_cmd_state span
per state a command runs through, scst_handler_exec around the dev
handler's exec, scst_exec_done, scst_rx_data, scst_tgt_cmd_done, scst_tmf
and scst_tmf_done. With tracing off each costs one slot test.
"""
from __future__ import annotations

from typing import Iterable

from kshim import sched, tracepoint
from kshim.gfp import GFP_ATOMIC, GFP_KERNEL
from kshim.kthread import kthread_run, kthread_should_stop
from kshim.list import (list_add_tail, list_del_init, list_empty, list_first_entry,
                        list_for_each_entry)
from kshim.module import module_oops
from kshim.printk import pr_err
from kshim.slab import kmem_cache_alloc, kmem_cache_create, kmem_cache_free
from kshim.spinlock import spin_lock_bh, spin_unlock_bh
from kshim.tracepoint import TRACE_EVENT
from kshim.wait import wait_event_interruptible_exclusive, wake_up
from scst_core import cdbprobe
from scst_core import tg as scst_tg
from scst_core.cluster import scst_cluster_dev_event
from scst_core.cluster_proto import CL_EV_RESET
from scst_core.const import (SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION,
                             SAM_STAT_RESERVATION_CONFLICT, SAM_STAT_TASK_ABORTED,
                             SAM_STAT_TASK_SET_FULL, INQUIRY, SCST_CMD_QUEUE_HEAD_OF_QUEUE,
                             SCST_CMD_QUEUE_ORDERED, REPORT_LUNS, REQUEST_SENSE, SCST_ABORT_ALL_TASKS_SESS,
                             SCST_ABORT_TASK, SCST_ABORT_TASK_SET, SCST_CLEAR_ACA,
                             SCST_CLEAR_TASK_SET, SCST_LUN_RESET, SCST_MGMT_STATUS_FN_NOT_SUPPORTED,
                             SCST_MGMT_STATUS_LUN_NOT_EXIST, SCST_MGMT_STATUS_TASK_NOT_EXIST,
                             SCST_NEXUS_LOSS_SESS, SCST_TARGET_RESET, SAM_STAT_GOOD, scst_sense_hardw_error,
                             scst_sense_invalid_field_in_cdb, scst_sense_invalid_opcode,
                             scst_sense_invalid_field_in_iu, scst_sense_lun_not_supported,
                             scst_sense_cleared_by_another_ini_UA, scst_sense_data_protect,
                             scst_sense_lun_reset_UA, scst_sense_reset_UA)
from scst_core.fault import fail_scsi_cmd, scst_cmd_fault
from scst_core.lib import scst_set_cmd_error, scst_set_cmd_error_status, scst_unpack_lun
from scst_core.local_cmd import scst_local_exec
from scst_core.mem import scst_alloc_space, scst_release_space
from scst_core.pres import (scst_pr_dev_reset, scst_pr_devs, scst_pr_is_cmd_allowed,
                            scst_sess_nexus)
from scst_core.ua import scst_check_ua, scst_queue_ua
from scst_core.scst import (SCST_CMD_STATE_DEFAULT, SCST_CMD_STATE_DEV_DONE,
                            SCST_CMD_STATE_FINISHED, SCST_CMD_STATE_INIT,
                            SCST_CMD_STATE_PARSE, SCST_CMD_STATE_PRE_XMIT_RESP,
                            SCST_CMD_STATE_PREPARE_SPACE, SCST_CMD_STATE_RDY_TO_XFER,
                            SCST_CMD_STATE_REAL_EXEC, SCST_CMD_STATE_EXEC_WAIT,
                            SCST_CMD_STATE_XMIT_RESP, SCST_CMD_STATE_XMIT_WAIT,
                            SCST_CMD_STATE_DATA_WAIT, SCST_CMD_STATE_NAMES, SCST_CONTEXT_THREAD,
                            SCST_DATA_NONE, SCST_DATA_READ, SCST_DATA_WRITE,
                            SCST_RX_STATUS_SUCCESS, SCST_RX_STATUS_ERROR_SENSE_SET,
                            SCST_QERR_1_ABORT_ALL, SCST_TGT_RES_SUCCESS, SCST_TST_1_SEP_TASK_SETS,
                            SCST_WRITE_MEDIUM, scst_cmd, scst_mgmt_cmd,
                            scst_cmd_threads, scst_device, scst_session, scst_tgt_dev)

# The longest transfer one command may ask for (the peer's number is
# checked against it before anything is allocated).
SCST_MAX_BUFFLEN = 64 << 20

# Commands one device holds before it answers TASK SET FULL or BUSY: eight
# sessions at the iSCSI driver's default window (QueuedCommands 32).
SCST_MAX_DEV_COMMANDS = 256

scst_cmd_cachep = kmem_cache_create("scst_cmd", scst_cmd,
                                    ctor=lambda: scst_cmd(None, None, None, b""))

# Decoded 8-byte LUN fields (a handful of distinct values per target).
scst_lun_cache: dict[bytes, int] = {}

# Commands answered for any LUN, mapped or not (SPC-4 4.6.4, 6.33).
_LUNLESS_OPS = frozenset((REPORT_LUNS, INQUIRY, REQUEST_SENSE))
# WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16): Data-Out is the data
_PLAIN_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E))

# Tracepoints of a command's life (SCST has TRACE_SCSI/TRACE_MGMT printk
# levels instead; scst_core.debug maps its trace_level tokens onto these).
# Every command event names its I_T_L nexus and task: sess (the
# initiator's name), lun, tag (the ITT), op (the CDB's opcode).
_CMD = ("sess", "lun", "tag", "op")
trace_scst_cmd_init_done = TRACE_EVENT("scst_cmd_init_done", _CMD + ("edtl",))
trace_scst_cmd_state = TRACE_EVENT("scst_cmd_state", _CMD + ("state",), span=True)
trace_scst_handler_exec = TRACE_EVENT("scst_handler_exec", _CMD + ("handler",), span=True)
trace_scst_exec_done = TRACE_EVENT("scst_exec_done", _CMD + ("status",))
trace_scst_rx_data = TRACE_EVENT("scst_rx_data", _CMD + ("status",))
trace_scst_tgt_cmd_done = TRACE_EVENT("scst_tgt_cmd_done", _CMD + ("status", "resp_len"))
trace_scst_tmf = TRACE_EVENT("scst_tmf", ("sess", "lun", "fn", "tag", "aborted"))
trace_scst_tmf_done = TRACE_EVENT("scst_tmf_done", ("sess", "lun", "fn", "tag", "status"))

_RES_CONT_NEXT = 0     # state changed: go on
_RES_CONT_DONE = 1     # someone else continues the command later
_RES_NEED_THREAD = 2   # this state must sleep: move to the device's threads


def scst_rx_cmd(sess: scst_session, lun: bytes, cdb: bytes, atomic: bool) -> scst_cmd | None:
    """A new command from a target driver, or None if out of memory."""
    cmd = kmem_cache_alloc(scst_cmd_cachep, GFP_ATOMIC if atomic else GFP_KERNEL)
    if cmd is None:
        return None
    # A recycled object keeps its last user's fields: reset every one a
    # command may read before it writes it (kmem_cache_zalloc's job in SCST).
    cmd.sess = sess
    cmd.tgt = sess.tgt
    cmd.tgtt = sess.tgt.tgtt
    cmd.cdb = cdb
    n = scst_lun_cache.get(lun)
    if n is None:
        n = scst_unpack_lun(lun)
        if len(scst_lun_cache) < 256:      # the peer chooses these bytes: bound the cache
            scst_lun_cache[lun] = n
    cmd.lun = n
    cmd.atomic = atomic
    cmd.tag = 0
    cmd.queue_type = 1
    cmd.expected_data_direction = SCST_DATA_NONE
    cmd.expected_transfer_len = 0
    cmd.tgt_i_priv = None
    cmd.state = SCST_CMD_STATE_INIT
    cmd.dev = None
    cmd.tgt_dev = None
    cmd.op_name = ""
    cmd.op_flags = 0
    cmd.data_direction = SCST_DATA_NONE
    cmd.bufflen = cmd.data_len = cmd.lba = cmd.resp_data_len = cmd.write_len = 0
    cmd.status = 0
    cmd.sense_valid_len = 0
    cmd.dh_priv = None
    cmd.sendfile_ok = False
    cmd.data_file = None
    # Not reset: scst_cmd_done, completed and exec_sync, which _exec sets
    # before the handler may read them; mcmd, which _finish_cmd clears.
    cmd.aborted = cmd.fault_checked = False
    sess.cmd_count += 1
    list_add_tail(cmd.sess_cmd_list_entry, sess.sess_cmd_list)
    return cmd


def scst_cmd_set_expected(cmd: scst_cmd, data_direction: int, bufflen: int) -> None:
    cmd.expected_data_direction = data_direction
    cmd.expected_transfer_len = bufflen


def scst_cmd_init_done(cmd: scst_cmd, pref_context: int) -> None:
    """The driver has filled the command in: start processing it."""
    if trace_scst_cmd_init_done.enabled:
        trace_scst_cmd_init_done(cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0],
                                 cmd.expected_transfer_len)
    tgt_dev = cmd.sess.sess_tgt_dev_list.get(cmd.lun)
    cmd.state = SCST_CMD_STATE_PARSE
    if tgt_dev is not None:
        cmd.tgt_dev = tgt_dev
        dev = cmd.dev = tgt_dev.dev
        cmd.sn = dev.sn_next
        dev.sn_next += 1
        if cmd.queue_type == SCST_CMD_QUEUE_ORDERED:
            dev.ordered_pending += 1
        dev.dev_cmd_count += 1
        if dev.dev_cmd_count > SCST_MAX_DEV_COMMANDS:
            scst_set_busy(cmd)
            cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
        elif tgt_dev.UA_list and scst_check_ua(cmd):
            cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
        elif scst_tg.scst_alua_filters and scst_tg.scst_tg_check_alua(cmd):
            cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP     # ALUA state (scst_core.tg)
    elif cmd.cdb[0] not in _LUNLESS_OPS:
        scst_set_cmd_error(cmd, scst_sense_lun_not_supported)
        cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
    if pref_context == SCST_CONTEXT_THREAD:
        _queue_to_threads(cmd)
    else:
        scst_process_active_cmd(cmd)


def scst_process_redirect_cmd(cmd: scst_cmd, context: int) -> None:
    if context == SCST_CONTEXT_THREAD:
        _queue_to_threads(cmd)
    else:
        scst_process_active_cmd(cmd)


def scst_rx_data(cmd: scst_cmd, status: int, pref_context: int) -> None:
    """The driver has received (or failed to receive) the WRITE data."""
    if trace_scst_rx_data.enabled:
        trace_scst_rx_data(cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0], status)
    if status == SCST_RX_STATUS_SUCCESS:
        cmd.state = SCST_CMD_STATE_REAL_EXEC
    else:
        if status != SCST_RX_STATUS_ERROR_SENSE_SET:
            scst_set_cmd_error(cmd, scst_sense_hardw_error)
        cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
    if pref_context == SCST_CONTEXT_THREAD:
        _queue_to_threads(cmd)
    else:
        scst_process_active_cmd(cmd)


def scst_tgt_cmd_done(cmd: scst_cmd, pref_context: int) -> None:
    """The driver has sent the response: finish and free the command."""
    if trace_scst_tgt_cmd_done.enabled:
        trace_scst_tgt_cmd_done(cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0],
                                cmd.status, cmd.resp_data_len)
    cmd.state = SCST_CMD_STATE_FINISHED
    _finish_cmd(cmd)


def scst_cmd_done_local(cmd: scst_cmd, next_state: int, pref_context: int) -> None:
    """The dev handler's exec is complete (cmd.scst_cmd_done points here)."""
    cmd.state = SCST_CMD_STATE_DEV_DONE if next_state == SCST_CMD_STATE_DEFAULT else next_state
    cmd.completed = True
    if trace_scst_exec_done.enabled:
        trace_scst_exec_done(cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0], cmd.status)
    if not cmd.exec_sync:
        # Asynchronous completion (e.g. from softirq): continue from here.
        scst_process_active_cmd(cmd)


def scst_process_active_cmd(cmd: scst_cmd) -> None:
    """Run cmd through its states until it waits for someone else."""
    if trace_scst_cmd_state.enabled:
        _process_active_cmd_traced(cmd)
        return
    fns = _state_fns
    while True:
        res = fns[cmd.state](cmd)
        if res != _RES_CONT_NEXT:
            if res == _RES_NEED_THREAD:
                _queue_to_threads(cmd)
            return


def _process_active_cmd_traced(cmd: scst_cmd) -> None:
    """scst_process_active_cmd with one scst_cmd_state span per state run.
    The fields are taken before the state runs: FINISHED frees the command."""
    fns = _state_fns
    ev = trace_scst_cmd_state
    names = SCST_CMD_STATE_NAMES
    while True:
        st = cmd.state
        who = (cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0], names.get(st, str(st)))
        t0 = tracepoint.now()
        res = fns[st](cmd)
        if ev.enabled:
            ev.span_end(t0, *who)
        if res != _RES_CONT_NEXT:
            if res == _RES_NEED_THREAD:
                _queue_to_threads(cmd)
            return


def _rdy_to_xfer(cmd: scst_cmd) -> int:
    cmd.state = SCST_CMD_STATE_DATA_WAIT
    cmd.tgtt.rdy_to_xfer(cmd)
    return _RES_CONT_DONE


def _pre_xmit_resp(cmd: scst_cmd) -> int:
    dev = cmd.dev
    if (cmd.status == SAM_STAT_CHECK_CONDITION and dev is not None and dev.qerr
            and not cmd.aborted):
        _qerr_abort(cmd)
    cmd.state = SCST_CMD_STATE_XMIT_RESP
    return _RES_CONT_NEXT


def _count_error(cmd: scst_cmd) -> None:
    """Count a response that is not GOOD by its sense key (-1: no sense,
    e.g. BUSY or RESERVATION CONFLICT) for the metrics endpoint."""
    key = -1
    if cmd.sense_valid_len >= 3:
        sense = cmd.sense
        key = (sense[1] if sense[0] & 0x7F >= 0x72 else sense[2]) & 0x0F
    errs = cmd.sess.sense_errors
    k = (cmd.lun, cmd.status, key)
    errs[k] = errs.get(k, 0) + 1


def _xmit_response(cmd: scst_cmd) -> int:
    if cmd.aborted and cmd.device_tas:
        # Aborted by another I_T nexus with TAS=1 (SAM-5 5.6): answered,
        # with TASK ABORTED and nothing else; the driver sends it as it
        # sends any response.
        cmd.aborted = False
        cmd.status = SAM_STAT_TASK_ABORTED
        cmd.sense_valid_len = 0
        cmd.resp_data_len = 0
    if cmd.status:
        _count_error(cmd)
    cmd.state = SCST_CMD_STATE_XMIT_WAIT
    if cmd.tgtt.xmit_response(cmd) != SCST_TGT_RES_SUCCESS:
        pr_err(f"scst: xmit_response failed for cmd tag {cmd.tag:#x}: freeing it")
        cmd.state = SCST_CMD_STATE_FINISHED
        _finish_cmd(cmd)
    return _RES_CONT_DONE


def scst_dev_handler_oops(cmd: scst_cmd, callback: str, e: Exception) -> None:
    """A dev handler callback raised: report an oops naming the handler's
    module and the kthread or softirq it ran in, and answer the command
    with HARDWARE ERROR so the initiator and every other LUN go on."""
    handler = cmd.dev.handler
    owner = handler.owner.name if handler.owner is not None else "(built in)"
    softirq = sched._softirq_name()
    where = f"softirq {softirq}" if softirq else f"kthread {sched.cpu.curr.comm}"
    module_oops(f"oops in {callback} of dev handler {handler.name} (module {owner})", e,
                module=owner, handler=handler.name, context=where, tag=hex(cmd.tag))
    scst_set_cmd_error(cmd, scst_sense_hardw_error)
    cmd.completed = True
    if cmd.state == SCST_CMD_STATE_EXEC_WAIT:
        cmd.state = SCST_CMD_STATE_DEV_DONE


def _finished(cmd: scst_cmd) -> int:
    _finish_cmd(cmd)
    return _RES_CONT_DONE


def _bad_state(cmd: scst_cmd) -> int:
    pr_err(f"scst: cmd tag {cmd.tag:#x} in unexpected state {cmd.state}")
    return _RES_CONT_DONE


def _parse(cmd: scst_cmd) -> int:
    r = cdbprobe.scst_get_cdb_info(cmd)
    cmd.state = SCST_CMD_STATE_PREPARE_SPACE
    if r == 1:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
    elif r == 0 and cmd.dev is not None and cmd.cdb[0] != REPORT_LUNS:
        parse = cmd.dev.handler.parse
        if parse is not None:
            try:
                parse(cmd)
            except Exception as e:      # a dev handler's oops fails this command only
                scst_dev_handler_oops(cmd, "parse", e)
        # scst_pr_is_cmd_allowed's first test inline: the call only while
        # the device has a reservation or a persistent reservation
        prd = scst_pr_devs.get(cmd.dev)
        if (prd is not None and (prd.reserved_by is not None or prd.pr_is_set)
                and not cmd.status and not scst_pr_is_cmd_allowed(cmd)):
            scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
    if cmd.status:
        cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
        return _RES_CONT_NEXT
    if cmd.bufflen > SCST_MAX_BUFFLEN:
        scst_set_cmd_error(cmd, scst_sense_invalid_field_in_cdb)
        cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
        return _RES_CONT_NEXT
    if cmd.data_direction & SCST_DATA_WRITE:
        if cmd.tgt_dev is not None and cmd.tgt_dev.rd_only and cmd.op_flags & SCST_WRITE_MEDIUM:
            scst_set_cmd_error(cmd, scst_sense_data_protect)
            cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
            return _RES_CONT_NEXT
        # An initiator that announces no Data-Out sends nothing to write.
        edtl = cmd.expected_transfer_len if cmd.expected_data_direction & SCST_DATA_WRITE else 0
        if edtl < cmd.bufflen:
            # It sends less than the CDB says: write only what arrives (the
            # driver reports the overflow residual). A WRITE may end inside
            # a block, as SCST allows (the rest of the block keeps its old
            # data); commands whose Data-Out is a parameter list or pattern
            # need whole blocks.
            if (cmd.dev is not None and edtl & (cmd.dev.block_size - 1)
                    and cmd.cdb[0] not in _PLAIN_WRITE_OPS):
                scst_set_cmd_error(cmd, scst_sense_invalid_field_in_iu)
                cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
                return _RES_CONT_NEXT
            cmd.data_len = edtl
            cmd.write_len = edtl
        else:
            cmd.write_len = cmd.bufflen
    elif cmd.tgt_dev is not None and cmd.tgt_dev.rd_only and cmd.op_flags & SCST_WRITE_MEDIUM:
        scst_set_cmd_error(cmd, scst_sense_data_protect)
        cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
    return _RES_CONT_NEXT


def _prepare_space(cmd: scst_cmd) -> int:
    if cmd.data_direction != SCST_DATA_NONE and cmd.bufflen:
        c = sched.cpu
        gfp = (GFP_ATOMIC if c.preempt_count or c.softirq_serving or c.bh_disable_count
               or c.irqs_off else GFP_KERNEL)
        if scst_alloc_space(cmd, cmd.bufflen, gfp) != 0:
            pr_err(f"scst: no memory for a {cmd.bufflen}-byte buffer (tag {cmd.tag:#x})")
            scst_set_busy(cmd)            # as SCST: the initiator retries later
            cmd.state = SCST_CMD_STATE_PRE_XMIT_RESP
            return _RES_CONT_NEXT
    if cmd.data_direction & SCST_DATA_WRITE and cmd.write_len:
        cmd.state = SCST_CMD_STATE_RDY_TO_XFER
    else:
        cmd.state = SCST_CMD_STATE_REAL_EXEC
    return _RES_CONT_NEXT


def _exec(cmd: scst_cmd) -> int:
    dev = cmd.dev
    if dev is None or cmd.cdb[0] == REPORT_LUNS:
        cmd.completed = True
        scst_local_exec(cmd)
        if cmd.state == SCST_CMD_STATE_REAL_EXEC:
            cmd.state = SCST_CMD_STATE_DEV_DONE
        return _RES_CONT_NEXT
    if cmd.aborted:
        # Aborted before it ran: nothing reaches the device.
        cmd.state = SCST_CMD_STATE_XMIT_RESP
        return _RES_CONT_NEXT
    if fail_scsi_cmd.armed and not cmd.fault_checked and scst_cmd_fault(cmd):
        cmd.state = SCST_CMD_STATE_DEV_DONE
        return _RES_CONT_NEXT
    if (dev.ordered_pending or dev.deferred_cmds) and _must_wait(cmd):
        dev.deferred_cmds.append(cmd)
        return _RES_CONT_DONE
    handler = dev.handler
    run = handler.exec
    if not handler.exec_atomic:
        kt = sched.cpu.curr.kthread         # current()'s, without the call
        if kt is None or kt.data is not dev.cmd_threads:
            # Not on the device's threads: only a non-sleeping attempt may run here.
            run = handler.exec_nowait
            if run is None:
                return _RES_NEED_THREAD
    cmd.state = SCST_CMD_STATE_EXEC_WAIT
    cmd.scst_cmd_done = scst_cmd_done_local
    cmd.completed = False
    cmd.exec_sync = True
    traced = trace_scst_handler_exec.enabled
    if traced:
        who = (cmd.sess.initiator_name, cmd.lun, cmd.tag, cmd.cdb[0], handler.name)
        t0 = tracepoint.now()
    try:
        done = run(cmd)
    except Exception as e:              # a dev handler's oops fails this command only
        scst_dev_handler_oops(cmd, "exec", e)
        done = True
    if traced:
        trace_scst_handler_exec.span_end(t0, *who)
    cmd.exec_sync = False
    if run is handler.exec_nowait and not done:
        cmd.state = SCST_CMD_STATE_REAL_EXEC
        return _RES_NEED_THREAD
    dev.cmd_count += 1
    if not cmd.completed:
        return _RES_CONT_DONE       # the handler completes later, asynchronously
    return _RES_CONT_NEXT


def _dev_done(cmd: scst_cmd) -> int:
    dev = cmd.dev
    if dev is not None and dev.handler.dev_done is not None:
        try:
            dev.handler.dev_done(cmd)
        except Exception as e:          # a dev handler's oops fails this command only
            scst_dev_handler_oops(cmd, "dev_done", e)
    if cmd.status == SAM_STAT_GOOD:
        # Counted once, in the I_T_L nexus (the session's totals add its
        # LUNs up when read: scst_sess_io_stats); a command without a LUN
        # counts in the session.
        io: scst_tgt_dev | scst_session | None = cmd.tgt_dev
        if io is None:
            io = cmd.sess
        if cmd.data_direction == SCST_DATA_READ:
            io.reads += 1
            io.read_bytes += cmd.resp_data_len
        elif cmd.data_direction & SCST_DATA_WRITE:
            io.writes += 1
            io.write_bytes += cmd.write_len
    elif (cmd.status == SAM_STAT_CHECK_CONDITION and dev is not None and dev.qerr
            and not cmd.aborted):
        _qerr_abort(cmd)
    cmd.state = SCST_CMD_STATE_XMIT_RESP
    return _RES_CONT_NEXT


def _older_unfinished(cmd: scst_cmd, ordered_only: bool) -> bool:
    """Is a command of cmd's task set that arrived before it (an ORDERED
    one, if ordered_only) still unfinished? Scans the task set: only runs
    while an ORDERED command is about."""
    dev = cmd.dev
    if not ordered_only and dev.fast_cmds:
        # Predicted commands in flight (scst_core.fastpath) are older than
        # any command the core holds: none is predicted while it waits.
        # They are not in a task set's list, and are counted device-wide.
        return True
    sn = cmd.sn
    tgt_devs = (cmd.tgt_dev,) if dev.tst == SCST_TST_1_SEP_TASK_SETS else dev.dev_tgt_dev_list
    for td in tgt_devs:
        for c in list_for_each_entry(td.sess.sess_cmd_list):
            if c.dev is dev and c.sn < sn and (
                    not ordered_only or c.queue_type == SCST_CMD_QUEUE_ORDERED):
                return True
    return False


def _must_wait(cmd: scst_cmd) -> bool:
    """SAM-5 8.6: an ORDERED command runs after every older command of its
    task set has finished, a SIMPLE one after every older ORDERED one; HEAD
    OF QUEUE runs at once. Commands held back keep their arrival order
    within their task set."""
    qt = cmd.queue_type
    if qt == SCST_CMD_QUEUE_HEAD_OF_QUEUE:
        return False
    dev = cmd.dev
    if dev.tst == SCST_TST_1_SEP_TASK_SETS:
        td = cmd.tgt_dev
        if any(c.sn < cmd.sn and c.tgt_dev is td for c in dev.deferred_cmds):
            return True
    elif any(c.sn < cmd.sn for c in dev.deferred_cmds):
        return True
    return _older_unfinished(cmd, qt != SCST_CMD_QUEUE_ORDERED)


def _restart_deferred(dev: scst_device) -> None:
    """A command of dev finished: run the held-back ones now allowed."""
    waiting = dev.deferred_cmds
    dev.deferred_cmds = []
    for c in waiting:
        if _must_wait(c):
            dev.deferred_cmds.append(c)
        else:
            scst_process_active_cmd(c)


def _finish_cmd(cmd: scst_cmd) -> None:
    tgtt = cmd.tgtt
    if tgtt.on_free_cmd is not None:
        tgtt.on_free_cmd(cmd)
    if cmd.data_buf_alloced:
        scst_release_space(cmd)
    list_del_init(cmd.sess_cmd_list_entry)
    dev = cmd.dev
    if dev is not None:
        dev.dev_cmd_count -= 1
        if cmd.queue_type == SCST_CMD_QUEUE_ORDERED and cmd.tgt_dev is not None:
            dev.ordered_pending -= 1
        if dev.deferred_cmds:
            _restart_deferred(dev)
    if cmd.mcmd is not None:
        _mcmd_cmd_freed(cmd.mcmd)
        cmd.mcmd = None
    sess = cmd.sess
    sess.cmd_count -= 1
    if sess.shut_phase and sess.cmd_count == 0:
        from scst_core.main import scst_sess_free_final  # cycle: main imports targ
        scst_sess_free_final(sess)
    kmem_cache_free(scst_cmd_cachep, cmd)


# -- task management (SAM-5 7; scst_targ.c's scst_rx_mgmt_fn and friends) ------

def _cmds_of(sess: scst_session, lun: int | None) -> list[scst_cmd]:
    return [c for c in list_for_each_entry(sess.sess_cmd_list)
            if lun is None or c.lun == lun]


def _cmds_of_dev(dev: scst_device) -> list[scst_cmd]:
    """Every command of every I_T nexus on dev (its one task set, TST=000b,
    or all of its per-nexus task sets)."""
    return [c for td in list(dev.dev_tgt_dev_list) for c in _cmds_of(td.sess, td.lun)]


def scst_set_busy(cmd: scst_cmd) -> None:
    """The task set is full (SAM-5 5.3): TASK SET FULL if cmd's I_T nexus
    has other commands in it, BUSY if it has none."""
    tgt_dev = cmd.tgt_dev
    for c in list_for_each_entry(cmd.sess.sess_cmd_list):
        if c is not cmd and c.tgt_dev is tgt_dev:
            scst_set_cmd_error_status(cmd, SAM_STAT_TASK_SET_FULL)
            return
    scst_set_cmd_error_status(cmd, SAM_STAT_BUSY)


def _abort_cmd(cmd: scst_cmd, mcmd: scst_mgmt_cmd | None, issuer: scst_session,
               ua: bool) -> bool:
    """Mark cmd aborted by an action of issuer's I_T nexus; False if it is
    too late (being answered or freed) or already done. On behalf of
    another nexus, TAS=1 makes it answer TASK ABORTED; with TAS=0 and ua,
    its nexus gets COMMANDS CLEARED BY ANOTHER INITIATOR (SAM-5 5.6)."""
    if (cmd.aborted or cmd.state >= SCST_CMD_STATE_XMIT_WAIT
            and cmd.state != SCST_CMD_STATE_DATA_WAIT):
        return False
    cmd.aborted = True
    cmd.device_tas = False
    if cmd.sess is not issuer:
        # A command the driver still holds back has no tgt_dev yet.
        tgt_dev = cmd.tgt_dev or cmd.sess.sess_tgt_dev_list.get(cmd.lun)
        if tgt_dev is not None:
            if tgt_dev.dev.tas:
                cmd.device_tas = True
            elif ua:
                scst_queue_ua(tgt_dev, scst_sense_cleared_by_another_ini_UA)
    if mcmd is not None:
        cmd.mcmd = mcmd
        mcmd.cmd_wait_count += 1
    return True


def _abort_cmds(victims: list[scst_cmd], mcmd: scst_mgmt_cmd | None, issuer: scst_session,
                ua: bool) -> None:
    """Abort victims: mark them all first, then stop the ones waiting for
    data and let the held-back ones go (reaching no device), so nothing
    started here runs a victim not yet marked."""
    aborted = [c for c in victims if _abort_cmd(c, mcmd, issuer, ua)]
    data_wait = [c for c in aborted if c.state == SCST_CMD_STATE_DATA_WAIT]
    released = []
    for dev in dict.fromkeys(c.dev for c in aborted if c.dev is not None):
        if dev.deferred_cmds:
            released += [c for c in dev.deferred_cmds if c.aborted]
            dev.deferred_cmds = [c for c in dev.deferred_cmds if not c.aborted]
    for cmd in data_wait:
        if cmd.tgtt.on_abort_cmd is not None:
            cmd.tgtt.on_abort_cmd(cmd)
    for cmd in released:
        scst_process_active_cmd(cmd)


def _qerr_abort(cmd: scst_cmd) -> None:
    """cmd ends with CHECK CONDITION and QErr is 01b or 11b (SPC-4 7.5.8):
    abort the other commands of its task set, or of its I_T nexus only."""
    dev = cmd.dev
    if dev.qerr == SCST_QERR_1_ABORT_ALL and dev.tst != SCST_TST_1_SEP_TASK_SETS:
        victims = _cmds_of_dev(dev)
    else:
        victims = _cmds_of(cmd.sess, cmd.lun)
    _abort_cmds([c for c in victims if c is not cmd], None, cmd.sess, True)


def scst_pr_abort_all(cmd: scst_cmd, nexuses: list[tuple[bytes, int]]) -> None:
    """PREEMPT AND ABORT (SPC-4 5.12.11.2.4): abort every command of the
    preempted I_T nexuses on cmd's device, cmd excepted. Called from the
    PR OUT exec (scst_core.pres); the aborted commands end asynchronously."""
    dev = cmd.dev
    victims = [c for td in list(dev.dev_tgt_dev_list) if scst_sess_nexus(td.sess) in nexuses
               for c in _cmds_of(td.sess, td.lun) if c is not cmd]
    _abort_cmds(victims, None, cmd.sess, True)


def _wait_fast_cmds(mcmd: scst_mgmt_cmd, devs: Iterable[scst_device]) -> None:
    """The TMF's response waits for the predicted commands in flight on
    devs as for the commands it aborts: they cannot be stopped, so they
    finish (and are answered) before it, like commands already done."""
    for dev in devs:
        if dev.fast_cmds:
            mcmd.cmd_wait_count += 1
            dev.fast_waiters.append(mcmd)


def scst_fast_cmds_drained(dev: scst_device) -> None:
    """dev's last predicted command in flight has finished (softirq): the
    TMFs waiting for it go on, and the commands held back behind it run."""
    waiters = dev.fast_waiters
    if waiters:
        dev.fast_waiters = []
        for mcmd in waiters:
            _mcmd_cmd_freed(mcmd)
    if dev.deferred_cmds:
        _restart_deferred(dev)


def _mcmd_cmd_freed(mcmd: scst_mgmt_cmd) -> None:
    mcmd.cmd_wait_count -= 1
    if mcmd.cmd_wait_count == 0 and not mcmd.done:
        _mcmd_done(mcmd)


def _mcmd_done(mcmd: scst_mgmt_cmd) -> None:
    mcmd.done = True
    if trace_scst_tmf_done.enabled:
        trace_scst_tmf_done(mcmd.sess.initiator_name, mcmd.lun, mcmd.fn, mcmd.tag, mcmd.status)
    fn = mcmd.sess.tgt.tgtt.task_mgmt_fn_done
    if fn is not None:
        fn(mcmd)


def scst_rx_mgmt_fn(sess: scst_session, fn: int, lun: bytes | None, tag: int,
                    tgt_priv: object) -> scst_mgmt_cmd:
    """Start a task management function (any context). The driver's
    task_mgmt_fn_done(mcmd) is called once every command it aborts has been
    freed (SAM: the response follows the aborted tasks), possibly before
    this returns; mcmd.status then holds an SCST_MGMT_STATUS_* value."""
    mcmd = scst_mgmt_cmd(sess, fn, tag=tag, tgt_priv=tgt_priv)
    mcmd.lun = scst_unpack_lun(lun) if lun is not None else 0
    tgt_dev = sess.sess_tgt_dev_list.get(mcmd.lun)
    mcmd.cmd_wait_count = 1            # held until every abort below is issued
    if fn == SCST_ABORT_TASK:
        victims = [c for c in _cmds_of(sess, None) if c.tag == tag]
        if not victims:
            mcmd.status = SCST_MGMT_STATUS_TASK_NOT_EXIST
    elif fn in (SCST_ABORT_TASK_SET, SCST_CLEAR_TASK_SET, SCST_LUN_RESET):
        if tgt_dev is None:
            mcmd.status = SCST_MGMT_STATUS_LUN_NOT_EXIST
            victims = []
        elif fn == SCST_ABORT_TASK_SET or (fn == SCST_CLEAR_TASK_SET and
                                           tgt_dev.dev.tst == SCST_TST_1_SEP_TASK_SETS):
            victims = _cmds_of(sess, mcmd.lun)
        else:
            victims = _cmds_of_dev(tgt_dev.dev)
    elif fn in (SCST_TARGET_RESET, SCST_NEXUS_LOSS_SESS, SCST_ABORT_ALL_TASKS_SESS):
        sessions = sess.tgt.sess_list if fn == SCST_TARGET_RESET else [sess]
        victims = [c for s in list(sessions) for c in _cmds_of(s, None)]
    elif fn == SCST_CLEAR_ACA:
        victims = []
    else:
        mcmd.status = SCST_MGMT_STATUS_FN_NOT_SUPPORTED
        victims = []
    # With TAS=0 a CLEAR TASK SET tells the other nexuses it aborted
    # commands of; a reset raises its own unit attention instead (below).
    sess.tmf_count[fn] = sess.tmf_count.get(fn, 0) + 1
    if trace_scst_tmf.enabled:
        trace_scst_tmf(sess.initiator_name, mcmd.lun, fn, tag, len(victims))
    _abort_cmds(victims, mcmd, sess, fn == SCST_CLEAR_TASK_SET)
    if fn in (SCST_ABORT_TASK_SET, SCST_CLEAR_TASK_SET, SCST_LUN_RESET):
        _wait_fast_cmds(mcmd, (tgt_dev.dev,) if tgt_dev is not None else ())
    elif fn != SCST_CLEAR_ACA:
        # ABORT TASK names a tag, not a LUN: any LUN of the session may hold it.
        sessions = sess.tgt.sess_list if fn == SCST_TARGET_RESET else [sess]
        _wait_fast_cmds(mcmd, {td.dev: None for s in list(sessions)
                                 for td in s.sess_tgt_dev_list.values()})
    if mcmd.status == 0 and fn in (SCST_LUN_RESET, SCST_TARGET_RESET):
        # Every I_T nexus learns of the reset, the one that asked included
        # (SAM-5 6.3.3 c), 6.6 c)).
        tgt_devs = (tgt_dev.dev.dev_tgt_dev_list if fn == SCST_LUN_RESET else
                    [td for s in sess.tgt.sess_list for td in s.sess_tgt_dev_list.values()])
        sense = scst_sense_lun_reset_UA if fn == SCST_LUN_RESET else scst_sense_reset_UA
        for td in list(tgt_devs):
            scst_queue_ua(td, sense)
        for dev in {td.dev: None for td in tgt_devs}:
            scst_pr_dev_reset(dev)      # releases RESERVE(6), clears PREVENT
            # A shared device's other nodes reset it too; the response
            # waits for them, so the initiator finds the UA on every path.
            mcmd.cmd_wait_count += 1
            if scst_cluster_dev_event(dev, CL_EV_RESET, sense,
                                      lambda ev: _mcmd_cmd_freed(mcmd)) is None:
                mcmd.cmd_wait_count -= 1
    _mcmd_cmd_freed(mcmd)
    return mcmd


def _state_table() -> list:
    t = [_bad_state] * (SCST_CMD_STATE_DATA_WAIT + 1)
    t[SCST_CMD_STATE_PARSE] = _parse
    t[SCST_CMD_STATE_PREPARE_SPACE] = _prepare_space
    t[SCST_CMD_STATE_RDY_TO_XFER] = _rdy_to_xfer
    t[SCST_CMD_STATE_REAL_EXEC] = _exec
    t[SCST_CMD_STATE_DEV_DONE] = _dev_done
    t[SCST_CMD_STATE_PRE_XMIT_RESP] = _pre_xmit_resp
    t[SCST_CMD_STATE_XMIT_RESP] = _xmit_response
    t[SCST_CMD_STATE_FINISHED] = _finished
    return t


# The state machine: one handler per SCST_CMD_STATE_*, each returning what
# happens next (docs/architecture.md draws it from this table).
_state_fns = _state_table()


# -- per-device command threads ---------------------------------------------

def _queue_to_threads(cmd: scst_cmd) -> None:
    if cmd.dev is None:
        # Core-local commands (REPORT LUNS, no-LUN INQUIRY) never sleep.
        scst_process_active_cmd(cmd)
        return
    ct = cmd.dev.cmd_threads
    lst = ct.active_cmd_list
    spin_lock_bh(ct.cmd_list_lock)
    was_empty = list_empty(lst)
    list_add_tail(cmd.cmd_list_entry, lst)
    spin_unlock_bh(ct.cmd_list_lock)
    if was_empty:
        # A thread busy with the list drains it; only an idle list needs one.
        wake_up(ct.cmd_list_waitQ)


def _cmd_thread_sleeping(t: sched.task_struct) -> None:
    """This command thread blocks (I/O): let a sibling take the rest, as
    the kernel's wq_worker_sleeping() does for workqueue pools."""
    ct = t.kthread.data
    if not list_empty(ct.active_cmd_list):
        wake_up(ct.cmd_list_waitQ)


def scst_cmd_thread(ct: scst_cmd_threads) -> int:
    """A command thread: process queued commands until stopped."""
    lst = ct.active_cmd_list
    sched.current().worker_sleeping = _cmd_thread_sleeping
    while True:
        wait_event_interruptible_exclusive(
            ct.cmd_list_waitQ, lambda: not list_empty(lst) or kthread_should_stop())
        if kthread_should_stop() and list_empty(lst):
            return 0
        spin_lock_bh(ct.cmd_list_lock)
        while not list_empty(lst):
            cmd = list_first_entry(lst)
            list_del_init(cmd.cmd_list_entry)
            spin_unlock_bh(ct.cmd_list_lock)
            scst_process_active_cmd(cmd)
            spin_lock_bh(ct.cmd_list_lock)
        spin_unlock_bh(ct.cmd_list_lock)


def scst_add_threads(ct: scst_cmd_threads, num: int) -> int:
    for i in range(num):
        t = kthread_run(scst_cmd_thread, ct, f"{ct.name}{i}")
        ct.threads.append(t)
    return 0

