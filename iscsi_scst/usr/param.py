"""iSCSI text keys: parse and pack key=value text, the key table, and the
negotiation of every key the target answers during login and in Text Requests.

Twin of iscsi-scst/usr/param.c (key tables and per-type key operations) and
the text helpers of iscsi-scst/usr/message.c. Behaviour follows RFC 7143:
section 6.1-6.2 (text format, negotiation rules), 6.3 (stages), 13 (keys).

Pure code: no kshim, no I/O, no clock, no state outside the objects given.
In SCST this runs in the usermode daemon iscsid; in uscst the connection's rd
kthread calls it (through usr/iscsid.py) with each Login or Text Request, so
it may be called from process context only in practice, though nothing here
sleeps or takes a lock.

Differs from SCST:
- Values are kept as the RFC's strings in a dict until sess_params() turns
  them into an iscsi_sess_params record; SCST keeps an unsigned int per key.
- OFMarker/IFMarker are answered "No" (RFC 7143 13.26 lets a responder say
  No instead of Reject; No is also a correct boolean-AND answer for RFC 3720
  initiators). OFMarkInt/IFMarkInt are answered "Reject" as 13.26 requires.
- LO keys on a non-leading connection are answered "Irrelevant", keys that
  only a target may send (TargetAlias, TargetAddress, TargetPortalGroupTag)
  fail the login when an initiator sends them, and operational keys in the
  security stage fail the login (02/0B), as Linux LIO does.
- Errors are a NegotiationError exception carrying the Login Response
  status; login code turns it into a Login Reject in one place.
"""
from __future__ import annotations

import enum
from typing import Any, Iterable, Sequence, cast

import attrs

# Design notes
# - Within one PDU, MaxBurstLength is answered before FirstBurstLength so
#   that FirstBurstLength can be capped by it (RFC 7143 13.14: FirstBurstLength
#   MUST NOT exceed MaxBurstLength). Across PDUs the cap uses the target's own
#   MaxBurstLength limit, and sess_params() clamps what is left.
# - A key offered twice in one login or text exchange fails it (RFC 7143 6.2:
#   a renegotiation attempt MUST be detected; the target answers with a Login
#   Reject, initiator error). TargetAddress is the RFC's example of a key that
#   may repeat, but only targets send it.

# --- Login Response status (RFC 7143 11.13.5), Linux iscsi_proto.h names ----

ISCSI_STATUS_CLS_SUCCESS = 0x00
ISCSI_STATUS_CLS_REDIRECT = 0x01
ISCSI_STATUS_CLS_INITIATOR_ERR = 0x02
ISCSI_STATUS_CLS_TARGET_ERR = 0x03

ISCSI_LOGIN_STATUS_ACCEPT = 0x00
ISCSI_LOGIN_STATUS_TGT_MOVED_TEMP = 0x01
ISCSI_LOGIN_STATUS_TGT_MOVED_PERM = 0x02
ISCSI_LOGIN_STATUS_INIT_ERR = 0x00             # 02/00 miscellaneous
ISCSI_LOGIN_STATUS_AUTH_FAILED = 0x01          # 02/01
ISCSI_LOGIN_STATUS_TGT_FORBIDDEN = 0x02        # 02/02 authorization failure
ISCSI_LOGIN_STATUS_TGT_NOT_FOUND = 0x03        # 02/03
ISCSI_LOGIN_STATUS_TGT_REMOVED = 0x04          # 02/04
ISCSI_LOGIN_STATUS_NO_VERSION = 0x05           # 02/05 unsupported version
ISCSI_LOGIN_STATUS_ISID_ERROR = 0x06           # 02/06 too many connections
ISCSI_LOGIN_STATUS_MISSING_FIELDS = 0x07       # 02/07 missing parameter
ISCSI_LOGIN_STATUS_CONN_ADD_FAILED = 0x08      # 02/08 can't include in session
ISCSI_LOGIN_STATUS_NO_SESSION_TYPE = 0x09      # 02/09 session type not supported
ISCSI_LOGIN_STATUS_NO_SESSION = 0x0A           # 02/0A session does not exist
ISCSI_LOGIN_STATUS_INVALID_REQUEST = 0x0B      # 02/0B invalid during login
ISCSI_LOGIN_STATUS_TARGET_ERROR = 0x00         # 03/00
ISCSI_LOGIN_STATUS_SVC_UNAVAILABLE = 0x01      # 03/01
ISCSI_LOGIN_STATUS_NO_RESOURCES = 0x02         # 03/02


