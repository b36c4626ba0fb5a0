"""Tests for iscsi_scst/usr/chap.py: CHAP (RFC 7143 12.1.3, RFC 1994) driven
through login_session.step() with handcrafted Login Requests.

The initiator side is computed here independently with hashlib
(MD5(identifier || secret || challenge)). Randomness is a seeded generator
that records what it handed out, so a test knows the challenge without
reading it back from the authenticator.
"""
from __future__ import annotations

import base64
import hashlib
import random

import attrs
import pytest

from iscsi_scst.usr.chap import (
    CHAP_AUTH_STATE_CHALLENGE,
    CHAP_AUTH_STATE_DONE,
    chap_authenticator,
    chap_credentials,
    chap_credentials_from_attrs,
    check_credentials,
    decode_binary,
    parse_chap_identifier,
    parse_user_secret,
    validate_secret,
    validate_user_name,
)
from iscsi_scst.usr.iscsid import (
    STATE_DROP,
    STATE_FULL,
    STATE_LOGIN,
    STATE_SECURITY,
    login_req,
    login_rsp,
    login_session,
)
from iscsi_scst.usr.param import NegotiationError, iscsi_tgt_params, pack_text, parse_text

INAME = "iqn.2005-03.org.open-iscsi:deadbeef"
TNAME = "iqn.2024-01.org.uscst:disk1"
TNAME2 = "iqn.2024-01.org.uscst:disk2"
ISID = bytes.fromhex("400001370000")

USER, SECRET = "joe", "joe-secret-0123"
USER2, SECRET2 = "ann", "ann-secret-4567"
OUT_USER, OUT_SECRET = "tgt-disk1", "target-secret-89"
DISC_USER, DISC_SECRET = "finder", "discovery-secret"

AUTH_FAILED = (2, 0x01)
INVALID = (2, 0x0B)


@attrs.define
class fake_target:
    tgt_params: iscsi_tgt_params = attrs.Factory(iscsi_tgt_params)
    alias: str = ""
    portal_group_tag: int = 1
    chap: chap_credentials | None = None


@attrs.define
class recording_random:
    """Seeded random_bytes(n); keeps every value handed out."""
    seed: int = 1
    given: list = attrs.Factory(list)
    rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.rng = random.Random(self.seed)

    def __call__(self, n: int) -> bytes:
        b = self.rng.randbytes(n)
        self.given.append(b)
        return b


ONE_WAY = chap_credentials([(USER, SECRET), (USER2, SECRET2)])
MUTUAL = chap_credentials([(USER, SECRET)], (OUT_USER, OUT_SECRET))
DISCOVERY = chap_credentials([(DISC_USER, DISC_SECRET)])


def make(creds: chap_credentials | None = ONE_WAY, *, targets=None, discovery=None,
         required=False, seed=1, challenge_len=16):
    """A login_session with a fresh chap_authenticator; returns (session, auth, rnd)."""
    if targets is None:
        targets = {TNAME: fake_target(chap=creds)}
    rnd = recording_random(seed)

    def credentials(sess: login_session) -> chap_credentials | None:
        if sess.session_type == "Discovery":
            return discovery
        return sess.target.chap

    auth = chap_authenticator(credentials=credentials, random_bytes=rnd, required=required,
                              challenge_len=challenge_len)
    s = login_session(find_target=targets.get, alloc_tsih=lambda: 0x77, authenticator=auth)
    return s, auth, rnd


def req(pairs=(), *, csg=0, nsg=1, transit=False, data=None) -> login_req:
    if data is None:
        data = pack_text(pairs)
    return login_req(transit=transit, cont=False, csg=csg, nsg=nsg if transit else 0,
                     version_max=0, version_min=0, isid=ISID, tsih=0, itt=0x10, cid=1,
                     cmd_sn=5, exp_stat_sn=0, data=data)


def keys(rsp: login_rsp) -> dict[str, str]:
    pairs = parse_text(rsp.data)
    d = dict(pairs)
    assert len(d) == len(pairs), f"response repeats a key: {pairs}"
    return d


def st_of(rsp: login_rsp) -> tuple[int, int]:
    return rsp.status_class, rsp.status_detail


