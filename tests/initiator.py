"""A small, independent iSCSI initiator for the test-suite.

Speaks raw iSCSI (RFC 7143) over a plain blocking TCP socket, so tests can
drive our target with well-formed traffic and with deliberately malformed
PDUs. It is written from the RFC alone and shares no code with iscsi_scst/,
so a test that passes is not the target agreeing with itself.

Where it may be called from: test code only (it uses socket, select, os,
time freely; it is outside the kshim boundary). One Initiator is one TCP
connection of one session; it is not thread-safe.

What it implements (RFC 7143 sections):
  - PDU framing (11.2): BHS, AHS (extended CDB, bidi read length), data
    segment padding, CRC32C header and data digests (13.1) once negotiated.
  - Login (6, 11.12-11.13): security stage with AuthMethod=None, or straight
    to operational; T and C bits in both directions; LoginError on non-zero
    status.
  - Text (11.10-11.11) with continuation, SendTargets discovery (Appendix C).
  - SCSI commands (11.3-11.4, 11.7-11.8): immediate data, unsolicited
    Data-Out up to FirstBurstLength when InitialR2T=No, R2T-driven Data-Out
    split at the target's MaxRecvDataSegmentLength, multi-PDU Data-In with
    phase collapse (S bit), residuals, sense data.
  - CmdSN / ExpStatSN / MaxCmdSN bookkeeping with serial arithmetic
    (RFC 1982), waiting for the command window to open.
  - NOP-Out/In both ways (11.18-11.19), Task Management (11.5-11.6),
    Logout (11.14-11.15), Reject (11.17) and Async (11.9) recorded.

Differs from a real initiator: error recovery levels above 0, SNACK,
multiple connections per session and CHAP are not implemented (a test can
still send a SNACK with pack_snack and send_raw).

Strictness: by default (strict=True) the receive path raises
TargetProtocolError for target behaviour the RFC forbids (Data-In for an
unknown task, DataSN out of order, data past the expected length, R2T
outside the write buffer, ...), because this initiator exists to test a
target.

Raw access for malformed traffic: pack_bhs() packs any BHS with every field
chosen by the caller; the pack_* helpers fill opcode-specific layouts;
build_pdu() adds AHS, padding and (possibly wrong) digests; send_raw()
puts bytes on the wire; recv_pdu() returns the next PDU without handing it
to a task; expect_closed() waits for the target to drop the connection.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

# The codec lives in the product (tools/sim/pdu.py) so the sim initiator
# shares it; re-exported here because tests import it from this module.
from tools.sim.pdu import (  # noqa: F401
    AHS_BIDI_READ_LENGTH,
    ahs_bidi_read_length,
    ahs_extended_cdb,
    AHS_EXTENDED_CDB,
    ATTR_ACA,
    ATTR_HEAD_OF_QUEUE,
    ATTR_ORDERED,
    ATTR_SIMPLE,
    ATTR_UNTAGGED,
    BHS_SIZE,
    build_pdu,
    CMD_FLAG_READ,
    CMD_FLAG_WRITE,
    crc32c,
    DATAIN_FLAG_ACK,
    DATAIN_FLAG_STATUS,
    decode_keys,
    decode_lun,
    DEFAULT_INITIATOR_NAME,
    DEFAULT_OUR_MRDSL,
    digest_bytes,
    encode_keys,
    encode_lun,
    FLAG_FINAL,
    FLAG_IMMEDIATE,
    LOGIN_FLAG_CONTINUE,
    LOGIN_FLAG_TRANSIT,
    LOGOUT_CLOSE_CONNECTION,
    LOGOUT_CLOSE_SESSION,
    LOGOUT_REMOVE_FOR_RECOVERY,
    OP_ASYNC_MSG,
    OP_DATA_IN,
    OP_DATA_OUT,
    OP_LOGIN_REQ,
    OP_LOGIN_RSP,
    OP_LOGOUT_REQ,
    OP_LOGOUT_RSP,
    OP_NOP_IN,
    OP_NOP_OUT,
    OP_R2T,
    OP_REJECT,
    OP_SCSI_CMD,
    OP_SCSI_RSP,
    OP_SNACK,
    OP_TASK_MGMT_REQ,
    OP_TASK_MGMT_RSP,
    OP_TEXT_REQ,
    OP_TEXT_RSP,
    OPCODE_NAMES,
    pack_bhs,
    pack_data_out,
    pack_login_req,
    pack_logout_req,
    pack_nop_out,
    pack_scsi_cmd,
    pack_snack,
    pack_task_mgmt_req,
    pack_text_req,
    pad4,
    parse_read_capacity16,
    parse_report_luns,
    parse_sense,
    Pdu,
    RESERVED_TAG,
    RFC_DEFAULTS,
    RSP_FLAG_BIDI_OVERFLOW,
    RSP_FLAG_BIDI_UNDERFLOW,
    RSP_FLAG_OVERFLOW,
    RSP_FLAG_UNDERFLOW,
    SAM_STAT_BUSY,
    SAM_STAT_CHECK_CONDITION,
    SAM_STAT_GOOD,
    SAM_STAT_RESERVATION_CONFLICT,
    SAM_STAT_TASK_SET_FULL,
    SIMPLE,
    sn_add,
    sn_le,
    sn_lt,
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    TEXT_FLAG_CONTINUE,
    TMF_ABORT_TASK,
    TMF_ABORT_TASK_SET,
    TMF_CLEAR_ACA,
    TMF_CLEAR_TASK_SET,
    TMF_LUN_RESET,
    TMF_RSP_AUTH_FAILED,
    TMF_RSP_COMPLETE,
    TMF_RSP_NO_LUN,
    TMF_RSP_NO_REASSIGN,
    TMF_RSP_NO_TASK,
    TMF_RSP_NOT_SUPPORTED,
    TMF_RSP_REJECTED,
    TMF_RSP_TASK_ALLEGIANT,
    TMF_TARGET_COLD_RESET,
    TMF_TARGET_WARM_RESET,
    TMF_TASK_REASSIGN,
)
# --- Errors -----------------------------------------------------------------

class InitiatorError(Exception):
    """Base class of everything this module raises on purpose."""


class LoginError(InitiatorError):
    """The target answered a Login Request with a non-zero status."""

    def __init__(self, status_class: int, status_detail: int, pdu: "Pdu | None" = None):
        super().__init__(f"login failed: status class 0x{status_class:02x} "
                         f"detail 0x{status_detail:02x}")
        self.status_class = status_class
        self.status_detail = status_detail
        self.pdu = pdu


class TargetProtocolError(InitiatorError):
    """The target sent something RFC 7143 forbids (strict mode)."""

    def __init__(self, msg: str, pdu: "Pdu | None" = None):
        super().__init__(msg)
        self.pdu = pdu


class DigestError(TargetProtocolError):
    """A received header or data digest did not match."""


class ConnectionClosed(InitiatorError):
    """The target closed the TCP connection while we expected a PDU."""


class Rejected(InitiatorError):
    """The target answered our PDU with a Reject (11.17)."""

    def __init__(self, reason: int, pdu: "Pdu"):
        super().__init__(f"rejected, reason 0x{reason:02x}")
        self.reason = reason
        self.pdu = pdu


class TaskAborted(InitiatorError):
    """wait() on a task that a completed task management function aborted."""


@dataclass(eq=False)
class ScsiResult:
    """Outcome of one SCSI command."""
    itt: int
    status: int | None = None          # SAM status, None if a response code says failure
    response: int = 0                   # iSCSI response (0 = command completed at target)
    sense: bytes = b""                  # sense data without the 2-byte SenseLength
    data: bytes = b""                   # Data-In payload, trimmed to the highest byte received
    residual_count: int = 0
    overflow: bool = False
    underflow: bool = False
    bidi_residual_count: int = 0
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    response_data: bytes = b""          # data segment bytes after the sense
    final_pdu: Pdu | None = None        # the SCSI Response, or the Data-In with S bit
    data_in_pdus: int = 0
    r2ts: int = 0
    r2t_ranges: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) per R2T
    data_out_pdus: int = 0
    expected_exp_data_sn: int | None = None   # Data-In + R2T count we saw, if a SCSI Response came

    @property
    def ok(self) -> bool:
        return self.response == 0 and self.status == SAM_STAT_GOOD

    @property
    def sense_key(self) -> int | None:
        return parse_sense(self.sense)[0] if self.sense else None

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        if not self.sense:
            return None
        _, asc, ascq = parse_sense(self.sense)
        return asc, ascq

    def check(self) -> "ScsiResult":
        """Return self if GOOD, else raise ScsiError."""
        if not self.ok:
            raise ScsiError(self)
        return self


class ScsiError(InitiatorError):
    def __init__(self, result: ScsiResult):
        key = result.sense_key
        super().__init__(f"SCSI command itt=0x{result.itt:08x} failed: response "
                         f"{result.response} status {result.status} sense key {key} "
                         f"asc/ascq {result.asc_ascq}")
        self.result = result


# --- Per-command state --------------------------------------------------------

@dataclass(eq=False)
class _Task:
    itt: int
    lun: int
    cmd_sn: int
    edtl: int                      # write expected length (or read if no write)
    read_len: int
    data_out: bytes | None
    result: ScsiResult
    buf: bytearray = field(default_factory=bytearray)
    next_data_sn: int = 0          # Data-In DataSN expected next
    next_r2t_sn: int = 0           # R2TSN expected next

    @property
    def bidi(self) -> bool:
        return self.data_out is not None and self.read_len > 0
    done: bool = False
    aborted: bool = False
    rejected: Pdu | None = None


# --- The initiator -----------------------------------------------------------------

def _random_isid() -> bytes:
    """ISID of the 'random' format (T=10b, 11.12.5): 24 random bits in B/C,
    a 16-bit qualifier in D."""
    r = os.urandom(5)
    return bytes([0x80, r[0], r[1], r[2], r[3], r[4]])


class Initiator:
    """One iSCSI connection (and session) to a target over loopback TCP.

    Typical use:
        ini = Initiator(port=3260); ini.connect()
        ini.login("iqn....:target")
        ini.write10(0, b"x" * 4096).check(); ini.read10(0, 8).data
        ini.logout(); ini.close()
    Also usable as a context manager (closes the socket on exit).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 3260,
                 initiator_name: str = DEFAULT_INITIATOR_NAME,
                 isid: bytes | None = None, timeout: float = 10.0,
                 strict: bool = True, cid: int = 0, check_exp_data_sn: bool = True):
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise ValueError("tests talk to loopback addresses only")
        self.host = host
        self.port = port
        self.initiator_name = initiator_name
        self.isid = bytes(isid) if isid is not None else _random_isid()
        if len(self.isid) != 6:
            raise ValueError("ISID must be 6 bytes")
        self.timeout = timeout
        self.strict = strict
        # tgtd 1.0.85 answers ExpDataSN 0 after Data-In; tests against it turn this off.
        self.check_exp_data_sn = check_exp_data_sn
        self.cid = cid
        self.sock: socket.socket | None = None
        self._rbuf = bytearray()
        self._eof = False
        self._reset_session_state()

    def _reset_session_state(self) -> None:
        self.tsih = 0
        self.cmd_sn = 1                  # next CmdSN to use
        self.exp_cmd_sn = 1
        self.max_cmd_sn = 1
        self.exp_stat_sn = 0
        self._next_itt = 1
        self.header_digest = False       # in effect on this connection now
        self.data_digest = False
        self.full_feature = False
        self.discovery = False
        self.params: dict[str, str] = {}     # session/connection values in effect
        self.negotiated: dict[str, str] = {}  # what the target answered at login
        self.target_keys: dict[str, str] = {}  # all keys the target sent at login
        self.our_mrdsl = DEFAULT_OUR_MRDSL
        self.tasks: dict[int, _Task] = {}
        self._replies: dict[int, Pdu] = {}   # non-SCSI replies by ITT
        self.rejects: list[Pdu] = []
        self.async_msgs: list[Pdu] = []
        self.nop_ins: list[Pdu] = []         # target-initiated NOP-Ins seen

    # -- context manager / connection --

    def __enter__(self) -> "Initiator":
        if self.sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the TCP connection (bounded by self.timeout)."""
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(True)
        self._rbuf = bytearray()
        self._eof = False
        self._reset_session_state()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    # -- low level I/O --

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _poll(self, want_read: bool, want_write: bool, timeout: float) -> tuple[bool, bool]:
        """(readable, writable) within timeout seconds (poll: no fd limit)."""
        assert self.sock is not None, "not connected"
        mask = (select.POLLIN if want_read else 0) | (select.POLLOUT if want_write else 0)
        p = select.poll()
        p.register(self.sock, mask)
        ev = 0
        for _, e in p.poll(max(0, int(timeout * 1000 + 0.999))):
            ev |= e
        err = select.POLLERR | select.POLLHUP
        return (bool(ev & (select.POLLIN | err)) and want_read,
                bool(ev & (select.POLLOUT | err)) and want_write)

    def _fill(self, deadline: float, block: bool = True) -> bool:
        """Receive what is available into _rbuf. Returns False on EOF.
        Raises TimeoutError when block and nothing came before deadline."""
        assert self.sock is not None, "not connected"
        if self._eof:
            return False
        remaining = deadline - time.monotonic()
        if block:
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the target")
            if not self._poll(True, False, remaining)[0]:
                raise TimeoutError("timed out waiting for the target")
        elif not self._poll(True, False, 0)[0]:
            return True
        try:
            chunk = self.sock.recv(1 << 20)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        self._rbuf += chunk
        return True

    def _read_exact(self, n: int, deadline: float) -> bytes:
        # Bounded: every pass either adds bytes or raises (timeout / EOF).
        while len(self._rbuf) < n:
            if not self._fill(deadline):
                raise ConnectionClosed("target closed the connection")
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    def send_raw(self, data: bytes, timeout: float | None = None) -> None:
        """Write bytes to the socket, draining incoming bytes meanwhile so
        two large transfers in opposite directions cannot deadlock."""
        assert self.sock is not None, "not connected"
        deadline = self._deadline(timeout)
        view = memoryview(bytes(data))
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out sending to the target")
            r, w = self._poll(not self._eof, True, remaining)
            if r:
                self._fill(deadline, block=False)
            if w:
                try:
                    sent = self.sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError) as e:
                    raise ConnectionClosed(f"send failed: {e}") from e
                view = view[sent:]

    def send_pdu(self, bhs: bytes, data: bytes = b"", ahs: bytes = b"", **kw: bool) -> None:
        """Send a BHS (+AHS, data) framed with the digests now in effect."""
        self.send_raw(build_pdu(bhs, data, ahs=ahs, header_digest=self.header_digest,
                                data_digest=self.data_digest, **kw))

    def recv_pdu(self, timeout: float | None = None, *, track: bool = True) -> Pdu:
        """Receive the next PDU from the wire, checking digests in effect.

        It is not handed to any task (raw access), but with track=True the
        StatSN / ExpCmdSN / MaxCmdSN bookkeeping is updated from it.
        Raises TimeoutError, ConnectionClosed, DigestError.
        """
        deadline = self._deadline(timeout)
        bhs = self._read_exact(BHS_SIZE, deadline)
        ahs_len = bhs[4] * 4
        dsl = int.from_bytes(bhs[5:8], "big")
        ahs = self._read_exact(ahs_len, deadline) if ahs_len else b""
        pdu = Pdu(bhs, ahs)
        if self.header_digest:
            got = self._read_exact(4, deadline)
            if got != digest_bytes(bhs + ahs):
                raise DigestError(f"header digest mismatch on {pdu!r}", pdu)
        if dsl:
            padded = self._read_exact(dsl + pad4(dsl), deadline)
            pdu.data = padded[:dsl]
            if self.data_digest:
                got = self._read_exact(4, deadline)
                if got != digest_bytes(padded):
                    raise DigestError(f"data digest mismatch on {pdu!r}", pdu)
        if track:
            self._track_sn(pdu)
        return pdu

    def expect_closed(self, timeout: float | None = None) -> bool:
        """True if the target closes the connection within timeout (bytes
        it sends first are discarded), False if it is still open then."""
        deadline = self._deadline(timeout)
        # Bounded by the deadline: each pass blocks in select until it.
        while True:
            try:
                if not self._fill(deadline):
                    return True
            except TimeoutError:
                return False
            self._rbuf.clear()

    # -- sequence numbers --

    def _track_sn(self, pdu: Pdu) -> None:
        op = pdu.opcode
        if op in (OP_SCSI_RSP, OP_TASK_MGMT_RSP, OP_LOGIN_RSP, OP_TEXT_RSP,
                  OP_LOGOUT_RSP, OP_REJECT, OP_ASYNC_MSG) or \
                (op == OP_DATA_IN and pdu.flags & DATAIN_FLAG_STATUS) or \
                (op == OP_NOP_IN and pdu.itt != RESERVED_TAG):
            nxt = sn_add(pdu.stat_sn, 1)
            if not self.full_feature or sn_lt(self.exp_stat_sn, nxt):
                self.exp_stat_sn = nxt
        elif op in (OP_R2T, OP_NOP_IN):
            # These carry the next StatSN without consuming one.
            if sn_lt(self.exp_stat_sn, pdu.stat_sn):
                self.exp_stat_sn = pdu.stat_sn
        if op in (OP_DATA_IN, OP_SCSI_RSP, OP_TASK_MGMT_RSP, OP_LOGIN_RSP, OP_TEXT_RSP,
                  OP_LOGOUT_RSP, OP_REJECT, OP_ASYNC_MSG, OP_R2T, OP_NOP_IN):
            exp, mx = pdu.exp_cmd_sn, pdu.max_cmd_sn
            if op == OP_LOGIN_RSP:
                self.exp_cmd_sn, self.max_cmd_sn = exp, mx
                return
            if op == OP_DATA_IN and not pdu.flags & DATAIN_FLAG_STATUS and exp == 0 and mx == 0:
                return
            # 11.2.2.2: ignore when MaxCmdSN < ExpCmdSN - 1.
            if sn_lt(mx, sn_add(exp, -1)):
                return
            if sn_lt(self.exp_cmd_sn, exp):
                self.exp_cmd_sn = exp
            if sn_lt(self.max_cmd_sn, mx):
                self.max_cmd_sn = mx

    def window_open(self) -> bool:
        return sn_le(self.cmd_sn, self.max_cmd_sn)

    def _alloc_itt(self) -> int:
        # Bounded: at most len(tasks)+1 probes find a free tag.
        for _ in range(len(self.tasks) + len(self._replies) + 2):
            itt = self._next_itt
            self._next_itt = (self._next_itt + 1) & 0xFFFFFFFF
            if self._next_itt == RESERVED_TAG:
                self._next_itt = 1
            if itt not in self.tasks and itt not in self._replies and itt != RESERVED_TAG:
                return itt
        raise InitiatorError("no free ITT")

    def _take_cmd_sn(self, immediate: bool) -> int:
        sn = self.cmd_sn
        if not immediate:
            self.cmd_sn = sn_add(sn, 1)
        return sn

    # -- login --

    def _param(self, key: str) -> str:
        return self.params.get(key, RFC_DEFAULTS.get(key, ""))

    def _param_int(self, key: str) -> int:
        return int(self._param(key))

    def _param_yes(self, key: str) -> bool:
        return self._param(key) == "Yes"

    @property
    def target_mrdsl(self) -> int:
        """The target's declared MaxRecvDataSegmentLength: the most we may
        put in one PDU's data segment."""
        v = self.target_keys.get("MaxRecvDataSegmentLength")
        return int(v) if v and v.isdigit() else int(RFC_DEFAULTS["MaxRecvDataSegmentLength"])

    def login(self, target_name: str | None = None, discovery: bool = False,
              keys: dict[str, str | None] | None = None, header_digest: bool = False,
              data_digest: bool = False, security_stage: bool = True,
              timeout: float | None = None) -> dict[str, str]:
        """Log in and enter full feature phase; return the keys the target sent.

        keys overrides or adds offered keys (None removes a default one).
        security_stage=False starts at the operational stage directly.
        Raises LoginError on a non-zero Status-Class, TargetProtocolError
        on a malformed exchange.
        """
        if self.sock is None:
            self.connect()
        deadline = self._deadline(timeout)
        self.discovery = discovery
        ident: dict[str, str | None] = {"InitiatorName": self.initiator_name,
                                        "SessionType": "Discovery" if discovery else "Normal"}
        if not discovery:
            if target_name is None:
                raise ValueError("a normal session needs a target_name")
            ident["TargetName"] = target_name
        oper: dict[str, str | None] = {
            "HeaderDigest": "CRC32C" if header_digest else "None",
            "DataDigest": "CRC32C" if data_digest else "None",
            "MaxRecvDataSegmentLength": str(DEFAULT_OUR_MRDSL),
        }
        if not discovery:
            oper.update({
                "InitialR2T": "Yes", "ImmediateData": "Yes",
                "MaxBurstLength": "262144", "FirstBurstLength": "65536",
                "MaxOutstandingR2T": "1", "DataPDUInOrder": "Yes",
                "DataSequenceInOrder": "Yes", "ErrorRecoveryLevel": "0",
                "DefaultTime2Wait": "0", "DefaultTime2Retain": "0",
                "MaxConnections": "1",
            })
        security: dict[str, str | None] = {**ident, "AuthMethod": "None"}
        if not security_stage:
            oper = {**ident, **oper}
        for k, v in (keys or {}).items():
            if security_stage and k in security:
                security[k] = v
            else:
                oper[k] = v
        stages: dict[int, dict[str, str]] = {
            STAGE_SECURITY: {k: v for k, v in security.items() if v is not None},
            STAGE_OPERATIONAL: {k: v for k, v in oper.items() if v is not None},
        }
        offered: dict[str, str] = {}
        itt = self._alloc_itt()
        self.target_keys = {}
        stage = STAGE_SECURITY if security_stage else STAGE_OPERATIONAL
        pending = dict(stages[stage])
        # Each exchange makes progress or the target misbehaves; cap it.
        for _ in range(64):
            nsg = STAGE_OPERATIONAL if stage == STAGE_SECURITY else STAGE_FULL_FEATURE
            offered.update(pending)
            resp_keys = self._login_exchange(itt, stage, nsg, encode_keys(pending), deadline)
            pdu = self._last_login_rsp
            if pdu.status_class != 0:
                raise LoginError(pdu.status_class, pdu.status_detail, pdu)
            if pdu.itt != itt and self.strict:
                raise TargetProtocolError("login response ITT mismatch", pdu)
            if pdu.bhs[3] != 0 and self.strict:
                raise TargetProtocolError(f"version-active {pdu.bhs[3]} not 0", pdu)
            for k, v in resp_keys:
                self.target_keys[k] = v
            # Answer keys the target offered that we never offered.
            pending = {}
            for k, v in resp_keys:
                if k not in offered and k not in ("TargetAlias", "TargetAddress",
                                                   "TargetPortalGroupTag",
                                                   "MaxRecvDataSegmentLength"):
                    pending[k] = self._answer_offer(k, v)
            if pdu.transit:
                if pdu.isid != self.isid and self.strict:
                    raise TargetProtocolError("login response ISID mismatch", pdu)
                if pdu.nsg == STAGE_FULL_FEATURE:
                    if pdu.tsih == 0 and self.strict:
                        raise TargetProtocolError("final Login Response with TSIH 0", pdu)
                    self.tsih = pdu.tsih
                    break
                if pdu.nsg != STAGE_OPERATIONAL or stage != STAGE_SECURITY:
                    raise TargetProtocolError(f"bad login stage transition {stage}->{pdu.nsg}",
                                              pdu)
                stage = STAGE_OPERATIONAL
                pending.update(stages[STAGE_OPERATIONAL])
        else:
            raise TargetProtocolError("login did not complete in 64 exchanges")
        self.negotiated = {k: v for k, v in self.target_keys.items() if k in offered}
        self._apply_params(offered)
        self.full_feature = True
        if self.strict and self.cmd_sn != self.exp_cmd_sn:
            raise TargetProtocolError(f"ExpCmdSN {self.exp_cmd_sn} after login, our "
                                      f"login CmdSN was {self.cmd_sn}")
        return dict(self.target_keys)

    def _answer_offer(self, key: str, value: str) -> str:
        """Our answer to a key the target offered first: accept its value
        (first of a list), which every function in 13 allows us to do."""
        if "," in value and not value[0].isdigit():
            return value.split(",")[0]
        return value

    def _login_exchange(self, itt: int, csg: int, nsg: int, text: bytes,
                        deadline: float) -> list[tuple[str, str]]:
        """Send our text (split with C bit at 8192, the login-phase MRDSL),
        collect the target's text (following its C bit). Returns its keys;
        the last Login Response is left in self._last_login_rsp."""
        chunk = 8192
        parts = [text[i:i + chunk] for i in range(0, len(text), chunk)] or [b""]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            bhs = pack_login_req(isid=self.isid, tsih=self.tsih, itt=itt, cid=self.cid,
                                 cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                 csg=csg, nsg=nsg, transit=last, cont=not last,
                                 dsl=len(part))
            self.send_pdu(bhs, part)
            pdu = self._recv_login_rsp(deadline)
            if not last:
                if pdu.status_class != 0:
                    return []
                if pdu.dsl and self.strict:
                    raise TargetProtocolError("target sent text while we continued", pdu)
        got = bytearray(pdu.data)
        # Target continuation: ask for the rest with empty requests (bounded).
        for _ in range(1024):
            if not pdu.cont or pdu.status_class != 0:
                break
            bhs = pack_login_req(isid=self.isid, tsih=self.tsih, itt=itt, cid=self.cid,
                                 cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                 csg=csg, nsg=nsg, transit=False)
            self.send_pdu(bhs)
            pdu = self._recv_login_rsp(deadline)
            got += pdu.data
        else:
            raise TargetProtocolError("login text continuation never ended", pdu)
        if pdu.cont and pdu.transit and self.strict:
            raise TargetProtocolError("login response with both C and T bits", pdu)
        return decode_keys(bytes(got))

    def _recv_login_rsp(self, deadline: float) -> Pdu:
        pdu = self.recv_pdu(max(0.0, deadline - time.monotonic()))
        if pdu.opcode != OP_LOGIN_RSP:
            raise TargetProtocolError(f"expected Login Response, got {pdu!r}", pdu)
        if self.strict and pdu.dsl > 8192:
            raise TargetProtocolError(f"Login Response data segment {pdu.dsl} over 8192", pdu)
        self._last_login_rsp = pdu
        return pdu

    def _apply_params(self, offered: dict[str, str]) -> None:
        params: dict[str, str] = {}
        for k, ours in offered.items():
            theirs = self.negotiated.get(k)
            if k == "MaxRecvDataSegmentLength":
                params[k] = ours              # declarative: what we receive
            elif theirs is None or theirs in ("Irrelevant", "NotUnderstood", "Reject"):
                params[k] = RFC_DEFAULTS.get(k, ours) if theirs else ours
            else:
                params[k] = theirs
        self.params = params
        self.our_mrdsl = int(params.get("MaxRecvDataSegmentLength", DEFAULT_OUR_MRDSL))
        self.header_digest = self._param("HeaderDigest") == "CRC32C"
        self.data_digest = self._param("DataDigest") == "CRC32C"

    # -- text / discovery --

    def text_request(self, keys: dict[str, str] | list[tuple[str, str]],
                     timeout: float | None = None) -> list[tuple[str, str]]:
        """Text Request/Response exchange, following the target's C bit."""
        deadline = self._deadline(timeout)
        itt = self._alloc_itt()
        text = encode_keys(keys)
        if len(text) > self.target_mrdsl:
            raise ValueError("text request longer than the target's MaxRecvDataSegmentLength")
        self._wait_window(deadline)
        bhs = pack_text_req(itt=itt, cmd_sn=self._take_cmd_sn(False),
                            exp_stat_sn=self.exp_stat_sn, dsl=len(text))
        self.send_pdu(bhs, text)
        got = bytearray()
        self.last_text_pdus: list[Pdu] = []
        for _ in range(1024):
            pdu = self._wait_reply(itt, deadline)
            self.last_text_pdus.append(pdu)
            if pdu.opcode != OP_TEXT_RSP:
                raise TargetProtocolError(f"expected Text Response, got {pdu!r}", pdu)
            got += pdu.data
            if self.strict and pdu.final and pdu.flags & TEXT_FLAG_CONTINUE:
                raise TargetProtocolError("Text Response with both F and C bits", pdu)
            if not pdu.flags & TEXT_FLAG_CONTINUE and pdu.final:
                if pdu.ttt != RESERVED_TAG and self.strict:
                    raise TargetProtocolError("final Text Response with a TTT", pdu)
                return decode_keys(bytes(got))
            self._wait_window(deadline)
            bhs = pack_text_req(itt=itt, ttt=pdu.ttt, cmd_sn=self._take_cmd_sn(False),
                                exp_stat_sn=self.exp_stat_sn, dsl=0)
            self.send_pdu(bhs)
        raise TargetProtocolError("text continuation never ended")

    def send_targets(self, what: str = "All",
                     timeout: float | None = None) -> list[tuple[str, list[str]]]:
        """SendTargets discovery: [(target name, [addresses])]."""
        out: list[tuple[str, list[str]]] = []
        for k, v in self.text_request([("SendTargets", what)], timeout):
            if k == "TargetName":
                out.append((v, []))
            elif k == "TargetAddress" and out:
                out[-1][1].append(v)
        return out

    # -- receive dispatch --

    def _wait_window(self, deadline: float) -> None:
        """Pump until CmdSN <= MaxCmdSN (the target's command window)."""
        while not self.window_open():
            self._pump(deadline)

    def _pump(self, deadline: float) -> None:
        """Receive one PDU and hand it to whoever it belongs to."""
        pdu = self.recv_pdu(max(0.0, deadline - time.monotonic()))
        op = pdu.opcode
        if self.strict and pdu.dsl > self.our_mrdsl:
            raise TargetProtocolError(f"{pdu.name} itt=0x{pdu.itt:08x} data segment {pdu.dsl} "
                                      f"over our MaxRecvDataSegmentLength {self.our_mrdsl}", pdu)
        if op == OP_DATA_IN:
            self._on_data_in(pdu)
        elif op == OP_SCSI_RSP:
            self._on_scsi_rsp(pdu)
        elif op == OP_R2T:
            self._on_r2t(pdu)
        elif op == OP_NOP_IN and pdu.itt == RESERVED_TAG:
            self.nop_ins.append(pdu)
            if pdu.ttt != RESERVED_TAG:
                bhs = pack_nop_out(itt=RESERVED_TAG, ttt=pdu.ttt, cmd_sn=self.cmd_sn,
                                   exp_stat_sn=self.exp_stat_sn, lun=pdu.lun_raw)
                self.send_pdu(bhs)
        elif op == OP_ASYNC_MSG:
            self.async_msgs.append(pdu)
        elif op == OP_REJECT:
            self.rejects.append(pdu)
            ref = Pdu(pdu.rejected_bhs.ljust(48, b"\0")).itt if pdu.dsl >= 48 else RESERVED_TAG
            task = self.tasks.get(ref)
            if task is not None:
                task.rejected = pdu
                task.done = True
            elif ref != RESERVED_TAG:
                self._replies[ref] = pdu
        else:
            if pdu.itt in self._replies and self.strict:
                raise TargetProtocolError(f"second reply for itt 0x{pdu.itt:08x}", pdu)
            self._replies[pdu.itt] = pdu

    def _wait_reply(self, itt: int, deadline: float) -> Pdu:
        """Pump until a non-SCSI reply for itt arrives; a Reject raises."""
        # Bounded by the deadline inside _pump.
        while itt not in self._replies:
            self._pump(deadline)
        pdu = self._replies.pop(itt)
        if pdu.opcode == OP_REJECT:
            raise Rejected(pdu.reason, pdu)
        return pdu

    def _task_for(self, pdu: Pdu) -> _Task | None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.done:
            if self.strict:
                raise TargetProtocolError(f"{pdu.name} for unknown or finished task "
                                          f"itt=0x{pdu.itt:08x}", pdu)
            return None
        return task

    def _on_data_in(self, pdu: Pdu) -> None:
        task = self._task_for(pdu)
        if task is None:
            return
        res = task.result
        res.data_in_pdus += 1
        off, n = pdu.buffer_offset, len(pdu.data)
        if self.strict:
            if pdu.data_sn != task.next_data_sn:
                raise TargetProtocolError(f"Data-In itt=0x{pdu.itt:08x} DataSN {pdu.data_sn}, "
                                          f"expected {task.next_data_sn}", pdu)
            if off + n > task.read_len:
                raise TargetProtocolError(f"Data-In itt=0x{pdu.itt:08x} offset {off} + {n} "
                                          f"beyond expected length {task.read_len}", pdu)
            if n > self.our_mrdsl:
                raise TargetProtocolError(f"Data-In itt=0x{pdu.itt:08x} of {n} bytes over our "
                                          f"MaxRecvDataSegmentLength {self.our_mrdsl}", pdu)
            if pdu.flags & DATAIN_FLAG_STATUS and not pdu.final:
                raise TargetProtocolError("Data-In with S bit but no F bit", pdu)
        task.next_data_sn = sn_add(pdu.data_sn, 1)
        if task.bidi:              # R2T and Data-In share one numbering (11.8.6)
            task.next_r2t_sn = task.next_data_sn
        if len(task.buf) < off + n:
            task.buf.extend(b"\0" * (off + n - len(task.buf)))
        task.buf[off:off + n] = pdu.data
        if pdu.flags & DATAIN_FLAG_STATUS:
            res.status = pdu.status
            res.response = 0
            res.overflow = bool(pdu.flags & RSP_FLAG_OVERFLOW)
            res.underflow = bool(pdu.flags & RSP_FLAG_UNDERFLOW)
            res.residual_count = pdu.residual_count
            self._finish(task, pdu)

    def _on_scsi_rsp(self, pdu: Pdu) -> None:
        task = self._task_for(pdu)
        if task is None:
            return
        res = task.result
        res.response = pdu.response
        res.status = pdu.status if pdu.response == 0 else None
        fl = pdu.flags
        res.overflow = bool(fl & RSP_FLAG_OVERFLOW)
        res.underflow = bool(fl & RSP_FLAG_UNDERFLOW)
        res.bidi_overflow = bool(fl & RSP_FLAG_BIDI_OVERFLOW)
        res.bidi_underflow = bool(fl & RSP_FLAG_BIDI_UNDERFLOW)
        res.residual_count = pdu.residual_count
        res.bidi_residual_count = pdu.bidi_residual_count
        if len(pdu.data) >= 2:
            slen = struct.unpack_from(">H", pdu.data, 0)[0]
            if self.strict and 2 + slen > len(pdu.data):
                raise TargetProtocolError(f"SenseLength {slen} past data segment", pdu)
            res.sense = pdu.data[2:2 + slen]
            res.response_data = pdu.data[2 + slen:]
        elif pdu.data and self.strict:
            raise TargetProtocolError("SCSI Response data segment of 1 byte", pdu)
        # ExpDataSN counts the Data-In and R2T PDUs the target sent (11.4.8).
        sent = task.next_data_sn if task.bidi else sn_add(task.next_data_sn, task.next_r2t_sn)
        task.result.expected_exp_data_sn = sent
        if self.strict and self.check_exp_data_sn and pdu.response == 0 and \
                pdu.exp_data_sn != sent:
            raise TargetProtocolError(f"SCSI Response itt=0x{pdu.itt:08x} ExpDataSN "
                                      f"{pdu.exp_data_sn}, we saw {sent} Data-In/R2T", pdu)
        self._finish(task, pdu)

    def _finish(self, task: _Task, pdu: Pdu) -> None:
        task.done = True
        task.result.final_pdu = pdu
        task.result.data = bytes(task.buf)

    def _on_r2t(self, pdu: Pdu) -> None:
        task = self._task_for(pdu)
        if task is None:
            return
        task.result.r2ts += 1
        task.result.r2t_ranges.append((pdu.buffer_offset, pdu.desired_length))
        off, length = pdu.buffer_offset, pdu.desired_length
        data = task.data_out or b""
        if self.strict:
            if task.data_out is None:
                raise TargetProtocolError(f"R2T for a non-write task itt=0x{pdu.itt:08x}", pdu)
            if pdu.r2t_sn != task.next_r2t_sn:
                raise TargetProtocolError(f"R2TSN {pdu.r2t_sn}, expected {task.next_r2t_sn}", pdu)
            if off + length > len(data) or length == 0:
                raise TargetProtocolError(f"R2T itt=0x{pdu.itt:08x} offset {off} length "
                                          f"{length} outside write of {len(data)}", pdu)
            if length > self._param_int("MaxBurstLength"):
                raise TargetProtocolError(f"R2T length {length} over MaxBurstLength", pdu)
            if pdu.ttt == RESERVED_TAG:
                raise TargetProtocolError("R2T with the reserved TTT", pdu)
        task.next_r2t_sn = sn_add(pdu.r2t_sn, 1)
        if task.bidi:
            task.next_data_sn = task.next_r2t_sn
        self._send_data_out(task, pdu.ttt, off, min(off + length, len(data)))

    def _send_data_out(self, task: _Task, ttt: int, start: int, end: int) -> None:
        """One sequence of Data-Out PDUs for [start, end), DataSN from 0,
        each at most the target's MaxRecvDataSegmentLength."""
        data = task.data_out or b""
        mrdsl = self.target_mrdsl
        data_sn = 0
        off = start
        # Bounded: each pass advances off by at least one byte.
        while off < end:
            n = min(mrdsl, end - off)
            bhs = pack_data_out(itt=task.itt, ttt=ttt, exp_stat_sn=self.exp_stat_sn,
                                data_sn=data_sn, offset=off, dsl=n,
                                lun=task.lun, final=off + n >= end)
            self.send_pdu(bhs, data[off:off + n])
            task.result.data_out_pdus += 1
            data_sn += 1
            off += n

    # -- SCSI commands --

    def submit(self, cdb: bytes, lun: int = 0, data_out: bytes | None = None,
               read_len: int = 0, attr: int = ATTR_SIMPLE, immediate: bool = True,
               immediate_delivery: bool = False, timeout: float | None = None) -> int:
        """Send a SCSI command and its unsolicited data; return its ITT.

        immediate: put immediate data in the command PDU when the session
        negotiated ImmediateData=Yes (False sends all data as Data-Out).
        immediate_delivery: set the I bit (the command does not consume a
        CmdSN). Waits (bounded) for the command window if it is closed.
        """
        if not self.full_feature or self.discovery:
            raise InitiatorError("SCSI commands need a normal session in full feature phase")
        deadline = self._deadline(timeout)
        if not immediate_delivery:
            self._wait_window(deadline)
        itt = self._alloc_itt()
        write = data_out is not None
        wlen = len(data_out) if write else 0
        edtl = wlen if write else read_len
        cdb = bytes(cdb)
        ahs = b""
        if len(cdb) > 16:
            ahs += ahs_extended_cdb(cdb)
        if write and read_len:
            ahs += ahs_bidi_read_length(read_len)
        cmd_sn = self._take_cmd_sn(immediate_delivery)
        task = _Task(itt=itt, lun=lun, cmd_sn=cmd_sn, edtl=edtl, read_len=read_len,
                     data_out=bytes(data_out) if write else None,
                     result=ScsiResult(itt=itt))
        self.tasks[itt] = task
        first_burst = self._param_int("FirstBurstLength")
        imm_len = 0
        if write and immediate and self._param_yes("ImmediateData"):
            imm_len = min(wlen, first_burst, self.target_mrdsl)
        unsol_end = imm_len
        if write and not self._param_yes("InitialR2T"):
            unsol_end = min(wlen, first_burst)
        final = unsol_end <= imm_len
        bhs = pack_scsi_cmd(itt=itt, cmd_sn=cmd_sn, exp_stat_sn=self.exp_stat_sn,
                            cdb=cdb, edtl=edtl, lun=lun, read=bool(read_len), write=write,
                            final=final, attr=attr, immediate=immediate_delivery,
                            dsl=imm_len, ahs_len=len(ahs))
        self.send_pdu(bhs, task.data_out[:imm_len] if imm_len else b"", ahs=ahs)
        if unsol_end > imm_len:
            self._send_data_out(task, RESERVED_TAG, imm_len, unsol_end)
        return itt

    def wait(self, itt: int, timeout: float | None = None) -> ScsiResult:
        """Pump until the task finishes; return its ScsiResult.
        Raises TimeoutError, TaskAborted, Rejected, ConnectionClosed."""
        deadline = self._deadline(timeout)
        task = self.tasks[itt]
        # Bounded by the deadline inside _pump.
        while not task.done and not task.aborted:
            self._pump(deadline)
        del self.tasks[itt]
        if task.rejected is not None:
            raise Rejected(task.rejected.reason, task.rejected)
        if task.aborted and not task.done:
            raise TaskAborted(f"task itt=0x{itt:08x} was aborted")
        return task.result

    def scsi(self, cdb: bytes, lun: int = 0, data_out: bytes | None = None,
             read_len: int = 0, attr: int = ATTR_SIMPLE, immediate: bool = True,
             timeout: float | None = None) -> ScsiResult:
        """submit() then wait()."""
        return self.wait(self.submit(cdb, lun, data_out, read_len, attr, immediate,
                                     timeout=timeout), timeout)

    # -- convenience SCSI --

    def test_unit_ready(self, lun: int = 0) -> ScsiResult:
        return self.scsi(bytes(6), lun)

    def inquiry(self, lun: int = 0, evpd: bool = False, page: int = 0,
                alloc_len: int = 255) -> ScsiResult:
        cdb = struct.pack(">BBBHB", 0x12, 1 if evpd else 0, page, alloc_len, 0)
        return self.scsi(cdb, lun, read_len=alloc_len)

    def read_capacity16(self, lun: int = 0, alloc_len: int = 32) -> ScsiResult:
        """READ CAPACITY(16); parse_read_capacity16(result.data) decodes it."""
        cdb = struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc_len, 0, 0)
        return self.scsi(cdb, lun, read_len=alloc_len)

    def read10(self, lba: int, blocks: int, bs: int = 512, lun: int = 0) -> ScsiResult:
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
        return self.scsi(cdb, lun, read_len=blocks * bs)

    def write10(self, lba: int, data: bytes, bs: int = 512, lun: int = 0,
                immediate: bool = True) -> ScsiResult:
        if len(data) % bs:
            raise ValueError("write10 data must be whole blocks")
        cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, len(data) // bs, 0)
        return self.scsi(cdb, lun, data_out=data, immediate=immediate)

    def report_luns(self, alloc_len: int = 4096) -> ScsiResult:
        """REPORT LUNS; parse_report_luns(result.data) decodes it."""
        cdb = struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, alloc_len, 0, 0)
        return self.scsi(cdb, 0, read_len=alloc_len)

    # -- NOP, TMF, logout --

    def nop_out(self, ping_data: bytes = b"", lun: int = 0,
                timeout: float | None = None) -> Pdu:
        """Ping: immediate NOP-Out with a fresh ITT; return the NOP-In."""
        deadline = self._deadline(timeout)
        itt = self._alloc_itt()
        bhs = pack_nop_out(itt=itt, cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                           dsl=len(ping_data), lun=lun)
        self.send_pdu(bhs, ping_data)
        pdu = self._wait_reply(itt, deadline)
        if pdu.opcode != OP_NOP_IN:
            raise TargetProtocolError(f"expected NOP-In, got {pdu!r}", pdu)
        if self.strict and pdu.data != bytes(ping_data):
            raise TargetProtocolError("NOP-In did not echo the ping data", pdu)
        return pdu

    def task_mgmt(self, function: int, ref_itt: int = RESERVED_TAG, lun: int = 0,
                  timeout: float | None = None) -> int:
        """Send a TMF request (immediate); return the TMF response code.
        On success, tasks it aborted make wait() raise TaskAborted (unless
        their response had already arrived)."""
        deadline = self._deadline(timeout)
        itt = self._alloc_itt()
        ref = self.tasks.get(ref_itt)
        ref_cmd_sn = ref.cmd_sn if ref is not None else self.cmd_sn
        bhs = pack_task_mgmt_req(itt=itt, function=function, cmd_sn=self.cmd_sn,
                                 exp_stat_sn=self.exp_stat_sn, ref_itt=ref_itt,
                                 ref_cmd_sn=ref_cmd_sn, lun=lun)
        self.send_pdu(bhs)
        pdu = self._wait_reply(itt, deadline)
        if pdu.opcode != OP_TASK_MGMT_RSP:
            raise TargetProtocolError(f"expected TMF Response, got {pdu!r}", pdu)
        if pdu.response == TMF_RSP_COMPLETE:
            for t in self.tasks.values():
                hit = {TMF_ABORT_TASK: t.itt == ref_itt,
                       TMF_ABORT_TASK_SET: t.lun == lun,
                       TMF_CLEAR_TASK_SET: t.lun == lun,
                       TMF_LUN_RESET: t.lun == lun,
                       TMF_TARGET_WARM_RESET: True,
                       TMF_TARGET_COLD_RESET: True}.get(function, False)
                if hit:
                    t.aborted = True
        return pdu.response

    def logout(self, reason: int = LOGOUT_CLOSE_SESSION,
               timeout: float | None = None) -> int:
        """Logout Request; return the Logout Response code. The connection
        is closed on our side afterwards for reasons 0 and 1."""
        deadline = self._deadline(timeout)
        itt = self._alloc_itt()
        bhs = pack_logout_req(itt=itt, cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                              reason=reason, cid=self.cid)
        self.send_pdu(bhs)
        pdu = self._wait_reply(itt, deadline)
        if pdu.opcode != OP_LOGOUT_RSP:
            raise TargetProtocolError(f"expected Logout Response, got {pdu!r}", pdu)
        self.last_logout_rsp = pdu
        if reason in (LOGOUT_CLOSE_SESSION, LOGOUT_CLOSE_CONNECTION) and pdu.response == 0:
            self.full_feature = False
            self.close()
        return pdu.response