class NegotiationError(Exception):
    """A login (or text exchange) cannot go on. status_class/status_detail are
    what the Login Response carries (RFC 7143 11.13.5)."""

    def __init__(self, status_class: int, status_detail: int, reason: str = ""):
        super().__init__(f"login status {status_class:02x}/{status_detail:02x}: {reason}")
        self.status_class = status_class
        self.status_detail = status_detail
        self.reason = reason


def _invalid(reason: str) -> NegotiationError:
    return NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                            ISCSI_LOGIN_STATUS_INVALID_REQUEST, reason)


# --- text format (RFC 7143 6.1) ---------------------------------------------

KEY_NAME_MAX = 63               # bytes
VALUE_MAX = 255                 # bytes, for most keys
LONG_VALUE_MAX = 8192           # bytes, CHAP challenges/responses, addresses
TEXT_MAX = 65536                # bytes in one negotiation sequence

# Keys whose values may exceed VALUE_MAX.
LONG_VALUE_KEYS = frozenset({"CHAP_C", "CHAP_R", "TargetAddress"})

_KEY_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz"
                       b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+@_")

# Reserved answer constants (RFC 7143 6.2).
KEY_REJECT = "Reject"
KEY_IRRELEVANT = "Irrelevant"
KEY_NOT_UNDERSTOOD = "NotUnderstood"
_ANSWER_CONSTANTS = frozenset({KEY_REJECT, KEY_IRRELEVANT, KEY_NOT_UNDERSTOOD})

Pairs = list[tuple[str, str]]


def _valid_key_name(name: bytes) -> bool:
    if not name or len(name) > KEY_NAME_MAX:
        return False
    if name.startswith(b"X#"):          # public extension keys (RFC 7143 13.5.2)
        name = name[2:]
        if not name:
            return False
    return all(c in _KEY_CHARS for c in name)


