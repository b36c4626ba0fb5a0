"""Tests for iscsi_scst/usr/param.py: text format, key table, negotiation."""
from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from login_keys import LIBISCSI_NORMAL, OPEN_ISCSI_DISCOVERY_OP
from iscsi_scst.usr.param import (
    ISCSI_FULL_FEATURE_PHASE,
    ISCSI_OP_PARMS_NEGOTIATION_STAGE as OP,
    ISCSI_SECURITY_NEGOTIATION_STAGE as SEC,
    KEY_BOOL_AND,
    KEY_BOOL_OR,
    KEY_DECLARATIVE,
    KEY_LIST,
    KEY_NUM_MAX,
    KEY_NUM_MIN,
    USE_ALL,
    USE_FFPO,
    USE_IO,
    USE_LO,
    NegotiationError,
    iscsi_sess_params,
    iscsi_tgt_params,
    key_negotiator,
    negotiate_list,
    negotiate_value,
    pack_text,
    parse_number,
    parse_text,
    session_keys,
    split_text,
)


def status(exc: pytest.ExceptionInfo) -> tuple[int, int]:
    return exc.value.status_class, exc.value.status_detail





# --- text format --------------------------------------------------------------

TEXT_CASES = [
    (b"", []),
    (b"A=1\0", [("A", "1")]),
    (b"A=1\0B=two\0", [("A", "1"), ("B", "two")]),
    (b"A=\0", [("A", "")]),
    (b"A=x=y\0", [("A", "x=y")]),
    (b"TargetAlias=d\xc3\xa9j\xc3\xa0\0", [("TargetAlias", "d\u00e9j\u00e0")]),
    (b"X#org.example.k=v\0", [("X#org.example.k", "v")]),
]


@pytest.mark.parametrize("data,pairs", TEXT_CASES)
def test_parse_text_and_pack_text_agree_on_the_case_table(data, pairs):
    assert parse_text(data) == pairs
    assert pack_text(pairs) == data


@pytest.mark.parametrize("data,pairs", TEXT_CASES)
def test_parse_text_tolerates_trailing_nul_padding(data, pairs):
    assert parse_text(data + b"\0\0\0") == pairs


def test_parse_text_accepts_a_last_pair_without_nul():
    assert parse_text(b"A=1\0B=2") == [("A", "1"), ("B", "2")]


def test_parse_text_takes_memoryview_and_bytearray():
    assert parse_text(memoryview(b"A=1\0")) == [("A", "1")]
    assert parse_text(bytearray(b"A=1\0")) == [("A", "1")]


@pytest.mark.parametrize("data", [
    b"NoEquals\0",
    b"A=1\0garbage\0",
    b"=value\0",
    b"Bad Key=1\0",
    b"Bad/Key=1\0",
    b"K\xff=1\0",
    b"A=\xff\xfe\0",
    b"X#=1\0",
    b"A#b=1\0",
    b"K" * 64 + b"=1\0",
    b"A=" + b"v" * 256 + b"\0",
    b"CHAP_C=" + b"0" * 8193 + b"\0",
])
def test_parse_text_rejects_malformed_pairs_with_02_0b(data):
    with pytest.raises(NegotiationError) as e:
        parse_text(data)
    assert status(e) == (2, 0x0B)


def test_parse_text_limits_are_inclusive():
    assert parse_text(b"K" * 63 + b"=1\0")[0][0] == "K" * 63
    assert parse_text(b"A=" + b"v" * 255 + b"\0")[0][1] == "v" * 255
    assert len(parse_text(b"CHAP_C=" + b"0" * 8192 + b"\0")[0][1]) == 8192
    assert len(parse_text(b"TargetAddress=" + b"a" * 300 + b"\0")[0][1]) == 300


