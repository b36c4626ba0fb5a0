"""Tests for iscsi_scst/usr/iscsid.py: the login state machine and SendTargets.

Fixtures follow what real initiators send: libiscsi (lib/login.c) goes
straight to the operational stage with every key in one PDU when no CHAP
user is set; open-iscsi passes through the security stage with
AuthMethod=None, then offers operational keys.
"""
from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from login_keys import LIBISCSI_NORMAL, OPEN_ISCSI_DISCOVERY_OP
from iscsi_scst.usr.iscsid import (
    STATE_DROP,
    STATE_FREE,
    STATE_FULL,
    STATE_LOGIN,
    STATE_SECURITY,
    STATE_TX_CONT,
    NegotiationError,
    format_target_address,
    login_event,
    login_req,
    login_rsp,
    login_session,
    login_state,
    login_transitions,
    target_portal,
    text_negotiation,
)
from iscsi_scst.usr.param import (
    iscsi_tgt_params,
    pack_text,
    parse_text,
    split_text,
)



INAME = "iqn.2005-03.org.open-iscsi:deadbeef"
TNAME = "iqn.2024-01.org.uscst:disk1"
ISID = bytes.fromhex("400001370000")


@attrs.define
class fake_target:
    tgt_params: iscsi_tgt_params = attrs.Factory(iscsi_tgt_params)
    alias: str = "disk one"
    portal_group_tag: int = 7


def make_session(targets=None, **kw) -> login_session:
    if targets is None:
        targets = {TNAME: fake_target()}
    kw.setdefault("alloc_tsih", lambda: 0x1234)
    return login_session(find_target=targets.get, **kw)


def req(pairs=(), *, csg=1, nsg=3, transit=True, cont=False, data=None, isid=ISID,
        tsih=0, itt=0x10, cid=1, vmax=0, vmin=0) -> login_req:
    if data is None:
        data = pack_text(pairs)
    return login_req(transit=transit, cont=cont, csg=csg, nsg=nsg if transit else 0,
                     version_max=vmax, version_min=vmin, isid=isid, tsih=tsih,
                     itt=itt, cid=cid, cmd_sn=5, exp_stat_sn=0, data=data)


def keys(rsp: login_rsp) -> dict[str, str]:
    pairs = parse_text(rsp.data)
    d = dict(pairs)
    assert len(d) == len(pairs), f"response repeats a key: {pairs}"
    return d


def st_of(rsp: login_rsp) -> tuple[int, int]:
    return rsp.status_class, rsp.status_detail


OPEN_ISCSI_SEC = [("InitiatorName", INAME), ("InitiatorAlias", "host1"),
                  ("TargetName", TNAME), ("SessionType", "Normal"),
                  ("AuthMethod", "None")]
OPEN_ISCSI_OP = [("HeaderDigest", "None"), ("DataDigest", "None"),
                 ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
                 ("IFMarker", "No"), ("OFMarker", "No"), ("ErrorRecoveryLevel", "0"),
                 ("InitialR2T", "No"), ("ImmediateData", "Yes"),
                 ("MaxBurstLength", "16776192"), ("FirstBurstLength", "262144"),
                 ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
                 ("MaxOutstandingR2T", "1"), ("DataPDUInOrder", "Yes"),
                 ("DataSequenceInOrder", "Yes")]
LIBISCSI = [(k, INAME if k == "InitiatorName" else TNAME if k == "TargetName" else v)
            for k, v in LIBISCSI_NORMAL]


# --- whole logins ------------------------------------------------------------

