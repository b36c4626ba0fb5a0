"""iSCSI login on the target side, as a pure state machine, and SendTargets
for Text Requests in full feature phase.

Twin of iscsi-scst/usr/iscsid.c (cmnd_exec_login, login_start,
login_security, login_oper, login_finish, and the SendTargets part of
cmnd_exec_text). Follows RFC 7143 sections 6 (login and text negotiation),
11.10-11.13 (Text and Login PDUs) and 13.3 (SendTargets).

Where it runs: in SCST the whole login runs in the usermode daemon iscsid,
which hands the socket to the kernel module after the last Login Response.
In uscst the connection's rd kthread parses each Login Request (hdr.py),
calls login_session.step() with it and sends the login_rsp it gets back
(hdr.py packs it; the connection code fills StatSN, ExpCmdSN and MaxCmdSN,
which this module does not track). Pure: no kshim import, no I/O, no clock;
targets and sessions are looked up through callbacks given to the
constructor, which must not sleep.

Differs from SCST:
- SCST's conn->state values (STATE_FREE, STATE_SECURITY, STATE_LOGIN,
  STATE_FULL...) are kept, with STATE_TX_CONT for a response being sent in
  pieces and STATE_DROP for a failed login; the transitions are the table
  login_transitions, keyed by (state, event), so docs can draw it.
- Header fields that change between the Login Requests of one login (ISID,
  TSIH, CID, ITT, version range) fail it with 02/00, as Linux LIO does.
- A target that must propose a key (for example it requires CRC32C) while
  the initiator asks to go from the security stage straight to full feature
  phase answers with T=1 and NSG=1 so that operational keys can be sent.
- Authentication is a hook (login_authenticator); only AuthMethod=None is
  implemented here. CHAP lives in usr/chap.py (to come).
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import attrs

from iscsi_scst.usr.param import (
    ISCSI_FULL_FEATURE_PHASE,
    ISCSI_LOGIN_STATUS_AUTH_FAILED,
    ISCSI_LOGIN_STATUS_INIT_ERR,
    ISCSI_LOGIN_STATUS_INVALID_REQUEST,
    ISCSI_LOGIN_STATUS_MISSING_FIELDS,
    ISCSI_LOGIN_STATUS_NO_SESSION,
    ISCSI_LOGIN_STATUS_NO_SESSION_TYPE,
    ISCSI_LOGIN_STATUS_NO_VERSION,
    ISCSI_LOGIN_STATUS_TGT_NOT_FOUND,
    ISCSI_OP_PARMS_NEGOTIATION_STAGE,
    ISCSI_SECURITY_NEGOTIATION_STAGE,
    ISCSI_STATUS_CLS_INITIATOR_ERR,
    ISCSI_STATUS_CLS_SUCCESS,
    KEY_REJECT,
    TEXT_MAX,
    NegotiationError,
    Pairs,
    iscsi_sess_params,
    iscsi_tgt_params,
    is_security_key,
    key_negotiator,
    negotiate_list,
    pack_text,
    parse_text,
)

if TYPE_CHECKING:
    from iscsi_scst.usr.chap import chap_credentials   # chap imports this module

# Design notes
# - step() never raises for anything an initiator can send: a NegotiationError
#   becomes a Login Response with the error status and the session enters
#   STATE_DROP; the caller sends that response and closes the connection.
# - Login responses are cut at min(8192, the initiator's declared
#   MaxRecvDataSegmentLength): 8192 is the RFC default every initiator takes
#   during login, and a smaller declared value is honoured too.

ISCSI_VERSION = 0x00            # the only version RFC 7143 defines (draft 20)
LOGIN_DATA_MAX = 8192           # default MaxRecvDataSegmentLength


def _err(detail: int, reason: str) -> NegotiationError:
    return NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR, detail, reason)


# --- PDU records (hdr.py packs and unpacks them) ----------------------------

@attrs.frozen
class login_req:
    """The fields of a Login Request (RFC 7143 11.12) login needs."""
    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_max: int
    version_min: int
    isid: bytes                 # 6 bytes
    tsih: int
    itt: int
    cid: int
    cmd_sn: int
    exp_stat_sn: int
    data: bytes = b""


@attrs.frozen
class login_rsp:
    """The fields of a Login Response (RFC 7143 11.13) login decides;
    StatSN, ExpCmdSN and MaxCmdSN are the connection's to fill."""
    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_max: int
    version_active: int
    isid: bytes
    tsih: int
    itt: int
    status_class: int
    status_detail: int
    data: bytes = b""


