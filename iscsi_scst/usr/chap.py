"""iSCSI CHAP authentication, target side: one-way and mutual CHAP with MD5,
as a login_authenticator for the login state machine in usr/iscsid.py.

Twin of iscsi-scst/usr/chap.c (cmnd_exec_auth_chap and its helpers) plus
the account checks of iscsi-scst/usr/config.c. Behaviour follows RFC 7143
section 12.1.3 (CHAP keys and steps), 6.1 (binary-value encodings), 9.2.1
(secrets of at least 96 bits) and RFC 1994 section 4.1 (response =
MD5(identifier || secret || challenge)).

Where it runs: login_session.step() calls methods() and offer() from the
connection's rd kthread, once per complete Login Request of the security
stage. Pure: no kshim import, no I/O, no clock. Randomness comes from the
random_bytes callable given to the constructor (the kernel side passes
kshim's get_random_bytes); credentials come from the credentials callable,
asked by methods() on each security-stage request and once more when
CHAP_A arrives (that answer is kept for the rest of the exchange). Neither
may sleep.

One chap_authenticator serves one login: iscsi_new_login() makes a new one
per connection (it holds only references to the two callables and the
exchange state). login_session has no field for an authenticator's state
and a table keyed by session would outlive logins that fail elsewhere, so
the state lives here; handing one object a second session is a bug
(ValueError).

The exchange (RFC 7143 12.1.3):
  I: AuthMethod=CHAP,...        T: AuthMethod=CHAP           (iscsid.py)
  I: CHAP_A=<A1,A2,...>         T: CHAP_A=5 CHAP_I=<I> CHAP_C=<C>
  I: CHAP_N=<N> CHAP_R=<R> [CHAP_I=<I'> CHAP_C=<C'>]
                                T: [CHAP_N=<N'> CHAP_R=<R'>], authenticated

Status: 02/01 (authentication failure) for a failed check: no acceptable
algorithm, unknown user, wrong response, a response made with our own
outgoing secret, a reflected challenge, mutual CHAP without an outgoing
user. 02/0B (invalid during login) for a malformed exchange: a key missing
or in the wrong step, a key repeated, a value that is not a number or a
binary-value, an identifier outside 0..255, a binary value over 1024
bytes. No Login Response of a failed exchange carries CHAP keys.

Differs from SCST:
- Only algorithm 5 (MD5) is offered; SCST also offers 7 (SHA-1), which RFC
  7143 does not define for CHAP_A.
- SCST parses CHAP_I with strtol and keeps the low byte; here CHAP_I must be
  a decimal or 0x hex number in 0..255, and binary values must be canonical
  (even-length hex, padded base64) and at most 1024 bytes, checked on the
  text's length before anything is decoded.
- SCST answers a malformed exchange with 02/00; here it is 02/0B, per the
  login_authenticator contract.
- RFC 7143 12.1.3 checks SCST omits: a CHAP_R equal to what our outgoing
  secret would give for our challenge fails (same secret both ways), and
  the initiator is verified before we answer its challenge, so nobody gets
  a CHAP_R from us without knowing an incoming secret.
- The challenge has a fixed length (challenge_len, 16 by default, as Linux
  LIO); SCST picks 25..49 bytes at random. libiscsi keeps CHAP_C in a
  255-character buffer, so more than 126 bytes breaks it.
"""
from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import attrs

from iscsi_scst.usr.param import (
    ISCSI_LOGIN_STATUS_AUTH_FAILED,
    ISCSI_LOGIN_STATUS_INVALID_REQUEST,
    ISCSI_STATUS_CLS_INITIATOR_ERR,
    NegotiationError,
    Pairs,
    parse_number,
)

if TYPE_CHECKING:
    from iscsi_scst.usr.iscsid import login_session

# Design notes
# - Checks run in a fixed order so the status does not depend on which of
#   two faults the code met first: shape of the request (keys present, none
#   extra, none repeated), then encodings and ranges (02/0B), then the
#   credentials (02/01).
# - Reasons in NegotiationError go to the kernel log; they name keys, user
#   names and lengths, never a secret, a challenge or a response.
# - Secrets are compared as UTF-8 bytes; hmac.compare_digest makes the
#   response check take the same time wherever the first differing byte is.
# - repr() of chap_credentials shows user names only, and the authenticator
#   leaves its challenge out, so logging either leaks nothing.