def md5(i: int, secret: str | bytes, challenge: bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.md5(bytes([i]) + secret + challenge).digest()


def hexs(b: bytes) -> str:
    return "0x" + b.hex()


def b64s(b: bytes) -> str:
    return "0b" + base64.b64encode(b).decode()


LEADING = [("InitiatorName", INAME), ("TargetName", TNAME), ("SessionType", "Normal")]
DISC_LEADING = [("InitiatorName", INAME), ("SessionType", "Discovery")]
OP = [("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "65536")]


def to_challenge(s: login_session, methods="CHAP,None", leading=LEADING, alg="5"):
    """Steps 1 and 2: AuthMethod, then CHAP_A. Returns (identifier, challenge)."""
    r1 = s.step(req(leading + [("AuthMethod", methods)], transit=True))
    assert st_of(r1) == (0, 0), s.error
    assert keys(r1)["AuthMethod"] == "CHAP" and not r1.transit
    r2 = s.step(req([("CHAP_A", alg)]))
    assert st_of(r2) == (0, 0), s.error
    k = keys(r2)
    assert k["CHAP_A"] == "5" and not r2.transit
    return int(k["CHAP_I"]), bytes.fromhex(k["CHAP_C"][2:])


def answer(i: int, c: bytes, user=USER, secret=SECRET, extra=()) -> list:
    return [("CHAP_N", user), ("CHAP_R", hexs(md5(i, secret, c))), *extra]


# --- positive exchanges -------------------------------------------------------------

def test_one_way_chap_login_reaches_full_feature_phase():
    s, auth, rnd = make()
    i, c = to_challenge(s)
    # The identifier and the challenge come from random_bytes, in that order.
    assert rnd.given == [bytes([i]), c] and len(c) == 16
    r3 = s.step(req(answer(i, c), transit=True))
    assert st_of(r3) == (0, 0) and r3.transit and r3.nsg == 1
    assert keys(r3) == {}                        # no CHAP_N/CHAP_R without mutual CHAP
    assert s.state == STATE_LOGIN and s.auth_done and auth.user == USER
    r4 = s.step(req(OP, csg=1, nsg=3, transit=True))
    assert st_of(r4) == (0, 0) and s.state == STATE_FULL and r4.tsih == 0x77


# What libiscsi 1.19 (lib/login.c) sends in its operational-stage request
# after CHAP: it repeats InitiatorName, TargetName and SessionType there.
LIBISCSI_OP_AFTER_CHAP = LEADING + [
    ("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"),
    ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"), ("FirstBurstLength", "262144"),
    ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
    ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]


def test_libiscsi_chap_login_sequence_reaches_full_feature_phase():
    s, _, _ = make(MUTUAL)
    i, c = to_challenge(s)
    r3 = s.step(req(answer(i, c, extra=[("CHAP_I", "1"), ("CHAP_C", hexs(C_MINE))]),
                    transit=True))
    assert st_of(r3) == (0, 0) and r3.transit and keys(r3)["CHAP_N"] == OUT_USER
    r4 = s.step(req(LIBISCSI_OP_AFTER_CHAP, csg=1, nsg=3, transit=True))
    assert st_of(r4) == (0, 0), s.error
    assert s.done


def test_first_response_carries_target_portal_group_tag_with_auth_method():
    s, _, _ = make()
    r1 = s.step(req(LEADING + [("AuthMethod", "CHAP,None")], transit=True))
    assert keys(r1) == {"TargetPortalGroupTag": "1", "AuthMethod": "CHAP"}


def test_one_way_chap_with_response_in_base64_and_uppercase_hex_prefix():
    for fmt in (b64s, lambda b: "0X" + b.hex().upper()):
        s, _, _ = make()
        i, c = to_challenge(s)
        r = s.step(req([("CHAP_N", USER), ("CHAP_R", fmt(md5(i, SECRET, c)))], transit=True))
        assert st_of(r) == (0, 0) and r.transit, s.error


def test_second_incoming_user_authenticates_with_its_own_secret():
    s, auth, _ = make()
    i, c = to_challenge(s)
    r = s.step(req(answer(i, c, USER2, SECRET2), transit=True))
    assert st_of(r) == (0, 0) and auth.user == USER2


def test_chap_a_list_picks_md5_wherever_it_is():
    for alg in ("7,5", "5,7", "6,0x5", "5"):
        s, _, _ = make()
        i, c = to_challenge(s, alg=alg)
        assert st_of(s.step(req(answer(i, c), transit=True))) == (0, 0), alg


def test_response_without_transit_then_empty_transit_request():
    s, _, _ = make()
    i, c = to_challenge(s)
    r3 = s.step(req(answer(i, c)))
    assert st_of(r3) == (0, 0) and not r3.transit and s.auth_done
    r4 = s.step(req([], transit=True))
    assert r4.transit and s.state == STATE_LOGIN


def test_mutual_chap_answers_with_outgoing_name_and_response():
    s, auth, rnd = make(MUTUAL)
    i, c = to_challenge(s)
    my_c = bytes(range(100, 132))
    r = s.step(req(answer(i, c, extra=[("CHAP_I", "77"), ("CHAP_C", hexs(my_c))]),
                   transit=True))
    assert st_of(r) == (0, 0) and r.transit
    k = keys(r)
    assert k["CHAP_N"] == OUT_USER
    assert k["CHAP_R"] == hexs(md5(77, OUT_SECRET, my_c))
    assert s.state == STATE_LOGIN


def test_mutual_chap_answers_in_the_encoding_of_the_initiator_challenge():
    s, _, _ = make(MUTUAL)
    i, c = to_challenge(s)
    my_c = b"\xff" * 20
    r = s.step(req(answer(i, c, extra=[("CHAP_I", "0xff"), ("CHAP_C", b64s(my_c))]),
                   transit=True))
    assert st_of(r) == (0, 0), s.error
    assert keys(r)["CHAP_R"] == b64s(md5(255, OUT_SECRET, my_c))


def test_mutual_chap_accepts_identifier_bounds_and_one_byte_challenge():
    for ident, value in (("0", 0), ("255", 255), ("0x00", 0), ("007", 7)):
        s, _, _ = make(MUTUAL)
        i, c = to_challenge(s)
        r = s.step(req(answer(i, c, extra=[("CHAP_I", ident), ("CHAP_C", "0x01")]),
                       transit=True))
        assert st_of(r) == (0, 0), (ident, s.error)
        assert keys(r)["CHAP_R"] == hexs(md5(value, OUT_SECRET, b"\x01"))


def test_outgoing_user_configured_but_not_asked_for_is_not_sent():
    s, _, _ = make(MUTUAL)
    i, c = to_challenge(s)
    r = s.step(req(answer(i, c), transit=True))
    assert st_of(r) == (0, 0) and keys(r) == {}


def test_discovery_session_uses_discovery_credentials():
    s, auth, _ = make(discovery=DISCOVERY)
    i, c = to_challenge(s, leading=DISC_LEADING)
    r = s.step(req(answer(i, c, DISC_USER, DISC_SECRET), transit=True))
    assert st_of(r) == (0, 0) and auth.user == DISC_USER
    assert st_of(s.step(req(OP, csg=1, nsg=3, transit=True))) == (0, 0) and s.done


def test_no_incoming_user_means_auth_method_none_and_no_challenge():
    s, auth, rnd = make(None)
    r = s.step(req(LEADING + [("AuthMethod", "CHAP,None")], transit=True))
    assert st_of(r) == (0, 0) and keys(r)["AuthMethod"] == "None" and r.transit
    assert rnd.given == [] and auth.methods(s) == ("None",)


def test_libiscsi_without_user_skips_security_when_no_incoming_user():
    s, _, _ = make(chap_credentials())
    r = s.step(req(LEADING + OP, csg=1, nsg=3, transit=True))
    assert st_of(r) == (0, 0) and s.done


def test_methods_demand_chap_when_incoming_user_exists_or_required():
    s, auth, _ = make()
    s.step(req(LEADING + [("AuthMethod", "CHAP,None")], transit=True))
    assert auth.methods(s) == ("CHAP",)
    s2, auth2, _ = make(None, required=True)
    s2.step(req(LEADING + [("AuthMethod", "CHAP,None")], transit=True))
    assert auth2.methods(s2) == ("CHAP",)


def test_challenge_length_is_configurable_and_comes_from_random_bytes():
    s, _, rnd = make(challenge_len=1024)
    i, c = to_challenge(s)
    assert len(c) == 1024 and rnd.given[1] == c
    assert st_of(s.step(req(answer(i, c), transit=True))) == (0, 0)


def test_two_logins_get_different_challenges():
    s1, _, _ = make(seed=1)
    s2, _, _ = make(seed=2)
    assert to_challenge(s1)[1] != to_challenge(s2)[1]


def test_replaying_a_response_to_another_challenge_fails():
    s1, _, _ = make(seed=1)
    i1, c1 = to_challenge(s1)
    s2, _, _ = make(seed=2)
    to_challenge(s2)
    r = s2.step(req(answer(i1, c1), transit=True))
    assert st_of(r) == AUTH_FAILED


@pytest.mark.parametrize("bad", [5, 1025])
def test_challenge_len_out_of_range_is_refused_at_construction(bad):
    with pytest.raises(ValueError, match="challenge_len"):
        chap_authenticator(credentials=lambda s: None, random_bytes=bytes, challenge_len=bad)


def test_random_bytes_returning_short_data_is_a_bug_not_a_login_status():
    auth = chap_authenticator(credentials=lambda s: ONE_WAY, random_bytes=lambda n: b"\0")
    s = login_session(find_target={TNAME: fake_target(chap=ONE_WAY)}.get, authenticator=auth)
    s.step(req(LEADING + [("AuthMethod", "CHAP")], transit=True))
    with pytest.raises(ValueError, match="random_bytes"):
        s.step(req([("CHAP_A", "5")]))


def test_one_authenticator_refuses_a_second_login():
    s, auth, _ = make()
    to_challenge(s)
    other = login_session(find_target={TNAME: fake_target(chap=ONE_WAY)}.get,
                          authenticator=auth)
    other.step(req(LEADING + [("AuthMethod", "CHAP")], transit=True))
    with pytest.raises(ValueError, match="one login"):
        other.step(req([("CHAP_A", "5")]))


def test_repr_shows_user_names_but_no_secret():
    text = repr(MUTUAL)
    assert USER in text and OUT_USER in text
    assert SECRET not in text and OUT_SECRET not in text
    s, auth, _ = make(MUTUAL)
    to_challenge(s)
    assert SECRET not in repr(auth) and OUT_SECRET not in repr(auth)


# --- negative matrix -------------------------------------------------------------------
# Each case: (credentials, steps) where steps is a function (session, i, c)
# -> the pairs of the third request; or a special driver. The expected status
# and that the failing response carries no CHAP key are checked for all.

C_MINE = bytes(range(1, 33))


def resp(**over):
    """A correct one-way response with some keys replaced (None removes one)."""
    def build(i, c):
        d = {"CHAP_N": USER, "CHAP_R": hexs(md5(i, SECRET, c))}
        for k, v in over.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v(i, c) if callable(v) else v
        return list(d.items())
    return build


def mutual(**over):
    def build(i, c):
        d = {"CHAP_N": USER, "CHAP_R": hexs(md5(i, SECRET, c)),
             "CHAP_I": "9", "CHAP_C": hexs(C_MINE)}
        for k, v in over.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v(i, c) if callable(v) else v
        return list(d.items())
    return build


RESPONSE_CASES = {
    # credentials
    "wrong secret": (ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5(i, "wrong-secret-000", c))),
                     AUTH_FAILED),
    "wrong user name": (ONE_WAY, resp(CHAP_N="nobody"), AUTH_FAILED),
    "user name differs in case": (ONE_WAY, resp(CHAP_N="JOE"), AUTH_FAILED),
    "secret of the other user": (ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5(i, SECRET2, c))),
                                 AUTH_FAILED),
    "response to another identifier": (
        ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5((i + 1) & 0xFF, SECRET, c))), AUTH_FAILED),
    "response truncated to 15 bytes": (
        ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5(i, SECRET, c)[:15])), AUTH_FAILED),
    "response with a byte appended": (
        ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5(i, SECRET, c) + b"\0")), AUTH_FAILED),
    "response of all zeros": (ONE_WAY, resp(CHAP_R=hexs(bytes(16))), AUTH_FAILED),
    # shape of the step
    "CHAP_N missing": (ONE_WAY, resp(CHAP_N=None), INVALID),
    "CHAP_R missing": (ONE_WAY, resp(CHAP_R=None), INVALID),
    "CHAP_A again in the response step": (ONE_WAY, resp(CHAP_A="5"), INVALID),
    # encodings of CHAP_R
    "CHAP_R empty hex": (ONE_WAY, resp(CHAP_R="0x"), INVALID),
    "CHAP_R empty value": (ONE_WAY, resp(CHAP_R=""), INVALID),
    "CHAP_R odd hex length": (ONE_WAY, resp(CHAP_R=lambda i, c: hexs(md5(i, SECRET, c))[:-1]),
                              INVALID),
    "CHAP_R non-hex digit": (ONE_WAY, resp(CHAP_R="0x" + "zz" * 16), INVALID),
    "CHAP_R hex with a space": (ONE_WAY, resp(CHAP_R="0x" + "00 " + "11" * 15), INVALID),
    "CHAP_R without prefix": (ONE_WAY, resp(CHAP_R=lambda i, c: md5(i, SECRET, c).hex()),
                              INVALID),
    "CHAP_R decimal": (ONE_WAY, resp(CHAP_R="12345"), INVALID),
    "CHAP_R bad base64 character": (ONE_WAY, resp(CHAP_R="0b" + "A" * 22 + "*="), INVALID),
    "CHAP_R base64 without padding": (
        ONE_WAY, resp(CHAP_R=lambda i, c: b64s(md5(i, SECRET, c)).rstrip("=")), INVALID),
    "CHAP_R base64 data after padding": (ONE_WAY, resp(CHAP_R="0bAA==AAAA"), INVALID),
    "CHAP_R base64 non-canonical": (ONE_WAY, resp(CHAP_R="0bAB=="), INVALID),
    "CHAP_R empty base64": (ONE_WAY, resp(CHAP_R="0b"), INVALID),
    "CHAP_R oversize hex (1025 bytes)": (ONE_WAY, resp(CHAP_R="0x" + "00" * 1025), INVALID),
    "CHAP_R oversize base64 (1026 bytes)": (
        ONE_WAY, resp(CHAP_R=b64s(bytes(1026))), INVALID),
    "CHAP_R far oversize (8000 digits)": (ONE_WAY, resp(CHAP_R="0x" + "ab" * 4000), INVALID),
    # mutual CHAP
    "CHAP_I without CHAP_C": (MUTUAL, mutual(CHAP_C=None), INVALID),
    "CHAP_C without CHAP_I": (MUTUAL, mutual(CHAP_I=None), INVALID),
    "CHAP_I 256": (MUTUAL, mutual(CHAP_I="256"), INVALID),
    "CHAP_I 0x100": (MUTUAL, mutual(CHAP_I="0x100"), INVALID),
    "CHAP_I negative": (MUTUAL, mutual(CHAP_I="-1"), INVALID),
    "CHAP_I plus sign": (MUTUAL, mutual(CHAP_I="+1"), INVALID),
    "CHAP_I fraction": (MUTUAL, mutual(CHAP_I="1.0"), INVALID),
    "CHAP_I empty": (MUTUAL, mutual(CHAP_I=""), INVALID),
    "CHAP_I bare 0x": (MUTUAL, mutual(CHAP_I="0x"), INVALID),
    "CHAP_I base64 form": (MUTUAL, mutual(CHAP_I="0bAQ=="), INVALID),
    "CHAP_I with space": (MUTUAL, mutual(CHAP_I=" 1"), INVALID),
    "CHAP_I 2**64 + 1 (truncates to 1)": (MUTUAL, mutual(CHAP_I=str(2 ** 64 + 1)), INVALID),
    "CHAP_I 257 (truncates to 1 in a byte)": (MUTUAL, mutual(CHAP_I="257"), INVALID),
    "CHAP_I letters": (MUTUAL, mutual(CHAP_I="one"), INVALID),
    "CHAP_C empty hex": (MUTUAL, mutual(CHAP_C="0x"), INVALID),
    "CHAP_C odd hex": (MUTUAL, mutual(CHAP_C="0x123"), INVALID),
    "CHAP_C oversize (1025 bytes)": (MUTUAL, mutual(CHAP_C="0x" + "01" * 1025), INVALID),
    "CHAP_C bad base64": (MUTUAL, mutual(CHAP_C="0b!!!!"), INVALID),
    "reflected challenge": (MUTUAL, mutual(CHAP_C=lambda i, c: hexs(c)), AUTH_FAILED),
    "reflected challenge in base64": (MUTUAL, mutual(CHAP_C=lambda i, c: b64s(c)), AUTH_FAILED),
    "mutual without outgoing user": (ONE_WAY, mutual(), AUTH_FAILED),
    "mutual with wrong initiator secret": (
        MUTUAL, mutual(CHAP_R=lambda i, c: hexs(md5(i, "not-the-secret!", c))), AUTH_FAILED),
    "mutual with unknown user": (MUTUAL, mutual(CHAP_N="mallory"), AUTH_FAILED),
    "same secret both ways (mutual)": (
        chap_credentials([(USER, OUT_SECRET)], (OUT_USER, OUT_SECRET)),
        mutual(CHAP_R=lambda i, c: hexs(md5(i, OUT_SECRET, c))), AUTH_FAILED),
    "same secret both ways (one-way request)": (
        chap_credentials([(USER, OUT_SECRET)], (OUT_USER, OUT_SECRET)),
        resp(CHAP_R=lambda i, c: hexs(md5(i, OUT_SECRET, c))), AUTH_FAILED),
    "response made with our outgoing secret": (
        MUTUAL, resp(CHAP_R=lambda i, c: hexs(md5(i, OUT_SECRET, c))), AUTH_FAILED),
}


