"""The iSCSI target driver: PDU handling in full feature phase, the bridge
to SCST (rdy_to_xfer, xmit_response), R2T generation, response building,
NOP, Text, Logout, Reject and task management.

Twin of iscsi-scst/kernel/iscsi.c.

Contexts: the rx handlers (iscsi_rx_hdr and the *_done functions) run on
the connection's rd thread. iscsi_xmit_response and iscsi_rdy_to_xfer are
SCST callbacks and may run in any context (rd thread, a device's command
thread, or softirq for an asynchronous completion); they never sleep.
iscsi_tx_build and iscsi_tx_done run on the thread holding conn.tx_busy
(see nthread.iscsi_tx_flush). The NOP-In timer runs in softirq context.

Differs from iscsi-scst: responses are not separate iscsi_cmnd objects;
the request's iscsi_cmnd is queued to the write list and its Data-In and
SCSI Response PDUs are built at send time by whichever thread flushes the
list (the rd thread before it sleeps, or the wr thread). A command that
arrives ahead of its CmdSN is held, with its unsolicited data in a buffer of
its own, and handed to SCST when its turn comes (any connection's rd
thread may release it).

Observability: tracepoints iscsi_pdu_rx (a span around a header's handling,
called by nthread while enabled), iscsi_pdu_tx, iscsi_r2t and iscsi_login;
login_stats and each session's cmdsn_window_full count for iscsi_metrics()
(the Prometheus endpoint).
"""
from __future__ import annotations

import fnmatch
import functools
import struct
from typing import Any, Callable, cast

import attrs

from iscsi_scst import conn as conn_mod
from iscsi_scst import nagle as nagle_mod
from iscsi_scst import session as session_mod
from iscsi_scst.config import iscsi_sysfs_exit, iscsi_sysfs_init
from iscsi_scst.conn import (RX_DATA, RX_INIT_BHS, RX_TAIL, conn_list, conns_waitQ,
                             iscsi_close_all_conns, iscsi_conn, iscsi_conn_mark_closing,
                             iscsi_dummy_buf)
from iscsi_scst.digest import digest_data
from iscsi_scst.hdr import (ISCSI_CMD_ATTR_MASK, common_hdr, ISCSI_CMD_READ, ISCSI_CMD_WRITE,
                            ISCSI_FLG_CONTINUE, ISCSI_FLG_FINAL, ISCSI_FLG_RESID_OVERFLOW,
                            ISCSI_FLG_RESID_UNDERFLOW, ISCSI_FLG_STATUS,
                            ISCSI_FUNCTION_ABORT_TASK, ISCSI_FUNCTION_ABORT_TASK_SET,
                            ISCSI_FUNCTION_CLEAR_ACA, ISCSI_FUNCTION_CLEAR_TASK_SET,
                            ISCSI_FUNCTION_LOGICAL_UNIT_RESET, ISCSI_FUNCTION_TARGET_COLD_RESET,
                            ISCSI_FUNCTION_TARGET_WARM_RESET, ISCSI_FUNCTION_TASK_REASSIGN,
                            ISCSI_RESPONSE_ALLEGIANCE_REASSIGNMENT_UNSUPPORTED,
                            ISCSI_RESPONSE_FUNCTION_UNSUPPORTED, ISCSI_RESPONSE_UNKNOWN_LUN,
                            ISCSI_LOGOUT_CLOSE_CONNECTION,
                            ISCSI_LOGOUT_CLOSE_SESSION, ISCSI_LOGOUT_RECOVERY_UNSUPPORTED,
                            ISCSI_LOGOUT_SUCCESS, ISCSI_OP_IMMEDIATE, ISCSI_OP_LOGIN_CMD,
                            ISCSI_OP_LOGOUT_CMD, ISCSI_OP_NOP_IN, ISCSI_OP_NOP_OUT,
                            ISCSI_OP_SCSI_DATA_IN, ISCSI_OP_ASYNC_MSG,
                            ISCSI_ASYNC_LOGOUT_REQUEST,
                            ISCSI_OP_REJECT, ISCSI_OP_SCSI_CMD, ISCSI_OP_SCSI_DATA_OUT,
                            ISCSI_OP_SCSI_RSP,
                            ISCSI_OP_SCSI_TASK_MGT_MSG, ISCSI_OP_SCSI_TASK_MGT_RSP,
                            ISCSI_OP_SNACK_CMD, ISCSI_OP_TEXT_CMD, ISCSI_OP_TEXT_RSP,
                            ISCSI_OPCODE_MASK, ISCSI_REASON_DATA_DIGEST_ERROR,
                            ISCSI_REASON_PROTOCOL_ERROR, ISCSI_REASON_UNSUPPORTED_COMMAND,
                            ISCSI_RESERVED_TAG, ISCSI_RESPONSE_COMMAND_COMPLETED,
                            ISCSI_RESPONSE_FUNCTION_COMPLETE, ISCSI_RESPONSE_FUNCTION_REJECTED,
                            ISCSI_RESPONSE_UNKNOWN_TASK, ProtocolError, login_fields,
                            pack_data_in, pack_data_in_raw, pack_generic_rsp, pack_login_rsp, pack_logout_rsp,
                            pack_r2t, pack_scsi_rsp, pack_scsi_rsp_raw, sn_le, sn_lt, u32_at, unpack_common,
                            unpack_data_out)
from iscsi_scst.nthread import fill_sn, hdigest, iscsi_queue_tx, iscsi_rd_tx_requeue, pad_bytes
from iscsi_scst import target as target_mod
from iscsi_scst.target import (iscsi_del_portal, iscsi_list_targets, iscsi_target,
                               iscsi_target_del, iscsi_target_find, portal_list, target_list)
from iscsi_scst.usr.chap import chap_authenticator, chap_credentials
from iscsi_scst.usr.iscsid import login_req, login_rsp, login_session, text_negotiation
from iscsi_scst.usr.param import NegotiationError, split_text
from kshim.list import list_del_init, list_head, list_head_release
from kshim.module import (MODULE_DESCRIPTION, MODULE_LICENSE, THIS_MODULE, module_exit,
                          module_init, module_param_named)
from kshim.page_alloc import __free_pages, alloc_pages, get_order, page
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.random32 import get_random_bytes
from kshim.scatterlist import sg_copy_from_buffer, sg_virt
from kshim.slab import kmem_cache_alloc, kmem_cache_create, kmem_cache_free
from kshim.err import ECONNABORTED
from kshim.fail_page_alloc import fail_page_alloc
from kshim.fault_inject import DECLARE_FAULT_ATTR, should_fail
from kshim.gfp import GFP_ATOMIC, GFP_KERNEL, __GFP_NOFAIL
from kshim.jiffies import HZ, jiffies, time_before
from kshim.timer import del_timer, mod_timer, timer_list
from kshim import sched, tracepoint
from kshim.tracepoint import TRACE_EVENT
from kshim.wait import wait_event_timeout, wake_up
from scst_core.const import (SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD,
                             SCST_ABORT_TASK, SCST_ABORT_TASK_SET, SCST_CLEAR_ACA,
                             SCST_CLEAR_TASK_SET, SCST_LUN_RESET,
                             SCST_MGMT_STATUS_FN_NOT_SUPPORTED, SCST_MGMT_STATUS_LUN_NOT_EXIST,
                             SCST_MGMT_STATUS_SUCCESS, SCST_MGMT_STATUS_TASK_NOT_EXIST,
                             SCST_TARGET_RESET, scst_sense_data_offset_error,
                             scst_sense_data_phase_error, SCST_CMD_QUEUE_ACA, SCST_CMD_QUEUE_HEAD_OF_QUEUE,
                             SCST_CMD_QUEUE_ORDERED, SCST_CMD_QUEUE_SIMPLE,
                             SCST_CMD_QUEUE_UNTAGGED, scst_sense_data_digest_error)
from scst_core.fastpath import (FAST_DONE, FAST_READ_MAX, FAST_WRITE_MAX, scst_cmd_fast,
                                scst_cmds_fast_write)
from scst_core.lib import scst_pack_lun, scst_set_cmd_error, scst_unpack_lun
from scst_core.main import scst_register_target_template, scst_unregister_target_template
from scst_core.scst import (SCST_CMD_STATE_DATA_WAIT,
                            SCST_CONTEXT_DIRECT, SCST_CONTEXT_SAME, SCST_DATA_BIDI,
                            SCST_DATA_NONE, SCST_DATA_READ, SCST_DATA_WRITE,
                            SCST_RX_STATUS_ERROR_FATAL, SCST_RX_STATUS_ERROR_SENSE_SET,
                            SCST_RX_STATUS_SUCCESS, SCST_TGT_RES_SUCCESS, scst_cmd,
                            scst_mgmt_cmd,
                            scst_tgt_template)
from scst_core.targ import (scst_cmd_init_done, scst_rx_cmd,
                            scst_rx_data, scst_rx_mgmt_fn, scst_tgt_cmd_done)

TX_SCSI = 0
TX_PDU = 1
TX_FAST_READ = 2        # a READ predicted by scst_core.fastpath: no scst_cmd
TX_FAST_WRITE = 3       # the same for a WRITE (the TX_FAST_* are the highest)
# (a predicted command's response: a Data-In or a SCSI Response with GOOD,
# or a SCSI Response with fast_sense)
SN_NONE = 0       # the PDU carries no StatSN
SN_NEXT = 1       # it carries and consumes the next StatSN
SN_PEEK = 2       # it carries the next StatSN without consuming it (R2T)

_ATTR = (SCST_CMD_QUEUE_UNTAGGED, SCST_CMD_QUEUE_SIMPLE, SCST_CMD_QUEUE_ORDERED,
         SCST_CMD_QUEUE_HEAD_OF_QUEUE, SCST_CMD_QUEUE_ACA, SCST_CMD_QUEUE_SIMPLE,
         SCST_CMD_QUEUE_SIMPLE, SCST_CMD_QUEUE_SIMPLE)
_ZERO_LUN = bytes(8)
_NO_BUF = memoryview(b"")
# A predicted command's buffer up to this size stays with its iscsi_cmnd
# for the next one; a larger READ's (up to FAST_READ_MAX) is pages of its
# own, from the page allocator as the full path's buffers are, so a
# connection's cmnd_cache never holds more than this per object.
FAST_BUF_KEEP = 32768
_MASK32 = 0xFFFFFFFF
# The BHS as a SCSI Command's (RFC 7143 11.3): the common words of
# hdr.common_hdr, then EDTL, CmdSN, ExpStatSN and the CDB
_bhs_scsi_cmd = struct.Struct(">BBBBI8sIIII16s")