def test_open_iscsi_style_login_through_security_stage_reaches_full_feature():
    s = make_session()
    r1 = s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    assert st_of(r1) == (0, 0)
    assert (r1.transit, r1.cont, r1.csg, r1.nsg, r1.tsih) == (True, False, 0, 1, 0)
    assert keys(r1) == {"TargetPortalGroupTag": "7", "TargetAlias": "disk one",
                        "AuthMethod": "None"}
    assert s.state == STATE_LOGIN and not s.done
    r2 = s.step(req(OPEN_ISCSI_OP, csg=1, nsg=3))
    assert st_of(r2) == (0, 0)
    assert (r2.transit, r2.csg, r2.nsg, r2.tsih) == (True, 1, 3, 0x1234)
    k = keys(r2)
    assert "TargetPortalGroupTag" not in k
    assert k["MaxBurstLength"] == "1048576" and k["FirstBurstLength"] == "262144"
    assert k["MaxRecvDataSegmentLength"] == "262144"
    assert s.done and not s.failed
    assert (s.initiator_name, s.initiator_alias, s.target_name, s.session_type) == (
        INAME, "host1", TNAME, "Normal")
    assert s.isid == ISID and s.tsih == 0 and s.new_tsih == 0x1234
    p = s.params
    assert (p.initial_r2t, p.immediate_data, p.max_burst_length) == (False, True, 1048576)
    assert (p.max_recv_data_length, p.max_xmit_data_length) == (262144, 262144)
    assert r2.itt == 0x10 and r2.isid == ISID
    assert (r2.version_max, r2.version_active) == (0, 0)


def test_libiscsi_style_login_straight_to_operational_stage_takes_one_exchange():
    s = make_session()
    r = s.step(req(LIBISCSI, csg=1, nsg=3))
    assert st_of(r) == (0, 0)
    assert (r.transit, r.nsg, r.tsih) == (True, 3, 0x1234)
    k = keys(r)
    assert k["TargetPortalGroupTag"] == "7"
    assert k["HeaderDigest"] == "None" and k["InitialR2T"] == "No"
    assert s.done and s.auth_method == "None"
    assert s.params.first_burst_length == 262144


def test_libiscsi_discovery_login_answers_irrelevant_and_sends_no_tpgt():
    s = make_session()
    pairs = [(k, v) for k, v in LIBISCSI if k != "TargetName"]
    pairs = [(k, "Discovery" if k == "SessionType" else v) for k, v in pairs]
    r = s.step(req(pairs))
    assert st_of(r) == (0, 0) and r.transit and s.done
    k = keys(r)
    assert "TargetPortalGroupTag" not in k
    assert k["MaxBurstLength"] == "Irrelevant" and k["InitialR2T"] == "Irrelevant"
    assert s.session_type == "Discovery" and s.target is None


def test_open_iscsi_discovery_login_two_stages():
    s = make_session()
    r1 = s.step(req([("InitiatorName", INAME), ("SessionType", "Discovery"),
                     ("AuthMethod", "None")], csg=0, nsg=1))
    assert keys(r1) == {"AuthMethod": "None"} and r1.transit
    r2 = s.step(req(OPEN_ISCSI_DISCOVERY_OP))
    assert st_of(r2) == (0, 0) and s.done
    assert s.params.max_xmit_data_length == 32768


def test_security_stage_straight_to_full_feature_keeps_8192_for_our_mrdsl():
    s = make_session()
    r = s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=3))
    assert (r.transit, r.nsg, r.tsih) == (True, 3, 0x1234)
    assert s.done
    assert s.params.max_recv_data_length == 8192


def test_initiator_may_stay_in_a_stage_before_transit():
    s = make_session()
    r1 = s.step(req(OPEN_ISCSI_SEC, csg=0, transit=False))
    assert not r1.transit and s.state == STATE_SECURITY
    r2 = s.step(req([], csg=0, nsg=1))
    assert r2.transit and r2.nsg == 1 and keys(r2) == {}
    r3 = s.step(req(OPEN_ISCSI_OP[:5], transit=False))
    assert not r3.transit and keys(r3)["MaxRecvDataSegmentLength"] == "262144"
    r4 = s.step(req(OPEN_ISCSI_OP[5:]))
    assert r4.transit and s.done
    assert "MaxRecvDataSegmentLength" not in keys(r4)      # declared once