CHAP_DIGEST_ALG_MD5 = 5
CHAP_MD5_DIGEST_LEN = 16
CHAP_BINARY_MAX = 1024          # RFC 7143 12.1.3: binary length of C and R
CHAP_CHALLENGE_MIN = 16         # RFC 1994 5: at least the digest length
CHAP_CHALLENGE_DEFAULT = 16
CHAP_SECRET_MIN = 12            # RFC 7143 9.2.1: 96 bits
CHAP_SECRET_MAX = 255           # SCST, open-iscsi and libiscsi keep 255 + NUL
CHAP_NAME_MAX = 255             # a text value (RFC 7143 6.1, param.VALUE_MAX)

# Longest encoded forms of a CHAP_BINARY_MAX value, prefix excluded.
_HEX_MAX = 2 * CHAP_BINARY_MAX
_B64_MAX = 4 * ((CHAP_BINARY_MAX + 2) // 3)

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")

_RESPONSE_KEYS = frozenset({"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"})


def _malformed(reason: str) -> NegotiationError:
    return NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                            ISCSI_LOGIN_STATUS_INVALID_REQUEST, reason)


def _auth_failed(reason: str) -> NegotiationError:
    return NegotiationError(ISCSI_STATUS_CLS_INITIATOR_ERR,
                            ISCSI_LOGIN_STATUS_AUTH_FAILED, reason)


# --- configuration ----------------------------------------------------------

def _pairs(v: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(v)


@attrs.frozen
class chap_credentials:
    """The CHAP accounts of one target, or of discovery sessions (SCST's
    per-target and tid 0 IncomingUser/OutgoingUser attributes).

    incoming: (name, secret) pairs an initiator may authenticate as.
    outgoing: (name, secret) the target answers mutual CHAP with, or None."""
    incoming: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs, repr=lambda v: repr([u for u, _ in v]))
    outgoing: tuple[str, str] | None = attrs.field(
        default=None, repr=lambda v: repr(v[0] if v else None))

    def incoming_secret(self, name: str) -> str | None:
        for user, secret in self.incoming:
            if user == name:
                return secret
        return None


def _bad_chars(text: str) -> bool:
    return any(c.isspace() or not c.isprintable() for c in text)


def validate_secret(secret: str) -> str | None:
    """None if secret may be configured as a CHAP secret, else why not.
    12 to 255 bytes of UTF-8 (RFC 7143 9.2.1 asks for 96 bits at least; the
    Microsoft initiator also wants 12), no white space or control characters
    (the attribute is written 'name secret')."""
    n = len(secret.encode("utf-8"))
    if n < CHAP_SECRET_MIN:
        return (f"CHAP secret is {n} bytes; at least {CHAP_SECRET_MIN} are required "
                f"(RFC 7143 9.2.1)")
    if n > CHAP_SECRET_MAX:
        return f"CHAP secret is {n} bytes; at most {CHAP_SECRET_MAX} are allowed"
    if _bad_chars(secret):
        return "CHAP secret contains white space or a control character"
    return None


def validate_user_name(name: str) -> str | None:
    """None if name may be configured as a CHAP user name, else why not:
    1 to 255 bytes of UTF-8 (a text value), no white space or control
    characters."""
    n = len(name.encode("utf-8"))
    if n == 0:
        return "CHAP user name is empty"
    if n > CHAP_NAME_MAX:
        return f"CHAP user name is {n} bytes; at most {CHAP_NAME_MAX} are allowed"
    if _bad_chars(name):
        return "CHAP user name contains white space or a control character"
    return None


def parse_user_secret(value: str) -> tuple[str, str] | str:
    """Split an IncomingUser/OutgoingUser attribute value 'name secret' and
    validate both. Returns (name, secret), or the error message."""
    words = value.split()
    if len(words) != 2:
        return f"expected 'name secret', got {len(words)} word(s)"
    name, secret = words
    return validate_user_name(name) or validate_secret(secret) or (name, secret)