@pytest.mark.parametrize("case", sorted(RESPONSE_CASES))
def test_bad_response_step_fails_login(case):
    creds, build, want = RESPONSE_CASES[case]
    s, auth, _ = make(creds)
    i, c = to_challenge(s)
    r = s.step(req(build(i, c), transit=True))
    assert st_of(r) == want, (case, s.error)
    assert s.state == STATE_DROP and not r.transit and r.data == b""
    assert auth.state == CHAP_AUTH_STATE_DONE
    # The login is over: nothing more is accepted, and no authentication
    # record is left claiming success.
    assert st_of(s.step(req(answer(i, c), transit=True))) == INVALID
    if want == AUTH_FAILED and case not in ("mutual without outgoing user",
                                              "reflected challenge",
                                              "reflected challenge in base64"):
        assert auth.user is None


def test_case_matrix_is_large_enough():
    assert len(RESPONSE_CASES) + len(CHALLENGE_CASES) + len(FLOW_CASES) >= 30


# CHAP_A step: (credentials, pairs of the second request, expected status)
CHALLENGE_CASES = {
    "CHAP_A missing (response sent first)": ([("CHAP_N", USER), ("CHAP_R", hexs(bytes(16)))],
                                            INVALID),
    "CHAP_A without 5": ([("CHAP_A", "7")], AUTH_FAILED),
    "CHAP_A with 6 and 7 only": ([("CHAP_A", "6,7")], AUTH_FAILED),
    "CHAP_A=50 is not 5": ([("CHAP_A", "50")], AUTH_FAILED),
    "CHAP_A not numbers": ([("CHAP_A", "MD5")], INVALID),
    "CHAP_A empty": ([("CHAP_A", "")], INVALID),
    "CHAP_A empty list item": ([("CHAP_A", "5,,7")], INVALID),
    "CHAP_A twice in one request": ([("CHAP_A", "5"), ("CHAP_A", "5")], INVALID),
    "CHAP_A with CHAP_I": ([("CHAP_A", "5"), ("CHAP_I", "1")], INVALID),
    "CHAP_A with CHAP_R": ([("CHAP_A", "5"), ("CHAP_R", hexs(bytes(16)))], INVALID),
    "CHAP_C alone": ([("CHAP_C", hexs(C_MINE))], INVALID),
}


