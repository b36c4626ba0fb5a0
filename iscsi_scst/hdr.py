"""iSCSI PDU codec: opcodes, flags, and packing/unpacking of the 48-byte
Basic Header Segment.

Twin of iscsi-scst/kernel/iscsi_hdr.h, following RFC 7143 section 11.

Contexts: pure functions on buffers; no kshim, no state, no clock. Callable
from anywhere.

Differs from iscsi_hdr.h: headers are not C structs overlaid on memory;
field offsets are constants and the hot fields are read with precompiled
struct formats straight from the receive buffer, and response headers are
packed into preallocated 48-byte bytearrays.
"""
from __future__ import annotations

import struct

BHS_SIZE = 48
ISCSI_RESERVED_TAG = 0xFFFFFFFF

# Initiator opcodes
ISCSI_OP_NOP_OUT = 0x00
ISCSI_OP_SCSI_CMD = 0x01
ISCSI_OP_SCSI_TASK_MGT_MSG = 0x02
ISCSI_OP_LOGIN_CMD = 0x03
ISCSI_OP_TEXT_CMD = 0x04
ISCSI_OP_SCSI_DATA_OUT = 0x05
ISCSI_OP_LOGOUT_CMD = 0x06
ISCSI_OP_SNACK_CMD = 0x10
# Target opcodes
ISCSI_OP_NOP_IN = 0x20
ISCSI_OP_SCSI_RSP = 0x21
ISCSI_OP_SCSI_TASK_MGT_RSP = 0x22
ISCSI_OP_LOGIN_RSP = 0x23
ISCSI_OP_TEXT_RSP = 0x24
ISCSI_OP_SCSI_DATA_IN = 0x25
ISCSI_OP_LOGOUT_RSP = 0x26
ISCSI_OP_R2T = 0x31
ISCSI_OP_ASYNC_MSG = 0x32
ISCSI_OP_REJECT = 0x3F

ISCSI_OPCODE_MASK = 0x3F
ISCSI_OP_IMMEDIATE = 0x40

ISCSI_FLG_FINAL = 0x80
ISCSI_FLG_CONTINUE = 0x40
# SCSI Command flags
ISCSI_CMD_READ = 0x40
ISCSI_CMD_WRITE = 0x20
ISCSI_CMD_ATTR_MASK = 0x07
# SCSI Response / Data-In flags
ISCSI_FLG_BIRESID_OVERFLOW = 0x10
ISCSI_FLG_BIRESID_UNDERFLOW = 0x08
ISCSI_FLG_RESID_OVERFLOW = 0x04
ISCSI_FLG_RESID_UNDERFLOW = 0x02
ISCSI_FLG_DATA_ACK = 0x40
ISCSI_FLG_STATUS = 0x01
# Login flags
ISCSI_FLG_TRANSIT = 0x80
ISCSI_FLG_CSG_MASK = 0x0C
ISCSI_FLG_NSG_MASK = 0x03

ISCSI_RESPONSE_COMMAND_COMPLETED = 0x00
ISCSI_RESPONSE_TARGET_FAILURE = 0x01

# Reject reasons (RFC 7143 11.17.1)
ISCSI_REASON_DATA_DIGEST_ERROR = 0x02
ISCSI_REASON_SNACK_REJECT = 0x03
ISCSI_REASON_PROTOCOL_ERROR = 0x04
ISCSI_REASON_UNSUPPORTED_COMMAND = 0x05
ISCSI_REASON_IMMEDIATE_COMMAND_REJECT = 0x06
ISCSI_REASON_TASK_IN_PROGRESS = 0x07
ISCSI_REASON_INVALID_DATA_ACK = 0x08
ISCSI_REASON_INVALID_PDU_FIELD = 0x09
ISCSI_REASON_OUT_OF_RESOURCES = 0x0A
ISCSI_REASON_NEGOTIATION_RESET = 0x0B
ISCSI_REASON_WAITING_LOGOUT = 0x0C

# Logout reasons and responses
ISCSI_LOGOUT_CLOSE_SESSION = 0
ISCSI_LOGOUT_CLOSE_CONNECTION = 1
ISCSI_LOGOUT_REMOVE_CONN_FOR_RECOVERY = 2
ISCSI_LOGOUT_SUCCESS = 0
ISCSI_LOGOUT_CID_NOT_FOUND = 1
ISCSI_LOGOUT_RECOVERY_UNSUPPORTED = 2
ISCSI_LOGOUT_CLEANUP_FAILED = 3

