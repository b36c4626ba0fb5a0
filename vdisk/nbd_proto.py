"""The NBD wire format: the fixed-newstyle handshake with NBD_OPT_GO, and
the transmission phase's requests and simple replies.

Twin of include/uapi/linux/nbd.h (request, reply, command and flag
values) plus the handshake part of the NBD protocol document
(nbd's doc/proto.md, "Fixed newstyle negotiation", "NBD_OPT_GO",
"NBD_INFO_BLOCK_SIZE"), which the kernel leaves to nbd-client and we do in
the dev handler (vdisk.nbd_client).

Contexts: pure functions and constants: no kshim, no state, no socket;
callable from anywhere.

Differs from the protocol: only what the client side needs.
Structured replies (NBD_OPT_STRUCTURED_REPLY) and the base:allocation
meta context (NBD_OPT_SET_META_CONTEXT, for NBD_CMD_BLOCK_STATUS) are
asked for; a server without them gets simple replies and no block
status. Extended headers (NBD_OPT_EXTENDED_HEADERS) are not. TLS
(NBD_OPT_STARTTLS) is not offered; a server that requires it answers
NBD_REP_ERR_TLS_REQD, which nbd_opt_reply_error names.
"""
from __future__ import annotations

import struct

import attrs

NBDMAGIC = 0x4E42444D41474943                # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054                # "IHAVEOPT"
NBD_REP_MAGIC = 0x3E889045565A9
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

# handshake flags (server) and client flags
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# options and option replies
NBD_OPT_ABORT = 2
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_SET_META_CONTEXT = 10
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_META_BASE_ALLOCATION = "base:allocation"
NBD_REP_FLAG_ERROR = 1 << 31
NBD_INFO_EXPORT = 0
NBD_INFO_BLOCK_SIZE = 3
NBD_REP_ERRORS = {
    NBD_REP_FLAG_ERROR | 1: "NBD_REP_ERR_UNSUP (option not supported)",
    NBD_REP_FLAG_ERROR | 2: "NBD_REP_ERR_POLICY (forbidden by the server's policy)",
    NBD_REP_FLAG_ERROR | 3: "NBD_REP_ERR_INVALID (invalid option)",
    NBD_REP_FLAG_ERROR | 4: "NBD_REP_ERR_PLATFORM (not supported on the server's platform)",
    NBD_REP_FLAG_ERROR | 5: "NBD_REP_ERR_TLS_REQD (the server requires TLS, which vdisk_nbd "
                            "does not speak)",
    NBD_REP_FLAG_ERROR | 6: "NBD_REP_ERR_UNKNOWN (no such export)",
    NBD_REP_FLAG_ERROR | 7: "NBD_REP_ERR_SHUTDOWN (the server is shutting down)",
    NBD_REP_FLAG_ERROR | 8: "NBD_REP_ERR_BLOCK_SIZE_REQD (the server requires block sizes)",
    NBD_REP_FLAG_ERROR | 9: "NBD_REP_ERR_TOO_BIG (request too big)",
}

# transmission flags
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_CAN_MULTI_CONN = 1 << 8

# commands and command flags
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7
NBD_CMD_NAMES = {NBD_CMD_READ: "READ", NBD_CMD_WRITE: "WRITE", NBD_CMD_DISC: "DISC",
                 NBD_CMD_FLUSH: "FLUSH", NBD_CMD_TRIM: "TRIM",
                 NBD_CMD_WRITE_ZEROES: "WRITE_ZEROES", NBD_CMD_BLOCK_STATUS: "BLOCK_STATUS"}
NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_REQ_ONE = 1 << 3

# structured reply chunks
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2
NBD_STATE_HOLE = 1 << 0                      # base:allocation: unallocated

# the protocol's defaults when the server sends no NBD_INFO_BLOCK_SIZE
NBD_DEFAULT_MIN_BLOCK = 1
NBD_DEFAULT_PREF_BLOCK = 4096
NBD_DEFAULT_MAX_PAYLOAD = 32 << 20
NBD_MAX_STRING = 4096                        # the longest export name we send

HELLO_SIZE = 18                              # NBDMAGIC, IHAVEOPT, handshake flags
OPT_REPLY_HDR_SIZE = 20                      # magic, option, type, length
REQUEST_SIZE = 28
SIMPLE_REPLY_SIZE = 16
STRUCTURED_REPLY_SIZE = 20                   # a simple reply's 16 bytes, then 4 more
NBD_MAX_CHUNK_META = 4096 + 64               # the longest non-data chunk payload we take