# --- what the caller provides -----------------------------------------------

class login_target(Protocol):
    """What find_target() returns: a target's login-relevant config."""
    name: str
    chap: chap_credentials | None   # None: no CHAP
    tgt_params: iscsi_tgt_params
    alias: str                  # "" for none
    portal_group_tag: int


class login_authenticator(Protocol):
    """Security-stage hook (RFC 7143 section 12). One object may serve many
    logins; per-login state belongs in the login_session it is handed."""

    def methods(self, sess: login_session) -> Sequence[str]:
        """AuthMethod values acceptable for this login (sess.initiator_name,
        sess.target, sess.session_type are known), e.g. ("CHAP",) to require
        CHAP, ("CHAP", "None") to allow either."""
        ...

    def offer(self, sess: login_session, keys: Pairs) -> tuple[Pairs, bool]:
        """Handle one request's security keys other than AuthMethod, for the
        method in sess.auth_method. Return the keys to answer with and
        whether authentication is complete. Raise NegotiationError 02/01 on
        failure, 02/0B on a malformed exchange."""
        ...


# --- the state machine ------------------------------------------------------

class login_state(enum.IntEnum):
    STATE_FREE = 0          # no complete Login Request yet
    STATE_SECURITY = 1      # in the security negotiation stage (CSG=0)
    STATE_LOGIN = 2         # in the operational negotiation stage (CSG=1)
    STATE_TX_CONT = 3       # response sent in part (C=1); waiting for a pull
    STATE_FULL = 4          # final response given: full feature phase
    STATE_DROP = 5          # login failed: close the connection


class login_event(enum.IntEnum):
    EV_CONT = 0             # request with C=1: more text follows
    EV_SECURITY = 1         # complete request, CSG=0
    EV_OPERATIONAL = 2      # complete request, CSG=1
    EV_BAD_STAGE = 3        # CSG=2 (reserved) or 3


STATE_FREE = login_state.STATE_FREE
STATE_SECURITY = login_state.STATE_SECURITY
STATE_LOGIN = login_state.STATE_LOGIN
STATE_TX_CONT = login_state.STATE_TX_CONT
STATE_FULL = login_state.STATE_FULL
STATE_DROP = login_state.STATE_DROP
EV_CONT = login_event.EV_CONT
EV_SECURITY = login_event.EV_SECURITY
EV_OPERATIONAL = login_event.EV_OPERATIONAL
EV_BAD_STAGE = login_event.EV_BAD_STAGE


@attrs.frozen
class login_transition:
    action: str                         # login_session method name
    next_states: frozenset[login_state]  # where it may leave the session


def _t(action: str, *states: login_state) -> login_transition:
    return login_transition(action, frozenset(states))


_AFTER_SECURITY = (STATE_SECURITY, STATE_LOGIN, STATE_FULL, STATE_TX_CONT)
_AFTER_LOGIN = (STATE_LOGIN, STATE_FULL, STATE_TX_CONT)

# (state, event) -> action. A pair missing here fails the login with 02/0B
# (RFC 7143 6.3: stage transitions the target did not agree to), and every
# action may also end in STATE_DROP.
login_transitions: dict[tuple[login_state, login_event], login_transition] = {
    (STATE_FREE, EV_CONT): _t("rx_cont", STATE_FREE),
    (STATE_FREE, EV_SECURITY): _t("start_security", *_AFTER_SECURITY),
    (STATE_FREE, EV_OPERATIONAL): _t("start_operational", *_AFTER_LOGIN),
    (STATE_SECURITY, EV_CONT): _t("rx_cont", STATE_SECURITY),
    (STATE_SECURITY, EV_SECURITY): _t("security", *_AFTER_SECURITY),
    (STATE_LOGIN, EV_CONT): _t("rx_cont", STATE_LOGIN),
    (STATE_LOGIN, EV_OPERATIONAL): _t("operational", *_AFTER_LOGIN),
    (STATE_TX_CONT, EV_SECURITY): _t("tx_cont", *_AFTER_SECURITY),
    (STATE_TX_CONT, EV_OPERATIONAL): _t("tx_cont", *_AFTER_LOGIN),
}