@pytest.mark.parametrize("case", sorted(CHALLENGE_CASES))
def test_bad_algorithm_step_fails_login(case):
    pairs, want = CHALLENGE_CASES[case]
    s, _, rnd = make()
    s.step(req(LEADING + [("AuthMethod", "CHAP")], transit=True))
    r = s.step(req(pairs))
    assert st_of(r) == want, (case, s.error)
    assert s.state == STATE_DROP and r.data == b""
    assert rnd.given == []                # no challenge was made


def _flow_auth_none_when_chap_required(s):
    return s.step(req(LEADING + [("AuthMethod", "None")], transit=True))


def _flow_skip_security_stage(s):
    return s.step(req(LEADING + OP, csg=1, nsg=3, transit=True))


def _flow_transit_without_auth_method(s):
    return s.step(req(LEADING, transit=True))


def _flow_chap_a_in_first_request_with_auth_method_none(s):
    return s.step(req(LEADING + [("AuthMethod", "None"), ("CHAP_A", "5")], transit=True))


def _flow_chap_key_after_success(s):
    i, c = to_challenge(s)
    assert st_of(s.step(req(answer(i, c)))) == (0, 0)
    return s.step(req([("CHAP_A", "5")]))


def _flow_second_response(s):
    i, c = to_challenge(s)
    assert st_of(s.step(req(answer(i, c)))) == (0, 0)
    return s.step(req(answer(i, c), transit=True))


