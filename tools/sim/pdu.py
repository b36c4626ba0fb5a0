"""iSCSI PDU codec for initiators: constants, packing, parsing (RFC 7143).

Pure functions and a parsed-PDU record: no socket, no clock, no state. Used
by the sans-IO sim initiator (tools/sim/initiator.py) and by the
test-suite's blocking initiator (tests/initiator.py), which re-exports it.
Written from RFC 7143 alone and sharing no code with iscsi_scst/, so a
test that passes is not the target agreeing with itself.

What it covers: BHS/AHS framing (11.2), padding and CRC32C digests (13.1),
serial number arithmetic (RFC 1982), SAM LUN encoding, key=value text
(6.1), one pack_* helper per initiator PDU, and Pdu, whose properties read
the fields of every target PDU. pack_bhs() packs any BHS with every field
chosen by the caller, so a test can build malformed PDUs too.

Where it may be called from: anywhere (plain Python).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

import crc32c as _crc32c

# --- Constants (RFC 7143 11.2.1.2 opcodes) ----------------------------------

BHS_SIZE = 48
RESERVED_TAG = 0xFFFFFFFF

OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_TASK_MGMT_REQ = 0x02
OP_LOGIN_REQ = 0x03
OP_TEXT_REQ = 0x04
OP_DATA_OUT = 0x05
OP_LOGOUT_REQ = 0x06
OP_SNACK = 0x10

OP_NOP_IN = 0x20
OP_SCSI_RSP = 0x21
OP_TASK_MGMT_RSP = 0x22
OP_LOGIN_RSP = 0x23
OP_TEXT_RSP = 0x24
OP_DATA_IN = 0x25
OP_LOGOUT_RSP = 0x26
OP_R2T = 0x31
OP_ASYNC_MSG = 0x32
OP_REJECT = 0x3F

OPCODE_NAMES = {
    OP_NOP_OUT: "NOP-Out", OP_SCSI_CMD: "SCSI-Command",
    OP_TASK_MGMT_REQ: "TMF-Request", OP_LOGIN_REQ: "Login-Request",
    OP_TEXT_REQ: "Text-Request", OP_DATA_OUT: "Data-Out",
    OP_LOGOUT_REQ: "Logout-Request", OP_SNACK: "SNACK",
    OP_NOP_IN: "NOP-In", OP_SCSI_RSP: "SCSI-Response",
    OP_TASK_MGMT_RSP: "TMF-Response", OP_LOGIN_RSP: "Login-Response",
    OP_TEXT_RSP: "Text-Response", OP_DATA_IN: "Data-In",
    OP_LOGOUT_RSP: "Logout-Response", OP_R2T: "R2T",
    OP_ASYNC_MSG: "Async-Message", OP_REJECT: "Reject",
}

FLAG_IMMEDIATE = 0x40          # byte 0
FLAG_FINAL = 0x80              # byte 1, most PDUs
# SCSI Command byte 1
CMD_FLAG_READ = 0x40
CMD_FLAG_WRITE = 0x20
# Task attributes (11.3.1)
ATTR_UNTAGGED = 0
ATTR_SIMPLE = 1
ATTR_ORDERED = 2
ATTR_HEAD_OF_QUEUE = 3
ATTR_ACA = 4
SIMPLE = ATTR_SIMPLE
# SCSI Response / Data-In byte 1
RSP_FLAG_BIDI_OVERFLOW = 0x10
RSP_FLAG_BIDI_UNDERFLOW = 0x08
RSP_FLAG_OVERFLOW = 0x04
RSP_FLAG_UNDERFLOW = 0x02
DATAIN_FLAG_ACK = 0x40
DATAIN_FLAG_STATUS = 0x01
# Login / Text byte 1
LOGIN_FLAG_TRANSIT = 0x80
LOGIN_FLAG_CONTINUE = 0x40
TEXT_FLAG_CONTINUE = 0x40
# Login stages
STAGE_SECURITY = 0
STAGE_OPERATIONAL = 1
STAGE_FULL_FEATURE = 3
# AHS types (11.2.2)
AHS_EXTENDED_CDB = 1
AHS_BIDI_READ_LENGTH = 2
# Task management functions (11.5.1)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LUN_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8
# TMF responses (11.6.1)
TMF_RSP_COMPLETE = 0
TMF_RSP_NO_TASK = 1
TMF_RSP_NO_LUN = 2
TMF_RSP_TASK_ALLEGIANT = 3
TMF_RSP_NO_REASSIGN = 4
TMF_RSP_NOT_SUPPORTED = 5
TMF_RSP_AUTH_FAILED = 6
TMF_RSP_REJECTED = 255
# Logout reasons (11.14.1)
LOGOUT_CLOSE_SESSION = 0
LOGOUT_CLOSE_CONNECTION = 1
LOGOUT_REMOVE_FOR_RECOVERY = 2
# SCSI status
SAM_STAT_GOOD = 0x00
SAM_STAT_CHECK_CONDITION = 0x02
SAM_STAT_BUSY = 0x08
SAM_STAT_RESERVATION_CONFLICT = 0x18
SAM_STAT_TASK_SET_FULL = 0x28

# RFC 7143 13 defaults, used when a key was not negotiated.
RFC_DEFAULTS = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxConnections": "1",
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "8192",
    "MaxBurstLength": "262144",
    "FirstBurstLength": "65536",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "20",
    "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}

DEFAULT_INITIATOR_NAME = "iqn.2026-11.org.uscst:test-init"
# The declared MaxRecvDataSegmentLength we offer unless the caller overrides.
DEFAULT_OUR_MRDSL = 262144


# --- Serial number arithmetic (RFC 1982, 32 bits) -----------------------------

def sn_lt(a: int, b: int) -> bool:
    """a < b in 32-bit serial arithmetic."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def sn_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