_hello = struct.Struct(">QQH")
_opt_hdr = struct.Struct(">QII")
_opt_reply = struct.Struct(">QIII")
_request = struct.Struct(">IHHQQI")
_simple_reply = struct.Struct(">IIQ")
_structured_reply = struct.Struct(">IHHQI")


class NBDProtocolError(Exception):
    """The server said something the protocol does not allow."""


@attrs.define(slots=True)
class nbd_export_info:
    """What NBD_OPT_GO told us about the export."""
    size: int = -1
    flags: int = 0
    min_block: int = NBD_DEFAULT_MIN_BLOCK
    pref_block: int = NBD_DEFAULT_PREF_BLOCK
    max_payload: int = NBD_DEFAULT_MAX_PAYLOAD
    structured: bool = False                 # NBD_OPT_STRUCTURED_REPLY acknowledged
    alloc_ctx: int = -1                      # base:allocation's context id; -1: none


def parse_hello(buf: "bytes | bytearray | memoryview") -> int:
    """The server's handshake flags from its first 18 bytes; raise
    NBDProtocolError if it is not a fixed-newstyle NBD server."""
    if len(buf) != HELLO_SIZE:
        raise NBDProtocolError(f"hello must be {HELLO_SIZE} bytes, got {len(buf)}")
    magic, opt_magic, flags = _hello.unpack(buf)
    if magic != NBDMAGIC:
        raise NBDProtocolError(f"not an NBD server: magic {magic:#018x}")
    if opt_magic != IHAVEOPT:
        raise NBDProtocolError(f"oldstyle NBD server (magic {opt_magic:#018x}); only newstyle "
                               f"is supported")
    if not flags & NBD_FLAG_FIXED_NEWSTYLE:
        raise NBDProtocolError("server does not offer fixed newstyle negotiation")
    return flags


def client_flags(server_flags: int) -> bytes:
    """Our 4-byte answer to the hello: fixed newstyle, and no zeroes when offered."""
    return (NBD_FLAG_C_FIXED_NEWSTYLE | (server_flags & NBD_FLAG_NO_ZEROES)).to_bytes(4, "big")


def pack_opt_go(export: str) -> bytes:
    """NBD_OPT_GO for the export, asking for NBD_INFO_BLOCK_SIZE."""
    name = export.encode("utf-8")
    if len(name) > NBD_MAX_STRING:
        raise NBDProtocolError(f"export name is {len(name)} bytes, at most {NBD_MAX_STRING}")
    data = len(name).to_bytes(4, "big") + name + (1).to_bytes(2, "big") \
        + NBD_INFO_BLOCK_SIZE.to_bytes(2, "big")
    return _opt_hdr.pack(IHAVEOPT, NBD_OPT_GO, len(data)) + data


def pack_opt_structured_reply() -> bytes:
    return _opt_hdr.pack(IHAVEOPT, NBD_OPT_STRUCTURED_REPLY, 0)


def pack_opt_set_meta_context(export: str, query: str) -> bytes:
    """NBD_OPT_SET_META_CONTEXT for one context of the export."""
    name, q = export.encode("utf-8"), query.encode("utf-8")
    data = len(name).to_bytes(4, "big") + name + (1).to_bytes(4, "big") \
        + len(q).to_bytes(4, "big") + q
    return _opt_hdr.pack(IHAVEOPT, NBD_OPT_SET_META_CONTEXT, len(data)) + data


def parse_meta_context(payload: bytes) -> tuple[int, str]:
    """(context id, name) of an NBD_REP_META_CONTEXT payload."""
    if len(payload) < 5:
        raise NBDProtocolError(f"NBD_REP_META_CONTEXT of {len(payload)} bytes")
    return int.from_bytes(payload[:4], "big"), payload[4:].decode("utf-8", "replace")


def pack_opt_abort() -> bytes:
    return _opt_hdr.pack(IHAVEOPT, NBD_OPT_ABORT, 0)


def parse_opt_reply_hdr(buf: "bytes | bytearray | memoryview", option: int) -> tuple[int, int]:
    """(reply type, payload length) of a 20-byte option reply header to option."""
    magic, opt, rtype, length = _opt_reply.unpack(buf)
    if magic != NBD_REP_MAGIC:
        raise NBDProtocolError(f"bad option reply magic {magic:#x}")
    if opt != option:
        raise NBDProtocolError(f"reply to option {opt}, expected {option}")
    if length > NBD_MAX_STRING + 64:
        raise NBDProtocolError(f"option reply of {length} bytes is too long")
    return rtype, length


def nbd_opt_reply_error(rtype: int, payload: bytes) -> str:
    """A readable reason for an error reply (and the server's message)."""
    what = NBD_REP_ERRORS.get(rtype, f"error reply {rtype:#x}")
    msg = payload.decode("utf-8", "replace").strip()
    return f"{what}: {msg}" if msg else what