def check_credentials(creds: chap_credentials) -> str | None:
    """None if the accounts of one target (or of discovery) are consistent,
    else why not: every name and secret valid, incoming names unique, and
    the outgoing secret used by no incoming user (RFC 7143 12.1.3: a secret
    used for initiator authentication MUST NOT be configured for target
    authentication)."""
    seen: set[str] = set()
    for name, secret in creds.incoming:
        err = validate_user_name(name) or validate_secret(secret)
        if err:
            return f"IncomingUser {name}: {err}"
        if name in seen:
            return f"IncomingUser {name} given twice"
        seen.add(name)
    if creds.outgoing is not None:
        name, secret = creds.outgoing
        err = validate_user_name(name) or validate_secret(secret)
        if err:
            return f"OutgoingUser {name}: {err}"
        users = [u for u, s in creds.incoming if s == secret]
        if users:
            return (f"OutgoingUser {name} has the secret of IncomingUser {users[0]}; "
                    f"the two directions need different secrets")
    return None


def chap_credentials_from_attrs(incoming: Iterable[str],
                                outgoing: Iterable[str] = ()) -> chap_credentials | str:
    """Build chap_credentials from IncomingUser/OutgoingUser attribute values
    ('name secret' each; at most one outgoing), or return the error."""
    ins: list[tuple[str, str]] = []
    for v in incoming:
        r = parse_user_secret(v)
        if isinstance(r, str):
            return f"IncomingUser: {r}"
        ins.append(r)
    outs = list(outgoing)
    if len(outs) > 1:
        return "only one OutgoingUser may be set"
    out: tuple[str, str] | None = None
    if outs:
        r = parse_user_secret(outs[0])
        if isinstance(r, str):
            return f"OutgoingUser: {r}"
        out = r
    creds = chap_credentials(tuple(ins), out)
    return check_credentials(creds) or creds


# --- encodings (RFC 7143 6.1) and the digest (RFC 1994 4.1) -----------------

def decode_binary(key: str, value: str) -> tuple[bytes, str]:
    """Decode a binary-value of at most CHAP_BINARY_MAX bytes: 0x/0X and an
    even number of hex digits, or 0b/0B and padded base64. Returns the bytes
    and the prefix ("0x" or "0b") to answer in. Lengths are checked on the
    text first. Raises NegotiationError 02/0B."""
    prefix, body = value[:2], value[2:]
    n = len(body)
    if prefix in ("0x", "0X"):
        if n == 0 or n > _HEX_MAX:
            raise _malformed(f"{key}: {n} hex digits, expected 2..{_HEX_MAX}")
        if n % 2:
            raise _malformed(f"{key}: odd number ({n}) of hex digits")
        if not _HEX_DIGITS.issuperset(body):
            raise _malformed(f"{key}: not a hex string")
        return bytes.fromhex(body), "0x"
    if prefix in ("0b", "0B"):
        if n == 0 or n > _B64_MAX or n % 4:
            raise _malformed(f"{key}: base64 text of {n} characters, expected a multiple "
                             f"of 4 up to {_B64_MAX}")
        if not _B64_CHARS.issuperset(body):
            raise _malformed(f"{key}: not a base64 string")
        raw = body.encode("ascii")
        try:
            data = binascii.a2b_base64(raw, strict_mode=True)
        except binascii.Error:
            raise _malformed(f"{key}: malformed base64") from None
        if base64.b64encode(data) != raw:
            raise _malformed(f"{key}: non-canonical base64")
        if not data or len(data) > CHAP_BINARY_MAX:
            raise _malformed(f"{key}: {len(data)} bytes, expected 1..{CHAP_BINARY_MAX}")
        return data, "0b"
    raise _malformed(f"{key}: binary value without a 0x or 0b prefix")


def encode_binary(data: bytes, prefix: str = "0x") -> str:
    if prefix == "0b":
        return "0b" + base64.b64encode(data).decode("ascii")
    return "0x" + data.hex()