def test_new_session_responses_carry_tsih_zero_until_the_final_one():
    s = make_session()
    assert s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1)).tsih == 0
    assert s.step(req(OPEN_ISCSI_OP)).tsih == 0x1234


# --- existing sessions (TSIH != 0) --------------------------------------------

def test_tsih_of_unknown_session_fails_with_02_0a():
    s = make_session(find_session=lambda isid, tsih, name: None)
    r = s.step(req(LIBISCSI, tsih=9))
    assert st_of(r) == (2, 0x0A) and s.failed


def test_connection_for_an_existing_session_keeps_its_tsih_and_lo_keys_are_irrelevant():
    asked = []
    sess = object()

    def find_session(isid, tsih, name):
        asked.append((isid, tsih, name))
        return sess

    s = make_session(find_session=find_session, alloc_tsih=lambda: pytest.fail("no new TSIH"))
    r = s.step(req(LIBISCSI, tsih=9))
    assert st_of(r) == (0, 0) and r.tsih == 9 and s.done
    assert asked == [(ISID, 9, INAME)] and s.session is sess
    assert keys(r)["MaxBurstLength"] == "Irrelevant"
    assert keys(r)["HeaderDigest"] == "None"


# --- status class/detail for each failure -------------------------------------------

def test_version_min_above_zero_fails_with_02_05():
    s = make_session()
    r = s.step(req(LIBISCSI, vmax=2, vmin=1))
    assert st_of(r) == (2, 0x05) and s.failed
    assert not r.transit and r.data == b""


def test_version_range_including_zero_is_accepted():
    s = make_session()
    assert st_of(s.step(req(LIBISCSI, vmax=3, vmin=0))) == (0, 0)


def test_missing_initiator_name_fails_with_02_07():
    s = make_session()
    r = s.step(req([(k, v) for k, v in LIBISCSI if k != "InitiatorName"]))
    assert st_of(r) == (2, 0x07)


def test_missing_target_name_in_normal_session_fails_with_02_07():
    s = make_session()
    r = s.step(req([(k, v) for k, v in OPEN_ISCSI_SEC if k != "TargetName"], csg=0, nsg=1))
    assert st_of(r) == (2, 0x07)


def test_default_session_type_is_normal_so_target_name_is_required():
    s = make_session()
    r = s.step(req([("InitiatorName", INAME), ("AuthMethod", "None")], csg=0, nsg=1))
    assert st_of(r) == (2, 0x07)


def test_unknown_target_fails_with_02_03():
    s = make_session()
    r = s.step(req([(k, "iqn.nope" if k == "TargetName" else v) for k, v in LIBISCSI]))
    assert st_of(r) == (2, 0x03) and s.failed


@pytest.mark.parametrize("stype", ["Bogus", "discovery", ""])
def test_unknown_session_type_fails_with_02_09(stype):
    s = make_session()
    r = s.step(req([("InitiatorName", INAME), ("SessionType", stype)], csg=0, nsg=1))
    assert st_of(r) == (2, 0x09)


def test_discovery_can_be_refused_with_02_09():
    s = make_session(allow_discovery=False)
    r = s.step(req([("InitiatorName", INAME), ("SessionType", "Discovery")], csg=0, nsg=1))
    assert st_of(r) == (2, 0x09)


def test_duplicate_key_in_login_fails_with_02_0b():
    s = make_session()
    r = s.step(req(LIBISCSI + [("MaxBurstLength", "65536")]))
    assert st_of(r) == (2, 0x0B)


def test_declaration_repeated_with_another_value_in_a_later_request_fails_with_02_0b():
    s = make_session()
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    r = s.step(req([("InitiatorName", INAME + ".other")] + OPEN_ISCSI_OP))
    assert st_of(r) == (2, 0x0B)


def test_declaration_repeated_unchanged_in_a_later_request_is_accepted():
    # libiscsi sends InitiatorName/TargetName/SessionType again after CHAP.
    s = make_session()
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    r = s.step(req([("InitiatorName", INAME)] + OPEN_ISCSI_OP))
    assert st_of(r) == (0, 0) and not s.failed