@attrs.define(slots=True, eq=False)
class iscsi_cmnd:
    """A SCSI command of one connection, from its BHS to its last response."""
    conn: iscsi_conn
    itt: int
    lun: bytes
    flags: int
    edtl: int
    scst_cmd: Any = None
    tx_kind: int = TX_SCSI
    # READ and WRITE prediction (TX_FAST_READ, TX_FAST_WRITE): the data,
    # in fast_buf, the buffer this object keeps for it (grown to the
    # largest such command it served, at most FAST_BUF_KEEP), or in
    # fast_page, a READ's own above that, until the command is answered;
    # the sense of its CHECK CONDITION, b"" for GOOD
    fast_data: memoryview = _NO_BUF
    fast_buf: memoryview = _NO_BUF
    fast_page: page | None = None
    fast_sense: bytes = b""
    # write data: the rd thread only
    write_ready: bool = False       # rdy_to_xfer gave us the buffer
    unsol_open: bool = False        # unsolicited Data-Out may still come
    rx_pending: bool = False        # data for this command is still arriving
    rsp_deferred: bool = False      # SCST answered while data was arriving
    data_done: bool = False
    data_rcvd: int = 0
    r2t_next: int = 0               # next buffer offset to solicit
    r2t_sn: int = 0
    outstanding_r2t: int = 0
    r2t_seqs: dict = attrs.field(factory=dict)     # TTT -> [next offset, end, next DataSN]
    held: bool = False              # waiting for its CmdSN turn (see _cmd_sn_order)
    release_pending: bool = False   # its turn came while its data was arriving
    held_buf: bytearray | None = None
    unsol_seq: list = attrs.field(factory=lambda: [0, 0, 0])
    write_list_entry: list_head = attrs.field(default=None)
    # the one-PDU response's header, built by the sender (tx_busy holder):
    # made once with the cached object, so a response allocates no header
    rsp_bhs: bytearray = attrs.field(factory=lambda: bytearray(48))

    def __attrs_post_init__(self) -> None:
        self.write_list_entry = list_head(self)


@attrs.define(slots=True, eq=False)
class iscsi_tx_pdu:
    """A prebuilt target PDU (everything but SCSI Response and Data-In)."""
    bhs: bytearray
    data: bytes = b""
    sn_mode: int = SN_NEXT
    on_sent: Callable[[iscsi_conn], None] | None = None
    tx_kind: int = TX_PDU
    write_list_entry: list_head = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        self.write_list_entry = list_head(self)


iscsi_cmnd_cache = kmem_cache_create("iscsi_cmnd", iscsi_cmnd,
                                     ctor=lambda: iscsi_cmnd(None, 0, _ZERO_LUN, 0, 0))

# Tracepoints (iscsi-scst has TRACE_D_READ/D_WRITE printk levels instead).
# sess is the initiator's name ("" before login completes); opcode is the
# iSCSI opcode; a received PDU is a span covering its header's handling
# (the SCSI command's first states run inside it, on the rd thread).
trace_iscsi_pdu_rx = TRACE_EVENT("iscsi_pdu_rx", (
    "sess", "cid", "opcode", "flags", "itt", "lun", "sn", "ttt", "offset", "dsl"), span=True)
trace_iscsi_pdu_tx = TRACE_EVENT("iscsi_pdu_tx", ("sess", "cid", "opcode", "itt", "stat_sn", "dlen"))
trace_iscsi_r2t = TRACE_EVENT("iscsi_r2t", ("sess", "itt", "ttt", "offset", "len", "outstanding"))
trace_iscsi_login = TRACE_EVENT("iscsi_login", (
    "peer", "initiator", "csg", "nsg", "transit", "status", "keys", "rsp_keys"))
_SN_FIELD = struct.Struct(">I")


# -- rx: header dispatch ----------------------------------------------------

def _rx_set(conn: iscsi_conn, dsl: int, done: Callable[[iscsi_conn], None] | None,
            iov: list | None = None, cmnd: Any = None) -> None:
    """Route the coming data segment: into iov, or collected if iov is None."""
    conn.rx_left = dsl
    conn.rx_tail = ((-dsl) & 3) + (4 if conn.ddigest_rx and dsl else 0)
    conn.rx_done = done
    conn.rx_cmnd = cmnd
    conn.rx_dcrc = 0
    if iov is None:
        conn.rx_collect = bytearray()
        conn.rx_iov = []
    else:
        conn.rx_collect = None
        conn.rx_iov = iov
    conn.read_state = RX_DATA if dsl else RX_TAIL


def _discard_iov(conn: iscsi_conn, n: int) -> list:
    d = iscsi_dummy_buf
    out = []
    while n > 0:
        k = n if n < len(d) else len(d)
        out.append(d[:k])
        n -= k
    return out


def _rx_discard(conn: iscsi_conn, dsl: int) -> None:
    _rx_set(conn, dsl, None, _discard_iov(conn, dsl))


def iscsi_rx_hdr(conn: iscsi_conn, buf: bytearray, off: int) -> None:
    """A complete BHS has arrived at buf[off:] (rd thread): act on it and
    route its data segment. conn.rx_bhs keeps a copy of the BHS whenever a
    later step (data, digest error) needs it."""
    # A SCSI Command's own fields too, for any PDU: one unpack, not two,
    # for the PDU that is almost every one
    b0, flags, _b2, _b3, lens, lun, itt, edtl, cmd_sn, _exp_stat_sn, cdb = \
        _bhs_scsi_cmd.unpack_from(buf, off)
    dsl = lens & 0xFFFFFF
    op = b0 & ISCSI_OPCODE_MASK
    if fail_iscsi_pdu.armed and iscsi_pdu_fault(op):
        raise ProtocolError(f"iscsi: {conn.peer}: fault injection (fail_iscsi_pdu): dropping the "
                            f"connection at a PDU of opcode {op:#x}, ITT {itt:#x}", None)
    if dsl > conn.max_recv_data_length:
        raise ProtocolError(f"iscsi: {conn.peer}: data segment of {dsl} bytes exceeds "
                            f"MaxRecvDataSegmentLength {conn.max_recv_data_length} "
                            f"(opcode {op:#x}, ITT {itt:#x})", None)
    if op == ISCSI_OP_SCSI_CMD and conn.session is not None:
        if dsl:
            conn.rx_bhs = bytes(buf[off:off + 48])
        _scsi_cmd_rx_start(conn, buf, off, b0, flags, lun, itt, dsl, edtl, cmd_sn, cdb)
        return
    if conn.fast_wr_list:
        iscsi_fast_wr_flush(conn)
    bhs = conn.rx_bhs = bytes(buf[off:off + 48])
    if conn.session is None:
        if op != ISCSI_OP_LOGIN_CMD:
            raise ProtocolError(f"iscsi: {conn.peer}: opcode {op:#x} before login completed", None)
        _rx_set(conn, dsl, _login_rx_done)
    elif op == ISCSI_OP_SCSI_DATA_OUT:
        _data_out_rx_start(conn, bhs, flags, itt, dsl)
    elif op == ISCSI_OP_NOP_OUT:
        _rx_set(conn, dsl, _nop_out_done)
    elif op == ISCSI_OP_TEXT_CMD:
        _rx_set(conn, dsl, _text_done)
    elif op == ISCSI_OP_LOGOUT_CMD:
        _rx_set(conn, dsl, _logout_done)
    elif op == ISCSI_OP_SCSI_TASK_MGT_MSG:
        _rx_set(conn, dsl, _tmf_done)
    elif op in (ISCSI_OP_LOGIN_CMD, ISCSI_OP_SNACK_CMD):
        iscsi_send_reject(conn, bhs, ISCSI_REASON_PROTOCOL_ERROR)
        _rx_discard(conn, dsl)
    else:
        iscsi_send_reject(conn, bhs, ISCSI_REASON_UNSUPPORTED_COMMAND)
        _rx_discard(conn, dsl)


_PDU_NAMES = {"SCSI-Command": ISCSI_OP_SCSI_CMD, "Data-Out": ISCSI_OP_SCSI_DATA_OUT,
              "NOP-Out": ISCSI_OP_NOP_OUT, "Text": ISCSI_OP_TEXT_CMD,
              "Task-Management": ISCSI_OP_SCSI_TASK_MGT_MSG, "Logout": ISCSI_OP_LOGOUT_CMD,
              "Login": ISCSI_OP_LOGIN_CMD}
# The connection drops when an eligible PDU's header arrives ("drop the
# connection after the 2nd Data-Out": opcode=Data-Out,interval=3,times=1).
fail_iscsi_pdu = DECLARE_FAULT_ATTR("fail_iscsi_pdu", {
    "opcode": (str, "Data-Out", tuple(_PDU_NAMES) + ("ANY",))})


def iscsi_pdu_fault(op: int) -> bool:
    """Should the connection drop at this PDU (fail_iscsi_pdu)?"""
    name = fail_iscsi_pdu.params["opcode"]
    if name != "ANY" and _PDU_NAMES[name] != op:
        return False
    return should_fail(fail_iscsi_pdu, 1)


def iscsi_rx_hdr_traced(conn: iscsi_conn, buf: bytearray, off: int) -> None:
    """iscsi_rx_hdr inside an iscsi_pdu_rx span (nthread calls this one
    while the event is enabled)."""
    b0, flags, _b2, _b3, lens, lun, itt = common_hdr.unpack_from(buf, off)
    op = b0 & ISCSI_OPCODE_MASK
    sess = conn.session
    if op == ISCSI_OP_SCSI_DATA_OUT:
        sn = _SN_FIELD.unpack_from(buf, off + 36)[0]            # DataSN
    else:
        sn = _SN_FIELD.unpack_from(buf, off + 24)[0]            # CmdSN
    who = ("" if sess is None else sess.initiator_name, conn.cid, op, flags, itt,
           scst_unpack_lun(lun) if op in (ISCSI_OP_SCSI_CMD, ISCSI_OP_SCSI_DATA_OUT,
                                          ISCSI_OP_SCSI_TASK_MGT_MSG) else 0,
           sn, _SN_FIELD.unpack_from(buf, off + 20)[0], _SN_FIELD.unpack_from(buf, off + 40)[0],
           lens & 0xFFFFFF)
    t0 = tracepoint.now()
    try:
        iscsi_rx_hdr(conn, buf, off)
    finally:
        trace_iscsi_pdu_rx.span_end(t0, *who)


# RFC 7143 11.13.5 login status (class, detail) -> the reason a metric names
LOGIN_FAILURE_REASONS = {
    (0x02, 0x00): "initiator_error", (0x02, 0x01): "authentication_failure",
    (0x02, 0x02): "authorization_failure", (0x02, 0x03): "target_not_found",
    (0x02, 0x04): "target_removed", (0x02, 0x05): "unsupported_version",
    (0x02, 0x06): "too_many_connections", (0x02, 0x07): "missing_parameter",
    (0x02, 0x08): "cant_include_in_session", (0x02, 0x09): "session_type_not_supported",
    (0x02, 0x0A): "session_does_not_exist", (0x02, 0x0B): "invalid_during_login",
    (0x03, 0x00): "target_error", (0x03, 0x01): "service_unavailable",
    (0x03, 0x02): "out_of_resources",
}
# (target name or "", "success" | "failure", reason) -> logins; the rd
# threads' login path only, on the one CPU
login_stats: dict[tuple[str, str, str], int] = {}


def _count_login(login: login_session | None, status_class: int, status_detail: int) -> None:
    target = login.target.name if login is not None and login.target is not None else ""
    if status_class == 0:
        key = (target, "success", "")
    else:
        key = (target, "failure", LOGIN_FAILURE_REASONS.get(
            (status_class, status_detail), f"status_{status_class:02x}{status_detail:02x}"))
    login_stats[key] = login_stats.get(key, 0) + 1