def parse_text(data: bytes) -> Pairs:
    """Split login/text data into (key, value) pairs, in order.

    Pairs end with a NUL; the last one may lack it. Empty entries (runs of
    NULs, e.g. trailing padding) are skipped. Text spanning several PDUs (C
    bit) must be concatenated by the caller first. Raises NegotiationError
    02/0B for a pair with no '=', a bad key name, a value over its limit,
    text that is not UTF-8, or more than TEXT_MAX bytes in all.
    """
    if len(data) > TEXT_MAX:
        raise _invalid(f"text of {len(data)} bytes exceeds {TEXT_MAX}")
    pairs: Pairs = []
    for item in bytes(data).split(b"\0"):
        if not item:
            continue
        name, eq, value = item.partition(b"=")
        if not eq:
            raise _invalid(f"pair without '=' at {item[:KEY_NAME_MAX + 1]!r}")
        if not _valid_key_name(name):
            raise _invalid(f"invalid key name {name[:KEY_NAME_MAX + 1]!r}")
        key = name.decode("ascii")
        limit = LONG_VALUE_MAX if key in LONG_VALUE_KEYS else VALUE_MAX
        if len(value) > limit:
            raise _invalid(f"value of {key} is {len(value)} bytes, limit {limit}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(f"value of {key} is not UTF-8") from None
        pairs.append((key, text))
    return pairs


def pack_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Encode pairs as NUL-terminated key=value strings (UTF-8)."""
    return b"".join(f"{k}={v}\0".encode("utf-8") for k, v in pairs)


def split_text(data: bytes, limit: int) -> list[bytes]:
    """Cut packed text into data segments of at most limit bytes (a pair may
    straddle two segments, RFC 7143 6.1). Empty text gives one empty segment."""
    if limit <= 0:
        raise ValueError(f"segment limit must be positive, got {limit}")
    if not data:
        return [b""]
    return [data[i:i + limit] for i in range(0, len(data), limit)]


def parse_number(value: str) -> int | None:
    """RFC 7143 6.1 numerical-value: decimal or 0x hex, below 2**64.
    Returns None if value is not one."""
    if value[:2] in ("0x", "0X"):
        digits, base = value[2:], 16
        ok = digits and all(c in "0123456789abcdefABCDEF" for c in digits)
    else:
        digits, base = value, 10
        ok = digits and all(c in "0123456789" for c in digits)
    if not ok:
        return None
    n = int(digits, base)
    return n if n < 2 ** 64 else None


def parse_bool(value: str) -> bool | None:
    return {"Yes": True, "No": False}.get(value)


def bool_str(v: bool) -> str:
    return "Yes" if v else "No"


# --- the key table (RFC 7143 section 13, security keys from section 12) -----

class key_type(enum.IntEnum):
    KEY_DECLARATIVE = 0
    KEY_BOOL_AND = 1
    KEY_BOOL_OR = 2
    KEY_NUM_MIN = 3
    KEY_NUM_MAX = 4
    KEY_LIST = 5


class key_use(enum.IntEnum):
    USE_LO = 0          # leading connection login only
    USE_IO = 1          # login only (any connection)
    USE_FFPO = 2        # full feature phase only
    USE_ALL = 3         # login and full feature phase
    USE_SECURITY = 4    # security negotiation stage only


SENDER_INITIATOR = 1
SENDER_TARGET = 2
SENDER_BOTH = 3

KEY_DECLARATIVE = key_type.KEY_DECLARATIVE
KEY_BOOL_AND = key_type.KEY_BOOL_AND
KEY_BOOL_OR = key_type.KEY_BOOL_OR
KEY_NUM_MIN = key_type.KEY_NUM_MIN
KEY_NUM_MAX = key_type.KEY_NUM_MAX
KEY_LIST = key_type.KEY_LIST
USE_LO = key_use.USE_LO
USE_IO = key_use.USE_IO
USE_FFPO = key_use.USE_FFPO
USE_ALL = key_use.USE_ALL
USE_SECURITY = key_use.USE_SECURITY

# Stages, as carried in CSG/NSG (RFC 7143 11.12.3).
ISCSI_SECURITY_NEGOTIATION_STAGE = 0
ISCSI_OP_PARMS_NEGOTIATION_STAGE = 1
ISCSI_FULL_FEATURE_PHASE = 3

MAX_DATA_SEG_LEN = 2 ** 24 - 1


@attrs.frozen
class iscsi_key:
    name: str
    type: key_type
    use: key_use
    senders: int
    default: str | None             # RFC default as text; None: no default
    min: int = 0                    # numeric keys: valid range
    max: int = 0
    values: tuple[str, ...] = ()    # list keys: every value the RFC defines
    any_stage: bool = False         # may appear in the security stage
    discovery: bool = True          # False: Irrelevant when SessionType=Discovery
    obsolete: bool = False          # RFC 7143 13.26 obsoleted key


def _k(name, type_, use, senders, default, **kw) -> iscsi_key:
    return iscsi_key(name, type_, use, senders, default, **kw)


_B = SENDER_BOTH
_I = SENDER_INITIATOR
_T = SENDER_TARGET

session_keys: dict[str, iscsi_key] = {k.name: k for k in (
    _k("HeaderDigest", KEY_LIST, USE_IO, _B, "None", values=("CRC32C", "None")),
    _k("DataDigest", KEY_LIST, USE_IO, _B, "None", values=("CRC32C", "None")),
    _k("MaxConnections", KEY_NUM_MIN, USE_LO, _B, "1", min=1, max=65535,
       discovery=False),
    _k("SendTargets", KEY_DECLARATIVE, USE_FFPO, _I, None),
    _k("TargetName", KEY_DECLARATIVE, USE_IO, _B, None, any_stage=True),
    _k("InitiatorName", KEY_DECLARATIVE, USE_IO, _I, None, any_stage=True),
    _k("TargetAlias", KEY_DECLARATIVE, USE_ALL, _T, None, any_stage=True),
    _k("InitiatorAlias", KEY_DECLARATIVE, USE_ALL, _I, None, any_stage=True),
    _k("TargetAddress", KEY_DECLARATIVE, USE_ALL, _T, None, any_stage=True),
    _k("TargetPortalGroupTag", KEY_DECLARATIVE, USE_IO, _T, None, min=0,
       max=65535, any_stage=True),
    _k("InitialR2T", KEY_BOOL_OR, USE_LO, _B, "Yes", discovery=False),
    _k("ImmediateData", KEY_BOOL_AND, USE_LO, _B, "Yes", discovery=False),
    _k("MaxRecvDataSegmentLength", KEY_DECLARATIVE, USE_ALL, _B, "8192",
       min=512, max=MAX_DATA_SEG_LEN),
    _k("MaxBurstLength", KEY_NUM_MIN, USE_LO, _B, "262144", min=512,
       max=MAX_DATA_SEG_LEN, discovery=False),
    _k("FirstBurstLength", KEY_NUM_MIN, USE_LO, _B, "65536", min=512,
       max=MAX_DATA_SEG_LEN, discovery=False),
    _k("DefaultTime2Wait", KEY_NUM_MAX, USE_LO, _B, "2", min=0, max=3600),
    _k("DefaultTime2Retain", KEY_NUM_MIN, USE_LO, _B, "20", min=0, max=3600),
    _k("MaxOutstandingR2T", KEY_NUM_MIN, USE_LO, _B, "1", min=1, max=65535,
       discovery=False),
    _k("DataPDUInOrder", KEY_BOOL_OR, USE_LO, _B, "Yes", discovery=False),
    _k("DataSequenceInOrder", KEY_BOOL_OR, USE_LO, _B, "Yes", discovery=False),
    _k("ErrorRecoveryLevel", KEY_NUM_MIN, USE_LO, _B, "0", min=0, max=2),
    _k("SessionType", KEY_DECLARATIVE, USE_LO, _I, "Normal",
       values=("Discovery", "Normal"), any_stage=True),
    _k("TaskReporting", KEY_LIST, USE_LO, _B, "RFC3720",
       values=("RFC3720", "ResponseFence", "FastAbort"), discovery=False),
    _k("iSCSIProtocolLevel", KEY_NUM_MIN, USE_LO, _B, "1", min=0, max=31,
       discovery=False),
    _k("OFMarker", KEY_BOOL_AND, USE_IO, _B, "No", obsolete=True),
    _k("IFMarker", KEY_BOOL_AND, USE_IO, _B, "No", obsolete=True),
    _k("OFMarkInt", KEY_NUM_MIN, USE_IO, _B, None, min=1, max=65535,
       obsolete=True),
    _k("IFMarkInt", KEY_NUM_MIN, USE_IO, _B, None, min=1, max=65535,
       obsolete=True),
    # Security keys (RFC 7143 section 12). CHAP_* values are checked by the
    # authenticator, not here.
    _k("AuthMethod", KEY_LIST, USE_SECURITY, _B, None,
       values=("KRB5", "SRP", "SPKM1", "SPKM2", "CHAP", "None")),
    _k("CHAP_A", KEY_DECLARATIVE, USE_SECURITY, _B, None),
    _k("CHAP_I", KEY_DECLARATIVE, USE_SECURITY, _B, None),
    _k("CHAP_C", KEY_DECLARATIVE, USE_SECURITY, _B, None),
    _k("CHAP_N", KEY_DECLARATIVE, USE_SECURITY, _B, None),
    _k("CHAP_R", KEY_DECLARATIVE, USE_SECURITY, _B, None),
)}


def is_security_key(name: str) -> bool:
    """AuthMethod and the CHAP_* keys: handled by login's security stage."""
    key = session_keys.get(name)
    return key is not None and key.use == USE_SECURITY


# --- session parameters (iscsi-scst struct iscsi_sess_params) ---------------

@attrs.define(slots=True, eq=False)
class iscsi_sess_params:
    """Negotiated session/connection parameters, RFC 7143 defaults.
    Built by key_negotiator.sess_params(); read by the kernel-side session
    code when the connection enters full feature phase. No lock: a login
    owns its copy until it hands it over."""
    initial_r2t: bool = True
    immediate_data: bool = True
    max_connections: int = 1
    max_recv_data_length: int = 8192        # ours, as declared to the initiator
    max_xmit_data_length: int = 8192        # the initiator's MaxRecvDataSegmentLength
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_wait_time: int = 2
    default_retain_time: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_inorder: bool = True
    data_sequence_inorder: bool = True
    error_recovery_level: int = 0
    header_digest: bool = False             # True: CRC32C
    data_digest: bool = False
    ofmarker: bool = False
    ifmarker: bool = False
    task_reporting: str = "RFC3720"
    iscsi_protocol_level: int = 1


@attrs.define(slots=True, eq=False)
class iscsi_tgt_params:
    """What one target accepts and prefers; iscsi-scst keeps these as the
    "local" values of its session keys plus struct iscsi_tgt_params.
    Numeric limits are the most the target accepts (or, for
    default_wait_time, the least); digests and task_reporting list the
    values accepted, in the order offered when the target must propose."""
    max_recv_data_length: int = 262144      # declared MaxRecvDataSegmentLength
    max_xmit_data_length: int = 262144      # cap on what we send per PDU
    max_burst_length: int = 1048576
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 32
    max_connections: int = 1
    immediate_data: bool = True
    initial_r2t: bool = False
    data_pdu_inorder: bool = True
    data_sequence_inorder: bool = True
    default_wait_time: int = 2
    default_retain_time: int = 0            # ERL 0: nothing kept after a drop
    error_recovery_level: int = 0           # only 0 is implemented
    header_digest: tuple[str, ...] = ("None", "CRC32C")
    data_digest: tuple[str, ...] = ("None", "CRC32C")
    task_reporting: tuple[str, ...] = ("RFC3720",)
    iscsi_protocol_level: int = 1
    queued_cmnds: int = 32
    rsp_timeout: int = 90                   # seconds
    nop_in_interval: int = 30
    nop_in_timeout: int = 30


# Which iscsi_tgt_params field gives the target's side of each negotiated key.
_TGT_FIELD = {
    "HeaderDigest": "header_digest",
    "DataDigest": "data_digest",
    "MaxConnections": "max_connections",
    "InitialR2T": "initial_r2t",
    "ImmediateData": "immediate_data",
    "MaxBurstLength": "max_burst_length",
    "FirstBurstLength": "first_burst_length",
    "DefaultTime2Wait": "default_wait_time",
    "DefaultTime2Retain": "default_retain_time",
    "MaxOutstandingR2T": "max_outstanding_r2t",
    "DataPDUInOrder": "data_pdu_inorder",
    "DataSequenceInOrder": "data_sequence_inorder",
    "ErrorRecoveryLevel": "error_recovery_level",
    "TaskReporting": "task_reporting",
    "iSCSIProtocolLevel": "iscsi_protocol_level",
}


def negotiate_list(offer: str, acceptable: Sequence[str]) -> str | None:
    """RFC 7143 6.2.1: the first offered value the responder accepts, or
    None if there is none."""
    for v in offer.split(","):
        if v in acceptable:
            return v
    return None


def negotiate_value(key: iscsi_key, offer: str, ours: object) -> str:
    """The responder's answer to key=offer given the target's side `ours`
    (bool, int or tuple of accepted values by key type). Returns the
    selected value as text, or "Reject" for a value that is malformed, out
    of range, or (lists) has nothing acceptable. Declarative keys have no
    answer and are not passed here."""
    t = key.type
    if t in (KEY_BOOL_AND, KEY_BOOL_OR):
        b = parse_bool(offer)
        if b is None:
            return KEY_REJECT
        return bool_str((b and bool(ours)) if t == KEY_BOOL_AND else (b or bool(ours)))
    if t in (KEY_NUM_MIN, KEY_NUM_MAX):
        n = parse_number(offer)
        if n is None or not key.min <= n <= key.max:
            return KEY_REJECT
        limit = cast(int, ours)
        return str(min(n, limit) if t == KEY_NUM_MIN else max(n, limit))
    if t == KEY_LIST:
        v = negotiate_list(offer, cast(Sequence[str], ours))
        return KEY_REJECT if v is None else v
    raise ValueError(f"{key.name} is declarative: nothing to negotiate")


def _answer_ok(key: iscsi_key, offered: str, answer: str) -> bool:
    """Is `answer` a legal selection for a key we offered as `offered`
    (RFC 7143 13 intro: result functions constrain the responder)?"""
    t = key.type
    if t in (KEY_BOOL_AND, KEY_BOOL_OR):
        a = parse_bool(answer)
        o = parse_bool(offered)
        if a is None:
            return False
        return a == o or (t == KEY_BOOL_AND and not a) or (t == KEY_BOOL_OR and a)
    if t in (KEY_NUM_MIN, KEY_NUM_MAX):
        na = parse_number(answer)
        no = parse_number(offered)
        if na is None or no is None or not key.min <= na <= key.max:
            return False
        return na <= no if t == KEY_NUM_MIN else na >= no
    if t == KEY_LIST:
        return answer in offered.split(",")
    return False


def _target_side(tgt: iscsi_tgt_params, name: str) -> Any:   # bool, int or tuple by the key's type
    return getattr(tgt, _TGT_FIELD[name])


# Declarative keys an initiator may repeat, unchanged, in a later stage.
_REDECLARABLE = frozenset(("InitiatorName", "InitiatorAlias", "TargetName", "SessionType"))


@attrs.define(slots=True, eq=False)
class key_negotiator:
    """The key state of one login (or one Text exchange): what the initiator
    offered, what was selected, what the target offered and still awaits.

    process() answers one complete request's pairs (security keys excluded:
    the login state machine handles those). target_offers() gives the keys
    the target itself must propose before it may leave the operational
    stage, because the RFC default would break one of its limits.
    sess_params() gives the result. Touched only by the login's caller."""
    tgt: iscsi_tgt_params
    discovery: bool = False
    leading: bool = True
    # key name -> negotiated or declared value (text)
    results: dict[str, str] = attrs.field(factory=dict)
    # keys the initiator has offered or declared, or answered, in this negotiation
    offered: set[str] = attrs.field(factory=set)
    # keys the target offered, with the value offered, awaiting an answer
    pending: dict[str, str] = attrs.field(factory=dict)
    mrdsl_declared: bool = False

    def process(self, pairs: Sequence[tuple[str, str]], stage: int) -> Pairs:
        """Answer one request's pairs in `stage` (an ISCSI_*_STAGE or
        ISCSI_FULL_FEATURE_PHASE). Returns the response pairs, in request
        order, with the target's MaxRecvDataSegmentLength declared once in
        the operational stage. Raises NegotiationError (02/0B) on a repeated
        key, a key not allowed in this stage or from an initiator, or an
        illegal answer to a target offer."""
        # Answer MaxBurstLength first so FirstBurstLength can be capped by it.
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0] != "MaxBurstLength")
        answers: dict[int, tuple[str, str]] = {}
        for i in order:
            name, value = pairs[i]
            ans = self._one(name, value, stage)
            if ans is not None:
                answers[i] = (name, ans)
        out = [answers[i] for i in range(len(pairs)) if i in answers]
        if stage == ISCSI_OP_PARMS_NEGOTIATION_STAGE and not self.mrdsl_declared:
            out.append(("MaxRecvDataSegmentLength", str(self.tgt.max_recv_data_length)))
            self.mrdsl_declared = True
        return out

    def _one(self, name: str, value: str, stage: int) -> str | None:
        if name in self.pending:
            self._take_answer(name, value)
            return None
        if name in self.offered:
            # libiscsi repeats its declarations after the security stage: the
            # same value again changes nothing; a different one is refused.
            if name in _REDECLARABLE and self.results.get(name) == value:
                return None
            raise _invalid(f"key {name} offered more than once")
        self.offered.add(name)
        key = session_keys.get(name)
        if key is None:
            return KEY_NOT_UNDERSTOOD     # X-, X# and unknown keys (RFC 7143 6.2)
        if not key.senders & SENDER_INITIATOR:
            raise _invalid(f"key {name} may only be sent by a target")
        if key.use == USE_SECURITY:
            if stage != ISCSI_SECURITY_NEGOTIATION_STAGE:
                raise _invalid(f"security key {name} outside the security stage")
            raise ValueError(f"security key {name} belongs to the login state machine")
        if stage == ISCSI_SECURITY_NEGOTIATION_STAGE and not key.any_stage:
            raise _invalid(f"operational key {name} in the security stage")
        if stage == ISCSI_FULL_FEATURE_PHASE:
            if key.use not in (USE_ALL, USE_FFPO):
                return None if key.type == KEY_DECLARATIVE else KEY_REJECT
        elif key.use == USE_FFPO:
            raise _invalid(f"key {name} is for full feature phase only")
        if key.type == KEY_DECLARATIVE:
            return self._declare(key, value)
        if key.use == USE_LO and not self.leading:
            return KEY_IRRELEVANT
        if self.discovery and not key.discovery:
            return KEY_IRRELEVANT
        if key.obsolete:
            # RFC 7143 13.26: markers SHOULD be Reject, MAY be No;
            # marker intervals MUST be Reject.
            if key.type == KEY_BOOL_AND and parse_bool(value) is not None:
                return "No"
            return KEY_REJECT
        ours = _target_side(self.tgt, name)
        if name == "FirstBurstLength":
            mbl = self.results.get("MaxBurstLength", session_keys["MaxBurstLength"].default)
            ours = min(ours, int(mbl), self.tgt.max_burst_length)
        answer = negotiate_value(key, value, ours)
        if answer not in _ANSWER_CONSTANTS:
            self.results[name] = answer
        return answer

    def _declare(self, key: iscsi_key, value: str) -> str | None:
        if key.max:     # numeric declarative: MaxRecvDataSegmentLength
            n = parse_number(value)
            if n is None or not key.min <= n <= key.max:
                return KEY_REJECT
            value = str(n)
        self.results[key.name] = value
        return None

    def _take_answer(self, name: str, answer: str) -> None:
        offered = self.pending.pop(name)
        self.offered.add(name)      # negotiated now: offering it again is a repeat
        if answer in _ANSWER_CONSTANTS:
            return          # value stays at the RFC default; checked at the end
        if not _answer_ok(session_keys[name], offered, answer):
            raise _invalid(f"answer {name}={answer} breaks the result function "
                           f"for our offer {offered}")
        self.results[name] = answer

    def target_offers(self, mark: bool = True) -> Pairs:
        """Keys the target must propose because the value the session would
        get (the RFC default, nothing having been negotiated) is beyond the
        target's limit. With mark, they become pending (sent, awaiting an
        answer). Empty for default iscsi_tgt_params and for every key
        already negotiated or offered."""
        out: Pairs = []
        tgt = self.tgt
        for name in ("HeaderDigest", "DataDigest", "ImmediateData",
                     "MaxBurstLength", "FirstBurstLength", "TaskReporting"):
            key = session_keys[name]
            if name in self.offered or name in self.pending:
                continue
            if (self.discovery and not key.discovery) or not self.leading and key.use == USE_LO:
                continue
            ours = _target_side(tgt, name)
            d = key.default
            if key.type == KEY_LIST:
                if d in ours:
                    continue
                offer = ",".join(ours)
            elif key.type == KEY_BOOL_AND:
                if ours or not parse_bool(d):
                    continue
                offer = "No"
            else:       # numeric min
                if int(d) <= ours:
                    continue
                if name == "FirstBurstLength":
                    ours = min(ours, self.current_max_burst())
                offer = str(ours)
            if mark:
                self.pending[name] = offer
            out.append((name, offer))
        return out

    def current_max_burst(self) -> int:
        v = self.results.get("MaxBurstLength") or self.pending.get("MaxBurstLength")
        return int(v if v is not None else session_keys["MaxBurstLength"].default)

    def check_required(self) -> None:
        """Fail (02/00) if a value the target cannot work with was left in
        place, e.g. HeaderDigest=None when the target requires CRC32C."""
        for name in ("HeaderDigest", "DataDigest", "TaskReporting"):
            key = session_keys[name]
            if self.discovery and not key.discovery:
                continue
            v = self.results.get(name, key.default)
            if v not in _target_side(self.tgt, name):
                raise NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                                       ISCSI_LOGIN_STATUS_INIT_ERR,
                                       f"{name}={v} is not acceptable to the target")
        if not self.discovery and self.leading:
            if not self.tgt.immediate_data and parse_bool(
                    self.results.get("ImmediateData", "Yes")):
                raise NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                                       ISCSI_LOGIN_STATUS_INIT_ERR,
                                       "ImmediateData=Yes is not acceptable to the target")
            fbl = int(self.results.get("FirstBurstLength",
                                       session_keys["FirstBurstLength"].default))
            if (self.current_max_burst() > self.tgt.max_burst_length
                    or fbl > self.tgt.first_burst_length):
                raise NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                                       ISCSI_LOGIN_STATUS_INIT_ERR,
                                       "burst length above the target's limit")

    def sess_params(self) -> iscsi_sess_params:
        """The session parameters these results give: RFC defaults for keys
        not negotiated, ours as declared (8192 if never declared, since the
        initiator then assumes the default), FirstBurstLength clamped to
        MaxBurstLength."""
        r = self.results
        p = iscsi_sess_params()

        def num(name: str, default: int) -> int:
            return int(r[name]) if name in r else default

        def flag(name: str, default: bool) -> bool:
            return parse_bool(r[name]) if name in r else default

        p.initial_r2t = flag("InitialR2T", p.initial_r2t)
        p.immediate_data = flag("ImmediateData", p.immediate_data)
        p.max_connections = num("MaxConnections", p.max_connections)
        p.max_recv_data_length = (self.tgt.max_recv_data_length
                                  if self.mrdsl_declared else 8192)
        p.max_xmit_data_length = min(num("MaxRecvDataSegmentLength", 8192),
                                     self.tgt.max_xmit_data_length)
        p.max_burst_length = num("MaxBurstLength", p.max_burst_length)
        p.first_burst_length = min(num("FirstBurstLength", p.first_burst_length),
                                   p.max_burst_length)
        p.default_wait_time = num("DefaultTime2Wait", p.default_wait_time)
        p.default_retain_time = num("DefaultTime2Retain", p.default_retain_time)
        p.max_outstanding_r2t = num("MaxOutstandingR2T", p.max_outstanding_r2t)
        p.data_pdu_inorder = flag("DataPDUInOrder", p.data_pdu_inorder)
        p.data_sequence_inorder = flag("DataSequenceInOrder", p.data_sequence_inorder)
        p.error_recovery_level = num("ErrorRecoveryLevel", p.error_recovery_level)
        p.header_digest = r.get("HeaderDigest", "None") == "CRC32C"
        p.data_digest = r.get("DataDigest", "None") == "CRC32C"
        p.task_reporting = r.get("TaskReporting", p.task_reporting)
        p.iscsi_protocol_level = num("iSCSIProtocolLevel", p.iscsi_protocol_level)
        return p