def test_garbage_text_fails_with_02_0b():
    s = make_session()
    r = s.step(req(data=b"InitiatorName=" + INAME.encode() + b"\0garbage\0"))
    assert st_of(r) == (2, 0x0B) and s.failed


def test_operational_key_in_security_stage_fails_with_02_0b():
    s = make_session()
    r = s.step(req(OPEN_ISCSI_SEC + [("MaxBurstLength", "65536")], csg=0, nsg=1))
    assert st_of(r) == (2, 0x0B)


def test_going_back_to_security_stage_fails_with_02_0b():
    s = make_session()
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    r = s.step(req([], csg=0, nsg=1))
    assert st_of(r) == (2, 0x0B)


def test_entering_operational_stage_without_target_agreement_fails_with_02_0b():
    s = make_session()
    r1 = s.step(req(OPEN_ISCSI_SEC, csg=0, transit=False))
    assert not r1.transit
    r2 = s.step(req(OPEN_ISCSI_OP))
    assert st_of(r2) == (2, 0x0B)


@pytest.mark.parametrize("csg,nsg", [(0, 0), (0, 2), (1, 1), (1, 0), (1, 2)])
def test_transit_to_an_invalid_next_stage_fails_with_02_0b(csg, nsg):
    s = make_session()
    r = s.step(req(OPEN_ISCSI_SEC if csg == 0 else LIBISCSI, csg=csg, nsg=nsg))
    assert st_of(r) == (2, 0x0B)


@pytest.mark.parametrize("csg", [2, 3])
def test_current_stage_2_or_3_fails_with_02_0b(csg):
    s = make_session()
    r = s.step(req(LIBISCSI, csg=csg, transit=False))
    assert st_of(r) == (2, 0x0B)


def test_transit_with_continue_fails_with_02_0b():
    s = make_session()
    r = s.step(req(LIBISCSI, cont=True))
    assert st_of(r) == (2, 0x0B)


@pytest.mark.parametrize("field,value", [("isid", bytes(6)), ("itt", 0x11), ("cid", 2),
                                         ("tsih", 3), ("vmax", 1)])
def test_header_field_changing_between_requests_fails_with_02_00(field, value):
    s = make_session(find_session=lambda *a: object())
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    r = s.step(req(OPEN_ISCSI_OP, **{field: value}))
    assert st_of(r) == (2, 0x00) and s.failed


def test_login_request_after_full_feature_fails_with_02_0b():
    s = make_session()
    s.step(req(LIBISCSI))
    assert s.done
    r = s.step(req([]))
    assert st_of(r) == (2, 0x0B) and s.failed


def test_failed_login_keeps_answering_with_an_error():
    s = make_session()
    s.step(req([]))
    assert s.failed and st_of(s.step(req(LIBISCSI))) == (2, 0x0B)
    assert s.error is not None


def test_isid_of_wrong_length_is_a_caller_bug():
    s = make_session()
    with pytest.raises(ValueError):
        s.step(req(LIBISCSI, isid=b"\0" * 5))


# --- C bit: text over several requests -----------------------------------------

@pytest.mark.parametrize("cut", [1, 17, 64])
def test_request_text_over_several_pdus_is_collected_with_empty_answers(cut):
    data = pack_text(LIBISCSI)
    pieces = [data[i:i + cut] for i in range(0, len(data), cut)]
    whole = make_session().step(req(LIBISCSI))
    s = make_session()
    for p in pieces[:-1]:
        r = s.step(req(data=p, cont=True, transit=False))
        assert st_of(r) == (0, 0)
        assert (r.transit, r.cont, r.data, r.csg, r.nsg) == (False, False, b"", 1, 0)
        assert s.state == STATE_FREE
    r = s.step(req(data=pieces[-1]))
    assert keys(r) == keys(whole) and r.transit and s.done