def _flow_chap_without_auth_method(s):
    s.step(req(LEADING))
    return s.step(req([("CHAP_A", "5")]))


def _flow_required_without_users_auth_none(s):
    return s.step(req(LEADING + [("AuthMethod", "None")], transit=True))


def _flow_auth_method_again_with_response(s):
    i, c = to_challenge(s)
    return s.step(req(answer(i, c) + [("AuthMethod", "CHAP")], transit=True))


def _flow_required_without_users_chap_a(s):
    r = s.step(req(LEADING + [("AuthMethod", "CHAP")], transit=True))
    assert keys(r)["AuthMethod"] == "CHAP"
    return s.step(req([("CHAP_A", "5")]))


def _flow_user_of_another_target(s):
    i, c = to_challenge(s)
    return s.step(req(answer(i, c, "eve", "eve-secret-0000"), transit=True))


def _flow_discovery_with_target_user(s):
    i, c = to_challenge(s, leading=DISC_LEADING)
    return s.step(req(answer(i, c), transit=True))


def _flow_operational_keys_with_response(s):
    i, c = to_challenge(s)
    return s.step(req(answer(i, c) + [("HeaderDigest", "None")], transit=True))


FLOW_CASES = {
    "AuthMethod=None when CHAP required": (ONE_WAY, {}, _flow_auth_none_when_chap_required,
                                           AUTH_FAILED),
    "security stage skipped": (ONE_WAY, {}, _flow_skip_security_stage, AUTH_FAILED),
    "transit without AuthMethod": (ONE_WAY, {}, _flow_transit_without_auth_method, AUTH_FAILED),
    "CHAP_A with AuthMethod=None": (
        ONE_WAY, {}, _flow_chap_a_in_first_request_with_auth_method_none, AUTH_FAILED),
    "CHAP key after success": (ONE_WAY, {}, _flow_chap_key_after_success, INVALID),
    "second response after success": (ONE_WAY, {}, _flow_second_response, INVALID),
    "CHAP_A before any AuthMethod": (ONE_WAY, {}, _flow_chap_without_auth_method, INVALID),
    "AuthMethod again with the response": (ONE_WAY, {}, _flow_auth_method_again_with_response,
                                           INVALID),
    "required, no users, AuthMethod=None": (None, {"required": True},
                                                 _flow_required_without_users_auth_none,
                                                 AUTH_FAILED),
    "required, no users, CHAP_A": (chap_credentials(), {"required": True},
                                   _flow_required_without_users_chap_a, AUTH_FAILED),
    "user of another target": ("two-targets", {}, _flow_user_of_another_target, AUTH_FAILED),
    "target user on discovery": (ONE_WAY, {"discovery": DISCOVERY},
                                 _flow_discovery_with_target_user, AUTH_FAILED),
    "operational key with the response": (ONE_WAY, {}, _flow_operational_keys_with_response,
                                          INVALID),
}