def iscsi_metrics() -> list[tuple[str, str, str, list]]:
    """The iSCSI driver's counter families (see scst_core.stats for the
    shape): logins by target, result and reason; per session, the commands
    that used the last CmdSN of the window (the initiator then waits)."""
    logins = [({"target": t or "-", "result": r, "reason": why or "-"}, n)
              for (t, r, why), n in sorted(login_stats.items())]
    stalls = [({"target": s.target.name, "session": s.initiator_name, "tsih": str(s.tsih)},
               s.cmdsn_window_full) for s in session_mod.session_list if s.target is not None]
    return [("uscst_iscsi_logins", "counter", "logins, by target, result and failure reason",
             logins),
            ("uscst_iscsi_cmdsn_window_stalls", "counter", "commands that used the last CmdSN "
             "the target allowed (MaxCmdSN): the initiator stalls until a response", stalls)]


def _login_keys(data: bytes) -> str:
    """A login PDU's keys for the trace, CHAP values left out."""
    keys = []
    for kv in data.decode("utf-8", "replace").split("\0"):
        if kv:
            k, _, v = kv.partition("=")
            keys.append(f"{k}=<hidden>" if k.startswith("CHAP_") and k != "CHAP_A" else kv)
    return " ".join(keys)[:1024]


def _trace_pdu_tx(conn: iscsi_conn, item: Any) -> None:
    sess = conn.session
    name = "" if sess is None else sess.initiator_name
    if item.tx_kind == TX_PDU:
        bhs = item.bhs
        trace_iscsi_pdu_tx(name, conn.cid, bhs[0] & ISCSI_OPCODE_MASK, u32_at(bhs, 16),
                           conn.stat_sn, len(item.data))
        return
    if item.tx_kind == TX_FAST_READ or item.tx_kind == TX_FAST_WRITE:
        # predicted before tracing was turned on
        if item.tx_kind == TX_FAST_READ and not item.fast_sense:
            trace_iscsi_pdu_tx(name, conn.cid, ISCSI_OP_SCSI_DATA_IN, item.itt, conn.stat_sn,
                               item.edtl)
        else:
            trace_iscsi_pdu_tx(name, conn.cid, ISCSI_OP_SCSI_RSP, item.itt, conn.stat_sn,
                               len(item.fast_sense))
        return
    scmd = item.scst_cmd
    data = (min(scmd.resp_data_len, item.edtl)
            if item.flags & ISCSI_CMD_READ and scmd.data_direction & SCST_DATA_READ else 0)
    trace_iscsi_pdu_tx(name, conn.cid, ISCSI_OP_SCSI_DATA_IN if data else ISCSI_OP_SCSI_RSP,
                       item.itt, conn.stat_sn, data)


def iscsi_protocol_error(conn: iscsi_conn, e: ProtocolError) -> bool:
    """Handle a ProtocolError from the receive path: True if the connection
    goes on (a Reject was queued), False if it must be dropped."""
    pr_err(str(e))
    return False


def iscsi_data_digest_error(conn: iscsi_conn) -> None:
    """The data segment just received failed its digest (RFC 7143 7.8):
    reject the PDU; a command it belongs to ends with CHECK CONDITION."""
    iscsi_send_reject(conn, conn.rx_bhs, ISCSI_REASON_DATA_DIGEST_ERROR)
    cmnd = conn.rx_cmnd
    if isinstance(cmnd, iscsi_cmnd):
        _fail_write(cmnd, scst_sense_data_digest_error)


def _fail_write(cmnd: iscsi_cmnd, sense: tuple[int, int, int]) -> None:
    """End a WRITE whose data went wrong: the rest of its data is
    discarded and it completes with CHECK CONDITION (ERL 0 task failure)."""
    scmd = cmnd.scst_cmd
    if scmd is None or cmnd.data_done:
        return
    cmnd.data_done = True
    cmnd.unsol_open = False
    cmnd.rx_pending = False
    if scmd.state == SCST_CMD_STATE_DATA_WAIT:
        scst_set_cmd_error(scmd, sense)
        scst_rx_data(scmd, SCST_RX_STATUS_ERROR_SENSE_SET, SCST_CONTEXT_DIRECT)
    elif cmnd.rsp_deferred:
        cmnd.rsp_deferred = False
        iscsi_queue_tx(cmnd.conn, cmnd.write_list_entry)


# -- rx: SCSI commands and their data ---------------------------------------

def _sn_holdable(conn: iscsi_conn, cmd_sn: int) -> bool:
    """Is a CmdSN ahead of ExpCmdSN inside the window (and not a duplicate),
    so that the PDU waits for its turn? Otherwise it is dropped silently, as
    RFC 7143 4.2.2.1 asks; the drop is logged."""
    sess = conn.session
    exp = sess.exp_cmd_sn
    max_sn = session_mod.iscsi_max_cmd_sn(sess)
    if sn_lt(exp, cmd_sn) and sn_le(cmd_sn, max_sn) and cmd_sn not in sess.pending_cmnds:
        return True
    pr_warn(f"iscsi: {conn.peer}: CmdSN {cmd_sn:#x} outside window [{exp:#x}, {max_sn:#x}]: dropped")
    return False


def _cmd_sn_order(conn: iscsi_conn, b0: int, cmd_sn: int, release: Callable[[], None]) -> bool:
    """CmdSN bookkeeping of a PDU (RFC 7143 4.2.2.1). True: act on it now.
    False: it was dropped, or it is held until the PDUs before it arrive,
    possibly on another connection; `release()` then acts on it, in CmdSN
    order. Immediate PDUs are never ordered."""
    sess = conn.session
    if b0 & ISCSI_OP_IMMEDIATE:
        return True
    if cmd_sn == sess.exp_cmd_sn:
        sess.exp_cmd_sn = (cmd_sn + 1) & _MASK32
        return True
    if _sn_holdable(conn, cmd_sn):
        sess.pending_cmnds[cmd_sn] = (conn, None, release)
    return False


def _release_pending(sess: Any) -> None:
    """Act on the held PDUs whose turn has come (after an in-order one)."""
    pend = sess.pending_cmnds
    while pend:
        held = pend.pop(sess.exp_cmd_sn, None)
        if held is None:
            return
        sess.exp_cmd_sn = (sess.exp_cmd_sn + 1) & _MASK32
        held[2]()


def _ordered(conn: iscsi_conn, handler: Callable[[iscsi_conn, bytes, bytes], None]) -> None:
    """Run a non-SCSI PDU's handler in CmdSN order (its BHS and data saved)."""
    bhs = conn.rx_bhs
    data = bytes(conn.rx_collect or b"")
    cmd_sn = u32_at(bhs, 24)
    if _cmd_sn_order(conn, bhs[0], cmd_sn, lambda: handler(conn, bhs, data)):
        handler(conn, bhs, data)
        _release_pending(conn.session)


_DIRECTION = (SCST_DATA_NONE, SCST_DATA_WRITE, SCST_DATA_READ, SCST_DATA_BIDI)
_RW = ISCSI_CMD_READ | ISCSI_CMD_WRITE
# a WRITE whose data all came with it (F bit: no Data-Out follows)
_WF = _RW | ISCSI_FLG_FINAL
_WF_WRITE = ISCSI_CMD_WRITE | ISCSI_FLG_FINAL


def _scsi_cmd_rx_start(conn: iscsi_conn, buf: bytearray, off: int, b0: int, flags: int,
                       lun: bytes, itt: int, dsl: int, edtl: int, cmd_sn: int,
                       cdb: bytes) -> None:
    sess = conn.session
    if sess.discovery:
        iscsi_send_reject(conn, bytes(buf[off:off + 48]), ISCSI_REASON_PROTOCOL_ERROR)
        _rx_discard(conn, dsl)
        return
    cmd_hash = conn.cmd_hash
    if itt in cmd_hash or itt == ISCSI_RESERVED_TAG:
        raise ProtocolError(f"iscsi: {conn.peer}: ITT {itt:#x} already in use", None)
    write = flags & ISCSI_CMD_WRITE
    params = conn.sess_params
    if dsl and (not write or dsl > edtl or not params.immediate_data):
        raise ProtocolError(f"iscsi: {conn.peer}: ITT {itt:#x}: {dsl} bytes of immediate data "
                            f"not allowed (EDTL {edtl}, write {bool(write)})", None)
    if b0 & ISCSI_OP_IMMEDIATE:
        in_order = True
    elif cmd_sn == sess.exp_cmd_sn:
        in_order = True
        sess.exp_cmd_sn = (cmd_sn + 1) & _MASK32
        if cmd_sn == sess.max_cmd_sn:
            sess.cmdsn_window_full += 1      # the initiator waits for a response now
    elif _sn_holdable(conn, cmd_sn):
        in_order = False
    else:
        _rx_discard(conn, dsl)
        return
    # As iscsi-scst's cmnd_alloc, the PDU's own object never fails (either
    # way it is taken below): the answer to an allocation failure needs it
    # gone cleanly. READ and WRITE prediction (scst_core.fastpath): on a
    # session of one connection (a task management function on another
    # could otherwise be answered before this response is sent), without
    # digests, a plain READ whose answer fits one Data-In PDU, or a WRITE
    # whose data all came in this PDU and is already received, is offered
    # with a buffer of the object's own (a WRITE's data is copied there out
    # of the receive buffer, which the receive loop reuses) in an object of
    # the connection's cmnd_cache. A READ may be answered at once (and a
    # READ from a device without a page cache starts). A WRITE is kept on
    # conn.fast_wr_list, and the pass's WRITEs are offered as one list
    # (iscsi_fast_wr_flush). _fast_cmnd_done answers a started one.
    if (in_order and not conn.hdigest_tx and not conn.ddigest_tx and len(sess.conn_list) == 1
            and ((flags & _RW == ISCSI_CMD_READ and 0 < edtl <= FAST_READ_MAX
                  and edtl <= params.max_xmit_data_length)
                 or (flags & _WF == _WF_WRITE and dsl == edtl and 0 < dsl <= FAST_WRITE_MAX
                     and not conn.ddigest_rx
                     and conn.rx_start + dsl + ((-dsl) & 3) <= conn.rx_end))):
        cache = conn.cmnd_cache
        cmnd = (cache.pop() if cache
                else kmem_cache_alloc(iscsi_cmnd_cache, GFP_KERNEL | __GFP_NOFAIL))
        fbuf: memoryview | None = cmnd.fast_buf
        if len(fbuf) < edtl:
            fbuf = _fast_buf_get(cmnd, edtl)
        if fbuf is not None:            # else no pages now: the full path waits for them
            data = fbuf[:edtl]
            cmnd.conn = conn
            cmnd.itt = itt
            cmnd.lun = lun
            cmnd.flags = flags
            cmnd.edtl = edtl
            cmnd.fast_data = data
            cmd_hash[itt] = cmnd
            if write:
                start = conn.rx_start
                data[:] = conn.rxmv[start:start + dsl]
                conn.rx_start = start + dsl + ((-dsl) & 3)
                cmnd.tx_kind = TX_FAST_WRITE
                conn.fast_wr_list.append((cmnd, lun, cdb, _ATTR[flags & ISCSI_CMD_ATTR_MASK],
                                          data))
                if sess.pending_cmnds:
                    iscsi_fast_wr_flush(conn)
                    _release_pending(sess)
                return
            if conn.fast_wr_list:
                iscsi_fast_wr_flush(conn)
            cmnd.tx_kind = TX_FAST_READ
            r = scst_cmd_fast(sess.scst_sess, lun, cdb, _ATTR[flags & ISCSI_CMD_ATTR_MASK],
                              data, _fast_cmnd_done, cmnd)
            if r:
                if r == FAST_DONE:
                    conn.rd_write_list.append(cmnd.write_list_entry)  # iscsi_queue_tx's rd case
                if sess.pending_cmnds:
                    _release_pending(sess)
                return
            del cmd_hash[itt]
            cmnd.tx_kind = TX_SCSI
            if cmnd.fast_page is not None:
                _fast_page_put(cmnd)
    else:
        cmnd = kmem_cache_alloc(iscsi_cmnd_cache, GFP_KERNEL | __GFP_NOFAIL)
    if conn.fast_wr_list:
        iscsi_fast_wr_flush(conn)
    _scsi_cmd_full(conn, cmnd, lun, cdb, flags, itt, dsl, edtl, cmd_sn, in_order, None)