# Task management functions and responses (RFC 7143 11.5, 11.6)
ISCSI_FUNCTION_ABORT_TASK = 1
ISCSI_FUNCTION_ABORT_TASK_SET = 2
ISCSI_FUNCTION_CLEAR_ACA = 3
ISCSI_FUNCTION_CLEAR_TASK_SET = 4
ISCSI_FUNCTION_LOGICAL_UNIT_RESET = 5
ISCSI_FUNCTION_TARGET_WARM_RESET = 6
ISCSI_FUNCTION_TARGET_COLD_RESET = 7
ISCSI_FUNCTION_TASK_REASSIGN = 8
ISCSI_RESPONSE_FUNCTION_COMPLETE = 0
ISCSI_RESPONSE_UNKNOWN_TASK = 1
ISCSI_RESPONSE_UNKNOWN_LUN = 2
ISCSI_RESPONSE_TASK_ALLEGIANT = 3
ISCSI_RESPONSE_ALLEGIANCE_REASSIGNMENT_UNSUPPORTED = 4
ISCSI_RESPONSE_FUNCTION_UNSUPPORTED = 5
ISCSI_RESPONSE_NO_AUTHORIZATION = 6
ISCSI_RESPONSE_FUNCTION_REJECTED = 255

# Async events
ISCSI_ASYNC_SCSI = 0
ISCSI_ASYNC_LOGOUT_REQUEST = 1
ISCSI_ASYNC_DROP_CONNECTION = 2
ISCSI_ASYNC_DROP_SESSION = 3
ISCSI_ASYNC_PARAM_REQUEST = 4


class ProtocolError(Exception):
    """A PDU that breaks RFC 7143; `reason` is the Reject reason to send,
    or None when the connection must simply be dropped."""

    def __init__(self, msg: str, reason: int | None = ISCSI_REASON_PROTOCOL_ERROR) -> None:
        super().__init__(msg)
        self.reason = reason


# Common BHS words: opcode, flags, b2, b3, ahs_len(4 bytes: ahs + dsl), LUN, ITT
common_hdr = struct.Struct(">BBBBI8sI")
_common = common_hdr
# SCSI Command: EDTL, CmdSN, ExpStatSN, CDB
_scsi_cmd = struct.Struct(">III16s")
# Data-Out: TTT, (reserved), ExpStatSN, (reserved), DataSN, BufferOffset
_data_out = struct.Struct(">I4xI4xII")
# Generic: word at 20, 24, 28 (TTT/CID, CmdSN, ExpStatSN)
_w20_24_28 = struct.Struct(">III")
_u32 = struct.Struct(">I")

# Response packers: whole BHS in one pack_into.
_data_in = struct.Struct(">BBBBI8sIIIIIIII")     # 0..47
_scsi_rsp = struct.Struct(">BBBBI8sIIIIIIII")
_r2t = struct.Struct(">BBBBI8sIIIIIIII")
_generic_rsp = struct.Struct(">BBBBI8sIIIIIIII")


def unpack_common(buf: "memoryview | bytes | bytearray",
                  off: int = 0) -> tuple[int, int, int, int, int, int, bytes, int]:
    """(opcode byte, flags, b2, b3, ahs_len bytes, dsl, lun, itt) of a BHS at off."""
    b0, flags, b2, b3, lens, lun, itt = _common.unpack_from(buf, off)
    return b0, flags, b2, b3, (lens >> 24) * 4, lens & 0xFFFFFF, lun, itt


def unpack_scsi_cmd(buf: "memoryview | bytes | bytearray", off: int = 0) -> tuple[int, int, int, bytes]:
    """(edtl, cmd_sn, exp_stat_sn, cdb) of a SCSI Command BHS."""
    return _scsi_cmd.unpack_from(buf, off + 20)


def unpack_data_out(buf: "memoryview | bytes | bytearray", off: int = 0) -> tuple[int, int, int, int]:
    """(ttt, exp_stat_sn, data_sn, buffer_offset) of a Data-Out BHS."""
    return _data_out.unpack_from(buf, off + 20)


def unpack_words(buf: "memoryview | bytes | bytearray", off: int = 0) -> tuple[int, int, int]:
    """The three words at bytes 20, 24, 28: (TTT or CID, CmdSN, ExpStatSN)."""
    return _w20_24_28.unpack_from(buf, off + 20)