@pytest.mark.parametrize("case", sorted(FLOW_CASES))
def test_bad_login_flow_fails_login(case):
    creds, kw, flow, want = FLOW_CASES[case]
    if creds == "two-targets":
        kw = {"targets": {TNAME: fake_target(chap=ONE_WAY),
                          TNAME2: fake_target(chap=chap_credentials([("eve", "eve-secret-0000")]))}}
        creds = ONE_WAY
    s, _, _ = make(creds, **kw)
    r = flow(s)
    assert st_of(r) == want, (case, s.error)
    assert s.state == STATE_DROP and r.data == b""


def test_failure_reason_names_the_user_but_never_a_secret_or_digest():
    s, _, _ = make(MUTUAL)
    i, c = to_challenge(s)
    bad = md5(i, "wrong-secret-000", c)
    s.step(req([("CHAP_N", USER), ("CHAP_R", hexs(bad))], transit=True))
    reason = str(s.error)
    assert USER in reason
    for secret in (SECRET, OUT_SECRET, bad.hex(), md5(i, SECRET, c).hex(), c.hex()):
        assert secret not in reason


def test_no_challenge_state_survives_failed_algorithm_step():
    s, auth, _ = make()
    s.step(req(LEADING + [("AuthMethod", "CHAP")], transit=True))
    s.step(req([("CHAP_A", "7")]))
    assert auth.state == CHAP_AUTH_STATE_DONE and auth.challenge == b""