def iscsi_fast_wr_flush(conn: iscsi_conn) -> None:
    """Offer the predicted WRITEs kept on conn.fast_wr_list to SCST, in
    CmdSN order (rd thread): scst_core.fastpath starts the longest run it
    can; the first one it declines takes the full path, with the data it
    already has, and the rest is offered again. So every command starts,
    or reaches SCST's full path, in the order it came, before the next
    PDU is handled."""
    wl = conn.fast_wr_list
    conn.fast_wr_list = []
    scst_sess = conn.session.scst_sess
    n = len(wl)
    i = 0
    while i < n:
        i += scst_cmds_fast_write(scst_sess, wl, i, _fast_cmnd_done)
        if i < n:
            cmnd, lun, cdb, _attr, data = wl[i]
            i += 1
            del conn.cmd_hash[cmnd.itt]
            cmnd.tx_kind = TX_SCSI
            _scsi_cmd_full(conn, cmnd, lun, cdb, cmnd.flags, cmnd.itt, len(data), cmnd.edtl,
                           0, True, data)


def _scsi_cmd_full(conn: iscsi_conn, cmnd: iscsi_cmnd, lun: bytes, cdb: bytes, flags: int,
                   itt: int, dsl: int, edtl: int, cmd_sn: int, in_order: bool,
                   data: memoryview | None) -> None:
    """A SCSI Command's full path: an scst_cmd for cmnd, handed to SCST
    now (in_order) or held until its CmdSN's turn. Its immediate data
    (dsl bytes) comes next in the receive stream, or (a predicted WRITE
    SCST declined, in order) is data, already taken from the stream; held
    commands are then released by iscsi_fast_wr_flush's caller, after
    the rest of the list (they came after it)."""
    sess = conn.session
    scmd = scst_rx_cmd(sess.scst_sess, lun, cdb, False)
    if scmd is None:
        kmem_cache_free(iscsi_cmnd_cache, cmnd)
        pr_warn(f"iscsi: {conn.peer}: no memory for ITT {itt:#x}: answering BUSY")
        if in_order:
            _send_busy(conn, itt, edtl)
        else:
            sess.pending_cmnds[cmd_sn] = (conn, None, functools.partial(_send_busy, conn, itt, edtl))
        if data is None:
            _rx_discard(conn, dsl)
            if in_order and sess.pending_cmnds:
                _release_pending(sess)
        return
    cmnd.conn = conn
    cmnd.itt = itt
    cmnd.lun = lun
    cmnd.flags = flags
    cmnd.edtl = edtl
    cmnd.scst_cmd = scmd
    write = flags & ISCSI_CMD_WRITE
    if write:
        params = conn.sess_params
        final = flags & ISCSI_FLG_FINAL
        cmnd.unsol_open = not final
        if params.initial_r2t or final:
            cmnd.r2t_next = dsl
        else:
            cmnd.r2t_next = min(edtl, params.first_burst_length)
            useq = cmnd.unsol_seq
            useq[0] = dsl
            useq[1] = cmnd.r2t_next
            useq[2] = 0
        cmnd.rx_pending = bool(dsl) or cmnd.unsol_open
    scmd.tgt_i_priv = cmnd
    scmd.tag = itt
    scmd.queue_type = _ATTR[flags & ISCSI_CMD_ATTR_MASK]
    scmd.sendfile_ok = not conn.ddigest_tx      # a data digest needs the bytes
    # scst_cmd_set_expected, an inline in scst.h, without the call
    scmd.expected_data_direction = _DIRECTION[(flags >> 5) & 3]
    scmd.expected_transfer_len = edtl
    cmd_hash = conn.cmd_hash
    if not in_order:
        # Held until its turn; its unsolicited data waits in a buffer of its own.
        sess.pending_cmnds[cmd_sn] = (conn, cmnd, lambda: _hand_to_scst(cmnd))
        cmd_hash[itt] = cmnd
        cmnd.held = True
        if write and cmnd.r2t_next:
            cmnd.held_buf = bytearray(cmnd.r2t_next)
        if dsl:
            _rx_set(conn, dsl, _scsi_data_done, _data_iov(cmnd, 0, dsl), cmnd)
        return
    cmd_hash[itt] = cmnd
    scst_cmd_init_done(scmd, SCST_CONTEXT_DIRECT)
    if data is not None:
        # What the receive loop would do with the segment (_rx_set into
        # _data_iov's views, then _scsi_data_done), from the bytes taken
        # out of it already: into the buffer up to its length, if SCST has
        # given it
        if cmnd.write_ready:
            sg_copy_from_buffer(scmd.sg, scmd.sg_cnt, data[:min(dsl, scmd.bufflen)])
        cmnd.data_rcvd += dsl
        _rx_progress(cmnd)
        return
    if dsl and not _rx_immediate_in_place(conn, cmnd, dsl):
        _rx_set(conn, dsl, _scsi_data_done, _data_iov(cmnd, 0, dsl), cmnd)
    if sess.pending_cmnds:
        _release_pending(sess)


def _fast_buf_get(cmnd: iscsi_cmnd, edtl: int) -> memoryview | None:
    """A buffer for a predicted command of edtl bytes that cmnd's own is
    too small for: cmnd's, grown, up to FAST_BUF_KEEP; above it, pages of
    the command's own (cmnd.fast_page, freed when it is answered), or
    None when the allocator has none now or its fault point is armed (the
    full path's allocation is where that fault is decided)."""
    if edtl <= FAST_BUF_KEEP:
        fbuf = cmnd.fast_buf = memoryview(bytearray(edtl if edtl > 4096 else 4096))
        return fbuf
    if fail_page_alloc.armed:
        return None
    p = alloc_pages(GFP_ATOMIC, get_order(edtl))
    if p is None:
        return None
    cmnd.fast_page = p
    return p.mv


def _fast_page_put(cmnd: iscsi_cmnd) -> None:
    p = cmnd.fast_page
    cmnd.fast_page = None
    cmnd.fast_data = _NO_BUF
    __free_pages(p, p.order)


def _fast_cmnd_done(cmnd: iscsi_cmnd, sense: bytes) -> None:
    """scst_core.fastpath's end of a predicted command it started
    (softirq): queue its response, or on a closing connection, whose
    responses are no longer sent, free it as iscsi_tx_done frees the
    unsent ones."""
    cmnd.fast_sense = sense
    conn = cmnd.conn
    if conn.closing:
        iscsi_tx_done(conn, [cmnd], -ECONNABORTED)
    else:
        iscsi_queue_tx(conn, cmnd.write_list_entry)


def _rx_immediate_in_place(conn: iscsi_conn, cmnd: iscsi_cmnd, dsl: int) -> bool:
    """The common WRITE (ImmediateData=Yes, all of it in the command PDU,
    no R2T): when its whole data segment is already in the receive buffer,
    no data digest is to be checked and SCST has given the one-entry
    buffer, copy the data there now and start the exec, instead of routing
    the segment through the receive loop's data and tail states. The
    receive loop goes on at the next BHS. False: the general path."""
    if conn.ddigest_rx or not cmnd.write_ready or cmnd.data_done or cmnd.unsol_open:
        return False
    scmd = cmnd.scst_cmd
    if dsl != cmnd.edtl or scmd.sg_cnt != 1 or scmd.bufflen < dsl:
        return False
    s = conn.rx_start
    end = s + dsl + ((-dsl) & 3)
    if end > conn.rx_end:
        return False
    sg = scmd.sg[0]                 # sg_virt's view, without the call
    o = sg.offset
    sg.page.mv[o:o + dsl] = conn.rxmv[s:s + dsl]
    conn.rx_start = end
    cmnd.data_rcvd = dsl
    cmnd.rx_pending = False
    cmnd.data_done = True
    scst_rx_data(scmd, SCST_RX_STATUS_SUCCESS, SCST_CONTEXT_DIRECT)
    return True


def _send_busy(conn: iscsi_conn, itt: int, edtl: int) -> None:
    """SCSI Response BUSY for a command SCST could not take (iscsi-scst's
    answer when scst_rx_cmd fails); its data, if any, is discarded."""
    rsp = bytearray(48)
    pack_scsi_rsp(rsp, ISCSI_FLG_RESID_UNDERFLOW if edtl else 0, 0, SAM_STAT_BUSY, 0, itt,
                  0, 0, 0, 0, 0, edtl)
    _queue_pdu(conn, rsp)


def _hand_to_scst(cmnd: iscsi_cmnd) -> None:
    """A held command's turn has come: give it to SCST, with the data that
    arrived meanwhile; if a segment of it is still arriving, when that ends."""
    cmnd.held = False
    conn = cmnd.conn
    if conn.rx_cmnd is cmnd and conn.read_state != RX_INIT_BHS:
        cmnd.release_pending = True
        return
    _finish_release(cmnd)


def _finish_release(cmnd: iscsi_cmnd) -> None:
    cmnd.release_pending = False
    scmd = cmnd.scst_cmd
    buf = cmnd.held_buf
    cmnd.held_buf = None
    scst_cmd_init_done(scmd, SCST_CONTEXT_DIRECT)
    if buf is not None and cmnd.write_ready and cmnd.data_rcvd:
        n = min(cmnd.data_rcvd, len(buf), scmd.bufflen)
        sg_copy_from_buffer(scmd.sg, scmd.sg_cnt, memoryview(buf)[:n])
    if cmnd.write_ready or cmnd.rsp_deferred:
        _rx_progress(cmnd)


def _data_iov(cmnd: iscsi_cmnd, off: int, n: int) -> list:
    """Views of the command's buffer for bytes [off, off+n); what lies past
    the buffer (or all, before the buffer exists) goes to the discard area."""
    scmd = cmnd.scst_cmd
    out = []
    held = cmnd.held_buf
    if held is not None:
        if off < len(held):
            k = min(n, len(held) - off)
            out.append(memoryview(held)[off:off + k])
            n -= k
        if n > 0:
            out += _discard_iov(cmnd.conn, n)
        return out
    if cmnd.write_ready:
        end = off + n
        limit = scmd.bufflen
        pos = 0
        for sg in scmd.sg:
            if off >= limit or n <= 0:
                break
            ln = sg.length
            if off < pos + ln:
                a = off - pos
                b = min(ln, end - pos, limit - pos)
                out.append(sg_virt(sg)[a:b])
                taken = b - a
                off += taken
                n -= taken
            pos += ln
    if n > 0:
        out += _discard_iov(cmnd.conn, n)
    return out


def _scsi_data_done(conn: iscsi_conn) -> None:
    cmnd = conn.rx_cmnd
    cmnd.data_rcvd += conn.rx_bhs[5] << 16 | conn.rx_bhs[6] << 8 | conn.rx_bhs[7]
    _rx_progress(cmnd)