def u32_at(buf: "memoryview | bytes | bytearray", pos: int) -> int:
    return _u32.unpack_from(buf, pos)[0]


def pad4(n: int) -> int:
    return (-n) & 3


# The raw Data-In packer (all sixteen fields in order), for the hot path.
pack_data_in_raw = _data_in.pack_into


def pack_data_in(buf: bytearray, flags: int, status: int, dsl: int, lun: bytes, itt: int,
                 stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, data_sn: int,
                 offset: int, residual: int) -> None:
    _data_in.pack_into(buf, 0, ISCSI_OP_SCSI_DATA_IN, flags, 0, status, dsl, lun, itt,
                       ISCSI_RESERVED_TAG, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, offset, residual)


pack_scsi_rsp_raw = _scsi_rsp.pack_into


def pack_scsi_rsp(buf: bytearray, flags: int, response: int, status: int, dsl: int, itt: int,
                  stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, exp_data_sn: int,
                  bidi_residual: int, residual: int) -> None:
    _scsi_rsp.pack_into(buf, 0, ISCSI_OP_SCSI_RSP, 0x80 | flags, response, status, dsl,
                        bytes(8), itt, 0, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn,
                        bidi_residual, residual)


def pack_r2t(buf: bytearray, lun: bytes, itt: int, ttt: int, stat_sn: int, exp_cmd_sn: int,
             max_cmd_sn: int, r2t_sn: int, offset: int, length: int) -> None:
    _r2t.pack_into(buf, 0, ISCSI_OP_R2T, 0x80, 0, 0, 0, lun, itt, ttt, stat_sn, exp_cmd_sn,
                   max_cmd_sn, r2t_sn, offset, length)


def pack_generic_rsp(buf: bytearray, opcode: int, flags: int, b2: int, b3: int, dsl: int,
                     lun: bytes, itt: int, w20: int, stat_sn: int, exp_cmd_sn: int,
                     max_cmd_sn: int, w36: int = 0, w40: int = 0, w44: int = 0) -> None:
    """Any target PDU whose words 20-47 are plain 32-bit fields."""
    _generic_rsp.pack_into(buf, 0, opcode, flags, b2, b3, dsl, lun, itt, w20, stat_sn,
                           exp_cmd_sn, max_cmd_sn, w36, w40, w44)


def pack_login_rsp(buf: bytearray, flags: int, version_max: int, version_active: int, dsl: int,
                   isid: bytes, tsih: int, itt: int, stat_sn: int, exp_cmd_sn: int,
                   max_cmd_sn: int, status_class: int, status_detail: int) -> None:
    lun = isid + tsih.to_bytes(2, "big")
    w36 = (status_class << 24) | (status_detail << 16)
    _generic_rsp.pack_into(buf, 0, ISCSI_OP_LOGIN_RSP, flags, version_max, version_active, dsl,
                           lun, itt, 0, stat_sn, exp_cmd_sn, max_cmd_sn, w36, 0, 0)


def pack_logout_rsp(buf: bytearray, response: int, itt: int, stat_sn: int, exp_cmd_sn: int,
                    max_cmd_sn: int, time2wait: int, time2retain: int) -> None:
    _generic_rsp.pack_into(buf, 0, ISCSI_OP_LOGOUT_RSP, 0x80, response, 0, 0, bytes(8), itt,
                           0, stat_sn, exp_cmd_sn, max_cmd_sn, 0,
                           (time2wait << 16) | time2retain, 0)


def login_fields(buf: "memoryview | bytes | bytearray") -> dict:
    """The Login Request fields (RFC 7143 11.12) of a BHS."""
    b = bytes(buf[:BHS_SIZE])
    return dict(transit=bool(b[1] & ISCSI_FLG_TRANSIT), cont=bool(b[1] & ISCSI_FLG_CONTINUE),
                csg=(b[1] & ISCSI_FLG_CSG_MASK) >> 2, nsg=b[1] & ISCSI_FLG_NSG_MASK,
                version_max=b[2], version_min=b[3], isid=b[8:14],
                tsih=int.from_bytes(b[14:16], "big"), itt=u32_at(b, 16),
                cid=int.from_bytes(b[20:22], "big"), cmd_sn=u32_at(b, 24),
                exp_stat_sn=u32_at(b, 28))


def sn_lt(a: int, b: int) -> bool:
    """RFC 1982 serial-number a < b on 32 bits."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)