def test_continued_text_must_stay_in_one_stage():
    s = make_session()
    data = pack_text(OPEN_ISCSI_SEC)
    s.step(req(data=data[:10], csg=0, cont=True, transit=False))
    r = s.step(req(data=data[10:], csg=1))
    assert st_of(r) == (2, 0x0B)


def test_continued_text_in_the_wrong_stage_for_the_state_fails():
    s = make_session()
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    r = s.step(req(data=b"A=1", csg=0, cont=True, transit=False))
    assert st_of(r) == (2, 0x0B)


def test_continued_text_beyond_64k_fails_with_02_0b():
    s = make_session()
    chunk = b"X-k=" + b"v" * 8000 + b"\0"
    for _ in range(8):
        assert st_of(s.step(req(data=chunk, cont=True, transit=False))) == (0, 0)
    r = s.step(req(data=chunk, cont=True, transit=False))
    assert st_of(r) == (2, 0x0B)


def test_tpgt_goes_in_the_response_to_the_first_request_with_c_clear():
    s = make_session()
    data = pack_text(OPEN_ISCSI_SEC)
    r1 = s.step(req(data=data[:20], csg=0, cont=True, transit=False))
    assert r1.data == b""
    r2 = s.step(req(data=data[20:], csg=0, nsg=1))
    assert keys(r2)["TargetPortalGroupTag"] == "7"


# --- C bit: response over several PDUs ----------------------------------------------

def test_response_longer_than_initiator_mrdsl_is_sent_in_pieces():
    s = make_session()
    extra = [(f"X-com.example.key{i:02d}", "1") for i in range(40)]
    offer = [(k, "512" if k == "MaxRecvDataSegmentLength" else v) for k, v in LIBISCSI]
    r = s.step(req(offer + extra))
    got = [r]
    assert (r.cont, r.transit, len(r.data)) == (True, False, 512)
    assert s.state == STATE_TX_CONT and not s.done
    for _ in range(10):
        if not r.cont:
            break
        r = s.step(req([], transit=False))
        assert st_of(r) == (0, 0) and len(r.data) <= 512
        got.append(r)
    assert len(got) >= 3
    assert all(not g.transit for g in got[:-1]) and got[-1].transit and got[-1].nsg == 3
    assert all(g.tsih == 0 for g in got[:-1]) and got[-1].tsih == 0x1234
    assert s.done
    k = dict(parse_text(b"".join(g.data for g in got)))
    assert k["X-com.example.key39"] == "NotUnderstood"
    assert k["TargetPortalGroupTag"] == "7" and k["MaxRecvDataSegmentLength"] == "262144"


def test_pull_request_with_data_while_response_pending_fails_with_02_0b():
    s = make_session()
    offer = [(k, "512" if k == "MaxRecvDataSegmentLength" else v) for k, v in LIBISCSI]
    r = s.step(req(offer + [(f"X-k{i}", "1") for i in range(40)]))
    assert r.cont
    r = s.step(req([("X-late", "1")], transit=False))
    assert st_of(r) == (2, 0x0B)


def test_pull_request_with_c_set_while_response_pending_fails_with_02_0b():
    s = make_session()
    offer = [(k, "512" if k == "MaxRecvDataSegmentLength" else v) for k, v in LIBISCSI]
    assert s.step(req(offer + [(f"X-k{i}", "1") for i in range(40)])).cont
    r = s.step(req(data=b"", cont=True, transit=False))
    assert st_of(r) == (2, 0x0B)


def test_security_stage_response_in_pieces_applies_transit_at_the_end():
    s = make_session()
    # Without a declared MRDSL the login limit is 8192: make a larger answer.
    extra = [(f"X-com.example.k{i:03d}", "1") for i in range(400)]
    r = s.step(req(OPEN_ISCSI_SEC + extra, csg=0, nsg=1))
    assert r.cont and len(r.data) == 8192 and s.state == STATE_TX_CONT
    r = s.step(req([], csg=0, transit=False))
    assert not r.cont and r.transit and r.nsg == 1 and s.state == STATE_LOGIN


