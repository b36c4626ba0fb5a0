"""The cluster link's wire format: the messages two uscstd nodes exchange
about devices they share (scst_core.cluster).

Twin of nothing in SCST: SCST's cluster_mode (scst_dlm.c) passes state
between nodes through the kernel's DLM, lock value blocks and lock
callbacks, not messages of its own. Ours is a small request/answer
protocol over TCP: each message is a fixed 20-byte header

    magic (4, "USCL")  version (1)  type (1)  flags (2, zero)
    seq (8)            length (4, of the payload that follows)

then the payload. Types:

- CLM_HELLO: the sender's node name (UTF-8). First message on a link.
- CLM_DEV_EVENT: something happened to a shared device on the sender:
  event (1) sense key (1) asc (1) ascq (1) name length (2) device name
  (UTF-8), then the event's data: for CL_EV_PR_STATE and CL_EV_PR_SYNC
  the sequence number the change started from (8), its own (8) and the
  device's persistent reservation state (scst_core.pres's APTPL text);
  for CL_EV_MODE the changed mode pages, each whole (code, length,
  parameters). The receiver applies it and answers.
- CLM_ACK: the answer to the message with the same seq: status (4,
  signed: 0 applied, a negative errno otherwise).

Contexts: plain Python, no kshim, no state: callable anywhere. A
malformed message raises ClusterProtocolError; the connection code closes
the link on it.
"""
from __future__ import annotations

import struct

import attrs

CLUSTER_MAGIC = 0x5553434C              # "USCL"
CLUSTER_VERSION = 1
CLM_HDR_SIZE = 20
CLM_MAX_PAYLOAD = 1 << 20               # a PR state of some thousand registrants

CLM_HELLO = 1
CLM_DEV_EVENT = 2
CLM_ACK = 3
CLM_NAMES = {CLM_HELLO: "HELLO", CLM_DEV_EVENT: "DEV_EVENT", CLM_ACK: "ACK"}

# CLM_DEV_EVENT events: what the receiver does for the named device
CL_EV_UA = 1            # establish the sense as a unit attention on every nexus
CL_EV_RESET = 2         # a LUN or target reset: the UA, then the device's reset actions
CL_EV_CAPACITY = 3      # the size changed: re-read it, then the UA
CL_EV_PR_STATE = 4      # a PR OUT changed the state: take it if yours is the one it started from
CL_EV_PR_SYNC = 5       # the link is (back) up: take this state if it is newer than yours
CL_EV_MODE = 6          # MODE SELECT changed these pages: take them, then the UA
CL_EV_NAMES = {CL_EV_UA: "unit attention", CL_EV_RESET: "reset", CL_EV_CAPACITY: "capacity",
               CL_EV_PR_STATE: "reservation change", CL_EV_PR_SYNC: "reservation state",
               CL_EV_MODE: "mode pages"}

_UNIT_ATTENTION = 0x6                   # the sense key of every UA event
_HDR = struct.Struct(">IBBHQI")
_EVENT = struct.Struct(">BBBBH")
_ACK = struct.Struct(">i")
_PR = struct.Struct(">QQ")


class ClusterProtocolError(Exception):
    """A message the protocol does not allow."""


@attrs.frozen
class clm_hdr:
    type: int
    seq: int
    length: int


@attrs.frozen
class clm_dev_event:
    event: int
    sense: tuple[int, int, int]
    dev_name: str
    data: bytes = b""


def pack_hdr(type_: int, seq: int, length: int) -> bytes:
    return _HDR.pack(CLUSTER_MAGIC, CLUSTER_VERSION, type_, 0, seq, length)


def parse_hdr(buf: "bytes | bytearray | memoryview") -> clm_hdr:
    """The header of a message (exactly CLM_HDR_SIZE bytes)."""
    if len(buf) != CLM_HDR_SIZE:
        raise ClusterProtocolError(f"header must be {CLM_HDR_SIZE} bytes, got {len(buf)}")
    magic, version, type_, flags, seq, length = _HDR.unpack(buf)
    if magic != CLUSTER_MAGIC:
        raise ClusterProtocolError(f"bad magic {magic:#x}")
    if version != CLUSTER_VERSION:
        raise ClusterProtocolError(f"version {version}, this node speaks {CLUSTER_VERSION}")
    if type_ not in CLM_NAMES or flags:
        raise ClusterProtocolError(f"unknown message type {type_} or flags {flags:#x}")
    if length > CLM_MAX_PAYLOAD:
        raise ClusterProtocolError(f"payload of {length} bytes (at most {CLM_MAX_PAYLOAD})")
    return clm_hdr(type_, seq, length)