# --- Digests, padding, LUNs, keys --------------------------------------------

def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) as iSCSI defines it (13.1)."""
    return _crc32c.crc32c(data)


def digest_bytes(data: bytes) -> bytes:
    """The 4 digest bytes as they go on the wire (least significant byte
    first, so 32 zero bytes give aa 36 91 8a as in RFC 7143 B.4)."""
    return struct.pack("<I", crc32c(data))


def pad4(n: int) -> int:
    """Number of pad bytes that round n up to a multiple of 4."""
    return (-n) & 3


def encode_lun(lun: int | bytes) -> bytes:
    """An 8-byte LUN field (SAM): peripheral addressing below 256, flat
    space addressing up to 16383; 8 raw bytes pass through."""
    if isinstance(lun, (bytes, bytearray)):
        if len(lun) != 8:
            raise ValueError("raw LUN must be 8 bytes")
        return bytes(lun)
    if lun < 256:
        return bytes([0, lun, 0, 0, 0, 0, 0, 0])
    if lun < 16384:
        return bytes([0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0, 0, 0])
    raise ValueError(f"LUN {lun} needs extended addressing")


def decode_lun(raw: bytes) -> int:
    """Inverse of encode_lun for peripheral and flat addressing."""
    method = raw[0] >> 6
    if method in (0, 1):
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return int.from_bytes(raw, "big")


def encode_keys(keys: dict[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """key=value pairs, each NUL-terminated (6.1)."""
    items = keys.items() if isinstance(keys, dict) else keys
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in items)


def decode_keys(data: bytes) -> list[tuple[str, str]]:
    """Parse NUL-separated key=value pairs, keeping order and repeats."""
    out: list[tuple[str, str]] = []
    for item in bytes(data).split(b"\0"):
        if not item:
            continue
        text = item.decode("utf-8", errors="replace")
        k, sep, v = text.partition("=")
        out.append((k, v if sep else ""))
    return out


# --- PDU packing ---------------------------------------------------------------

def pack_bhs(opcode: int, *, immediate: bool = False, flags: int = 0,
             b2: int = 0, b3: int = 0, ahs_len: int = 0, dsl: int = 0,
             lun: int | bytes = 0, itt: int = 0,
             rest: bytes = b"") -> bytes:
    """Pack a 48-byte BHS with every field given by the caller.

    opcode: 6-bit opcode, or a full byte 0 if it has bits above 0x3F set
    (so a test can set the reserved bit 7); immediate sets the I bit.
    flags, b2, b3: bytes 1-3. ahs_len: TotalAHSLength in BYTES (must be a
    multiple of 4 unless you want it malformed: it is divided by 4 and
    truncated). dsl: DataSegmentLength (24 bits, need not match the data).
    lun: LUN or opcode-specific bytes 8-15 (int or 8 raw bytes).
    itt: bytes 16-19. rest: bytes 20-47 (28 bytes; shorter is zero-padded).
    """
    b0 = opcode if opcode > 0x3F else (opcode | (FLAG_IMMEDIATE if immediate else 0))
    if len(rest) > 28:
        raise ValueError("rest must be at most 28 bytes")
    head = struct.pack(">BBBBB", b0 & 0xFF, flags & 0xFF, b2 & 0xFF, b3 & 0xFF,
                       (ahs_len // 4) & 0xFF)
    return (head + (dsl & 0xFFFFFF).to_bytes(3, "big") + encode_lun(lun)
            + struct.pack(">I", itt & 0xFFFFFFFF) + rest.ljust(28, b"\0"))


def _u32s(*vals: int) -> bytes:
    return b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in vals)


def pack_scsi_cmd(*, itt: int, cmd_sn: int, exp_stat_sn: int, cdb: bytes,
                  edtl: int = 0, lun: int | bytes = 0, read: bool = False,
                  write: bool = False, final: bool = True,
                  attr: int = ATTR_SIMPLE, immediate: bool = False,
                  dsl: int = 0, ahs_len: int = 0, flags: int | None = None) -> bytes:
    """SCSI Command BHS (11.3). cdb beyond 16 bytes goes in an AHS built by
    ahs_extended_cdb(); only the first 16 bytes land here."""
    if flags is None:
        flags = ((FLAG_FINAL if final else 0) | (CMD_FLAG_READ if read else 0)
                 | (CMD_FLAG_WRITE if write else 0) | (attr & 7))
    rest = _u32s(edtl, cmd_sn, exp_stat_sn) + bytes(cdb[:16]).ljust(16, b"\0")
    return pack_bhs(OP_SCSI_CMD, immediate=immediate, flags=flags, ahs_len=ahs_len,
                    dsl=dsl, lun=lun, itt=itt, rest=rest)


def ahs_extended_cdb(cdb: bytes) -> bytes:
    """Extended CDB AHS (11.2.2.3) for the bytes of cdb past the 16th."""
    extra = bytes(cdb[16:])
    body = struct.pack(">HBB", len(extra) + 1, AHS_EXTENDED_CDB, 0) + extra
    return body + b"\0" * pad4(len(body))


def ahs_bidi_read_length(length: int) -> bytes:
    """Bidirectional Read Expected Data Transfer Length AHS (11.2.2.4)."""
    return struct.pack(">HBBI", 5, AHS_BIDI_READ_LENGTH, 0, length)


def pack_data_out(*, itt: int, ttt: int, exp_stat_sn: int, data_sn: int,
                  offset: int, dsl: int, lun: int | bytes = 0,
                  final: bool = True) -> bytes:
    """SCSI Data-Out BHS (11.7)."""
    rest = _u32s(ttt, 0, exp_stat_sn, 0, data_sn, offset, 0)
    return pack_bhs(OP_DATA_OUT, flags=FLAG_FINAL if final else 0, dsl=dsl,
                    lun=lun, itt=itt, rest=rest)


def pack_nop_out(*, itt: int, ttt: int = RESERVED_TAG, cmd_sn: int, exp_stat_sn: int,
                 dsl: int = 0, lun: int | bytes = 0, immediate: bool = True) -> bytes:
    """NOP-Out BHS (11.18); F bit always set as the RFC requires."""
    return pack_bhs(OP_NOP_OUT, immediate=immediate, flags=FLAG_FINAL, dsl=dsl,
                    lun=lun, itt=itt, rest=_u32s(ttt, cmd_sn, exp_stat_sn))


def pack_login_req(*, isid: bytes, tsih: int = 0, itt: int, cid: int = 0,
                   cmd_sn: int, exp_stat_sn: int, csg: int, nsg: int,
                   transit: bool, cont: bool = False, dsl: int = 0,
                   version_max: int = 0, version_min: int = 0) -> bytes:
    """Login Request BHS (11.12); the I bit is always set."""
    flags = ((LOGIN_FLAG_TRANSIT if transit else 0) | (LOGIN_FLAG_CONTINUE if cont else 0)
             | ((csg & 3) << 2) | (nsg & 3))
    lunfield = bytes(isid).ljust(6, b"\0")[:6] + struct.pack(">H", tsih)
    rest = struct.pack(">HH", cid, 0) + _u32s(cmd_sn, exp_stat_sn)
    return pack_bhs(OP_LOGIN_REQ, immediate=True, flags=flags, b2=version_max,
                    b3=version_min, dsl=dsl, lun=lunfield, itt=itt, rest=rest)


def pack_text_req(*, itt: int, ttt: int = RESERVED_TAG, cmd_sn: int,
                  exp_stat_sn: int, dsl: int, final: bool = True,
                  cont: bool = False, immediate: bool = False,
                  lun: int | bytes = 0) -> bytes:
    """Text Request BHS (11.10)."""
    flags = (FLAG_FINAL if final else 0) | (TEXT_FLAG_CONTINUE if cont else 0)
    return pack_bhs(OP_TEXT_REQ, immediate=immediate, flags=flags, dsl=dsl, lun=lun,
                    itt=itt, rest=_u32s(ttt, cmd_sn, exp_stat_sn))


def pack_logout_req(*, itt: int, cmd_sn: int, exp_stat_sn: int, reason: int = 0,
                    cid: int = 0, immediate: bool = True) -> bytes:
    """Logout Request BHS (11.14)."""
    rest = struct.pack(">HH", cid, 0) + _u32s(cmd_sn, exp_stat_sn)
    return pack_bhs(OP_LOGOUT_REQ, immediate=immediate, flags=FLAG_FINAL | (reason & 0x7F),
                    itt=itt, rest=b"\0\0\0\0" + rest)


def pack_task_mgmt_req(*, itt: int, function: int, cmd_sn: int, exp_stat_sn: int,
                       ref_itt: int = RESERVED_TAG, ref_cmd_sn: int = 0,
                       exp_data_sn: int = 0, lun: int | bytes = 0,
                       immediate: bool = True) -> bytes:
    """Task Management Function Request BHS (11.5)."""
    rest = _u32s(ref_itt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn)
    return pack_bhs(OP_TASK_MGMT_REQ, immediate=immediate,
                    flags=FLAG_FINAL | (function & 0x7F), lun=lun, itt=itt, rest=rest)


def pack_snack(*, itt: int, snack_type: int, exp_stat_sn: int, beg_run: int = 0,
               run_length: int = 0, ttt: int = RESERVED_TAG,
               lun: int | bytes = 0) -> bytes:
    """SNACK Request BHS (11.16)."""
    rest = _u32s(ttt, 0, exp_stat_sn, 0, 0, beg_run, run_length)
    return pack_bhs(OP_SNACK, flags=FLAG_FINAL | (snack_type & 0x0F), lun=lun,
                    itt=itt, rest=rest)


def build_pdu(bhs: bytes, data: bytes = b"", *, ahs: bytes = b"",
              header_digest: bool = False, data_digest: bool = False,
              bad_header_digest: bool = False, bad_data_digest: bool = False,
              pad: bool = True) -> bytes:
    """Frame a PDU: BHS, AHS, header digest, data, padding, data digest.

    The BHS is sent as given (its TotalAHSLength and DataSegmentLength are
    not fixed up), so a test can lie in them. bad_*_digest flips the
    digest's bits. pad=False omits the data padding (malformed).
    """
    hdr = bytes(bhs) + bytes(ahs)
    out = [hdr]
    if header_digest:
        d = crc32c(hdr) ^ (0xFFFFFFFF if bad_header_digest else 0)
        out.append(struct.pack("<I", d))
    if data:
        padded = bytes(data) + (b"\0" * pad4(len(data)) if pad else b"")
        out.append(padded)
        if data_digest:
            d = crc32c(padded) ^ (0xFFFFFFFF if bad_data_digest else 0)
            out.append(struct.pack("<I", d))
    return b"".join(out)


# --- Received PDUs ---------------------------------------------------------------

@dataclass(eq=False)
class Pdu:
    """One received (or parsed) PDU. Field properties read the BHS by the
    offsets RFC 7143 gives target PDUs; reading a field an opcode does not
    have returns whatever bytes sit there."""
    bhs: bytes
    ahs: bytes = b""
    data: bytes = b""

    @classmethod
    def parse(cls, raw: bytes) -> "Pdu":
        """Parse one complete PDU without digests from raw bytes."""
        if len(raw) < BHS_SIZE:
            raise ValueError("short PDU")
        ahs_len = raw[4] * 4
        dsl = int.from_bytes(raw[5:8], "big")
        return cls(bytes(raw[:48]), bytes(raw[48:48 + ahs_len]),
                   bytes(raw[48 + ahs_len:48 + ahs_len + dsl]))

    def _u32(self, off: int) -> int:
        return struct.unpack_from(">I", self.bhs, off)[0]

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"opcode-0x{self.opcode:02x}")

    @property
    def immediate(self) -> bool:
        return bool(self.bhs[0] & FLAG_IMMEDIATE)

    @property
    def flags(self) -> int:
        return self.bhs[1]

    @property
    def final(self) -> bool:
        return bool(self.bhs[1] & FLAG_FINAL)

    @property
    def ahs_len(self) -> int:
        return self.bhs[4] * 4

    @property
    def dsl(self) -> int:
        return int.from_bytes(self.bhs[5:8], "big")

    @property
    def lun_raw(self) -> bytes:
        return self.bhs[8:16]

    @property
    def lun(self) -> int:
        return decode_lun(self.bhs[8:16])

    @property
    def itt(self) -> int:
        return self._u32(16)

    @property
    def ttt(self) -> int:
        return self._u32(20)

    @property
    def stat_sn(self) -> int:
        return self._u32(24)

    @property
    def exp_cmd_sn(self) -> int:
        return self._u32(28)

    @property
    def max_cmd_sn(self) -> int:
        return self._u32(32)

    # SCSI Response / Data-In / R2T
    @property
    def response(self) -> int:
        return self.bhs[2]

    @property
    def status(self) -> int:
        return self.bhs[3]

    @property
    def data_sn(self) -> int:
        """DataSN (Data-In), R2TSN (R2T), ExpDataSN (SCSI Response)."""
        return self._u32(36)

    r2t_sn = data_sn
    exp_data_sn = data_sn

    @property
    def buffer_offset(self) -> int:
        return self._u32(40)

    @property
    def desired_length(self) -> int:
        """Desired Data Transfer Length of an R2T."""
        return self._u32(44)

    @property
    def bidi_residual_count(self) -> int:
        return self._u32(40)

    @property
    def residual_count(self) -> int:
        return self._u32(44)

    # Login Response
    @property
    def transit(self) -> bool:
        return bool(self.bhs[1] & LOGIN_FLAG_TRANSIT)

    @property
    def cont(self) -> bool:
        return bool(self.bhs[1] & LOGIN_FLAG_CONTINUE)

    @property
    def csg(self) -> int:
        return (self.bhs[1] >> 2) & 3

    @property
    def nsg(self) -> int:
        return self.bhs[1] & 3

    @property
    def isid(self) -> bytes:
        return self.bhs[8:14]

    @property
    def tsih(self) -> int:
        return struct.unpack_from(">H", self.bhs, 14)[0]

    @property
    def status_class(self) -> int:
        return self.bhs[36]

    @property
    def status_detail(self) -> int:
        return self.bhs[37]

    # Logout Response
    @property
    def time2wait(self) -> int:
        return struct.unpack_from(">H", self.bhs, 40)[0]

    @property
    def time2retain(self) -> int:
        return struct.unpack_from(">H", self.bhs, 42)[0]

    # Reject
    @property
    def reason(self) -> int:
        return self.bhs[2]

    @property
    def rejected_bhs(self) -> bytes:
        return self.data[:48]

    # Async Message
    @property
    def async_event(self) -> int:
        return self.bhs[36]

    @property
    def async_vcode(self) -> int:
        return self.bhs[37]

    @property
    def async_params(self) -> tuple[int, int, int]:
        return struct.unpack_from(">HHH", self.bhs, 38)

    # Text / Login data
    @property
    def keys(self) -> list[tuple[str, str]]:
        return decode_keys(self.data)

    def __repr__(self) -> str:
        return (f"<Pdu {self.name} flags=0x{self.flags:02x} itt=0x{self.itt:08x} "
                f"dsl={self.dsl}>")


def parse_sense(sense: bytes) -> tuple[int, int, int]:
    """(sense key, ASC, ASCQ) of fixed (0x70/0x71) or descriptor
    (0x72/0x73) format sense data."""
    if len(sense) < 2:
        return 0, 0, 0
    code = sense[0] & 0x7F
    if code in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2] if len(sense) > 2 else 0, sense[3] if len(sense) > 3 else 0
    key = sense[2] & 0x0F if len(sense) > 2 else 0
    asc = sense[12] if len(sense) > 12 else 0
    ascq = sense[13] if len(sense) > 13 else 0
    return key, asc, ascq


def parse_read_capacity16(data: bytes) -> tuple[int, int]:
    """(last LBA, logical block length) from READ CAPACITY(16) data."""
    return struct.unpack_from(">QI", data, 0)


def parse_report_luns(data: bytes) -> list[int]:
    """LUN numbers listed in REPORT LUNS data."""
    n = struct.unpack_from(">I", data, 0)[0] // 8
    return [decode_lun(data[8 + 8 * i:16 + 8 * i]) for i in range(n)
            if 16 + 8 * i <= len(data)]