# --- authentication hook -------------------------------------------------------------

@attrs.define
class toy_authenticator:
    """Stands in for CHAP: a challenge, and a response that must echo it."""
    allowed: tuple = ("CHAP",)
    log: list = attrs.Factory(list)

    def methods(self, sess):
        self.log.append(("methods", sess.initiator_name, sess.target_name))
        return self.allowed

    def offer(self, sess, keys):
        d = dict(keys)
        self.log.append(("offer", sess.auth_method, sorted(d)))
        if "CHAP_A" in d:
            return [("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xabcd")], False
        if d.get("CHAP_R") == "0xabcd" and d.get("CHAP_N") == "user":
            return [], True
        raise NegotiationError(2, 0x01, "bad response")


def test_authenticator_exchange_holds_transit_until_it_completes():
    auth = toy_authenticator()
    s = make_session(authenticator=auth)
    sec = [(k, "CHAP,None" if k == "AuthMethod" else v) for k, v in OPEN_ISCSI_SEC]
    r1 = s.step(req(sec, csg=0, nsg=1))
    assert keys(r1)["AuthMethod"] == "CHAP" and not r1.transit
    r2 = s.step(req([("CHAP_A", "5")], csg=0, transit=False))
    assert keys(r2)["CHAP_C"] == "0xabcd" and not r2.transit
    r3 = s.step(req([("CHAP_N", "user"), ("CHAP_R", "0xabcd")], csg=0, nsg=1))
    assert st_of(r3) == (0, 0) and r3.transit and r3.nsg == 1
    assert s.auth_done and s.state == STATE_LOGIN
    assert auth.log[0] == ("methods", INAME, TNAME)
    assert st_of(s.step(req(OPEN_ISCSI_OP))) == (0, 0) and s.done


def test_authenticator_failure_gives_02_01():
    s = make_session(authenticator=toy_authenticator())
    sec = [(k, "CHAP" if k == "AuthMethod" else v) for k, v in OPEN_ISCSI_SEC]
    s.step(req(sec, csg=0, nsg=1))
    s.step(req([("CHAP_A", "5")], csg=0, transit=False))
    r = s.step(req([("CHAP_N", "user"), ("CHAP_R", "0x0000")], csg=0, nsg=1))
    assert st_of(r) == (2, 0x01) and s.failed


def test_auth_method_none_when_target_requires_auth_fails_with_02_01():
    s = make_session(authenticator=toy_authenticator())
    r = s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    assert st_of(r) == (2, 0x01)


def test_skipping_security_stage_when_target_requires_auth_fails_with_02_01():
    s = make_session(authenticator=toy_authenticator())
    r = s.step(req(LIBISCSI))
    assert st_of(r) == (2, 0x01)


def test_transit_without_auth_method_when_auth_required_fails_with_02_01():
    s = make_session(authenticator=toy_authenticator())
    sec = [(k, v) for k, v in OPEN_ISCSI_SEC if k != "AuthMethod"]
    r = s.step(req(sec, csg=0, nsg=1))
    assert st_of(r) == (2, 0x01)


def test_transit_without_auth_method_is_fine_when_none_would_do():
    s = make_session()
    sec = [(k, v) for k, v in OPEN_ISCSI_SEC if k != "AuthMethod"]
    r = s.step(req(sec, csg=0, nsg=1))
    assert st_of(r) == (0, 0) and r.transit and s.auth_method == "None"


def test_chap_only_offer_without_authenticator_fails_with_02_01():
    s = make_session()
    sec = [(k, "CHAP" if k == "AuthMethod" else v) for k, v in OPEN_ISCSI_SEC]
    r = s.step(req(sec, csg=0, nsg=1))
    assert st_of(r) == (2, 0x01)