def test_state_after_challenge_waits_for_response():
    s, auth, _ = make()
    to_challenge(s)
    assert auth.state == CHAP_AUTH_STATE_CHALLENGE and s.state == STATE_SECURITY


# --- codec and configuration helpers -----------------------------------------------

@pytest.mark.parametrize("text, data, prefix", [
    ("0x00ff", b"\x00\xff", "0x"),
    ("0XAbCd", b"\xab\xcd", "0x"),
    ("0bAAEC", b"\x00\x01\x02", "0b"),
    ("0BAA==", b"\x00", "0b"),
    ("0x" + "11" * 1024, b"\x11" * 1024, "0x"),
    (b64s(b"\x22" * 1024), b"\x22" * 1024, "0b"),
])
def test_decode_binary_accepts_canonical_hex_and_base64(text, data, prefix):
    assert decode_binary("CHAP_C", text) == (data, prefix)


@pytest.mark.parametrize("text", ["", "0", "0x", "0x0", "0xg0", "0x 0", "0x0\u0661",
                                  "0b", "0bA", "0bAA=", "0bA===", "0b====", "0bAA=A",
                                  "0b\u00e9AAA", "0y00", "x00",
                                  "0x" + "00" * 1025, b64s(bytes(1025))])
def test_decode_binary_refuses_malformed_with_02_0b(text):
    with pytest.raises(NegotiationError) as e:
        decode_binary("CHAP_R", text)
    assert (e.value.status_class, e.value.status_detail) == INVALID