def test_parse_text_rejects_more_than_64k_of_text():
    pair = b"X-k=" + b"v" * 250 + b"\0"
    ok = pair * (65536 // len(pair))
    assert len(parse_text(ok)) == 65536 // len(pair)
    with pytest.raises(NegotiationError) as e:
        parse_text(ok + pair)
    assert status(e) == (2, 0x0B)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parse_text_on_garbage_returns_pairs_or_raises_negotiation_error(data):
    try:
        pairs = parse_text(data)
    except NegotiationError as e:
        assert (e.status_class, e.status_detail) == (2, 0x0B)
    else:
        assert parse_text(pack_text(pairs)) == pairs


_key = st.text("abcXYZ019.-+@_", min_size=1, max_size=63)
_val = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_key, _val), max_size=20))
def test_pack_then_parse_round_trips(pairs):
    assert parse_text(pack_text(pairs)) == pairs


def test_split_text_cuts_at_limit_and_pieces_rejoin():
    data = pack_text([("X-k%d" % i, "v" * 40) for i in range(30)])
    pieces = split_text(data, 512)
    assert all(len(p) == 512 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 512
    assert b"".join(pieces) == data
    assert split_text(b"", 512) == [b""]


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("8192", 8192), ("0x2000", 8192), ("0X10", 16), ("007", 7),
    ("", None), ("-1", None), ("1.5", None), ("0x", None), ("0xg", None),
    ("abc", None), (" 1", None), (str(2 ** 64), None), (str(2 ** 64 - 1), 2 ** 64 - 1),
])
def test_parse_number_takes_decimal_and_hex_constants_only(text, value):
    assert parse_number(text) == value


# --- the key table --------------------------------------------------------------

RFC_KEYS = {
    # name: (type, use, default, min, max, relevant in Discovery)
    "HeaderDigest": (KEY_LIST, USE_IO, "None", None, None, True),
    "DataDigest": (KEY_LIST, USE_IO, "None", None, None, True),
    "MaxConnections": (KEY_NUM_MIN, USE_LO, "1", 1, 65535, False),
    "SendTargets": (KEY_DECLARATIVE, USE_FFPO, None, None, None, True),
    "TargetName": (KEY_DECLARATIVE, USE_IO, None, None, None, True),
    "InitiatorName": (KEY_DECLARATIVE, USE_IO, None, None, None, True),
    "TargetAlias": (KEY_DECLARATIVE, USE_ALL, None, None, None, True),
    "InitiatorAlias": (KEY_DECLARATIVE, USE_ALL, None, None, None, True),
    "TargetAddress": (KEY_DECLARATIVE, USE_ALL, None, None, None, True),
    "TargetPortalGroupTag": (KEY_DECLARATIVE, USE_IO, None, 0, 65535, True),
    "InitialR2T": (KEY_BOOL_OR, USE_LO, "Yes", None, None, False),
    "ImmediateData": (KEY_BOOL_AND, USE_LO, "Yes", None, None, False),
    "MaxRecvDataSegmentLength": (KEY_DECLARATIVE, USE_ALL, "8192", 512, 2 ** 24 - 1, True),
    "MaxBurstLength": (KEY_NUM_MIN, USE_LO, "262144", 512, 2 ** 24 - 1, False),
    "FirstBurstLength": (KEY_NUM_MIN, USE_LO, "65536", 512, 2 ** 24 - 1, False),
    "DefaultTime2Wait": (KEY_NUM_MAX, USE_LO, "2", 0, 3600, True),
    "DefaultTime2Retain": (KEY_NUM_MIN, USE_LO, "20", 0, 3600, True),
    "MaxOutstandingR2T": (KEY_NUM_MIN, USE_LO, "1", 1, 65535, False),
    "DataPDUInOrder": (KEY_BOOL_OR, USE_LO, "Yes", None, None, False),
    "DataSequenceInOrder": (KEY_BOOL_OR, USE_LO, "Yes", None, None, False),
    "ErrorRecoveryLevel": (KEY_NUM_MIN, USE_LO, "0", 0, 2, True),
    "SessionType": (KEY_DECLARATIVE, USE_LO, "Normal", None, None, True),
    "TaskReporting": (KEY_LIST, USE_LO, "RFC3720", None, None, False),
    "iSCSIProtocolLevel": (KEY_NUM_MIN, USE_LO, "1", 0, 31, False),
}