def parse_chap_identifier(value: str) -> int:
    """CHAP_I: a decimal or 0x hex number in 0..255 (RFC 1994: one octet).
    Raises NegotiationError 02/0B for anything else."""
    n = parse_number(value)
    if n is None or n > 0xFF:
        raise _malformed(f"CHAP_I={value[:16]!r} is not a number in 0..255")
    return n


def chap_md5_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 4.1 with MD5: MD5(identifier || secret || challenge)."""
    return hashlib.md5(bytes((identifier,)) + secret + challenge).digest()


# --- the authenticator ------------------------------------------------------

class chap_auth_state(enum.IntEnum):
    CHAP_AUTH_STATE_START = 0       # AuthMethod=CHAP agreed; CHAP_A expected
    CHAP_AUTH_STATE_CHALLENGE = 1   # challenge sent; CHAP_N/CHAP_R expected
    CHAP_AUTH_STATE_DONE = 2        # exchange ended (success or failure)


CHAP_AUTH_STATE_START = chap_auth_state.CHAP_AUTH_STATE_START
CHAP_AUTH_STATE_CHALLENGE = chap_auth_state.CHAP_AUTH_STATE_CHALLENGE
CHAP_AUTH_STATE_DONE = chap_auth_state.CHAP_AUTH_STATE_DONE


def _check_challenge_len(inst: object, attribute: object, value: int) -> None:
    if not CHAP_CHALLENGE_MIN <= value <= CHAP_BINARY_MAX:
        raise ValueError(f"challenge_len must be in {CHAP_CHALLENGE_MIN}..{CHAP_BINARY_MAX}, "
                         f"got {value}")


@attrs.define(slots=True, eq=False)
class chap_authenticator:
    """CHAP for one login (a login_authenticator, see usr/iscsid.py).

    credentials(sess) returns the accounts for the login's target
    (sess.target; sess.session_type == "Discovery" means the discovery
    accounts), or None for none.
    random_bytes(n) returns n unpredictable bytes (get_random_bytes).
    required: demand CHAP even where no incoming user is configured (such
    logins then fail with 02/01). Where an incoming user is configured, CHAP
    is always demanded; AuthMethod=None is accepted only where none is.
    challenge_len: bytes in our CHAP_C, 16..1024.

    Touched only by the connection's rd thread: no lock."""
    credentials: Callable[[login_session], chap_credentials | None]
    random_bytes: Callable[[int], bytes]
    required: bool = False
    challenge_len: int = attrs.field(default=CHAP_CHALLENGE_DEFAULT,
                                     validator=_check_challenge_len)
    # the exchange of the one login this object serves
    state: chap_auth_state = attrs.field(init=False, default=CHAP_AUTH_STATE_START)
    sess: login_session | None = attrs.field(init=False, default=None)
    creds: chap_credentials | None = attrs.field(init=False, default=None)
    chap_id: int = attrs.field(init=False, default=0)
    challenge: bytes = attrs.field(init=False, default=b"", repr=False)
    user: str | None = attrs.field(init=False, default=None)  # CHAP_N that passed

    def methods(self, sess: login_session) -> Sequence[str]:
        creds = self.credentials(sess)
        if (creds is not None and creds.incoming) or self.required:
            return ("CHAP",)
        return ("None",)

    def offer(self, sess: login_session, keys: Pairs) -> tuple[Pairs, bool]:
        if self.sess is None:
            self.sess = sess
        elif self.sess is not sess:
            raise ValueError("a chap_authenticator serves one login; make one per login")
        if sess.auth_method != "CHAP":
            raise _malformed(f"CHAP keys with AuthMethod={sess.auth_method}")
        d: dict[str, str] = {}
        for k, v in keys:
            if k in d:
                raise _malformed(f"{k} given twice")
            d[k] = v
        if self.state == CHAP_AUTH_STATE_START:
            return self._chap_challenge(sess, d)
        if self.state == CHAP_AUTH_STATE_CHALLENGE:
            return self._chap_response(d)
        raise _malformed(f"{', '.join(d)} after the CHAP exchange ended")

    # -- steps ---------------------------------------------------------------

    def _chap_challenge(self, sess: login_session, d: dict[str, str]) -> tuple[Pairs, bool]:
        """CHAP_A=<A1,A2,...> -> CHAP_A=5 CHAP_I=<I> CHAP_C=<C>."""
        if "CHAP_A" not in d or len(d) > 1:
            raise _malformed(f"expected CHAP_A alone, got {', '.join(d)}")
        algs = []
        for item in d["CHAP_A"].split(","):
            n = parse_number(item)
            if n is None:
                raise _malformed(f"CHAP_A={d['CHAP_A'][:32]!r} is not a list of numbers")
            algs.append(n)
        self.state = CHAP_AUTH_STATE_DONE       # until the challenge is out
        if CHAP_DIGEST_ALG_MD5 not in algs:
            raise _auth_failed(f"CHAP_A={d['CHAP_A'][:32]}: algorithm 5 (MD5) not offered")
        creds = self.credentials(sess)
        if creds is None or not creds.incoming:
            raise _auth_failed("CHAP required but no incoming CHAP user is configured")
        chap_id = self._random(1)[0]
        challenge = self._random(self.challenge_len)
        self.creds, self.chap_id, self.challenge = creds, chap_id, challenge
        self.state = CHAP_AUTH_STATE_CHALLENGE
        return [("CHAP_A", str(CHAP_DIGEST_ALG_MD5)), ("CHAP_I", str(chap_id)),
                ("CHAP_C", encode_binary(challenge))], False

    def _chap_response(self, d: dict[str, str]) -> tuple[Pairs, bool]:
        """CHAP_N CHAP_R [CHAP_I CHAP_C] -> [CHAP_N CHAP_R], done."""
        self.state = CHAP_AUTH_STATE_DONE       # one answer per challenge
        extra = sorted(set(d) - _RESPONSE_KEYS)
        if extra:
            raise _malformed(f"{', '.join(extra)} in the CHAP response step")
        for k in ("CHAP_N", "CHAP_R"):
            if k not in d:
                raise _malformed(f"CHAP response without {k}")
        mutual = "CHAP_I" in d or "CHAP_C" in d
        if mutual and not ("CHAP_I" in d and "CHAP_C" in d):
            raise _malformed("mutual CHAP needs both CHAP_I and CHAP_C")
        name = d["CHAP_N"]
        response, _ = decode_binary("CHAP_R", d["CHAP_R"])
        if mutual:
            ini_id = parse_chap_identifier(d["CHAP_I"])
            ini_challenge, prefix = decode_binary("CHAP_C", d["CHAP_C"])
        creds = self.creds
        assert creds is not None
        secret = creds.incoming_secret(name)
        if secret is None:
            raise _auth_failed(f"CHAP_N={name[:64]!r}: no such incoming user")
        expected = chap_md5_response(self.chap_id, secret.encode("utf-8"), self.challenge)
        if not hmac.compare_digest(response, expected):
            raise _auth_failed(f"CHAP_N={name[:64]!r}: wrong response (secret mismatch)")
        out = creds.outgoing
        if out is not None:
            ours = chap_md5_response(self.chap_id, out[1].encode("utf-8"), self.challenge)
            if hmac.compare_digest(response, ours):
                raise _auth_failed(f"CHAP_N={name[:64]!r}: response made with the target's "
                                   f"own outgoing secret (same secret both ways)")
        self.user = name
        if not mutual:
            return [], True
        if out is None:
            raise _auth_failed("initiator asks for mutual CHAP but no outgoing user is "
                               "configured")
        if ini_challenge == self.challenge:
            raise _auth_failed("initiator reflected our CHAP challenge")
        answer = chap_md5_response(ini_id, out[1].encode("utf-8"), ini_challenge)
        return [("CHAP_N", out[0]), ("CHAP_R", encode_binary(answer, prefix))], True

    def _random(self, n: int) -> bytes:
        data = bytes(self.random_bytes(n))
        if len(data) != n:
            raise ValueError(f"random_bytes({n}) returned {len(data)} bytes")
        return data