# The stages a request in EV_CONT may carry in each state.
_CONT_STAGES = {
    STATE_FREE: (ISCSI_SECURITY_NEGOTIATION_STAGE, ISCSI_OP_PARMS_NEGOTIATION_STAGE),
    STATE_SECURITY: (ISCSI_SECURITY_NEGOTIATION_STAGE,),
    STATE_LOGIN: (ISCSI_OP_PARMS_NEGOTIATION_STAGE,),
}


def _default_alloc_tsih() -> int:
    return 1


@attrs.define(slots=True, eq=False)
class login_session:
    """The login of one connection (iscsi-scst keeps this in struct
    connection while conn->state < STATE_KERNEL). Feed each Login Request to
    step(); send what it returns; stop when done or failed.

    find_target(name) returns a login_target or None (02/03).
    find_session(isid, tsih, initiator_name) is asked when TSIH != 0 and
    returns the existing session or None (02/0A).
    alloc_tsih() gives the TSIH of a new session, called once, at the final
    response. authenticator None means AuthMethod=None only.
    discovery_params are the limits used for Discovery sessions.

    Touched only by the connection's rd thread: no lock."""
    find_target: Callable[[str], login_target | None]
    find_session: Callable[[bytes, int, str], object | None] = lambda isid, tsih, name: None
    alloc_tsih: Callable[[], int] = _default_alloc_tsih
    authenticator: login_authenticator | None = None
    discovery_params: iscsi_tgt_params = attrs.field(factory=iscsi_tgt_params)
    allow_discovery: bool = True

    state: login_state = attrs.field(init=False, default=STATE_FREE)
    # from the first Login Request; later ones must match
    isid: bytes = attrs.field(init=False, default=b"")
    tsih: int = attrs.field(init=False, default=0)  # requested: 0 for a new session
    itt: int = attrs.field(init=False, default=0)
    cid: int = attrs.field(init=False, default=0)
    cmd_sn: int = attrs.field(init=False, default=0)
    exp_stat_sn: int = attrs.field(init=False, default=0)
    version_max: int = attrs.field(init=False, default=0)
    version_min: int = attrs.field(init=False, default=0)
    # from the first complete text
    initiator_name: str | None = attrs.field(init=False, default=None)
    initiator_alias: str | None = attrs.field(init=False, default=None)
    target_name: str | None = attrs.field(init=False, default=None)
    session_type: str | None = attrs.field(init=False, default=None)  # "Normal" or "Discovery"
    target: login_target | None = attrs.field(init=False, default=None)
    session: object | None = attrs.field(init=False, default=None)  # what find_session() returned
    auth_method: str | None = attrs.field(init=False, default=None)  # agreed AuthMethod value
    auth_done: bool = attrs.field(init=False, default=False)
    new_tsih: int = attrs.field(init=False, default=0)  # TSIH in the final response
    error: NegotiationError | None = attrs.field(init=False, default=None)
    negotiator: key_negotiator | None = attrs.field(init=False, default=None)
    _params: iscsi_sess_params | None = attrs.field(init=False, default=None)
    _started: bool = attrs.field(init=False, default=False)
    _rx_buf: bytearray = attrs.field(init=False, factory=bytearray)
    _rx_csg: int | None = attrs.field(init=False, default=None)
    _first_reply: Pairs | None = attrs.field(init=False, default=None)
    _auth_offered: bool = attrs.field(init=False, default=False)
    _tx_chunks: list[bytes] = attrs.field(init=False, factory=list)
    _tx_final: tuple[bool, int, login_state, int] | None = attrs.field(init=False, default=None)

    # -- public view ---------------------------------------------------------

    @property
    def done(self) -> bool:
        """The final Login Response (T=1, NSG=3) has been returned."""
        return self.state == STATE_FULL

    @property
    def failed(self) -> bool:
        return self.state == STATE_DROP

    @property
    def params(self) -> iscsi_sess_params | None:
        """Negotiated parameters once the login reached full feature phase
        (set when the final response is decided), else None."""
        return self._params

    # -- the driver ----------------------------------------------------------

    def step(self, req: login_req) -> login_rsp:
        """Take one Login Request and return the Login Response to send.
        A response with a nonzero status_class ends the login (failed is
        then True) and the caller closes the connection."""
        try:
            if self.state in (STATE_FULL, STATE_DROP):
                raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                           f"Login Request in {self.state.name}")
            self._check_header(req)
            ev = self._event(req)
            tr = login_transitions.get((self.state, ev))
            if tr is None:
                raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                           f"{ev.name} (CSG {req.csg}) not allowed in {self.state.name}")
            rsp = getattr(self, "_" + tr.action)(req)
            if self.state not in tr.next_states:
                raise AssertionError(f"{tr.action} left {self.state.name}")
            return rsp
        except NegotiationError as e:
            self.state = STATE_DROP
            self.error = e
            return self._rsp(req, transit=False, cont=False, nsg=0, tsih=req.tsih,
                             data=b"", status=(e.status_class, e.status_detail))

    @staticmethod
    def _event(req: login_req) -> login_event:
        if req.cont:
            return EV_CONT
        if req.csg == ISCSI_SECURITY_NEGOTIATION_STAGE:
            return EV_SECURITY
        if req.csg == ISCSI_OP_PARMS_NEGOTIATION_STAGE:
            return EV_OPERATIONAL
        return EV_BAD_STAGE

    def _check_header(self, req: login_req) -> None:
        if len(req.isid) != 6:
            raise ValueError(f"ISID must be 6 bytes, got {len(req.isid)}")
        if not self._started:
            if req.version_min > ISCSI_VERSION or req.version_max < req.version_min:
                raise _err(ISCSI_LOGIN_STATUS_NO_VERSION,
                           f"versions {req.version_min}..{req.version_max} exclude {ISCSI_VERSION}")
            self._started = True
            self.isid, self.tsih, self.itt, self.cid = req.isid, req.tsih, req.itt, req.cid
            self.cmd_sn, self.exp_stat_sn = req.cmd_sn, req.exp_stat_sn
            self.version_max, self.version_min = req.version_max, req.version_min
        else:
            for field in ("isid", "tsih", "itt", "cid", "version_max", "version_min"):
                if getattr(req, field) != getattr(self, field):
                    raise _err(ISCSI_LOGIN_STATUS_INIT_ERR,
                               f"{field} changed during login from {getattr(self, field)!r} "
                               f"to {getattr(req, field)!r}")
        if req.transit and req.cont:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST, "T and C both set")
        if req.transit and (req.nsg not in (ISCSI_OP_PARMS_NEGOTIATION_STAGE,
                                            ISCSI_FULL_FEATURE_PHASE) or req.nsg <= req.csg):
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       f"transit from CSG {req.csg} to NSG {req.nsg}")

    # -- actions (named in login_transitions) -------------------------------

    def _rx_cont(self, req: login_req) -> login_rsp:
        """C=1: keep the text, answer with an empty response (RFC 7143 6.2)."""
        if req.csg not in _CONT_STAGES[self.state] or (
                self._rx_csg is not None and req.csg != self._rx_csg):
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       f"continued text in CSG {req.csg} in {self.state.name}")
        self._rx_csg = req.csg
        if len(self._rx_buf) + len(req.data) > TEXT_MAX:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       f"login text longer than {TEXT_MAX} bytes")
        self._rx_buf += req.data
        return self._rsp(req, transit=False, cont=False, nsg=0, tsih=req.tsih, data=b"")

    def _start_security(self, req: login_req) -> login_rsp:
        pairs = self._take_text(req)
        self._leading_checks(pairs)
        self.state = STATE_SECURITY
        return self._security_pairs(req, pairs)

    def _start_operational(self, req: login_req) -> login_rsp:
        pairs = self._take_text(req)
        self._leading_checks(pairs)
        if "None" not in self._auth_methods():
            raise _err(ISCSI_LOGIN_STATUS_AUTH_FAILED,
                       "security stage skipped but the target requires authentication")
        self.auth_method, self.auth_done = "None", True
        self.state = STATE_LOGIN
        return self._operational_pairs(req, pairs)

    def _security(self, req: login_req) -> login_rsp:
        return self._security_pairs(req, self._take_text(req))

    def _operational(self, req: login_req) -> login_rsp:
        return self._operational_pairs(req, self._take_text(req))

    def _tx_cont(self, req: login_req) -> login_rsp:
        """The initiator pulls the rest of a response sent with C=1."""
        assert self._tx_final is not None
        transit, nsg, next_state, csg = self._tx_final
        if req.csg != csg or req.data:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       "expected an empty Login Request in the same stage")
        chunk = self._tx_chunks.pop(0)
        if self._tx_chunks:
            return self._rsp(req, transit=False, cont=True, nsg=0, tsih=req.tsih, data=chunk)
        self._tx_final = None
        self.state = next_state
        return self._rsp(req, transit=transit, cont=False, nsg=nsg if transit else 0,
                         tsih=self._rsp_tsih(transit, nsg), data=chunk)

    # -- helpers -------------------------------------------------------------

    def _take_text(self, req: login_req) -> Pairs:
        if self._rx_csg is not None and req.csg != self._rx_csg:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       f"text continued in CSG {self._rx_csg} ended in CSG {req.csg}")
        if len(self._rx_buf) + len(req.data) > TEXT_MAX:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                       f"login text longer than {TEXT_MAX} bytes")
        data = bytes(self._rx_buf) + req.data
        self._rx_buf.clear()
        self._rx_csg = None
        return parse_text(data)

    def _leading_checks(self, pairs: Pairs) -> None:
        """Names and session type from the first complete request
        (RFC 7143 13.4, 13.5, 13.21; 11.13.5 for the status codes)."""
        first: dict[str, str] = {}
        for k, v in pairs:
            first.setdefault(k, v)
        self.initiator_name = first.get("InitiatorName")
        self.initiator_alias = first.get("InitiatorAlias")
        if not self.initiator_name:
            raise _err(ISCSI_LOGIN_STATUS_MISSING_FIELDS, "no InitiatorName")
        stype = first.get("SessionType", "Normal")
        if stype not in ("Normal", "Discovery") or (
                stype == "Discovery" and not self.allow_discovery):
            raise _err(ISCSI_LOGIN_STATUS_NO_SESSION_TYPE, f"SessionType={stype}")
        self.session_type = stype
        discovery = stype == "Discovery"
        if discovery:
            self.target_name = first.get("TargetName")
            tgt_params = self.discovery_params
        else:
            self.target_name = first.get("TargetName")
            if not self.target_name:
                raise _err(ISCSI_LOGIN_STATUS_MISSING_FIELDS, "no TargetName for a Normal session")
            self.target = self.find_target(self.target_name)
            if self.target is None:
                raise _err(ISCSI_LOGIN_STATUS_TGT_NOT_FOUND,
                           f"no target {self.target_name}")
            tgt_params = self.target.tgt_params
        if self.tsih:
            self.session = self.find_session(self.isid, self.tsih, self.initiator_name)
            if self.session is None:
                raise _err(ISCSI_LOGIN_STATUS_NO_SESSION,
                           f"no session with TSIH {self.tsih} for {self.initiator_name}")
        self.negotiator = key_negotiator(tgt=tgt_params, discovery=discovery,
                                         leading=self.tsih == 0)
        # RFC 7143 13.9: TargetPortalGroupTag in the response to the first
        # request with C=0 when the initiator gave TargetName.
        self._first_reply = []
        if self.target is not None:
            self._first_reply.append(("TargetPortalGroupTag",
                                      str(self.target.portal_group_tag)))
            if self.target.alias:
                self._first_reply.append(("TargetAlias", self.target.alias))

    def _auth_methods(self) -> Sequence[str]:
        if self.authenticator is None:
            return ("None",)
        return tuple(self.authenticator.methods(self))

    def _security_pairs(self, req: login_req, pairs: Pairs) -> login_rsp:
        neg = self.negotiator
        assert neg is not None
        sec = [(k, v) for k, v in pairs if is_security_key(k)]
        reply = neg.process([(k, v) for k, v in pairs if not is_security_key(k)],
                            ISCSI_SECURITY_NEGOTIATION_STAGE)
        methods = self._auth_methods()
        rest: Pairs = []
        for k, v in sec:
            if k != "AuthMethod":
                rest.append((k, v))
                continue
            if self._auth_offered:
                raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST, "AuthMethod offered twice")
            self._auth_offered = True
            m = negotiate_list(v, methods)
            if m is None:
                raise _err(ISCSI_LOGIN_STATUS_AUTH_FAILED,
                           f"AuthMethod={v}: none of {','.join(methods)} offered")
            self.auth_method = m
            self.auth_done = m == "None"
            reply.append(("AuthMethod", m))
        if rest:
            if self.auth_method in (None, "None") or self.auth_done:
                raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST,
                           f"{rest[0][0]} outside an authentication exchange")
            assert self.authenticator is not None
            more, self.auth_done = self.authenticator.offer(self, rest)
            reply += more
        transit, nsg = False, 0
        if req.transit:
            if self.auth_method is None:
                # No AuthMethod offered: fine only if None would be accepted.
                if "None" not in methods:
                    raise _err(ISCSI_LOGIN_STATUS_AUTH_FAILED,
                               "transit without authentication")
                self.auth_method, self.auth_done = "None", True
            if self.auth_done:
                transit, nsg = True, req.nsg
                if nsg == ISCSI_FULL_FEATURE_PHASE and neg.target_offers(mark=False):
                    nsg = ISCSI_OP_PARMS_NEGOTIATION_STAGE
                if nsg == ISCSI_FULL_FEATURE_PHASE:
                    self._finish()
        return self._respond(req, reply, transit, nsg)

    def _operational_pairs(self, req: login_req, pairs: Pairs) -> login_rsp:
        neg = self.negotiator
        assert neg is not None
        reply = neg.process(pairs, ISCSI_OP_PARMS_NEGOTIATION_STAGE)
        transit = False
        if req.transit:
            offers = neg.target_offers()
            if offers:
                reply += offers         # answers come with the next request
            elif not neg.pending:
                self._finish()
                transit = True
        return self._respond(req, reply, transit, ISCSI_FULL_FEATURE_PHASE if transit else 0)

    def _finish(self) -> None:
        neg = self.negotiator
        assert neg is not None
        neg.check_required()
        self._params = neg.sess_params()
        self.new_tsih = self.tsih if self.tsih else self.alloc_tsih()

    def _rsp_tsih(self, transit: bool, nsg: int) -> int:
        if transit and nsg == ISCSI_FULL_FEATURE_PHASE:
            return self.new_tsih
        return self.tsih

    def _tx_limit(self) -> int:
        neg = self.negotiator
        declared = neg.results.get("MaxRecvDataSegmentLength") if neg else None
        return min(LOGIN_DATA_MAX, int(declared)) if declared else LOGIN_DATA_MAX

    def _respond(self, req: login_req, pairs: Pairs, transit: bool, nsg: int) -> login_rsp:
        if self._first_reply is not None:
            pairs = self._first_reply + pairs
            self._first_reply = None
        if transit:
            next_state = (STATE_FULL if nsg == ISCSI_FULL_FEATURE_PHASE else STATE_LOGIN)
        else:
            next_state = (STATE_SECURITY if req.csg == ISCSI_SECURITY_NEGOTIATION_STAGE
                          else STATE_LOGIN)
        data = pack_text(pairs)
        limit = self._tx_limit()
        if len(data) > limit:
            # RFC 7143 6.2: C=1 and T=0 until the last piece; the initiator
            # pulls each piece with an empty Login Request.
            self._tx_chunks = [data[i:i + limit] for i in range(limit, len(data), limit)]
            self._tx_final = (transit, nsg, next_state, req.csg)
            self.state = STATE_TX_CONT
            return self._rsp(req, transit=False, cont=True, nsg=0, tsih=self.tsih,
                             data=data[:limit])
        self.state = next_state
        return self._rsp(req, transit=transit, cont=False, nsg=nsg if transit else 0,
                         tsih=self._rsp_tsih(transit, nsg), data=data)

    def _rsp(self, req: login_req, *, transit: bool, cont: bool, nsg: int, tsih: int,
             data: bytes, status: tuple[int, int] = (ISCSI_STATUS_CLS_SUCCESS, 0)) -> login_rsp:
        return login_rsp(transit=transit, cont=cont, csg=req.csg, nsg=nsg,
                         version_max=ISCSI_VERSION, version_active=ISCSI_VERSION,
                         isid=req.isid, tsih=tsih, itt=req.itt,
                         status_class=status[0], status_detail=status[1], data=data)