def pack_hello(seq: int, node: str) -> bytes:
    name = node.encode("utf-8")
    return pack_hdr(CLM_HELLO, seq, len(name)) + name


def parse_hello(payload: "bytes | bytearray") -> str:
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise ClusterProtocolError("node name is not UTF-8") from None


def pack_dev_event(seq: int, ev: clm_dev_event) -> bytes:
    name = ev.dev_name.encode("utf-8")
    body = _EVENT.pack(ev.event, *ev.sense, len(name)) + name + ev.data
    return pack_hdr(CLM_DEV_EVENT, seq, len(body)) + body


def parse_dev_event(payload: "bytes | bytearray") -> clm_dev_event:
    if len(payload) < _EVENT.size:
        raise ClusterProtocolError(f"DEV_EVENT of {len(payload)} bytes is too short")
    event, key, asc, ascq, n = _EVENT.unpack_from(payload)
    if event not in CL_EV_NAMES:
        raise ClusterProtocolError(f"unknown device event {event}")
    end = _EVENT.size + n
    if len(payload) < end or not n:
        raise ClusterProtocolError(f"DEV_EVENT names a device of {n} bytes in a payload of "
                                   f"{len(payload)}")
    try:
        name = bytes(payload[_EVENT.size:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ClusterProtocolError("device name is not UTF-8") from None
    data = bytes(payload[end:])
    if event in (CL_EV_PR_STATE, CL_EV_PR_SYNC):
        unpack_pr_state(data)                # refuse a malformed one here, whole
    elif event == CL_EV_MODE:
        parse_mode_pages(data)
    elif data:
        raise ClusterProtocolError(f"{CL_EV_NAMES[event]} event with {len(data)} bytes of data")
    if event not in (CL_EV_PR_STATE, CL_EV_PR_SYNC) and key != _UNIT_ATTENTION:
        raise ClusterProtocolError(f"{CL_EV_NAMES[event]} event with sense key {key:#x}, "
                                   f"not UNIT ATTENTION")
    return clm_dev_event(event, (key, asc, ascq), name, data)


def parse_mode_pages(data: bytes) -> list[tuple[int, bytes]]:
    """(page code, the whole page) of each mode page in data, at least one."""
    pages, off = [], 0
    while off < len(data):                   # bounded: off grows by 2 at least
        if off + 2 > len(data) or off + 2 + data[off + 1] > len(data):
            raise ClusterProtocolError(f"mode page at {off} runs past the {len(data)} bytes")
        end = off + 2 + data[off + 1]
        pages.append((data[off] & 0x3F, bytes(data[off:end])))
        off = end
    if not pages:
        raise ClusterProtocolError("mode pages event without a page")
    return pages


def pack_pr_state(base: int, seq: int, state: str) -> bytes:
    return _PR.pack(base, seq) + state.encode("utf-8")


def unpack_pr_state(data: bytes) -> tuple[int, int, str]:
    """(the sequence number the change started from, its own, the state)."""
    if len(data) < _PR.size:
        raise ClusterProtocolError(f"reservation state of {len(data)} bytes is too short")
    base, seq = _PR.unpack_from(data)
    try:
        return base, seq, data[_PR.size:].decode("utf-8")
    except UnicodeDecodeError:
        raise ClusterProtocolError("reservation state is not UTF-8") from None


def pack_ack(seq: int, status: int) -> bytes:
    return pack_hdr(CLM_ACK, seq, _ACK.size) + _ACK.pack(status)


def parse_ack(payload: "bytes | bytearray") -> int:
    if len(payload) != _ACK.size:
        raise ClusterProtocolError(f"ACK of {len(payload)} bytes (expected {_ACK.size})")
    return int(_ACK.unpack(payload)[0])


def parse_addr(text: str) -> "tuple[str, int] | str":
    """(host, port) of HOST:PORT or [V6]:PORT, or the reason it is not one."""
    t = text.strip()
    if t.startswith("["):
        host, br, rest = t[1:].partition("]")
        if not br or not rest.startswith(":"):
            return f"bad address '{text}' (HOST:PORT or [V6]:PORT)"
        port_s = rest[1:]
    else:
        host, colon, port_s = t.rpartition(":")
        if not colon or ":" in host:
            return f"bad address '{text}' (HOST:PORT or [V6]:PORT)"
    if not host or not port_s.isdecimal() or not 0 < int(port_s) < 65536:
        return f"bad address '{text}' (a host and a port 1..65535)"
    return host, int(port_s)
