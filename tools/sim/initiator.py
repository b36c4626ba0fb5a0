"""A sans-IO iSCSI initiator (RFC 7143): bytes in, bytes and events out.

InitiatorConnection is the protocol state of one TCP connection; feed it
what the target sent (receive_data) and it returns the events that
completed; whatever it wants to send waits in data_to_send(). It never
touches a socket, a clock or a thread, so it runs over real TCP against a
real uscstd (tools/sim/tcp.py) and over the sim engine's in-memory
SimPeer alike, and the same seed drives it the same way.
InitiatorSession is what the connections of one session share (ISID,
TSIH, CmdSN, the command window, the ITT space, leading-login values), so
several connections make one MC/S session (RFC 7143 6.3, 4.2.2.1).

What it implements:
  - Login (6, 11.12-11.13): security stage with AuthMethod=None, then the
    operational stage; target continuation (C bit) followed; keys the
    target offers first are answered. A connection after the first offers
    only connection-level keys, with the session's TSIH (adds a
    connection); TSIH 0 and an old ISID reinstate the session (6.3.5).
  - SCSI commands (11.3-11.4, 11.7-11.8): immediate data, unsolicited
    Data-Out up to FirstBurstLength when InitialR2T=No, R2T-driven
    Data-Out split at the target's MaxRecvDataSegmentLength, multi-PDU
    Data-In with status in the last one, sense data. A command that finds
    the command window closed waits in the connection's queue until a PDU
    from the target opens it (CmdSN is given when it is sent).
  - NOP-Out pings and answers to target NOP-Ins (11.18-11.19), unless
    answer_nop_in is False (a silent initiator, for NopInTimeout tests).
  - Task management (11.5-11.6): tasks a completed ABORT TASK, ABORT TASK
    SET, CLEAR TASK SET or LUN RESET covers, on every connection of the
    session, end as aborted unless their response came first.
  - Logout (11.14-11.15), Reject (11.17), Async Message (11.9) as events.

Where it may be called from: anywhere; one thread (or greenlet) at a time
per session. An Observer (tools/sim/invariants.py) is told of every PDU
received before the connection acts on it and of every command sent,
completed and aborted; it may raise to stop the run.

Differs from a full initiator: ErrorRecoveryLevel 0 only (no SNACK, no
task reassignment), no CHAP, digests None or CRC32C as negotiated. The
receive path is lenient: a PDU for an unknown or finished task is
reported to the observer and otherwise dropped (the invariant checkers,
not this parser, decide what is a violation).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from .pdu import (
    ATTR_SIMPLE,
    BHS_SIZE,
    DATAIN_FLAG_STATUS,
    LOGOUT_CLOSE_SESSION,
    OP_ASYNC_MSG,
    OP_DATA_IN,
    OP_LOGIN_RSP,
    OP_LOGOUT_RSP,
    OP_NOP_IN,
    OP_R2T,
    OP_REJECT,
    OP_SCSI_RSP,
    OP_TASK_MGMT_RSP,
    OP_TEXT_RSP,
    RESERVED_TAG,
    RFC_DEFAULTS,
    SAM_STAT_GOOD,
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    TMF_ABORT_TASK,
    TMF_ABORT_TASK_SET,
    TMF_CLEAR_TASK_SET,
    TMF_LUN_RESET,
    TMF_RSP_COMPLETE,
    TMF_TARGET_COLD_RESET,
    TMF_TARGET_WARM_RESET,
    Pdu,
    build_pdu,
    decode_keys,
    digest_bytes,
    encode_keys,
    pack_data_out,
    pack_login_req,
    pack_logout_req,
    pack_nop_out,
    pack_scsi_cmd,
    pack_task_mgmt_req,
    pad4,
    sn_add,
    sn_le,
    sn_lt,
)

DEFAULT_INITIATOR_NAME = "iqn.2026-11.org.uscst:sim-init"
OUR_MRDSL = 262144                 # what we declare we can receive in one PDU
LOGIN_MRDSL = 8192                 # every login PDU's data segment limit (6.1)
# Keys of the leading login only (RFC 7143 6.2: LO); a secondary
# connection offers the rest.
SESSION_KEYS = {
    "InitialR2T": "Yes", "ImmediateData": "Yes", "MaxBurstLength": "262144",
    "FirstBurstLength": "65536", "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0", "DefaultTime2Wait": "0",
    "DefaultTime2Retain": "0", "MaxConnections": "1",
}
# Declarative or informational keys a target sends that need no answer.
NO_ANSWER = {"TargetAlias", "TargetAddress", "TargetPortalGroupTag",
             "MaxRecvDataSegmentLength"}


# --- Events ------------------------------------------------------------------

@dataclass(eq=False)
class Command:
    """One SCSI task as the initiator sees it. status is None until a
    response came; aborted is set by a completed TMF or a lost connection."""
    itt: int
    lun: int
    cdb: bytes
    data_out: bytes | None
    read_len: int
    attr: int = ATTR_SIMPLE
    use_immediate: bool = True
    cmd_sn: int = 0                  # given when the command is sent
    sent: bool = False
    status: int | None = None
    response: int = 0                # iSCSI response code (0: completed at target)
    sense: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    residual: int = 0
    done: bool = False
    aborted: str = ""                # why it ended without a response
    lost: bool = False               # ended by the loss of its connection
    next_data_sn: int = 0
    next_r2t_sn: int = 0

    @property
    def good(self) -> bool:
        return self.done and self.response == 0 and self.status == SAM_STAT_GOOD

    @property
    def finished(self) -> bool:
        return self.done or bool(self.aborted)


@dataclass(frozen=True)
class LoginComplete:
    tsih: int
    keys: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LoginFailed:
    status_class: int
    status_detail: int


@dataclass(frozen=True)
class CommandComplete:
    command: Command


@dataclass(frozen=True)
class CommandAborted:
    command: Command


@dataclass(frozen=True)
class TaskManagementComplete:
    itt: int
    function: int
    ref_itt: int
    response: int


@dataclass(frozen=True)
class PingComplete:
    itt: int
    data: bytes


@dataclass(frozen=True)
class TargetPing:
    """A NOP-In the target sent on its own (answered unless told not to)."""
    ttt: int


@dataclass(frozen=True)
class LogoutComplete:
    response: int


@dataclass(frozen=True)
class Rejected:
    ref_itt: int
    reason: int


@dataclass(frozen=True)
class AsyncMessage:
    event: int


Event = (LoginComplete | LoginFailed | CommandComplete | CommandAborted
         | TaskManagementComplete | PingComplete | TargetPing | LogoutComplete
         | Rejected | AsyncMessage)


class Observer(Protocol):
    """What an invariant checker hears. Any method may raise to stop the run."""

    def pdu_received(self, conn: "InitiatorConnection", pdu: Pdu) -> None: ...

    def command_sent(self, conn: "InitiatorConnection", cmd: Command) -> None: ...

    def command_done(self, conn: "InitiatorConnection", cmd: Command) -> None: ...

    def command_aborted(self, conn: "InitiatorConnection", cmd: Command) -> None: ...


class NullObserver:
    """An Observer that checks nothing."""

    def pdu_received(self, conn: "InitiatorConnection", pdu: Pdu) -> None:
        pass

    def command_sent(self, conn: "InitiatorConnection", cmd: Command) -> None:
        pass

    def command_done(self, conn: "InitiatorConnection", cmd: Command) -> None:
        pass

    def command_aborted(self, conn: "InitiatorConnection", cmd: Command) -> None:
        pass


class ProtocolViolation(Exception):
    """The target sent bytes this initiator cannot frame or follow."""


# --- Session -------------------------------------------------------------------

class InitiatorSession:
    """What the connections of one session share (RFC 7143 4.2.2.1: one
    CmdSN space and window; 11.2.1.8: ITTs unique per session)."""

    def __init__(self, target_name: str, *, isid: bytes,
                 initiator_name: str = DEFAULT_INITIATOR_NAME,
                 observer: Observer | None = None,
                 session_keys: dict[str, str] | None = None) -> None:
        if len(isid) != 6:
            raise ValueError("ISID must be 6 bytes")
        self.target_name = target_name
        self.initiator_name = initiator_name
        self.isid = bytes(isid)
        self.observer: Observer = observer or NullObserver()
        self.offer = {**SESSION_KEYS, **(session_keys or {})}
        self.tsih = 0
        self.cmd_sn = 1                  # next CmdSN to give
        self.exp_cmd_sn = 1
        self.max_cmd_sn = 1
        self.params: dict[str, str] = {}     # session values in effect (leading login)
        self.connections: list[InitiatorConnection] = []
        self._next_itt = 1

    def alloc_itt(self) -> int:
        itt = self._next_itt
        self._next_itt = sn_add(itt, 1)
        if self._next_itt in (RESERVED_TAG, 0):
            self._next_itt = 1
        return itt

    def window_open(self) -> bool:
        return sn_le(self.cmd_sn, self.max_cmd_sn)

    def param(self, key: str) -> str:
        return self.params.get(key, RFC_DEFAULTS.get(key, ""))

    def update_window(self, exp: int, mx: int) -> None:
        # 11.2.2.2: a MaxCmdSN below ExpCmdSN - 1 is ignored.
        if sn_lt(mx, sn_add(exp, -1)):
            return
        if sn_lt(self.exp_cmd_sn, exp):
            self.exp_cmd_sn = exp
        if sn_lt(self.max_cmd_sn, mx):
            self.max_cmd_sn = mx

    def connection(self, cid: int = 0) -> "InitiatorConnection":
        """A new connection of this session (not logged in yet)."""
        conn = InitiatorConnection(self, cid)
        self.connections.append(conn)
        return conn


# --- Connection ---------------------------------------------------------------------

class InitiatorConnection:
    """The protocol state of one connection. Use: start_login(), then
    submit()/nop_out()/task_mgmt()/logout(); after each, send
    data_to_send() to the target; feed every received chunk to
    receive_data() and act on the events it returns."""

    def __init__(self, session: InitiatorSession, cid: int = 0) -> None:
        self.session = session
        self.cid = cid
        self.answer_nop_in = True
        self.full_feature = False
        self.closed = False
        self.exp_stat_sn = 0
        self.target_mrdsl = int(RFC_DEFAULTS["MaxRecvDataSegmentLength"])
        self.our_mrdsl = OUR_MRDSL
        self.header_digest = False
        self.data_digest = False
        self.tasks: dict[int, Command] = {}       # sent, not finished
        self.queued: list[Command] = []           # waiting for the command window
        # itt -> (kind, function, ref ITT, LUN, CmdSN when sent)
        self._replies: dict[int, tuple[str, int, int, int, int]] = {}
        self._out: list[bytes] = []
        self._rx = bytearray()
        self._login_itt = 0
        self._login_stage = STAGE_SECURITY
        self._login_text = bytearray()
        self._login_keys: dict[str, str] = {}
        self._offered: dict[str, str] = {}
        self._pending_oper: dict[str, str] = {}

    # -- output --

    def data_to_send(self) -> bytes:
        """Every byte queued for the target since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, bhs: bytes, data: bytes = b"") -> None:
        self._out.append(build_pdu(bhs, data, header_digest=self.header_digest,
                                   data_digest=self.data_digest))

    # -- login --

    def start_login(self, keys: dict[str, str] | None = None) -> None:
        """Queue the first Login Request. A session with a TSIH adds this
        connection to it; keys override what we offer."""
        sess = self.session
        self._login_itt = sess.alloc_itt()
        ident = {"InitiatorName": sess.initiator_name, "SessionType": "Normal",
                 "TargetName": sess.target_name}
        oper = {"HeaderDigest": "None", "DataDigest": "None",
                "MaxRecvDataSegmentLength": str(OUR_MRDSL)}
        if sess.tsih == 0:
            oper.update(sess.offer)
        oper.update(keys or {})
        self.our_mrdsl = int(oper["MaxRecvDataSegmentLength"])
        self._pending_oper = oper
        self._login_stage = STAGE_SECURITY
        self._login_request({**ident, "AuthMethod": "None"}, STAGE_OPERATIONAL)

    def _login_request(self, keys: dict[str, str], nsg: int, *, transit: bool = True) -> None:
        self._offered.update(keys)
        text = encode_keys(keys)
        if len(text) > LOGIN_MRDSL:
            raise ValueError("login text over 8192 bytes is not supported")
        sess = self.session
        self._send(pack_login_req(isid=sess.isid, tsih=sess.tsih, itt=self._login_itt,
                                  cid=self.cid, cmd_sn=sess.cmd_sn,
                                  exp_stat_sn=self.exp_stat_sn, csg=self._login_stage,
                                  nsg=nsg, transit=transit, dsl=len(text)), text)

    def _on_login_rsp(self, pdu: Pdu) -> list[Event]:
        sess = self.session
        self.exp_stat_sn = sn_add(pdu.stat_sn, 1)
        sess.exp_cmd_sn, sess.max_cmd_sn = pdu.exp_cmd_sn, pdu.max_cmd_sn
        if pdu.status_class != 0:
            self.closed = True
            return [LoginFailed(pdu.status_class, pdu.status_detail)]
        self._login_text += pdu.data
        nsg = STAGE_OPERATIONAL if self._login_stage == STAGE_SECURITY else STAGE_FULL_FEATURE
        if pdu.cont:
            self._login_request({}, nsg, transit=False)
            return []
        got = decode_keys(bytes(self._login_text))
        self._login_text.clear()
        answers = {}
        for k, v in got:
            self._login_keys[k] = v
            if k not in self._offered and k not in NO_ANSWER:
                answers[k] = v.split(",")[0]
        if not pdu.transit:
            self._login_request(answers, nsg)
            return []
        if pdu.nsg == STAGE_OPERATIONAL and self._login_stage == STAGE_SECURITY:
            self._login_stage = STAGE_OPERATIONAL
            self._login_request({**self._pending_oper, **answers}, STAGE_FULL_FEATURE)
            return []
        if pdu.nsg != STAGE_FULL_FEATURE:
            raise ProtocolViolation(f"login stage {self._login_stage} -> {pdu.nsg}")
        self._enter_full_feature(pdu.tsih)
        return [LoginComplete(pdu.tsih, tuple(self._login_keys.items()))]

    def _enter_full_feature(self, tsih: int) -> None:
        sess = self.session
        theirs = self._login_keys
        if sess.tsih == 0:
            params: dict[str, str] = {}
            for k in sess.offer:
                v = theirs.get(k)
                params[k] = v if v not in (None, "Irrelevant", "NotUnderstood", "Reject") \
                    else RFC_DEFAULTS.get(k, sess.offer[k])
            sess.params = params
            sess.tsih = tsih
        mrdsl = theirs.get("MaxRecvDataSegmentLength", "")
        self.target_mrdsl = int(mrdsl) if mrdsl.isdigit() else \
            int(RFC_DEFAULTS["MaxRecvDataSegmentLength"])
        self.header_digest = theirs.get("HeaderDigest") == "CRC32C"
        self.data_digest = theirs.get("DataDigest") == "CRC32C"
        self.full_feature = True

    # -- requests --

    def submit(self, cdb: bytes, *, lun: int = 0, data_out: bytes | None = None,
               read_len: int = 0, attr: int = ATTR_SIMPLE,
               use_immediate: bool = True) -> Command:
        """Queue a SCSI command (sent now if the window is open)."""
        if not self.full_feature or self.closed:
            raise RuntimeError("SCSI commands need a connection in full feature phase")
        cmd = Command(itt=self.session.alloc_itt(), lun=lun, cdb=bytes(cdb),
                      data_out=bytes(data_out) if data_out is not None else None,
                      read_len=read_len, attr=attr, use_immediate=use_immediate)
        self.queued.append(cmd)
        self._flush_queue()
        return cmd

    def _flush_queue(self) -> None:
        sess = self.session
        while self.queued and sess.window_open() and not self.closed:
            cmd = self.queued.pop(0)
            cmd.cmd_sn = sess.cmd_sn
            sess.cmd_sn = sn_add(sess.cmd_sn, 1)
            self._send_command(cmd)

    def _send_command(self, cmd: Command) -> None:
        sess = self.session
        wlen = len(cmd.data_out) if cmd.data_out is not None else 0
        write = cmd.data_out is not None
        first_burst = int(sess.param("FirstBurstLength"))
        imm = 0
        if write and cmd.use_immediate and sess.param("ImmediateData") == "Yes":
            imm = min(wlen, first_burst, self.target_mrdsl)
        unsol_end = imm
        if write and sess.param("InitialR2T") == "No":
            unsol_end = min(wlen, first_burst)
        cmd.sent = True
        self.tasks[cmd.itt] = cmd
        sess.observer.command_sent(self, cmd)
        self._send(pack_scsi_cmd(itt=cmd.itt, cmd_sn=cmd.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                 cdb=cmd.cdb, edtl=wlen if write else cmd.read_len,
                                 lun=cmd.lun, read=bool(cmd.read_len) and not write,
                                 write=write, final=unsol_end <= imm, attr=cmd.attr,
                                 dsl=imm), cmd.data_out[:imm] if imm else b"")
        if unsol_end > imm:
            self._send_data_out(cmd, RESERVED_TAG, imm, unsol_end)

    def _send_data_out(self, cmd: Command, ttt: int, start: int, end: int) -> None:
        """One Data-Out sequence for [start, end), DataSN from 0 (11.7.5)."""
        data = cmd.data_out or b""
        mrdsl = self.target_mrdsl
        data_sn = 0
        off = start
        while off < end:
            n = min(mrdsl, end - off)
            self._send(pack_data_out(itt=cmd.itt, ttt=ttt, exp_stat_sn=self.exp_stat_sn,
                                     data_sn=data_sn, offset=off, dsl=n, lun=cmd.lun,
                                     final=off + n >= end), data[off:off + n])
            data_sn += 1
            off += n

    def nop_out(self, data: bytes = b"") -> int:
        """Queue an immediate NOP-Out ping; return its ITT."""
        itt = self.session.alloc_itt()
        self._replies[itt] = ("nop", 0, 0, 0, 0)
        self._send(pack_nop_out(itt=itt, cmd_sn=self.session.cmd_sn,
                                exp_stat_sn=self.exp_stat_sn, dsl=len(data)), data)
        return itt

    def task_mgmt(self, function: int, *, ref_itt: int = RESERVED_TAG, lun: int = 0) -> int:
        """Queue an immediate TMF request; return its ITT."""
        sess = self.session
        itt = sess.alloc_itt()
        ref = self._find_task(ref_itt)
        self._replies[itt] = ("tmf", function, ref_itt, lun, sess.cmd_sn)
        self._send(pack_task_mgmt_req(itt=itt, function=function, cmd_sn=sess.cmd_sn,
                                      exp_stat_sn=self.exp_stat_sn, ref_itt=ref_itt,
                                      ref_cmd_sn=ref.cmd_sn if ref else sess.cmd_sn,
                                      lun=lun))
        return itt

    def logout(self, reason: int = LOGOUT_CLOSE_SESSION, cid: int | None = None) -> int:
        """Queue an immediate Logout Request; return its ITT."""
        itt = self.session.alloc_itt()
        self._replies[itt] = ("logout", reason, 0, 0, 0)
        self._send(pack_logout_req(itt=itt, cmd_sn=self.session.cmd_sn,
                                   exp_stat_sn=self.exp_stat_sn, reason=reason,
                                   cid=self.cid if cid is None else cid))
        return itt

    def connection_lost(self, why: str = "connection lost") -> list[Command]:
        """The transport ended: every unfinished task of this connection
        ends aborted (ERL 0: the session's recovery aborts them, 6.1.1)."""
        self.closed = True
        self.full_feature = False
        lost = [c for c in self.tasks.values() if not c.finished] + self.queued
        self.queued = []
        for cmd in lost:
            cmd.aborted = why
            cmd.lost = True
            if cmd.sent:
                self.session.observer.command_aborted(self, cmd)
        self.tasks.clear()
        return lost

    def _find_task(self, itt: int) -> Command | None:
        for conn in self.session.connections:
            cmd = conn.tasks.get(itt)
            if cmd is not None:
                return cmd
        return None

    # -- input --

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the target; return the events they completed.
        Raises ProtocolViolation when the stream cannot be framed."""
        self._rx += data
        events: list[Event] = []
        while True:
            pdu = self._next_pdu()
            if pdu is None:
                break
            self.session.observer.pdu_received(self, pdu)
            events.extend(self._dispatch(pdu))
        self._flush_queue()
        return events

    def _next_pdu(self) -> Pdu | None:
        rx = self._rx
        if len(rx) < BHS_SIZE:
            return None
        ahs_len = rx[4] * 4
        dsl = int.from_bytes(rx[5:8], "big")
        hd = 4 if self.header_digest else 0
        dd = 4 if self.data_digest and dsl else 0
        hdr_end = BHS_SIZE + ahs_len
        total = hdr_end + hd + dsl + pad4(dsl) + dd
        if len(rx) < total:
            return None
        limit = self.our_mrdsl if self.full_feature else LOGIN_MRDSL
        if dsl > limit:
            raise ProtocolViolation(f"PDU data segment {dsl} over our "
                                    f"MaxRecvDataSegmentLength {limit}")
        raw = bytes(rx[:total])
        del rx[:total]
        if hd and raw[hdr_end:hdr_end + 4] != digest_bytes(raw[:hdr_end]):
            raise ProtocolViolation("header digest mismatch")
        dstart = hdr_end + hd
        padded = raw[dstart:dstart + dsl + pad4(dsl)]
        if dd and raw[total - 4:total] != digest_bytes(padded):
            raise ProtocolViolation("data digest mismatch")
        return Pdu(raw[:BHS_SIZE], raw[BHS_SIZE:hdr_end], padded[:dsl])

    def _track(self, pdu: Pdu, consumes_stat_sn: bool) -> None:
        if consumes_stat_sn:
            nxt = sn_add(pdu.stat_sn, 1)
            if sn_lt(self.exp_stat_sn, nxt):
                self.exp_stat_sn = nxt
        self.session.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)

    def _dispatch(self, pdu: Pdu) -> list[Event]:
        op = pdu.opcode
        if op == OP_LOGIN_RSP:
            return self._on_login_rsp(pdu)
        status = op != OP_R2T and (op != OP_DATA_IN or bool(pdu.flags & DATAIN_FLAG_STATUS)) \
            and not (op == OP_NOP_IN and pdu.itt == RESERVED_TAG)
        self._track(pdu, status)
        if op == OP_DATA_IN:
            return self._on_data_in(pdu)
        if op == OP_SCSI_RSP:
            return self._on_scsi_rsp(pdu)
        if op == OP_R2T:
            self._on_r2t(pdu)
            return []
        if op == OP_NOP_IN:
            return self._on_nop_in(pdu)
        if op == OP_TASK_MGMT_RSP:
            return self._on_tmf_rsp(pdu)
        if op == OP_LOGOUT_RSP:
            self._replies.pop(pdu.itt, None)
            return [LogoutComplete(pdu.response)]
        if op == OP_REJECT:
            return self._on_reject(pdu)
        if op == OP_ASYNC_MSG:
            return [AsyncMessage(pdu.async_event)]
        if op == OP_TEXT_RSP:
            return []
        raise ProtocolViolation(f"unexpected {pdu.name} from the target")

    def _complete(self, cmd: Command) -> list[Event]:
        cmd.done = True
        self.tasks.pop(cmd.itt, None)
        self.session.observer.command_done(self, cmd)
        return [CommandComplete(cmd)]

    def _on_data_in(self, pdu: Pdu) -> list[Event]:
        cmd = self.tasks.get(pdu.itt)
        if cmd is None:
            return []
        off, n = pdu.buffer_offset, len(pdu.data)
        if len(cmd.data) < off + n:
            cmd.data.extend(bytes(off + n - len(cmd.data)))
        cmd.data[off:off + n] = pdu.data
        cmd.next_data_sn = sn_add(pdu.data_sn, 1)
        if not pdu.flags & DATAIN_FLAG_STATUS:
            return []
        cmd.status = pdu.status
        cmd.residual = pdu.residual_count
        return self._complete(cmd)

    def _on_scsi_rsp(self, pdu: Pdu) -> list[Event]:
        cmd = self.tasks.get(pdu.itt)
        if cmd is None:
            return []
        cmd.response = pdu.response
        cmd.status = pdu.status if pdu.response == 0 else None
        cmd.residual = pdu.residual_count
        if len(pdu.data) >= 2:
            slen = struct.unpack_from(">H", pdu.data, 0)[0]
            cmd.sense = pdu.data[2:2 + slen]
        return self._complete(cmd)

    def _on_r2t(self, pdu: Pdu) -> None:
        cmd = self.tasks.get(pdu.itt)
        if cmd is None or cmd.data_out is None:
            return
        cmd.next_r2t_sn = sn_add(pdu.r2t_sn, 1)
        off = pdu.buffer_offset
        end = min(off + pdu.desired_length, len(cmd.data_out))
        if off < end:
            self._send_data_out(cmd, pdu.ttt, off, end)

    def _on_nop_in(self, pdu: Pdu) -> list[Event]:
        if pdu.itt != RESERVED_TAG:
            self._replies.pop(pdu.itt, None)
            return [PingComplete(pdu.itt, pdu.data)]
        if pdu.ttt == RESERVED_TAG:
            return []
        if self.answer_nop_in:
            self._send(pack_nop_out(itt=RESERVED_TAG, ttt=pdu.ttt, cmd_sn=self.session.cmd_sn,
                                    exp_stat_sn=self.exp_stat_sn, lun=pdu.lun_raw))
        return [TargetPing(pdu.ttt)]

    def _on_tmf_rsp(self, pdu: Pdu) -> list[Event]:
        _, function, ref_itt, lun, tmf_sn = self._replies.pop(
            pdu.itt, ("tmf", 0, RESERVED_TAG, 0, self.session.cmd_sn))
        events: list[Event] = []
        if pdu.response == TMF_RSP_COMPLETE:
            for conn in self.session.connections:
                # Only tasks sent before the TMF are in its scope (CmdSN order).
                for cmd in [c for c in conn.tasks.values() if sn_lt(c.cmd_sn, tmf_sn)]:
                    hit = {TMF_ABORT_TASK: cmd.itt == ref_itt,
                           TMF_ABORT_TASK_SET: cmd.lun == lun,
                           TMF_CLEAR_TASK_SET: cmd.lun == lun,
                           TMF_LUN_RESET: cmd.lun == lun,
                           TMF_TARGET_WARM_RESET: True,
                           TMF_TARGET_COLD_RESET: True}.get(function, False)
                    if hit and not cmd.finished:
                        cmd.aborted = f"TMF {function}"
                        del conn.tasks[cmd.itt]
                        self.session.observer.command_aborted(conn, cmd)
                        events.append(CommandAborted(cmd))
        events.append(TaskManagementComplete(pdu.itt, function, ref_itt, pdu.response))
        return events

    def _on_reject(self, pdu: Pdu) -> list[Event]:
        ref = Pdu(pdu.rejected_bhs.ljust(BHS_SIZE, b"\0")).itt if pdu.dsl >= BHS_SIZE \
            else RESERVED_TAG
        cmd = self.tasks.pop(ref, None)
        if cmd is not None:
            cmd.aborted = f"rejected 0x{pdu.reason:02x}"
            self.session.observer.command_aborted(self, cmd)
        self._replies.pop(ref, None)
        return [Rejected(ref, pdu.reason)]