# --- Text Requests in full feature phase -------------------------------------

@attrs.frozen
class target_portal:
    """One network portal of a target, as SendTargets reports it."""
    address: str                # IPv4 dotted quad, IPv6 (no brackets), or DNS name
    port: int = 3260
    tpgt: int = 1


def format_target_address(portal: target_portal) -> str:
    """TargetAddress value: domainname[:port][,portal-group-tag], IPv6 in
    brackets (RFC 7143 13.8)."""
    host = f"[{portal.address}]" if ":" in portal.address else portal.address
    return f"{host}:{portal.port},{portal.tpgt}"


@attrs.frozen
class text_result:
    data: bytes                         # the whole response text
    max_xmit_data_length: int | None    # the initiator re-declared MaxRecvDataSegmentLength


def text_negotiation(
    data: bytes,
    *,
    session_type: str,
    target_name: str | None,
    list_targets: Callable[[], Iterable[tuple[str, Sequence[target_portal]]]],
    tgt_params: iscsi_tgt_params | None = None,
) -> text_result:
    """Answer the (already reassembled) text of a Text Request in full
    feature phase. SendTargets (RFC 7143 13.3): All lists every target
    list_targets() yields (Discovery sessions only; Normal sessions get
    SendTargets=Reject), a target name lists that target, an empty value
    lists the session's own target (Normal sessions). Other keys are
    answered as in key_negotiator (LO/IO keys Reject, unknown
    NotUnderstood). The caller cuts data into Text Responses with
    split_text() at the initiator's MaxRecvDataSegmentLength. Raises
    NegotiationError 02/0B for malformed text or a repeated key; the caller
    answers that with a Reject PDU."""
    pairs = parse_text(data)
    neg = key_negotiator(tgt=tgt_params or iscsi_tgt_params(),
                         discovery=session_type == "Discovery", leading=False)
    out: Pairs = []
    rest: Pairs = []
    seen_send_targets = False
    for k, v in pairs:
        if k != "SendTargets":
            rest.append((k, v))
            continue
        if seen_send_targets:
            raise _err(ISCSI_LOGIN_STATUS_INVALID_REQUEST, "SendTargets given twice")
        seen_send_targets = True
        if v == "All":
            if session_type != "Discovery":
                out.append(("SendTargets", KEY_REJECT))
                continue
            wanted = None
        elif v == "":
            if session_type == "Discovery" or not target_name:
                continue
            wanted = target_name
        else:
            if session_type != "Discovery" and v != target_name:
                continue
            wanted = v
        for name, portals in list_targets():
            if wanted is not None and name != wanted:
                continue
            out.append(("TargetName", name))
            out.extend(("TargetAddress", format_target_address(p)) for p in portals)
    out += neg.process(rest, ISCSI_FULL_FEATURE_PHASE)
    mrdsl = neg.results.get("MaxRecvDataSegmentLength")
    return text_result(pack_text(out), int(mrdsl) if mrdsl is not None else None)