@pytest.mark.parametrize("name", sorted(RFC_KEYS))
def test_key_table_matches_rfc7143_section_13(name):
    type_, use, default, lo, hi, discovery = RFC_KEYS[name]
    key = session_keys[name]
    assert (key.type, key.use, key.default, key.discovery) == (type_, use, default, discovery)
    if lo is not None:
        assert (key.min, key.max) == (lo, hi)


def test_key_table_holds_obsolete_marker_and_security_keys():
    for name in ("OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt"):
        assert session_keys[name].obsolete
    for name in ("AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"):
        assert name in session_keys


def test_sess_params_defaults_are_the_rfc_defaults():
    p = iscsi_sess_params()
    assert (p.initial_r2t, p.immediate_data, p.max_connections) == (True, True, 1)
    assert (p.max_recv_data_length, p.max_xmit_data_length) == (8192, 8192)
    assert (p.max_burst_length, p.first_burst_length) == (262144, 65536)
    assert (p.default_wait_time, p.default_retain_time) == (2, 20)
    assert (p.max_outstanding_r2t, p.error_recovery_level) == (1, 0)
    assert (p.data_pdu_inorder, p.data_sequence_inorder) == (True, True)
    assert (p.header_digest, p.data_digest) == (False, False)
    # and a negotiation with nothing offered gives exactly them (but ours declared)
    q = key_negotiator(tgt=iscsi_tgt_params()).sess_params()
    assert attrs.asdict(q) == attrs.asdict(p)


# --- negotiate_value per key type ---------------------------------------------------

@pytest.mark.parametrize("name,offer,ours,answer", [
    ("ImmediateData", "Yes", True, "Yes"),          # boolean AND
    ("ImmediateData", "Yes", False, "No"),
    ("ImmediateData", "No", True, "No"),
    ("ImmediateData", "yes", True, "Reject"),
    ("InitialR2T", "No", False, "No"),              # boolean OR
    ("InitialR2T", "No", True, "Yes"),
    ("InitialR2T", "Yes", False, "Yes"),
    ("InitialR2T", "", False, "Reject"),
    ("MaxBurstLength", "262144", 1048576, "262144"),    # numeric min
    ("MaxBurstLength", "16777215", 1048576, "1048576"),
    ("MaxBurstLength", "0x100000", 65536, "65536"),
    ("MaxBurstLength", "511", 1048576, "Reject"),
    ("MaxBurstLength", "16777216", 1048576, "Reject"),
    ("MaxBurstLength", "lots", 1048576, "Reject"),
    ("ErrorRecoveryLevel", "2", 0, "0"),
    ("ErrorRecoveryLevel", "3", 0, "Reject"),
    ("DefaultTime2Wait", "0", 2, "2"),              # numeric max
    ("DefaultTime2Wait", "10", 2, "10"),
    ("DefaultTime2Wait", "3601", 2, "Reject"),
    ("HeaderDigest", "None,CRC32C", ("None",), "None"),   # list: first acceptable
    ("HeaderDigest", "CRC32C,None", ("None",), "None"),
    ("HeaderDigest", "CRC32C,None", ("CRC32C", "None"), "CRC32C"),
    ("HeaderDigest", "None,CRC32C", ("CRC32C", "None"), "None"),
    ("HeaderDigest", "None", ("CRC32C",), "Reject"),
    ("HeaderDigest", "MD5,CRC32C", ("CRC32C",), "CRC32C"),
    ("TaskReporting", "FastAbort,RFC3720", ("RFC3720",), "RFC3720"),
])
def test_negotiate_value_applies_the_result_function_of_each_key_type(name, offer, ours, answer):
    assert negotiate_value(session_keys[name], offer, ours) == answer


def test_negotiate_value_refuses_declarative_keys():
    with pytest.raises(ValueError):
        negotiate_value(session_keys["InitiatorName"], "iqn.x", None)


def test_negotiate_list_returns_none_when_nothing_fits():
    assert negotiate_list("KRB5,SRP", ("CHAP", "None")) is None
    assert negotiate_list("CHAP,None", ("None",)) == "None"


# --- key_negotiator -----------------------------------------------------------------

def answers(pairs) -> dict[str, str]:
    d = dict(pairs)
    assert len(d) == len(pairs), f"duplicate key in response {pairs}"
    return d