@pytest.mark.parametrize("text, n", [("0", 0), ("255", 255), ("0xff", 255), ("0XFE", 254),
                                     ("00", 0)])
def test_parse_chap_identifier_range(text, n):
    assert parse_chap_identifier(text) == n


@pytest.mark.parametrize("text", ["256", "-1", "0x100", "1e2", "", "ff", str(2 ** 64)])
def test_parse_chap_identifier_refuses_out_of_range(text):
    with pytest.raises(NegotiationError) as e:
        parse_chap_identifier(text)
    assert (e.value.status_class, e.value.status_detail) == INVALID


def test_validate_secret_lengths():
    assert "at least 12" in validate_secret("a" * 11)
    assert validate_secret("a" * 12) is None
    assert validate_secret("a" * 255) is None
    assert "at most 255" in validate_secret("a" * 256)
    assert validate_secret("") is not None
    # Bytes, not characters: six two-byte characters are 12 bytes.
    assert validate_secret("\u00e9" * 6) is None
    assert validate_secret("\u00e9" * 5) is not None
    assert "white space" in validate_secret("twelve chars here")
    assert validate_secret("tab\tseparated") is not None
    assert validate_secret("nul\0nul\0nul\0x") is not None


def test_validate_user_name():
    assert validate_user_name("joe") is None
    assert validate_user_name("") is not None
    assert validate_user_name("a" * 256) is not None
    assert validate_user_name("j oe") is not None


def test_parse_user_secret():
    assert parse_user_secret("joe  joe-secret-0123 ") == ("joe", "joe-secret-0123")
    assert "at least 12" in parse_user_secret("joe short")
    assert parse_user_secret("joe") == "expected 'name secret', got 1 word(s)"
    assert parse_user_secret("a b c") == "expected 'name secret', got 3 word(s)"


def test_check_credentials_refuses_shared_secret_and_duplicate_user():
    assert check_credentials(MUTUAL) is None
    same = chap_credentials([(USER, OUT_SECRET)], (OUT_USER, OUT_SECRET))
    assert "different secrets" in check_credentials(same)
    dup = chap_credentials([(USER, SECRET), (USER, SECRET2)])
    assert "twice" in check_credentials(dup)
    short = chap_credentials([(USER, "short")])
    assert "at least 12" in check_credentials(short)


def test_chap_credentials_from_attrs():
    c = chap_credentials_from_attrs([f"{USER} {SECRET}"], [f"{OUT_USER} {OUT_SECRET}"])
    assert c == MUTUAL
    assert chap_credentials_from_attrs([]) == chap_credentials()
    assert "only one OutgoingUser" in chap_credentials_from_attrs(
        [], [f"a {SECRET}", f"b {SECRET2}"])
    assert "IncomingUser" in chap_credentials_from_attrs(["joe short"])
    assert "different secrets" in chap_credentials_from_attrs(
        [f"{USER} {OUT_SECRET}"], [f"{OUT_USER} {OUT_SECRET}"])


def test_oversize_base64_is_refused_on_its_length_before_decoding(monkeypatch):
    import binascii

    def no_decode(*a, **kw):
        raise AssertionError("decoded a value whose length was already out of bounds")
    monkeypatch.setattr(binascii, "a2b_base64", no_decode)
    for text in (b64s(bytes(1027)), "0b" + "A" * 5, "0b" + "QUFB" * 2000):
        with pytest.raises(NegotiationError) as e:
            decode_binary("CHAP_R", text)
        assert (e.value.status_class, e.value.status_detail) == INVALID