def _data_out_rx_start(conn: iscsi_conn, bhs: bytes, flags: int, itt: int, dsl: int) -> None:
    ttt, _exp_stat_sn, data_sn, offset = unpack_data_out(bhs)
    cmnd = conn.cmd_hash.get(itt)
    if cmnd is None or not cmnd.flags & ISCSI_CMD_WRITE or cmnd.data_done:
        # Data for a task that is gone (aborted, or answered early): discard.
        _rx_discard(conn, dsl)
        return
    if offset + dsl > cmnd.edtl:
        raise ProtocolError(f"iscsi: {conn.peer}: Data-Out for ITT {itt:#x} at offset {offset} "
                            f"+ {dsl} exceeds EDTL {cmnd.edtl}", None)
    # Each sequence (the unsolicited one, or one per R2T) numbers its PDUs
    # from 0 and, with DataPDUInOrder=Yes, sends them in offset order
    # (RFC 7143 4.2.4, 11.7.5); anything else at ERL 0 ends the connection.
    if ttt == ISCSI_RESERVED_TAG:
        if not cmnd.unsol_open:
            raise ProtocolError(f"iscsi: {conn.peer}: unsolicited Data-Out for ITT {itt:#x} "
                                f"after the unsolicited burst ended", None)
        seq = cmnd.unsol_seq
    else:
        seq = cmnd.r2t_seqs.get(ttt)
        if seq is None:
            raise ProtocolError(f"iscsi: {conn.peer}: Data-Out for ITT {itt:#x} with unknown "
                                f"TTT {ttt:#x}", None)
    if data_sn != seq[2] or offset != seq[0] or offset + dsl > seq[1]:
        pr_warn(f"iscsi: {conn.peer}: Data-Out for ITT {itt:#x} TTT {ttt:#x}: DataSN {data_sn} "
                f"offset {offset}+{dsl}, expected DataSN {seq[2]} at offset {seq[0]} within "
                f"{seq[1]}: task failed")
        iscsi_send_reject(conn, bhs, ISCSI_REASON_PROTOCOL_ERROR)
        _fail_write(cmnd, scst_sense_data_phase_error if data_sn != seq[2]
                    else scst_sense_data_offset_error)
        _rx_discard(conn, dsl)
        return
    seq[0] = offset + dsl
    seq[2] = data_sn + 1
    _rx_set(conn, dsl, _data_out_done, _data_iov(cmnd, offset, dsl), cmnd)


def _data_out_done(conn: iscsi_conn) -> None:
    cmnd = conn.rx_cmnd
    bhs = conn.rx_bhs
    cmnd.data_rcvd += bhs[5] << 16 | bhs[6] << 8 | bhs[7]
    if bhs[1] & ISCSI_FLG_FINAL:
        ttt = u32_at(bhs, 20)
        if ttt == ISCSI_RESERVED_TAG:
            cmnd.unsol_open = False
        elif cmnd.r2t_seqs.pop(ttt, None) is not None:
            cmnd.outstanding_r2t -= 1
            _send_r2ts(cmnd)
    _rx_progress(cmnd)


def _rx_progress(cmnd: iscsi_cmnd) -> None:
    """After a data segment of cmnd: answer early replies, start exec."""
    if cmnd.held:
        return                      # not SCST's yet: its data waits in held_buf
    if cmnd.release_pending:
        _finish_release(cmnd)
        return
    cmnd.rx_pending = cmnd.unsol_open
    if not cmnd.rx_pending and cmnd.rsp_deferred:
        cmnd.rsp_deferred = False
        cmnd.data_done = True
        iscsi_queue_tx(cmnd.conn, cmnd.write_list_entry)
        return
    if cmnd.write_ready and not cmnd.data_done and cmnd.data_rcvd >= cmnd.edtl:
        cmnd.data_done = True
        scst_rx_data(cmnd.scst_cmd, SCST_RX_STATUS_SUCCESS, SCST_CONTEXT_DIRECT)


def _send_r2ts(cmnd: iscsi_cmnd) -> None:
    conn = cmnd.conn
    params = conn.sess_params
    while cmnd.r2t_next < cmnd.edtl and cmnd.outstanding_r2t < params.max_outstanding_r2t:
        n = min(params.max_burst_length, cmnd.edtl - cmnd.r2t_next)
        conn.next_ttt = (conn.next_ttt + 1) & 0x7FFFFFFF
        ttt = conn.next_ttt
        # [next offset, end of the burst, next DataSN]
        cmnd.r2t_seqs[ttt] = [cmnd.r2t_next, cmnd.r2t_next + n, 0]
        bhs = bytearray(48)
        pack_r2t(bhs, cmnd.lun, cmnd.itt, ttt, 0, 0, 0, cmnd.r2t_sn, cmnd.r2t_next, n)
        cmnd.r2t_sn += 1
        cmnd.r2t_next += n
        cmnd.outstanding_r2t += 1
        if trace_iscsi_r2t.enabled:
            trace_iscsi_r2t(conn.session.initiator_name, cmnd.itt, ttt, cmnd.r2t_next - n, n,
                            cmnd.outstanding_r2t)
        iscsi_queue_tx(conn, iscsi_tx_pdu(bhs, sn_mode=SN_PEEK).write_list_entry)


# -- SCST callbacks ---------------------------------------------------------

def iscsi_rdy_to_xfer(scmd: scst_cmd) -> int:
    """The buffer for WRITE data exists: solicit what is not unsolicited."""
    cmnd = scmd.tgt_i_priv
    if cmnd.conn.closing:
        cmnd.data_done = True
        scst_rx_data(scmd, SCST_RX_STATUS_ERROR_FATAL, SCST_CONTEXT_SAME)
        return SCST_TGT_RES_SUCCESS
    cmnd.write_ready = True
    if cmnd.r2t_next < cmnd.edtl:
        _send_r2ts(cmnd)
    return SCST_TGT_RES_SUCCESS


def iscsi_xmit_response(scmd: scst_cmd) -> int:
    cmnd = scmd.tgt_i_priv
    conn = cmnd.conn
    if conn.closing or scmd.aborted:
        # No response for an aborted task: the TMF response speaks for it.
        scst_tgt_cmd_done(scmd, SCST_CONTEXT_SAME)
        return SCST_TGT_RES_SUCCESS
    if cmnd.rx_pending:
        cmnd.rsp_deferred = True
        return SCST_TGT_RES_SUCCESS
    cmnd.data_done = True
    if sched.cpu.curr is conn.rd_task:
        # iscsi_queue_tx's rd thread case, without the call: a READ from the
        # page cache is answered here, on the rd thread, once per command.
        conn.rd_write_list.append(cmnd.write_list_entry)
    elif not conn.rd_write_list:
        # iscsi_queue_tx's llist case, without the call: a softirq
        # completion (vdisk_blockio, io_uring) is queued lock-free.
        cpl = conn.cpl_list
        cpl.append(cmnd.write_list_entry)
        if len(cpl) == 1 and conn.write_list.next is conn.write_list:
            wake_up(conn.wr_waitQ)
    else:
        iscsi_queue_tx(conn, cmnd.write_list_entry)
    return SCST_TGT_RES_SUCCESS


def iscsi_on_free_cmd(scmd: scst_cmd) -> None:
    cmnd = scmd.tgt_i_priv
    conn = cmnd.conn
    # Its ITT maps to it alone since _scsi_cmd_rx_start (an ITT in use is
    # refused there), and only this removes the entry.
    cmd_hash = conn.cmd_hash
    if cmd_hash.pop(cmnd.itt, None) is not None and conn.closing and not cmd_hash:
        wake_up(conn.cmds_waitQ)
    cmnd.scst_cmd = None
    # A kept free object starts its next command clean. Only a command
    # with the W bit has write state (rdy_to_xfer, R2T, Data-Out and an
    # unsolicited burst all need it), so a READ resets data_done alone;
    # held, release_pending and held_buf are cleared when a held command
    # is handed to SCST (or aborted), before it can be freed.
    if cmnd.flags & ISCSI_CMD_WRITE:
        cmnd.write_ready = cmnd.unsol_open = cmnd.rx_pending = cmnd.rsp_deferred = False
        cmnd.data_rcvd = cmnd.r2t_next = cmnd.r2t_sn = cmnd.outstanding_r2t = 0
        if cmnd.r2t_seqs:
            cmnd.r2t_seqs.clear()
    cmnd.data_done = False
    cmnd.conn = None          # a kept free object must not pin its last connection
    kmem_cache_free(iscsi_cmnd_cache, cmnd)


_CMND_CACHE_MAX = 128      # a session's deepest command window (QueuedCommands)


def iscsi_conn_abort_cmnds(conn: iscsi_conn) -> None:
    """The connection is closing: finish every command it still owns."""
    iscsi_rd_tx_requeue(conn)
    unsent = []
    while True:
        node = conn.write_list.next
        if node is conn.write_list:
            break
        list_del_init(node)
        unsent.append(node.owner)
    # Responses already built into a send that never completed (the socket
    # failed under it) are finished too, or their commands would leak.
    unsent += conn.tx_items
    conn.tx_items = []
    conn.tx_iov.clear()
    conn.tx_len = 0
    iscsi_tx_done(conn, unsent, -ECONNABORTED)
    sess = conn.session
    if sess is not None:
        for sn, held in list(sess.pending_cmnds.items()):
            if held[0] is conn:
                del sess.pending_cmnds[sn]
    for cmnd in list(conn.cmd_hash.values()):
        scmd = cmnd.scst_cmd
        if scmd is None:
            continue
        if cmnd.held or cmnd.release_pending:
            # Never handed to SCST: it goes through as aborted, reaching no device.
            cmnd.held = cmnd.release_pending = False
            cmnd.held_buf = None
            scmd.aborted = True
            scst_cmd_init_done(scmd, SCST_CONTEXT_DIRECT)
        elif scmd.state == SCST_CMD_STATE_DATA_WAIT:
            cmnd.data_done = True
            scst_rx_data(scmd, SCST_RX_STATUS_ERROR_FATAL, SCST_CONTEXT_DIRECT)
        elif cmnd.rsp_deferred:
            cmnd.rsp_deferred = False
            scst_tgt_cmd_done(scmd, SCST_CONTEXT_DIRECT)
    for cmnd in conn.cmnd_cache:
        cmnd.conn = None
        kmem_cache_free(iscsi_cmnd_cache, cmnd)
    conn.cmnd_cache.clear()


# -- tx: building PDUs on the wr thread -------------------------------------

def _add_pdu(conn: iscsi_conn, iov: list, bhs: bytearray, data: Any, dlen: int) -> None:
    iov.append(bhs)
    if conn.hdigest_tx:
        iov.append(hdigest(bhs))
    if dlen:
        iov.append(data)
        pad = pad_bytes(dlen)
        if pad:
            iov.append(pad)
        if conn.ddigest_tx:
            iov.append(digest_data([data, pad]))