def test_libiscsi_normal_offer_gets_one_answer_per_negotiated_key():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    out = answers(neg.process(LIBISCSI_NORMAL, OP))
    assert out == {
        "HeaderDigest": "None", "DataDigest": "None", "InitialR2T": "No",
        "ImmediateData": "Yes", "MaxBurstLength": "262144",
        "FirstBurstLength": "262144", "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0", "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "0", "IFMarker": "No", "OFMarker": "No",
        "MaxConnections": "1", "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes", "MaxRecvDataSegmentLength": "262144",
    }
    p = neg.sess_params()
    assert (p.initial_r2t, p.immediate_data) == (False, True)
    assert (p.max_burst_length, p.first_burst_length) == (262144, 262144)
    assert (p.max_recv_data_length, p.max_xmit_data_length) == (262144, 262144)
    assert (p.default_retain_time, p.max_outstanding_r2t) == (0, 1)
    neg.check_required()


def test_discovery_session_answers_irrelevant_for_data_transfer_keys():
    neg = key_negotiator(tgt=iscsi_tgt_params(), discovery=True)
    out = answers(neg.process(LIBISCSI_NORMAL[3:], OP))
    for name in ("InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
                 "MaxOutstandingR2T", "MaxConnections", "DataPDUInOrder",
                 "DataSequenceInOrder"):
        assert out[name] == "Irrelevant", name
    assert out["HeaderDigest"] == "None"
    assert out["ErrorRecoveryLevel"] == "0"
    assert out["DefaultTime2Wait"] == "2"


def test_open_iscsi_discovery_offer_is_answered_and_declares_our_mrdsl():
    neg = key_negotiator(tgt=iscsi_tgt_params(), discovery=True)
    out = answers(neg.process(OPEN_ISCSI_DISCOVERY_OP, OP))
    assert out["MaxRecvDataSegmentLength"] == "262144"
    assert neg.target_offers() == []
    neg.check_required()
    assert neg.sess_params().max_xmit_data_length == 32768


def test_our_mrdsl_is_declared_once_and_only_in_the_operational_stage():
    neg = key_negotiator(tgt=iscsi_tgt_params(max_recv_data_length=65536))
    assert neg.process([("InitiatorName", "iqn.i")], SEC) == []
    assert neg.process([("HeaderDigest", "None")], OP) == [
        ("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "65536")]
    assert neg.process([("DataDigest", "None")], OP) == [("DataDigest", "None")]
    assert neg.sess_params().max_recv_data_length == 65536


def test_undeclared_mrdsl_means_8192_both_ways():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("InitiatorName", "iqn.i")], SEC)
    p = neg.sess_params()
    assert (p.max_recv_data_length, p.max_xmit_data_length) == (8192, 8192)


def test_peer_mrdsl_is_capped_by_our_max_xmit():
    neg = key_negotiator(tgt=iscsi_tgt_params(max_xmit_data_length=65536))
    neg.process([("MaxRecvDataSegmentLength", "16777215")], OP)
    assert neg.sess_params().max_xmit_data_length == 65536


@pytest.mark.parametrize("value", ["511", "16777216", "big", ""])
def test_out_of_range_mrdsl_is_rejected_and_default_kept(value):
    neg = key_negotiator(tgt=iscsi_tgt_params())
    out = neg.process([("MaxRecvDataSegmentLength", value)], OP)
    assert ("MaxRecvDataSegmentLength", "Reject") in out
    assert neg.sess_params().max_xmit_data_length == 8192


def test_key_offered_twice_in_one_request_fails_with_02_0b():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    with pytest.raises(NegotiationError) as e:
        neg.process([("MaxBurstLength", "65536"), ("MaxBurstLength", "65536")], OP)
    assert status(e) == (2, 0x0B)


def test_key_offered_again_in_a_later_request_fails_with_02_0b():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("ImmediateData", "Yes")], OP)
    with pytest.raises(NegotiationError) as e:
        neg.process([("ImmediateData", "No")], OP)
    assert status(e) == (2, 0x0B)


def test_declared_key_repeated_with_another_value_fails_too():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("InitiatorName", "iqn.a")], SEC)
    with pytest.raises(NegotiationError) as e:
        neg.process([("InitiatorName", "iqn.b")], OP)
    assert status(e) == (2, 0x0B)


