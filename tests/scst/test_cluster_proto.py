"""The cluster link's wire format (scst_core/cluster_proto.py): one case
table drives pack and parse; each message is framed whole, one byte at a
time and with trailing bytes, as scst_core.cluster's reader meets it."""
from __future__ import annotations

import pytest

from scst_core.cluster import _next_msg
from scst_core.cluster_proto import (CL_EV_CAPACITY, CL_EV_MODE, CL_EV_PR_STATE, CL_EV_PR_SYNC,
                                     CL_EV_RESET, CL_EV_UA, CLM_ACK,
                                     CLM_DEV_EVENT, CLM_HDR_SIZE, CLM_HELLO, CLM_MAX_PAYLOAD,
                                     ClusterProtocolError, clm_dev_event, pack_ack,
                                     pack_dev_event, pack_hdr, pack_hello, pack_pr_state,
                                     parse_ack, parse_addr, parse_dev_event, parse_hdr,
                                     parse_hello, parse_mode_pages, unpack_pr_state)

CASES = [
    (CLM_HELLO, 0, pack_hello(0, "127.0.0.1:7260"), parse_hello, "127.0.0.1:7260"),
    (CLM_DEV_EVENT, 7, pack_dev_event(7, clm_dev_event(CL_EV_RESET, (6, 0x29, 3), "shared0")),
     parse_dev_event, clm_dev_event(CL_EV_RESET, (6, 0x29, 3), "shared0")),
    (CLM_DEV_EVENT, 2**63, pack_dev_event(2**63, clm_dev_event(CL_EV_CAPACITY, (6, 0x2A, 9),
                                                               "dévice")),
     parse_dev_event, clm_dev_event(CL_EV_CAPACITY, (6, 0x2A, 9), "dévice")),
    (CLM_ACK, 9, pack_ack(9, -19), parse_ack, -19),
    (CLM_DEV_EVENT, 3, pack_dev_event(3, clm_dev_event(CL_EV_PR_STATE, (0, 0, 0), "d0",
                                                       pack_pr_state(4, 5, "uscst-pr 1\n"))),
     parse_dev_event, clm_dev_event(CL_EV_PR_STATE, (0, 0, 0), "d0",
                                    pack_pr_state(4, 5, "uscst-pr 1\n"))),
]


def test_mode_pages_event_carries_whole_pages() -> None:
    pages = bytes((0x0A, 2, 0x08, 0)) + bytes((0x08, 1, 0x04))
    ev = parse_dev_event(pack_dev_event(1, clm_dev_event(
        CL_EV_MODE, (6, 0x2A, 1), "d0", pages))[CLM_HDR_SIZE:])
    assert parse_mode_pages(ev.data) == [(0x0A, bytes((0x0A, 2, 0x08, 0))),
                                         (0x08, bytes((0x08, 1, 0x04)))]


def test_pr_state_data_round_trips() -> None:
    ev = parse_dev_event(pack_dev_event(1, clm_dev_event(
        CL_EV_PR_SYNC, (0, 0, 0), "d0", pack_pr_state(7, 7, "state")))[CLM_HDR_SIZE:])
    assert unpack_pr_state(ev.data) == (7, 7, "state")


def _frame_all(chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
    buf = bytearray()
    out = []
    for c in chunks:
        buf += c
        while (m := _next_msg(buf)) is not None:
            out.append(m)
    return out


@pytest.mark.parametrize("type_,seq,wire,parse,want", CASES)
def test_cluster_message_round_trips_whole_bytewise_and_with_trailing_bytes(
        type_, seq, wire, parse, want) -> None:
    for chunks in ([wire], [wire[i:i + 1] for i in range(len(wire))]):
        [(t, s, payload)] = _frame_all(chunks)
        assert (t, s, parse(payload)) == (type_, seq, want)
    buf = bytearray(wire + pack_ack(1, 0)[:5])
    t, s, payload = _next_msg(buf)
    assert (t, s, parse(payload)) == (type_, seq, want)
    assert bytes(buf) == pack_ack(1, 0)[:5]          # the next message's start stays


@pytest.mark.parametrize("hdr,why", [
    (b"XXXX" + pack_hdr(CLM_ACK, 1, 4)[4:], "bad magic"),
    (pack_hdr(CLM_ACK, 1, 4)[:4] + b"\x02" + pack_hdr(CLM_ACK, 1, 4)[5:], "version 2"),
    (pack_hdr(99, 1, 4), "unknown message type 99"),
    (pack_hdr(CLM_ACK, 1, CLM_MAX_PAYLOAD + 1), "payload of 1048577 bytes"),
    (pack_hdr(CLM_ACK, 1, 4)[:-1], "header must be 20 bytes"),
])
def test_cluster_header_refuses_what_the_protocol_does_not_allow(hdr: bytes, why: str) -> None:
    with pytest.raises(ClusterProtocolError, match=why):
        parse_hdr(hdr)


@pytest.mark.parametrize("payload,why", [
    (b"\x01\x06\x29", "too short"),
    (bytes((9, 6, 0x29, 3, 0, 1)) + b"d", "unknown device event 9"),
    (bytes((CL_EV_UA, 6, 0x29, 3, 0, 5)) + b"d", "names a device of 5 bytes"),
    (bytes((CL_EV_UA, 6, 0x29, 3, 0, 0)), "names a device of 0 bytes"),
    (bytes((CL_EV_UA, 6, 0x29, 3, 0, 1)) + b"\xff", "not UTF-8"),
    (bytes((CL_EV_UA, 6, 0x29, 3, 0, 1)) + b"dx", "unit attention event with 1 bytes of data"),
    (bytes((CL_EV_RESET, 5, 0x29, 3, 0, 1)) + b"d", "sense key 0x5, not UNIT ATTENTION"),
    (bytes((CL_EV_MODE, 6, 0x2A, 1, 0, 1)) + b"d", "mode pages event without a page"),
    (bytes((CL_EV_MODE, 6, 0x2A, 1, 0, 1)) + b"d" + bytes((0x0A, 10, 0)), "runs past the 3"),
    (bytes((CL_EV_PR_STATE, 0, 0, 0, 0, 1)) + b"d" + bytes(15), "state of 15 bytes is too short"),
    (bytes((CL_EV_PR_SYNC, 0, 0, 0, 0, 1)) + b"d" + bytes(16) + b"\xff", "state is not UTF-8"),
])
def test_dev_event_refuses_a_malformed_payload(payload: bytes, why: str) -> None:
    with pytest.raises(ClusterProtocolError, match=why):
        parse_dev_event(payload)


def test_ack_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ClusterProtocolError, match="ACK of 3 bytes"):
        parse_ack(b"\0\0\0")
    assert len(pack_ack(1, 0)) == CLM_HDR_SIZE + 4


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:7260", ("127.0.0.1", 7260)),
    (" [::1]:7260 ", ("::1", 7260)),
    ("node-b.example:1", ("node-b.example", 1)),
    ("127.0.0.1", "bad address"),
    ("::1:7260", "bad address"),
    ("127.0.0.1:0", "a port 1..65535"),
    ("127.0.0.1:http", "a port 1..65535"),
    ("[::1]7260", "bad address"),
])
def test_cluster_address_parses_host_and_port_or_says_why_not(text: str, want) -> None:
    got = parse_addr(text)
    if isinstance(want, tuple):
        assert got == want
    else:
        assert isinstance(got, str) and want in got
