"""vdisk/nbd_proto.py (the NBD wire format: handshake, requests, simple
replies, structured reply chunks) and vdisk/nbd.py's URI parser:
each case against the bytes doc/proto.md gives, and each malformed input
refused with a reason."""
from __future__ import annotations

import struct

import pytest

from kshim.net import AF_INET, AF_INET6, AF_UNIX
from vdisk.nbd import nbd_parse_uri
from vdisk.nbd_proto import (NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_BLOCK_SIZE,
                             NBD_INFO_EXPORT, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT,
                             NBD_REP_FLAG_ERROR, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                             NBD_STATE_HOLE, NBDProtocolError, client_flags, nbd_export_info,
                             nbd_opt_reply_error, pack_opt_go, pack_opt_set_meta_context,
                             pack_request, parse_block_status, parse_chunk_error, parse_hello,
                             parse_info, parse_meta_context, parse_opt_reply_hdr,
                             parse_simple_reply, parse_structured_reply, reply_is_structured)


def test_parse_hello_returns_the_handshake_flags_of_a_fixed_newstyle_server() -> None:
    assert parse_hello(b"NBDMAGICIHAVEOPT\x00\x03") == NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES


@pytest.mark.parametrize("hello, reason", [
    (b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53\x00\x03", "oldstyle"),
    (b"HTTP/1.1 400 Bad R", "not an NBD server"),
    (b"NBDMAGICIHAVEOPT\x00\x00", "fixed newstyle"),
    (b"NBDMAGICIHAVEOPT\x00", "18 bytes"),
])
def test_parse_hello_refuses_what_is_not_a_fixed_newstyle_server(hello: bytes,
                                                                 reason: str) -> None:
    with pytest.raises(NBDProtocolError, match=reason):
        parse_hello(hello)


def test_client_flags_echo_no_zeroes_only_when_offered() -> None:
    assert client_flags(NBD_FLAG_FIXED_NEWSTYLE) == b"\x00\x00\x00\x01"
    assert client_flags(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES) == b"\x00\x00\x00\x03"


def test_opt_go_names_the_export_and_asks_for_block_sizes() -> None:
    b = pack_opt_go("disk")
    assert b[:8] == b"IHAVEOPT"
    assert struct.unpack(">II", b[8:16]) == (NBD_OPT_GO, 4 + 4 + 2 + 2)
    assert b[16:] == b"\x00\x00\x00\x04disk\x00\x01\x00\x03"
    with pytest.raises(NBDProtocolError, match="at most 4096"):
        pack_opt_go("x" * 4097)


def _rep_hdr(option: int, rtype: int, length: int, magic: int = 0x3E889045565A9) -> bytes:
    return struct.pack(">QIII", magic, option, rtype, length)


def test_option_reply_header_is_checked_against_magic_and_option() -> None:
    assert parse_opt_reply_hdr(_rep_hdr(NBD_OPT_GO, 3, 12), NBD_OPT_GO) == (3, 12)
    with pytest.raises(NBDProtocolError, match="magic"):
        parse_opt_reply_hdr(_rep_hdr(NBD_OPT_GO, 3, 12, magic=1), NBD_OPT_GO)
    with pytest.raises(NBDProtocolError, match="expected 7"):
        parse_opt_reply_hdr(_rep_hdr(1, 3, 12), NBD_OPT_GO)
    with pytest.raises(NBDProtocolError, match="too long"):
        parse_opt_reply_hdr(_rep_hdr(NBD_OPT_GO, 3, 1 << 20), NBD_OPT_GO)


def test_info_replies_fill_size_flags_and_block_sizes() -> None:
    info = nbd_export_info()
    parse_info(struct.pack(">HQH", NBD_INFO_EXPORT, 1 << 30, 0x1ED), info)
    parse_info(struct.pack(">HIII", NBD_INFO_BLOCK_SIZE, 512, 4096, 1 << 20), info)
    parse_info(struct.pack(">HI", 2, 0), info)          # NBD_INFO_DESCRIPTION: ignored
    assert (info.size, info.flags) == (1 << 30, 0x1ED)
    assert (info.min_block, info.pref_block, info.max_payload) == (512, 4096, 1 << 20)


@pytest.mark.parametrize("mn, pref, mx", [(0, 4096, 1 << 20), (3, 4096, 1 << 20),
                                          (4096, 512, 1 << 20), (512, 4096, 1000)])
def test_inconsistent_block_sizes_are_refused(mn: int, pref: int, mx: int) -> None:
    with pytest.raises(NBDProtocolError, match="inconsistent block sizes"):
        parse_info(struct.pack(">HIII", NBD_INFO_BLOCK_SIZE, mn, pref, mx), nbd_export_info())


def test_error_replies_are_named_with_the_servers_message() -> None:
    assert nbd_opt_reply_error(NBD_REP_FLAG_ERROR | 6, b"no export 'x'") == \
        "NBD_REP_ERR_UNKNOWN (no such export): no export 'x'"
    assert "TLS" in nbd_opt_reply_error(NBD_REP_FLAG_ERROR | 5, b"")


def test_request_and_simple_reply_match_the_protocols_layout() -> None:
    buf = bytearray(28)
    pack_request(buf, flags=1, type_=1, cookie=0x1122334455667788, offset=4096, length=512)
    assert bytes(buf) == bytes.fromhex("25609513" "0001" "0001" "1122334455667788"
                                       "0000000000001000" "00000200")
    assert parse_simple_reply(bytes.fromhex("67446698" "00000005" "0000000000000007")) == (5, 7)
    with pytest.raises(NBDProtocolError, match="bad reply magic"):
        parse_simple_reply(bytes(16))


@pytest.mark.parametrize("uri, want", [
    ("nbd://127.0.0.1:10809/export", (AF_INET, ("127.0.0.1", 10809), "export")),
    ("nbd://127.0.0.1/", (AF_INET, ("127.0.0.1", 10809), "")),
    ("nbd://[::1]:7000/a%20b", (AF_INET6, ("::1", 7000), "a b")),
    ("nbd+unix:///ex?socket=/run/nbd.sock", (AF_UNIX, "/run/nbd.sock", "ex")),
])
def test_nbd_uris_give_family_address_and_export(uri: str, want: tuple) -> None:
    assert nbd_parse_uri(uri) == want


@pytest.mark.parametrize("uri, reason", [
    ("nbds://127.0.0.1/x", "TLS"),
    ("file:///tmp/x", "not nbd"),
    ("nbd:///x", "needs a host"),
    ("nbd://127.0.0.1:70000/x", "bad port"),
    ("nbd://[::1/x", "bad host"),
    ("nbd://h/%zz", "percent-encoding"),
    ("nbd://127.0.0.1/x?socket=/a", "unexpected query"),
    ("nbd+unix:///x", "exactly one ?socket=PATH"),
    ("nbd+unix://host/x?socket=/a", "takes no host"),
    ("nbd+unix:///x?socket=/a&socket=/b", "exactly one"),
])
def test_bad_nbd_uris_are_refused_with_a_reason(uri: str, reason: str) -> None:
    r = nbd_parse_uri(uri)
    assert isinstance(r, str) and reason in r


def test_structured_chunks_are_told_from_simple_replies_and_parsed() -> None:
    simple = bytes.fromhex("67446698" "00000000" "0000000000000009")
    chunk = bytes.fromhex("668e33ef" "0001" "0001" "0000000000000009" "00000208")
    assert reply_is_structured(simple, True) is False
    assert reply_is_structured(chunk[:16], True) is True
    with pytest.raises(NBDProtocolError, match="not negotiated"):
        reply_is_structured(chunk[:16], False)
    with pytest.raises(NBDProtocolError, match="bad reply magic"):
        reply_is_structured(bytes(16), True)
    assert parse_structured_reply(chunk) == (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 9,
                                             0x208)


def test_error_chunks_give_errno_message_and_offset() -> None:
    plain = struct.pack(">IH", 5, 4) + b"oops"
    assert parse_chunk_error(plain, False) == (5, "oops", -1)
    assert parse_chunk_error(plain + (4096).to_bytes(8, "big"), True) == (5, "oops", 4096)
    with pytest.raises(NBDProtocolError, match="malformed error chunk"):
        parse_chunk_error(plain, True)                 # the offset is missing
    with pytest.raises(NBDProtocolError, match="malformed error chunk"):
        parse_chunk_error(struct.pack(">IH", 0, 0), False)   # error 0 is no error


def test_block_status_chunks_and_meta_context_replies_parse() -> None:
    payload = struct.pack(">III", 7, 65536, NBD_STATE_HOLE)
    assert parse_block_status(payload) == (7, [(65536, NBD_STATE_HOLE)])
    with pytest.raises(NBDProtocolError, match="block status chunk"):
        parse_block_status(payload[:10])
    assert parse_meta_context(struct.pack(">I", 3) + b"base:allocation") == (3, "base:allocation")
    b = pack_opt_set_meta_context("ex", "base:allocation")
    assert struct.unpack(">II", b[8:16]) == (NBD_OPT_SET_META_CONTEXT, 4 + 2 + 4 + 4 + 15)
    assert b[16:] == b"\x00\x00\x00\x02ex\x00\x00\x00\x01\x00\x00\x00\x0fbase:allocation"