def test_libiscsi_chap_none_offer_without_authenticator_picks_none():
    s = make_session()
    sec = [(k, "CHAP,None" if k == "AuthMethod" else v) for k, v in OPEN_ISCSI_SEC]
    r = s.step(req(sec, csg=0, nsg=1))
    assert keys(r)["AuthMethod"] == "None" and r.transit


def test_chap_keys_without_an_auth_exchange_fail_with_02_0b():
    s = make_session()
    r = s.step(req(OPEN_ISCSI_SEC + [("CHAP_A", "5")], csg=0, nsg=1))
    assert st_of(r) == (2, 0x0B)


def test_auth_method_offered_twice_fails_with_02_0b():
    s = make_session(authenticator=toy_authenticator(allowed=("CHAP", "None")))
    sec = [(k, "CHAP" if k == "AuthMethod" else v) for k, v in OPEN_ISCSI_SEC]
    s.step(req(sec, csg=0, transit=False))
    r = s.step(req([("AuthMethod", "CHAP")], csg=0, transit=False))
    assert st_of(r) == (2, 0x0B)


def test_security_key_in_operational_stage_fails_with_02_0b():
    s = make_session()
    r = s.step(req(LIBISCSI + [("AuthMethod", "None")]))
    assert st_of(r) == (2, 0x0B)


# --- target-required values ---------------------------------------------------------

def test_required_crc32c_refused_by_initiator_fails_the_login():
    s = make_session({TNAME: fake_target(tgt_params=iscsi_tgt_params(header_digest=("CRC32C",)))})
    r = s.step(req(LIBISCSI))       # offers HeaderDigest=None,CRC32C -> CRC32C
    assert st_of(r) == (0, 0) and s.params.header_digest
    s = make_session({TNAME: fake_target(tgt_params=iscsi_tgt_params(data_digest=("CRC32C",)))})
    r = s.step(req(LIBISCSI))       # offers DataDigest=None only
    assert st_of(r) == (2, 0x00) and s.failed


def test_target_proposes_required_digest_the_initiator_did_not_offer():
    s = make_session({TNAME: fake_target(tgt_params=iscsi_tgt_params(header_digest=("CRC32C",)))})
    s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=1))
    op = [(k, v) for k, v in OPEN_ISCSI_OP if k != "HeaderDigest"]
    r = s.step(req(op))
    assert not r.transit and keys(r)["HeaderDigest"] == "CRC32C"
    r = s.step(req([("HeaderDigest", "CRC32C")]))
    assert st_of(r) == (0, 0) and r.transit and s.done
    assert s.params.header_digest


def test_security_to_full_feature_goes_through_operational_when_target_must_propose():
    s = make_session({TNAME: fake_target(tgt_params=iscsi_tgt_params(header_digest=("CRC32C",)))})
    r = s.step(req(OPEN_ISCSI_SEC, csg=0, nsg=3))
    assert r.transit and r.nsg == 1 and s.state == STATE_LOGIN


# --- the table ----------------------------------------------------------------------

def test_every_transition_names_an_existing_action():
    for tr in login_transitions.values():
        assert callable(getattr(login_session, "_" + tr.action)), tr.action
        assert tr.next_states <= set(login_state)


def test_every_live_state_has_a_way_forward_and_full_and_drop_have_none():
    froms = {st for st, _ in login_transitions}
    assert froms == {STATE_FREE, STATE_SECURITY, STATE_LOGIN, STATE_TX_CONT}
    reach = set().union(*(tr.next_states for tr in login_transitions.values()))
    assert STATE_FULL in reach and STATE_DROP not in froms
    assert all(isinstance(ev, login_event) for _, ev in login_transitions)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3),
                          st.integers(0, 3), st.binary(max_size=80)), max_size=6))
def test_step_never_raises_on_arbitrary_request_sequences(reqs):
    s = make_session()
    for transit, cont, csg, nsg, data in reqs:
        r = s.step(login_req(transit=transit, cont=cont, csg=csg, nsg=nsg,
                             version_max=0, version_min=0, isid=ISID, tsih=0, itt=1,
                             cid=0, cmd_sn=0, exp_stat_sn=0, data=data))
        assert isinstance(r, login_rsp)
        assert r.status_class in (0, 2)
        assert (r.status_class != 0) == s.failed