def iscsi_tx_build(conn: iscsi_conn, entries: list, iov: list, items: list, iov_max: int) -> int:
    """Append the PDUs of the entries' items to iov, and the items to items,
    in order, assigning StatSN in send order, until iov holds iov_max
    buffers: the count of entries taken (wr side: the tx_busy holder).

    One call per batch: the session's window (ExpCmdSN, MaxCmdSN) and the
    connection's parameters are read once, since nothing is received while
    a batch is built; a SCSI response that fits one Data-In PDU (the common
    READ) is built here, anything else by _tx_build_pdu or _tx_build_scsi."""
    sess = conn.session
    mrdsl = 0
    if sess is not None:
        exp = sess.exp_cmd_sn
        max_sn = sess.max_cmd_sn = (exp + sess.max_queued_cmnds - 1) & _MASK32
        if not (conn.hdigest_tx or conn.ddigest_tx):
            mrdsl = conn.sess_params.max_xmit_data_length    # 0: no one-PDU Data-In
    traced = trace_iscsi_pdu_tx.enabled
    n = len(entries)
    i = 0
    while i < n and len(iov) < iov_max:
        item = entries[i].owner
        i += 1
        items.append(item)
        if traced:
            _trace_pdu_tx(conn, item)
        if sess is None:
            exp, max_sn = _login_window(conn)
        kind = item.tx_kind
        if kind == TX_FAST_READ and not item.fast_sense:
            # All of its data and GOOD status in one Data-In PDU (the
            # fast path's conditions)
            stat_sn = conn.stat_sn
            conn.stat_sn = (stat_sn + 1) & _MASK32
            bhs = item.rsp_bhs
            pack_data_in_raw(bhs, 0, ISCSI_OP_SCSI_DATA_IN, ISCSI_FLG_FINAL | ISCSI_FLG_STATUS,
                             0, SAM_STAT_GOOD, item.edtl, item.lun, item.itt,
                             ISCSI_RESERVED_TAG, stat_sn, exp, max_sn, 0, 0, 0)
            iov.append(bhs)
            iov.append(item.fast_data)
            continue
        if kind >= TX_FAST_READ:            # a predicted WRITE, or READ that failed
            stat_sn = conn.stat_sn
            conn.stat_sn = (stat_sn + 1) & _MASK32
            if item.fast_sense:
                _tx_build_fast_sense(conn, item, iov, exp, max_sn, stat_sn)
                continue
            bhs = item.rsp_bhs
            pack_scsi_rsp_raw(bhs, 0, ISCSI_OP_SCSI_RSP, 0x80, ISCSI_RESPONSE_COMMAND_COMPLETED,
                              SAM_STAT_GOOD, 0, _ZERO_LUN, item.itt, 0, stat_sn, exp, max_sn, 0,
                              0, 0)
            iov.append(bhs)
            continue
        if kind == TX_PDU:
            _tx_build_pdu(conn, item, iov, exp, max_sn)
            continue
        scmd = item.scst_cmd
        edtl = item.edtl
        status = scmd.status
        stat_sn = conn.stat_sn
        conn.stat_sn = (stat_sn + 1) & _MASK32
        read = item.flags & ISCSI_CMD_READ
        total = 0
        if read and scmd.data_direction & SCST_DATA_READ:
            total = scmd.resp_data_len
            if total > edtl:
                total = edtl
        rflags = 0
        resid = 0
        bufflen = scmd.bufflen
        if bufflen > edtl:
            rflags = ISCSI_FLG_RESID_OVERFLOW
            # A CDB may ask for more than 4 GiB (and be refused): the field
            # has 32 bits (RFC 7143 11.4.5).
            resid = min(bufflen - edtl, _MASK32)
        else:
            sent = total if read else bufflen
            if sent < edtl:
                rflags = ISCSI_FLG_RESID_UNDERFLOW
                resid = edtl - sent
        if total and total <= mrdsl and status == SAM_STAT_GOOD and total & 3 == 0:
            data = scmd.data_file
            if data is not None:
                # Still in the page cache (decision 0067): its file_extent
                # slices as a memoryview does, and nthread sends the pieces
                # with kernel_sendfile.
                conn.tx_sendfile = True
                conn.tx_zc_reads += 1
                data = data[:total]
            else:
                sg = scmd.sg
                if len(sg) == 1:
                    # sg_virt (an inline in the kernel) cut to the data, in
                    # one slice: a one-entry buffer is bufflen bytes
                    # (scst_alloc_space), resp_data_len at most bufflen
                    s = sg[0]
                    data = s.page.mv[s.offset:s.offset + total]
            if data is not None:
                # The common case: all data and the status in one Data-In PDU.
                bhs = item.rsp_bhs
                pack_data_in_raw(bhs, 0, ISCSI_OP_SCSI_DATA_IN,
                                 ISCSI_FLG_FINAL | ISCSI_FLG_STATUS | rflags, 0, status, total,
                                 item.lun, item.itt, ISCSI_RESERVED_TAG, stat_sn, exp, max_sn,
                                 0, 0, resid)
                iov.append(bhs)
                iov.append(data)
                continue
        _tx_build_scsi(conn, item, iov, exp, max_sn, stat_sn, total, rflags, resid)
    return i


def _tx_build_fast_sense(conn: iscsi_conn, item: iscsi_cmnd, iov: list, exp: int, max_sn: int,
                         stat_sn: int) -> None:
    """A predicted command that ended in CHECK CONDITION: a SCSI Response
    with its sense, as _tx_build_scsi answers a failed command (a READ's
    whole transfer is the underflow: no data was sent)."""
    sense = item.fast_sense
    data = len(sense).to_bytes(2, "big") + sense
    read = item.tx_kind == TX_FAST_READ
    bhs = bytearray(48)
    pack_scsi_rsp(bhs, ISCSI_FLG_RESID_UNDERFLOW if read else 0,
                  ISCSI_RESPONSE_COMMAND_COMPLETED, SAM_STAT_CHECK_CONDITION, len(data), item.itt,
                  stat_sn, exp, max_sn, 0, 0, item.edtl if read else 0)
    _add_pdu(conn, iov, bhs, data, len(data))


def _login_window(conn: iscsi_conn) -> tuple[int, int]:
    """(ExpCmdSN, MaxCmdSN) for a PDU of a connection still logging in. A
    connection joining a session reports the session's window: its
    ExpCmdSN may trail the login's CmdSN while commands are still in
    flight on the other connections, and echoing the CmdSN would
    acknowledge them. A new session's starts at the CmdSN."""
    login = conn.login
    joined = cast("session_mod.iscsi_session | None", login.session) if login is not None else None
    if joined is None:
        return conn.login_cmd_sn, conn.login_cmd_sn
    return joined.exp_cmd_sn, joined.max_cmd_sn


def _tx_build_pdu(conn: iscsi_conn, item: iscsi_tx_pdu, iov: list, exp: int, max_sn: int) -> None:
    bhs = item.bhs
    if item.sn_mode == SN_NEXT:
        fill_sn(bhs, conn.stat_sn, exp, max_sn)
        conn.stat_sn = (conn.stat_sn + 1) & _MASK32
    elif item.sn_mode == SN_PEEK:
        fill_sn(bhs, conn.stat_sn, exp, max_sn)
    data = item.data
    _add_pdu(conn, iov, bhs, data, len(data))


def _tx_build_scsi(conn: iscsi_conn, item: iscsi_cmnd, iov: list, exp: int, max_sn: int,
                   stat_sn: int, total: int, rflags: int, resid: int) -> None:
    """A SCSI command's response PDUs other than the one-PDU Data-In:
    Data-In in several PDUs (or with digests, or from a buffer of several
    pieces), then the status in the last of them or in a SCSI Response."""
    scmd = item.scst_cmd
    status = scmd.status
    data_sn = 0
    if total:
        params = conn.sess_params
        mrdsl = params.max_xmit_data_length
        collapse = status == SAM_STAT_GOOD
        sg = scmd.sg
        base = scmd.data_file
        if base is not None:
            conn.tx_sendfile = True         # decision 0067, as in iscsi_tx_build
            conn.tx_zc_reads += 1
        else:
            base = sg_virt(sg[0]) if len(sg) == 1 else None
        lun = item.lun
        itt = item.itt
        burst = params.max_burst_length
        off = 0
        while off < total:
            n = total - off
            if n > mrdsl:
                n = mrdsl
            end = off + n
            bhs = bytearray(48)
            if end == total:
                if collapse:
                    pack_data_in(bhs, ISCSI_FLG_FINAL | ISCSI_FLG_STATUS | rflags, status, n, lun,
                                 itt, stat_sn, exp, max_sn, data_sn, off, resid)
                else:
                    pack_data_in(bhs, ISCSI_FLG_FINAL, 0, n, lun, itt, 0, exp, max_sn, data_sn,
                                 off, 0)
            else:
                fl = ISCSI_FLG_FINAL if end % burst == 0 else 0
                pack_data_in(bhs, fl, 0, n, lun, itt, 0, exp, max_sn, data_sn, off, 0)
            data = base[off:end] if base is not None else _gather(sg, off, n)
            _add_pdu(conn, iov, bhs, data, n)
            data_sn += 1
            off = end
        if collapse:
            return
    elif item.flags & ISCSI_CMD_WRITE:
        data_sn = item.r2t_sn
    if not (scmd.sense_valid_len and status) and not conn.hdigest_tx:
        # The common answer (a WRITE's, a READ's without data): the one
        # header, in the command's own buffer (rsp_bhs), as the one-PDU
        # Data-In of iscsi_tx_build.
        bhs = item.rsp_bhs
        pack_scsi_rsp_raw(bhs, 0, ISCSI_OP_SCSI_RSP, 0x80 | rflags,
                          ISCSI_RESPONSE_COMMAND_COMPLETED, status, 0, _ZERO_LUN, item.itt, 0,
                          stat_sn, exp, max_sn, data_sn, 0, resid)
        iov.append(bhs)
        return
    sense = b""
    if scmd.sense_valid_len and status:
        sense = scmd.sense_valid_len.to_bytes(2, "big") + bytes(scmd.sense[:scmd.sense_valid_len])
    bhs = bytearray(48)
    pack_scsi_rsp(bhs, rflags, ISCSI_RESPONSE_COMMAND_COMPLETED, status, len(sense), item.itt,
                  stat_sn, exp, max_sn, data_sn, 0, resid)
    _add_pdu(conn, iov, bhs, sense, len(sense))


def _gather(sg: list, off: int, n: int) -> bytes:
    out = bytearray()
    pos = 0
    for s in sg:
        v = sg_virt(s)
        if off < pos + len(v) and n > 0:
            a = off - pos
            b = min(len(v), a + n)
            out += v[a:b]
            n -= b - a
            off += b - a
        pos += len(v)
    return bytes(out)


def iscsi_tx_done(conn: iscsi_conn, items: list, ret: int) -> None:
    """The PDUs of every item of one sendmsg went out (ret 0) or could not
    (ret < 0, and for the responses a closing connection never sent): one
    call per batch, not per response."""
    cmd_hash = conn.cmd_hash
    cache = conn.cmnd_cache
    for item in items:
        kind = item.tx_kind
        if kind >= TX_FAST_READ:
            # Its ITT is free; the object (which keeps fast_buf) goes to
            # the connection's cmnd_cache while the connection is open.
            item.tx_kind = TX_SCSI
            item.fast_sense = b""
            if item.fast_page is not None:
                _fast_page_put(item)
            if cmd_hash.pop(item.itt, None) is not None and conn.closing and not cmd_hash:
                wake_up(conn.cmds_waitQ)
            if conn.closing or len(cache) >= _CMND_CACHE_MAX:
                item.conn = None
                kmem_cache_free(iscsi_cmnd_cache, item)
            else:
                cache.append(item)
            continue
        if kind == TX_SCSI:
            scmd = item.scst_cmd
            if scmd is not None:
                scst_tgt_cmd_done(scmd, SCST_CONTEXT_SAME)
            continue
        if ret == 0 and item.on_sent is not None:
            item.on_sent(conn)
        _tx_pdu_free(item)