def test_declared_key_repeated_unchanged_is_accepted_without_answer():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("InitiatorName", "iqn.a")], SEC)
    assert ("InitiatorName", "iqn.a") not in neg.process([("InitiatorName", "iqn.a")], OP)


@pytest.mark.parametrize("name", ["X-com.example.Foo", "X#org.example.bar", "FooBar",
                                  "X-org.open-iscsi.PingTimeout"])
def test_unknown_and_extension_keys_are_not_understood(name):
    neg = key_negotiator(tgt=iscsi_tgt_params())
    assert neg.process([(name, "1")], SEC) == [(name, "NotUnderstood")]


@pytest.mark.parametrize("offer,answer", [
    (("OFMarker", "No"), "No"), (("IFMarker", "Yes"), "No"),
    (("OFMarker", "Maybe"), "Reject"),
    (("OFMarkInt", "2048~8192"), "Reject"), (("IFMarkInt", "2048"), "Reject"),
])
def test_obsolete_marker_keys_are_answered_per_rfc7143_13_26(offer, answer):
    neg = key_negotiator(tgt=iscsi_tgt_params())
    assert dict(neg.process([offer], OP))[offer[0]] == answer


@pytest.mark.parametrize("name", ["TargetAlias", "TargetAddress", "TargetPortalGroupTag"])
def test_target_only_keys_from_the_initiator_fail_with_02_0b(name):
    neg = key_negotiator(tgt=iscsi_tgt_params())
    with pytest.raises(NegotiationError) as e:
        neg.process([(name, "1")], OP)
    assert status(e) == (2, 0x0B)


def test_operational_key_in_security_stage_fails_with_02_0b():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    with pytest.raises(NegotiationError) as e:
        neg.process([("MaxBurstLength", "65536")], SEC)
    assert status(e) == (2, 0x0B)


def test_security_key_in_operational_stage_fails_with_02_0b():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    with pytest.raises(NegotiationError) as e:
        neg.process([("AuthMethod", "None")], OP)
    assert status(e) == (2, 0x0B)


def test_send_targets_during_login_fails_with_02_0b():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    with pytest.raises(NegotiationError) as e:
        neg.process([("SendTargets", "All")], OP)
    assert status(e) == (2, 0x0B)


def test_any_stage_keys_are_accepted_in_the_security_stage():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    assert neg.process([("InitiatorName", "iqn.i"), ("InitiatorAlias", "host"),
                        ("TargetName", "iqn.t"), ("SessionType", "Normal")], SEC) == []
    assert neg.results["InitiatorAlias"] == "host"


def test_first_burst_is_capped_by_max_burst_offered_later_in_the_same_request():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    out = answers(neg.process([("FirstBurstLength", "1048576"),
                               ("MaxBurstLength", "65536")], OP))
    assert out == {"FirstBurstLength": "65536", "MaxBurstLength": "65536",
                   "MaxRecvDataSegmentLength": "262144"}
    assert list(dict(neg.process([], OP))) == []


def test_first_burst_is_capped_by_our_max_burst_when_max_burst_comes_later():
    neg = key_negotiator(tgt=iscsi_tgt_params(max_burst_length=131072,
                                              first_burst_length=262144))
    assert dict(neg.process([("FirstBurstLength", "262144")], OP))["FirstBurstLength"] == "131072"
    assert dict(neg.process([("MaxBurstLength", "262144")], OP))["MaxBurstLength"] == "131072"
    p = neg.sess_params()
    assert p.first_burst_length <= p.max_burst_length == 131072


def test_first_burst_above_a_later_smaller_max_burst_is_clamped_in_sess_params():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("FirstBurstLength", "262144")], OP)
    neg.process([("MaxBurstLength", "16384")], OP)
    p = neg.sess_params()
    assert (p.max_burst_length, p.first_burst_length) == (16384, 16384)