# --- SendTargets ---------------------------------------------------------------------

TARGETS = [
    (TNAME, [target_portal("192.0.2.1", 3260, 7), target_portal("::1", 3261, 7)]),
    ("iqn.2024-01.org.uscst:disk2", [target_portal("192.0.2.1", 3260, 1)]),
]


def test_target_address_puts_ipv6_in_brackets():
    assert format_target_address(target_portal("::1", 3260, 1)) == "[::1]:3260,1"
    assert format_target_address(target_portal("10.0.0.1", 860, 2)) == "10.0.0.1:860,2"


def test_send_targets_all_in_discovery_lists_every_target_and_portal():
    res = text_negotiation(b"SendTargets=All\0", session_type="Discovery",
                           target_name=None, list_targets=lambda: TARGETS)
    assert parse_text(res.data) == [
        ("TargetName", TNAME), ("TargetAddress", "192.0.2.1:3260,7"),
        ("TargetAddress", "[::1]:3261,7"),
        ("TargetName", "iqn.2024-01.org.uscst:disk2"),
        ("TargetAddress", "192.0.2.1:3260,1")]
    assert res.max_xmit_data_length is None


def test_send_targets_named_lists_only_that_target():
    res = text_negotiation(b"SendTargets=iqn.2024-01.org.uscst:disk2\0",
                           session_type="Discovery", target_name=None,
                           list_targets=lambda: TARGETS)
    assert parse_text(res.data) == [("TargetName", "iqn.2024-01.org.uscst:disk2"),
                                    ("TargetAddress", "192.0.2.1:3260,1")]
    res = text_negotiation(b"SendTargets=iqn.none\0", session_type="Discovery",
                           target_name=None, list_targets=lambda: TARGETS)
    assert res.data == b""


def test_send_targets_in_normal_session_reports_only_its_own_target():
    kw = dict(session_type="Normal", target_name=TNAME, list_targets=lambda: TARGETS)
    assert parse_text(text_negotiation(b"SendTargets=All\0", **kw).data) == [
        ("SendTargets", "Reject")]
    own = parse_text(text_negotiation(b"SendTargets=\0", **kw).data)
    assert own[0] == ("TargetName", TNAME) and len(own) == 3
    assert text_negotiation(b"SendTargets=iqn.2024-01.org.uscst:disk2\0", **kw).data == b""


def test_send_targets_twice_fails_with_02_0b():
    with pytest.raises(NegotiationError) as e:
        text_negotiation(b"SendTargets=All\0SendTargets=All\0", session_type="Discovery",
                         target_name=None, list_targets=lambda: TARGETS)
    assert (e.value.status_class, e.value.status_detail) == (2, 0x0B)


def test_text_request_redeclaring_mrdsl_is_reported_and_others_answered():
    res = text_negotiation(b"MaxRecvDataSegmentLength=4096\0X-foo.bar=1\0MaxBurstLength=512\0",
                           session_type="Normal", target_name=TNAME,
                           list_targets=lambda: TARGETS)
    assert res.max_xmit_data_length == 4096
    assert parse_text(res.data) == [("X-foo.bar", "NotUnderstood"),
                                    ("MaxBurstLength", "Reject")]


def test_large_send_targets_answer_splits_into_text_response_segments():
    many = [(f"iqn.2024-01.org.uscst:t{i:04d}", [target_portal("192.0.2.1", 3260, 1)])
            for i in range(200)]
    res = text_negotiation(b"SendTargets=All\0", session_type="Discovery",
                           target_name=None, list_targets=lambda: many)
    pieces = split_text(res.data, 8192)
    assert len(pieces) > 1 and b"".join(pieces) == res.data
    assert len(parse_text(res.data)) == 400