def _tx_pdu_free(pdu: iscsi_tx_pdu) -> None:
    """The PDU is done (the kernel would kfree it here): its unlinked
    list_head points at itself and at the PDU, cycles only a GC frees (one
    per NOP-In, R2T or Reject grew RSS by ~64 bytes until a GC pass, hours
    apart when idle), so it is released (poisoned as list_del does)."""
    list_head_release(pdu.write_list_entry)
    pdu.write_list_entry = None


# -- other PDUs -------------------------------------------------------------

def _queue_pdu(conn: iscsi_conn, bhs: bytearray, data: bytes = b"", sn_mode: int = SN_NEXT,
               on_sent: Callable[[iscsi_conn], None] | None = None) -> None:
    iscsi_queue_tx(conn, iscsi_tx_pdu(bhs, data, sn_mode, on_sent).write_list_entry)


def iscsi_send_reject(conn: iscsi_conn, rejected_bhs: bytes, reason: int) -> None:
    bhs = bytearray(48)
    pack_generic_rsp(bhs, ISCSI_OP_REJECT, 0x80, reason, 0, 48, _ZERO_LUN, ISCSI_RESERVED_TAG,
                     0, 0, 0, 0)
    _queue_pdu(conn, bhs, bytes(rejected_bhs[:48]))


def _close_after_send(conn: iscsi_conn) -> None:
    iscsi_conn_mark_closing(conn)


def _close_session_after_send(conn: iscsi_conn) -> None:
    for c in list(conn.session.conn_list):
        c.logged_out = True
        iscsi_conn_mark_closing(c)


def _nop_out_done(conn: iscsi_conn) -> None:
    _ordered(conn, _nop_out)


def _nop_out(conn: iscsi_conn, bhs: bytes, data: bytes) -> None:
    _b0, _flags, _b2, _b3, _ahs, _dsl, lun, itt = unpack_common(bhs)
    if itt == ISCSI_RESERVED_TAG:
        # An answer to our NOP-In (or a ping that wants none): the peer lives.
        if conn.nop_ttt is not None and u32_at(bhs, 20) == conn.nop_ttt:
            conn.nop_ttt = None
            _arm_nop_in(conn, conn.session.target.tgt_params.nop_in_interval)
        return
    rsp = bytearray(48)
    pack_generic_rsp(rsp, ISCSI_OP_NOP_IN, 0x80, 0, 0, len(data), lun, itt, ISCSI_RESERVED_TAG,
                     0, 0, 0)
    _queue_pdu(conn, rsp, data)


def _arm_nop_in(conn: iscsi_conn, seconds: int) -> None:
    if seconds > 0 and not conn.closing:
        conn.nop_deadline = jiffies() + seconds * HZ
        mod_timer(conn.nop_timer, conn.nop_deadline)


def _nop_in_timer(timer: timer_list) -> None:
    """Softirq: ping an idle initiator with a NOP-In; close the connection
    if the previous ping went unanswered (NopInTimeout)."""
    conn = timer.data
    if conn is None or conn.closing or conn.session is None:
        return
    if time_before(jiffies(), conn.nop_deadline):
        # Fired early (only an injected fault does that): wait the rest.
        mod_timer(timer, conn.nop_deadline)
        return
    params = conn.session.target.tgt_params
    if conn.nop_ttt is not None:
        pr_info(f"iscsi: {conn.peer}: no answer to NOP-In within {params.nop_in_timeout} s: "
                f"closing the connection")
        iscsi_conn_mark_closing(conn)
        return
    conn.next_ttt = (conn.next_ttt + 1) & 0x7FFFFFFF
    conn.nop_ttt = conn.next_ttt
    rsp = bytearray(48)
    pack_generic_rsp(rsp, ISCSI_OP_NOP_IN, 0x80, 0, 0, 0, _ZERO_LUN, ISCSI_RESERVED_TAG,
                     conn.nop_ttt, 0, 0, 0)
    _queue_pdu(conn, rsp, sn_mode=SN_PEEK)
    _arm_nop_in(conn, params.nop_in_timeout)


def _text_done(conn: iscsi_conn) -> None:
    _ordered(conn, _text)


def _text(conn: iscsi_conn, bhs: bytes, data: bytes) -> None:
    _b0, flags, _b2, _b3, _ahs, _dsl, lun, itt = unpack_common(bhs)
    if flags & ISCSI_FLG_CONTINUE:
        iscsi_send_reject(conn, bhs, ISCSI_REASON_UNSUPPORTED_COMMAND)
        return
    sess = conn.session
    try:
        res = text_negotiation(data,
                               session_type="Discovery" if sess.discovery else "Normal",
                               target_name=sess.target.name if sess.target else None,
                               list_targets=iscsi_list_targets,
                               tgt_params=sess.target.tgt_params if sess.target else None)
    except NegotiationError as e:
        pr_warn(f"iscsi: {conn.peer}: bad Text Request ITT {itt:#x}: {e}")
        iscsi_send_reject(conn, bhs, ISCSI_REASON_PROTOCOL_ERROR)
        return
    if res.max_xmit_data_length is not None:
        conn.sess_params.max_xmit_data_length = res.max_xmit_data_length
    pieces = split_text(res.data, conn.sess_params.max_xmit_data_length) or [b""]
    if len(pieces) > 1:
        pr_warn(f"iscsi: {conn.peer}: Text Response of {len(res.data)} bytes truncated to one PDU")
    rsp = bytearray(48)
    pack_generic_rsp(rsp, ISCSI_OP_TEXT_RSP, ISCSI_FLG_FINAL, 0, 0, len(pieces[0]), lun, itt,
                     ISCSI_RESERVED_TAG, 0, 0, 0)
    _queue_pdu(conn, rsp, pieces[0])


def _logout_done(conn: iscsi_conn) -> None:
    _ordered(conn, _logout)


def _logout(conn: iscsi_conn, bhs: bytes, data: bytes) -> None:
    _b0, flags, _b2, _b3, _ahs, _dsl, _lun, itt = unpack_common(bhs)
    reason = flags & 0x7F
    rsp = bytearray(48)
    params = conn.sess_params
    if reason in (ISCSI_LOGOUT_CLOSE_SESSION, ISCSI_LOGOUT_CLOSE_CONNECTION):
        pack_logout_rsp(rsp, ISCSI_LOGOUT_SUCCESS, itt, 0, 0, 0, params.default_wait_time,
                        params.default_retain_time)
        conn.logged_out = True
        _queue_pdu(conn, rsp, on_sent=_close_session_after_send
                   if reason == ISCSI_LOGOUT_CLOSE_SESSION else _close_after_send)
    else:
        pack_logout_rsp(rsp, ISCSI_LOGOUT_RECOVERY_UNSUPPORTED, itt, 0, 0, 0,
                        params.default_wait_time, params.default_retain_time)
        _queue_pdu(conn, rsp)


# iSCSI task management function -> SCST function (RFC 7143 11.5.1)
_TMF_FN = {
    ISCSI_FUNCTION_ABORT_TASK: SCST_ABORT_TASK,
    ISCSI_FUNCTION_ABORT_TASK_SET: SCST_ABORT_TASK_SET,
    ISCSI_FUNCTION_CLEAR_ACA: SCST_CLEAR_ACA,
    ISCSI_FUNCTION_CLEAR_TASK_SET: SCST_CLEAR_TASK_SET,
    ISCSI_FUNCTION_LOGICAL_UNIT_RESET: SCST_LUN_RESET,
    ISCSI_FUNCTION_TARGET_WARM_RESET: SCST_TARGET_RESET,
    ISCSI_FUNCTION_TARGET_COLD_RESET: SCST_TARGET_RESET,
}
_TMF_RSP = {
    SCST_MGMT_STATUS_SUCCESS: ISCSI_RESPONSE_FUNCTION_COMPLETE,
    SCST_MGMT_STATUS_TASK_NOT_EXIST: ISCSI_RESPONSE_UNKNOWN_TASK,
    SCST_MGMT_STATUS_LUN_NOT_EXIST: ISCSI_RESPONSE_UNKNOWN_LUN,
    SCST_MGMT_STATUS_FN_NOT_SUPPORTED: ISCSI_RESPONSE_FUNCTION_UNSUPPORTED,
}


def _send_tmf_rsp(conn: iscsi_conn, itt: int, response: int,
                  on_sent: Callable[[iscsi_conn], None] | None = None) -> None:
    rsp = bytearray(48)
    pack_generic_rsp(rsp, ISCSI_OP_SCSI_TASK_MGT_RSP, 0x80, response, 0, 0, _ZERO_LUN, itt, 0,
                     0, 0, 0)
    _queue_pdu(conn, rsp, on_sent=on_sent)


def _tmf_done(conn: iscsi_conn) -> None:
    _ordered(conn, _tmf)


def _tmf(conn: iscsi_conn, bhs: bytes, data: bytes) -> None:
    _b0, flags, _b2, _b3, _ahs, _dsl, lun, itt = unpack_common(bhs)
    rtt = u32_at(bhs, 20)
    fn = flags & 0x7F
    scst_fn = _TMF_FN.get(fn)
    if scst_fn is None:
        response = (ISCSI_RESPONSE_ALLEGIANCE_REASSIGNMENT_UNSUPPORTED
                    if fn == ISCSI_FUNCTION_TASK_REASSIGN else ISCSI_RESPONSE_FUNCTION_REJECTED)
        _send_tmf_rsp(conn, itt, response)
        return
    if fn == ISCSI_FUNCTION_ABORT_TASK and rtt == ISCSI_RESERVED_TAG:
        _send_tmf_rsp(conn, itt, ISCSI_RESPONSE_FUNCTION_REJECTED)
        return
    scst_rx_mgmt_fn(conn.session.scst_sess, scst_fn,
                    None if scst_fn in (SCST_TARGET_RESET, SCST_CLEAR_ACA) else lun,
                    rtt, (conn, itt, fn))


def iscsi_task_mgmt_fn_done(mcmd: scst_mgmt_cmd) -> None:
    """SCST finished a TMF (every aborted command is freed): answer it."""
    conn, itt, fn = mcmd.tgt_priv
    if conn.closing:
        return
    response = _TMF_RSP.get(mcmd.status, ISCSI_RESPONSE_FUNCTION_REJECTED)
    on_sent = None
    if fn == ISCSI_FUNCTION_TARGET_COLD_RESET and response == ISCSI_RESPONSE_FUNCTION_COMPLETE:
        # A cold reset also drops the connections (RFC 7143 11.5.1).
        on_sent = _close_after_send
    _send_tmf_rsp(conn, itt, response, on_sent)


def iscsi_on_abort_cmd(scmd: scst_cmd) -> None:
    """SCST aborts a command still waiting for Data-Out: stop taking data
    for it; its later Data-Out PDUs are discarded."""
    cmnd = scmd.tgt_i_priv
    cmnd.data_done = True
    cmnd.unsol_open = False
    cmnd.rx_pending = False
    scst_rx_data(scmd, SCST_RX_STATUS_ERROR_FATAL, SCST_CONTEXT_SAME)


# -- login ------------------------------------------------------------------

def _chap_credentials(login: login_session) -> chap_credentials | None:
    if login.session_type == "Discovery":
        return target_mod.iscsi_discovery_chap
    return login.target.chap if login.target is not None else None