def test_lo_keys_on_a_non_leading_connection_are_irrelevant():
    neg = key_negotiator(tgt=iscsi_tgt_params(), leading=False)
    out = answers(neg.process([("MaxBurstLength", "65536"), ("HeaderDigest", "None"),
                               ("MaxRecvDataSegmentLength", "65536")], OP))
    assert out["MaxBurstLength"] == "Irrelevant"
    assert out["HeaderDigest"] == "None"            # IO: per connection
    assert neg.sess_params().max_xmit_data_length == 65536


def test_full_feature_phase_rejects_login_only_keys_and_takes_mrdsl():
    neg = key_negotiator(tgt=iscsi_tgt_params(), leading=False)
    out = neg.process([("MaxBurstLength", "65536"), ("MaxRecvDataSegmentLength", "16384"),
                       ("X-vendor.k", "1"), ("InitiatorAlias", "h")],
                      ISCSI_FULL_FEATURE_PHASE)
    assert out == [("MaxBurstLength", "Reject"), ("X-vendor.k", "NotUnderstood")]
    assert neg.results["MaxRecvDataSegmentLength"] == "16384"


# --- target offers and required values ------------------------------------------------

def test_default_target_params_need_no_target_offers():
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.process([("InitiatorName", "iqn.i")], SEC)
    assert neg.target_offers() == []


def test_target_offers_keys_whose_rfc_default_breaks_its_limits():
    tgt = iscsi_tgt_params(header_digest=("CRC32C",), data_digest=("CRC32C", "None"),
                           immediate_data=False, max_burst_length=65536,
                           first_burst_length=32768)
    neg = key_negotiator(tgt=tgt)
    offers = neg.target_offers()
    assert offers == [("HeaderDigest", "CRC32C"), ("ImmediateData", "No"),
                      ("MaxBurstLength", "65536"), ("FirstBurstLength", "32768")]
    assert neg.target_offers() == []            # pending now
    neg.process([("HeaderDigest", "CRC32C"), ("ImmediateData", "No"),
                 ("MaxBurstLength", "16384"), ("FirstBurstLength", "16384")], OP)
    assert neg.pending == {}
    neg.check_required()
    p = neg.sess_params()
    assert (p.header_digest, p.data_digest, p.immediate_data) == (True, False, False)
    assert (p.max_burst_length, p.first_burst_length) == (16384, 16384)


def test_target_offers_skip_keys_the_initiator_already_offered():
    neg = key_negotiator(tgt=iscsi_tgt_params(header_digest=("CRC32C",)))
    neg.process([("HeaderDigest", "CRC32C,None")], OP)
    assert neg.target_offers() == []
    neg.check_required()


def test_target_offers_peek_does_not_mark_pending():
    neg = key_negotiator(tgt=iscsi_tgt_params(header_digest=("CRC32C",)))
    assert neg.target_offers(mark=False) == [("HeaderDigest", "CRC32C")]
    assert neg.pending == {}


@pytest.mark.parametrize("name,offered,answer", [
    ("ImmediateData", "No", "Yes"),          # AND: cannot answer Yes to No
    ("MaxBurstLength", "65536", "131072"),   # min: cannot go above the offer
    ("HeaderDigest", "CRC32C", "None"),      # list: must be one of the offer
    ("MaxBurstLength", "65536", "lots"),
])
def test_illegal_answer_to_a_target_offer_fails_with_02_0b(name, offered, answer):
    neg = key_negotiator(tgt=iscsi_tgt_params())
    neg.pending[name] = offered
    with pytest.raises(NegotiationError) as e:
        neg.process([(name, answer)], OP)
    assert status(e) == (2, 0x0B)


def test_rejected_target_offer_leaves_a_value_check_required_refuses():
    neg = key_negotiator(tgt=iscsi_tgt_params(header_digest=("CRC32C",)))
    neg.target_offers()
    neg.process([("HeaderDigest", "Reject")], OP)
    with pytest.raises(NegotiationError) as e:
        neg.check_required()
    assert status(e) == (2, 0x00)


def test_required_digest_refused_by_initiator_fails_check_required():
    neg = key_negotiator(tgt=iscsi_tgt_params(data_digest=("CRC32C",)))
    assert dict(neg.process([("DataDigest", "None")], OP))["DataDigest"] == "Reject"
    with pytest.raises(NegotiationError):
        neg.check_required()