def parse_info(payload: bytes, info: nbd_export_info) -> None:
    """Fold one NBD_REP_INFO payload into info; unknown info types are
    ignored, as the protocol asks."""
    if len(payload) < 2:
        raise NBDProtocolError(f"NBD_REP_INFO of {len(payload)} bytes")
    itype = int.from_bytes(payload[:2], "big")
    if itype == NBD_INFO_EXPORT:
        if len(payload) != 12:
            raise NBDProtocolError(f"NBD_INFO_EXPORT of {len(payload)} bytes, expected 12")
        info.size = int.from_bytes(payload[2:10], "big")
        info.flags = int.from_bytes(payload[10:12], "big")
    elif itype == NBD_INFO_BLOCK_SIZE:
        if len(payload) != 14:
            raise NBDProtocolError(f"NBD_INFO_BLOCK_SIZE of {len(payload)} bytes, expected 14")
        mn, pref, mx = struct.unpack(">III", payload[2:14])
        if mn == 0 or mn & (mn - 1) or mn > 65536 or pref < mn or pref & (pref - 1) \
                or mx < pref or (mx != 0xFFFFFFFF and mx % mn):
            raise NBDProtocolError(f"inconsistent block sizes min {mn}, preferred {pref}, "
                                   f"max {mx}")
        info.min_block, info.pref_block = mn, pref
        info.max_payload = min(mx, NBD_DEFAULT_MAX_PAYLOAD)


def pack_request(buf: bytearray, *, flags: int, type_: int, cookie: int, offset: int,
                 length: int) -> None:
    """Fill a preallocated 28-byte request header."""
    _request.pack_into(buf, 0, NBD_REQUEST_MAGIC, flags, type_, cookie, offset, length)


def reply_is_structured(buf: "bytes | bytearray | memoryview", negotiated: bool) -> bool:
    """Whether the 16 bytes starting a reply begin a structured chunk (4 more
    header bytes follow) or are a whole simple reply; raise on a bad magic
    or a structured chunk that was not negotiated."""
    magic = int.from_bytes(buf[:4], "big")
    if magic == NBD_SIMPLE_REPLY_MAGIC:
        return False
    if magic == NBD_STRUCTURED_REPLY_MAGIC:
        if not negotiated:
            raise NBDProtocolError("structured reply, which was not negotiated")
        return True
    raise NBDProtocolError(f"bad reply magic {magic:#010x}")


def parse_simple_reply(buf: "bytes | bytearray | memoryview") -> tuple[int, int]:
    """(error, cookie) of a 16-byte simple reply."""
    magic, error, cookie = _simple_reply.unpack(buf)
    if magic != NBD_SIMPLE_REPLY_MAGIC:
        raise NBDProtocolError(f"bad reply magic {magic:#010x}")
    return error, cookie


def parse_structured_reply(buf: "bytes | bytearray | memoryview") -> tuple[int, int, int, int]:
    """(flags, type, cookie, payload length) of a 20-byte chunk header."""
    magic, flags, type_, cookie, length = _structured_reply.unpack(buf)
    if magic != NBD_STRUCTURED_REPLY_MAGIC:
        raise NBDProtocolError(f"bad reply magic {magic:#010x}")
    return flags, type_, cookie, length


def parse_chunk_error(payload: bytes, with_offset: bool) -> tuple[int, str, int]:
    """(error, message, offset or -1) of an NBD_REPLY_TYPE_ERROR(_OFFSET)
    payload."""
    if len(payload) < 6:
        raise NBDProtocolError(f"error chunk of {len(payload)} bytes")
    error = int.from_bytes(payload[:4], "big")
    mlen = int.from_bytes(payload[4:6], "big")
    if len(payload) != 6 + mlen + (8 if with_offset else 0) or error == 0:
        raise NBDProtocolError(f"malformed error chunk (error {error}, message of {mlen} "
                               f"bytes, {len(payload)} bytes in all)")
    msg = payload[6:6 + mlen].decode("utf-8", "replace")
    off = int.from_bytes(payload[6 + mlen:], "big") if with_offset else -1
    return error, msg, off


def parse_block_status(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(context id, [(length, status flags)...]) of a BLOCK_STATUS chunk."""
    if len(payload) < 12 or (len(payload) - 4) % 8:
        raise NBDProtocolError(f"block status chunk of {len(payload)} bytes")
    ctx = int.from_bytes(payload[:4], "big")
    return ctx, [struct.unpack_from(">II", payload, off) for off in range(4, len(payload), 8)]