def iscsi_new_login(conn: iscsi_conn) -> login_session:
    # One authenticator per login: it keeps that exchange's challenge.
    return login_session(find_target=iscsi_target_find,
                         find_session=session_mod.iscsi_session_find,
                         alloc_tsih=session_mod.iscsi_alloc_tsih,
                         authenticator=chap_authenticator(credentials=_chap_credentials,
                                                          random_bytes=get_random_bytes))


def _enable_digests(conn: iscsi_conn) -> None:
    conn.hdigest_tx = conn.sess_params.header_digest
    conn.ddigest_tx = conn.sess_params.data_digest


def _portal_allowed(conn: iscsi_conn, target: Any) -> bool:
    """May this connection's portal reach the target (allowed_portal)?
    Refused logins get 02/02, authorization failure (RFC 7143 11.13.5)."""
    pats = target.allowed_portals
    return not pats or any(fnmatch.fnmatchcase(conn.portal.host, p) for p in pats)


def _login_refuse(conn: iscsi_conn, rsp: login_rsp, status_class: int, status_detail: int) -> None:
    """Answer the login with a final status (no data, TSIH 0) and close the
    connection once that response is sent (RFC 7143 11.13.5)."""
    fail = bytearray(48)
    pack_login_rsp(fail, rsp.csg << 2, rsp.version_max, rsp.version_active, 0, rsp.isid,
                   0, rsp.itt, 0, 0, 0, status_class, status_detail)
    _queue_pdu(conn, fail, b"", on_sent=_close_after_send)


def _login_rx_done(conn: iscsi_conn) -> None:
    login = conn.login
    req = login_req(**login_fields(conn.rx_bhs), data=bytes(conn.rx_collect or b""))
    if not conn.login_started:
        conn.login_started = True
        conn.stat_sn = req.exp_stat_sn
    conn.login_cmd_sn = req.cmd_sn
    rsp = login.step(req)
    if trace_iscsi_login.enabled:
        trace_iscsi_login(conn.peer, login.initiator_name or "", req.csg, req.nsg, req.transit,
                          f"{rsp.status_class:02x}{rsp.status_detail:02x}",
                          _login_keys(req.data), _login_keys(rsp.data))
    flags = ((0x80 if rsp.transit else 0) | (0x40 if rsp.cont else 0)
             | (rsp.csg << 2) | rsp.nsg)
    bhs = bytearray(48)
    pack_login_rsp(bhs, flags, rsp.version_max, rsp.version_active, len(rsp.data), rsp.isid,
                   rsp.tsih, rsp.itt, 0, 0, 0, rsp.status_class, rsp.status_detail)
    if rsp.status_class or login.failed:
        pr_info(f"iscsi: login from {conn.peer} failed: status "
                f"{rsp.status_class:#04x}/{rsp.status_detail:#04x} {login.error or ''}")
        _count_login(login, rsp.status_class or 0x02, rsp.status_detail)
        _queue_pdu(conn, bhs, rsp.data, on_sent=_close_after_send)
        return
    if not login.done:
        _queue_pdu(conn, bhs, rsp.data)
        return
    params = login.params
    if login.session_type == "Discovery":
        sess = session_mod.iscsi_session_create(None, login.isid, login.new_tsih,
                                                login.initiator_name, params, req.cmd_sn, 32)
    elif login.tsih:
        # A connection joins its session (MC/S, RFC 7143 6.3.1).
        sess = cast(session_mod.iscsi_session, login.session)
        old = next((c for c in sess.conn_list if c.cid == login.cid), None)
        if sess not in session_mod.session_list:
            # The session ended (its last connection went) after this
            # login found it: "session does not exist" (RFC 7143 11.13.5).
            pr_info(f"iscsi: login from {conn.peer}: session {sess.tsih:#x} ended during "
                    f"the login")
            _count_login(login, 0x02, 0x0A)
            _login_refuse(conn, rsp, 0x02, 0x0A)
            return
        if old is not None:
            # Connection reinstatement: the old connection with this CID goes.
            old.logged_out = True
            iscsi_conn_mark_closing(old)
        elif len(sess.conn_list) >= sess.sess_params.max_connections:
            pr_info(f"iscsi: login from {conn.peer}: session {sess.tsih:#x} already has "
                    f"{len(sess.conn_list)} connections (MaxConnections)")
            _count_login(login, 0x02, 0x06)
            _login_refuse(conn, rsp, 0x02, 0x06)
            return
    elif len(session_mod.session_list) >= session_mod.iscsi_max_sessions:
        pr_info(f"iscsi: login from {conn.peer} refused: {session_mod.iscsi_max_sessions} "
                f"sessions exist (iscsi_max_sessions)")
        _count_login(login, 0x03, 0x02)
        _login_refuse(conn, rsp, 0x03, 0x02)
        return
    elif not _portal_allowed(conn, login.target):
        pr_info(f"iscsi: login from {conn.peer} to {login.target.name} refused: portal "
                f"{conn.portal.host} is not in its allowed_portal list")
        _count_login(login, 0x02, 0x02)
        _login_refuse(conn, rsp, 0x02, 0x02)
        return
    else:
        target = cast(iscsi_target, login.target)      # find_target returned it
        for old in [s for s in session_mod.session_list if s.target is target
                    and s.isid == login.isid and s.initiator_name == login.initiator_name]:
            # Session reinstatement (RFC 7143 6.3.5): the old session ends,
            # its tasks are aborted as its connections close.
            pr_info(f"iscsi: session {old.tsih:#x} of {old.initiator_name} reinstated by "
                    f"{conn.peer}")
            for c in list(old.conn_list):
                iscsi_conn_mark_closing(c)
        sess = session_mod.iscsi_session_create(target, login.isid, login.new_tsih,
                                                login.initiator_name, params, req.cmd_sn,
                                                target.tgt_params.queued_cmnds)
    if isinstance(sess, int):
        pr_info(f"iscsi: login from {conn.peer} failed: no memory for a session ({sess})")
        _login_refuse(conn, rsp, 0x03, 0x02)
        return
    if login.tsih and login.session_type != "Discovery":
        # Session-wide keys come from the leading login; a joining connection
        # negotiates only its own (digests, MaxRecvDataSegmentLength).
        params = attrs.evolve(sess.sess_params,
                              max_recv_data_length=params.max_recv_data_length,
                              max_xmit_data_length=params.max_xmit_data_length,
                              header_digest=params.header_digest,
                              data_digest=params.data_digest)
    conn.session = sess
    conn.cid = login.cid
    sess.conn_list.append(conn)
    conn.sess_params = params
    conn.max_recv_data_length = params.max_recv_data_length
    conn.hdigest_rx = params.header_digest
    conn.ddigest_rx = params.data_digest
    conn.login = None
    del_timer(conn.login_timer)
    pr_info(f"iscsi: {conn.peer} (CID {conn.cid}) logged in to session {sess.tsih:#x} "
            f"{'discovery' if sess.target is None else sess.target.name}: HeaderDigest "
            f"{'CRC32C' if params.header_digest else 'None'}, DataDigest "
            f"{'CRC32C' if params.data_digest else 'None'}, MaxRecvDataSegmentLength "
            f"{params.max_recv_data_length}/{params.max_xmit_data_length}")
    _count_login(login, 0, 0)
    _queue_pdu(conn, bhs, rsp.data, on_sent=_enable_digests)
    if sess.target is not None:
        conn.nop_timer.function = _nop_in_timer
        conn.nop_timer.data = conn
        _arm_nop_in(conn, sess.target.tgt_params.nop_in_interval)


def iscsi_report_aen(tgt_dev: Any, sense: bytes) -> None:
    """SCST's asynchronous event: an Async Message, AsyncEvent 0 (SCSI
    event), with the sense data, on one connection of the session
    (RFC 7143 11.9.1); any context."""
    sess = tgt_dev.sess.tgt_priv
    conn = next((c for c in sess.conn_list if not c.closing), None)
    if conn is None:
        return
    bhs = bytearray(48)
    data = len(sense).to_bytes(2, "big") + sense
    pack_generic_rsp(bhs, ISCSI_OP_ASYNC_MSG, 0x80, 0, 0, len(data), scst_pack_lun(tgt_dev.lun),
                     ISCSI_RESERVED_TAG, 0, 0, 0, 0, 0, 0, 0)
    _queue_pdu(conn, bhs, data)


iscsi_template = scst_tgt_template(
    name="iscsi",
    sg_tablesize=0,
    xmit_response=iscsi_xmit_response,
    rdy_to_xfer=iscsi_rdy_to_xfer,
    on_free_cmd=iscsi_on_free_cmd,
    on_abort_cmd=iscsi_on_abort_cmd,
    task_mgmt_fn_done=iscsi_task_mgmt_fn_done,
    report_aen=iscsi_report_aen,
)


MODULE_LICENSE("GPL")
MODULE_DESCRIPTION("SCST iSCSI Target")
module_param_named("iscsi_max_conns", "iscsi_max_conns", "int", 0o644, ns=target_mod)
module_param_named("iscsi_max_sessions", "iscsi_max_sessions", "int", 0o644, ns=session_mod)
module_param_named("iscsi_login_timeout", "iscsi_login_timeout", "int", 0o644, ns=conn_mod)
module_param_named("nagle_T", "nagle_T", "int", 0o644, ns=nagle_mod)
module_param_named("nagle_M", "nagle_M", "int", 0o644, ns=nagle_mod)
module_param_named("nagle_Q", "nagle_Q", "int", 0o644, ns=nagle_mod)


def iscsi_init() -> int:
    """Register the target driver and its management attributes (module init)."""
    iscsi_template.owner = THIS_MODULE()
    ret = scst_register_target_template(iscsi_template)
    if ret == 0:
        iscsi_sysfs_init(iscsi_template)
    return ret


# Seconds a planned shutdown gives initiators to log out when asked.
iscsi_logout_grace = 2


def iscsi_request_logout(conn: iscsi_conn, wait_s: int) -> None:
    """Ask the initiator to log out within wait_s seconds: Async Message,
    AsyncEvent 1 (RFC 7143 11.9.1), Parameter3 the time allowed."""
    bhs = bytearray(48)
    # Parameter3 (bytes 42-43) is the low half of the word at byte 40.
    pack_generic_rsp(bhs, ISCSI_OP_ASYNC_MSG, 0x80, 0, 0, 0, _ZERO_LUN, ISCSI_RESERVED_TAG,
                     0, 0, 0, 0, ISCSI_ASYNC_LOGOUT_REQUEST << 24, wait_s & 0xFFFF, 0)
    _queue_pdu(conn, bhs)


def iscsi_exit() -> None:
    """Module exit: close the portals, ask initiators to log out, close
    what is left, remove every target (task context)."""
    for portal in list(portal_list):
        iscsi_del_portal(portal)
    # A planned shutdown: ask logged-in initiators to log out first.
    asked = [c for c in conn_list if c.session is not None and c.session.target is not None
             and not c.closing]
    for conn in asked:
        iscsi_request_logout(conn, iscsi_logout_grace)
    if asked:
        wait_event_timeout(conns_waitQ, lambda: not any(c in conn_list for c in asked),
                           iscsi_logout_grace * HZ)
    iscsi_close_all_conns(10 * HZ)
    for tgt in list(target_list):
        iscsi_target_del(tgt)
    iscsi_sysfs_exit(iscsi_template)
    scst_unregister_target_template(iscsi_template)


module_init(iscsi_init)
module_exit(iscsi_exit)
