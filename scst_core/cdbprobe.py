"""SCSI command decoding: which commands exist, which way their data moves,
how long the transfer is and where the LBA sits.

Twin of scst/src/scst_cdbprobe.h (the scst_scsi_op_table) and of
scst_get_cdb_info() in scst/src/scst_lib.c, restricted to the direct-access
(SBC-3) device type and the SPC-4 commands every device type shares.

Contexts: any; scst_get_cdb_info() never sleeps. The core calls it in the
PARSE state before the dev handler's parse().

Differs from SCST: one table for disk devices instead of a table with a
per-device-type key string; service-action commands (0x9E, 0x9F, 0xA3,
0xA4) have one entry per service action, looked up by (opcode, action).
Protection information is not decoded here: RDPROTECT/WRPROTECT/VRPROTECT
are left to the dev handler, which knows whether the device has PI.
"""
from __future__ import annotations

import struct
from typing import Callable

import attrs

from scst_core.const import CONTROL_BYTE_LINK_BIT
from scst_core.lib import scst_set_invalid_field_in_cdb
from scst_core.scst import (SCST_DATA_NONE, SCST_DATA_READ, SCST_DATA_WRITE, SCST_EXCL_ACCESS_ALLOWED,
                            SCST_FULLY_LOCAL_CMD, SCST_IMPLICIT_HQ, SCST_INFO_VALID, SCST_LOCAL_CMD,
                            SCST_LONG_TIMEOUT, SCST_REG_RESERVE_ALLOWED, SCST_SERIALIZED,
                            SCST_SKIP_UA, SCST_SMALL_TIMEOUT, SCST_STRICTLY_SERIALIZED,
                            SCST_TRANSFER_LEN_TYPE_FIXED, SCST_UNKNOWN_LENGTH, SCST_WRITE_EXCL_ALLOWED,
                            SCST_WRITE_MEDIUM, scst_cmd)

# Design notes:
# - An entry says how to find the LBA (lba_off/lba_len) and the transfer
#   length (len_off/len_len) in the CDB, and a decoder (get_cdb_info) that
#   turns them into cmd.lba, cmd.data_len, cmd.bufflen and, for commands
#   whose direction depends on a CDB bit (VERIFY's BYTCHK), cmd.data_direction.
# - Length semantics: for block commands the field counts logical blocks and
#   data_len = blocks * block_size; for allocation-length and parameter-list
#   commands the field counts bytes and data_len = bufflen = that number.
# - Return contract of scst_get_cdb_info: 0 known and decoded; 1 unknown
#   opcode or service action (the core answers INVALID COMMAND OPERATION
#   CODE); -1 the CDB was invalid and the sense is already set.

# Flag groups used below (SPC-4 table 46 / SBC-3 table 13: what a
# non-holder may run under a persistent reservation; SPC-2 for RESERVE).
_ALL_ALLOWED = SCST_REG_RESERVE_ALLOWED | SCST_WRITE_EXCL_ALLOWED | SCST_EXCL_ACCESS_ALLOWED
_BLOCK_READ = SCST_TRANSFER_LEN_TYPE_FIXED | SCST_INFO_VALID | SCST_WRITE_EXCL_ALLOWED
_BLOCK_WRITE = SCST_TRANSFER_LEN_TYPE_FIXED | SCST_INFO_VALID | SCST_WRITE_MEDIUM


@attrs.frozen
class scst_sdbops:
    """One row of the command table."""
    ops: int                    # operation code
    op_name: str
    direction: int              # SCST_DATA_* (a decoder may override)
    flags: int                  # SCST_* op flags
    get_cdb_info: Callable[[scst_cmd, "scst_sdbops"], int]
    sa: int = -1                # service action, -1 when the opcode has none
    lba_off: int = 0
    lba_len: int = 0            # 0: the command has no LBA
    len_off: int = 0
    len_len: int = 0            # 0: no transfer length field


_CDB_LEN_BY_GROUP = (6, 10, 10, 0, 16, 12, 0, 0)


def scst_get_cdb_len(op: int) -> int:
    """CDB length implied by the group code of opcode op; 0 if variable or
    vendor specific."""
    return _CDB_LEN_BY_GROUP[op >> 5]


def _field(cdb: bytes, off: int, n: int) -> int:
    return int.from_bytes(cdb[off:off + n], "big")


def _block_shift(cmd: scst_cmd) -> int:
    dev = cmd.dev
    return dev.block_shift if dev is not None else 9


# ---------------------------------------------------------------- decoders

def get_cdb_info_none(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    cmd.bufflen = 0
    cmd.data_len = 0
    return 0


def get_cdb_info_len(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """Allocation length or parameter list length, in bytes."""
    n = _field(cmd.cdb, sdbops.len_off, sdbops.len_len)
    cmd.bufflen = n
    cmd.data_len = n
    return 0


def get_cdb_info_lba_alloc_len(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """An LBA plus an allocation length in bytes (GET LBA STATUS)."""
    cmd.lba = _field(cmd.cdb, sdbops.lba_off, sdbops.lba_len)
    return get_cdb_info_len(cmd, sdbops)


def get_cdb_info_read_capacity(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    cmd.bufflen = 8
    cmd.data_len = 8
    return 0


def get_cdb_info_lba_3_len_1_256(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """READ(6)/WRITE(6): 21-bit LBA; a length of 0 means 256 blocks."""
    cdb = cmd.cdb
    cmd.lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    n = cdb[4] or 256
    cmd.data_len = n << _block_shift(cmd)
    cmd.bufflen = cmd.data_len
    return 0


def get_cdb_info_lba_len(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """Block command: LBA and a transfer length in blocks, data both ways
    equal to the blocks transferred."""
    lba, n = _lba_len_unpack[sdbops.ops](cmd.cdb)
    cmd.lba = lba
    dev = cmd.dev
    cmd.data_len = cmd.bufflen = n << (dev.block_shift if dev is not None else 9)
    return 0


def get_cdb_info_lba_len_none(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """Block range without data (SYNCHRONIZE CACHE, PRE-FETCH)."""
    cdb = cmd.cdb
    cmd.lba = _field(cdb, sdbops.lba_off, sdbops.lba_len)
    cmd.data_len = _field(cdb, sdbops.len_off, sdbops.len_len) << _block_shift(cmd) \
        if sdbops.len_len else 0
    cmd.bufflen = 0
    return 0


def get_cdb_info_verify(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """VERIFY(10/12/16): BYTCHK (byte 1 bits 2:1) 00b no data, 01b compare
    the whole range, 11b compare one block against every block of it."""
    cdb = cmd.cdb
    cmd.lba = _field(cdb, sdbops.lba_off, sdbops.lba_len)
    shift = _block_shift(cmd)
    cmd.data_len = _field(cdb, sdbops.len_off, sdbops.len_len) << shift
    bytchk = (cdb[1] >> 1) & 0x03
    if bytchk == 0:
        cmd.data_direction = SCST_DATA_NONE
        cmd.bufflen = 0
    elif bytchk == 1:
        cmd.data_direction = SCST_DATA_WRITE
        cmd.bufflen = cmd.data_len
    elif bytchk == 3:
        cmd.data_direction = SCST_DATA_WRITE
        cmd.bufflen = (1 << shift) if cmd.data_len else 0
    else:
        scst_set_invalid_field_in_cdb(cmd, 1, 2)
        return -1
    return 0


def get_cdb_info_write_same(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """WRITE SAME(10/16): one block of data out (none with NDOB), applied
    to the range."""
    cdb = cmd.cdb
    cmd.lba = _field(cdb, sdbops.lba_off, sdbops.lba_len)
    shift = _block_shift(cmd)
    cmd.data_len = _field(cdb, sdbops.len_off, sdbops.len_len) << shift
    ndob = cdb[0] == 0x93 and cdb[1] & 0x01
    if ndob:
        cmd.data_direction = SCST_DATA_NONE
        cmd.bufflen = 0
    else:
        cmd.bufflen = 1 << shift
    return 0


def get_cdb_info_compare_and_write(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS in byte 13; the data out
    holds the verify data then the write data."""
    cdb = cmd.cdb
    cmd.lba = _field(cdb, 2, 8)
    cmd.data_len = cdb[13] << _block_shift(cmd)
    cmd.bufflen = 2 * cmd.data_len
    return 0


def get_cdb_info_format_unit(cmd: scst_cmd, sdbops: scst_sdbops) -> int:
    """FORMAT UNIT: a parameter list follows only with FMTDATA; its length
    is not in the CDB, so take what the initiator announced."""
    if cmd.cdb[1] & 0x10:
        cmd.data_direction = SCST_DATA_WRITE
        cmd.op_flags |= SCST_UNKNOWN_LENGTH
        cmd.bufflen = cmd.expected_transfer_len
    else:
        cmd.data_direction = SCST_DATA_NONE
        cmd.bufflen = 0
    cmd.data_len = cmd.bufflen
    return 0


# ---------------------------------------------------------------- the table

def _op(ops: int, name: str, direction: int, flags: int,
        fn: Callable[[scst_cmd, scst_sdbops], int] = get_cdb_info_none, *,
        sa: int = -1, lba: tuple[int, int] = (0, 0), ln: tuple[int, int] = (0, 0)) -> scst_sdbops:
    return scst_sdbops(ops, name, direction, flags, fn, sa, lba[0], lba[1], ln[0], ln[1])


_R = SCST_DATA_READ
_W = SCST_DATA_WRITE
_N = SCST_DATA_NONE
_len = get_cdb_info_len
_blk = get_cdb_info_lba_len

scst_scsi_op_table: tuple[scst_sdbops, ...] = (
    # 6-byte CDBs
    _op(0x00, "TEST UNIT READY", _N, SCST_SMALL_TIMEOUT | SCST_IMPLICIT_HQ | _ALL_ALLOWED),
    _op(0x01, "REZERO UNIT", _N, SCST_LONG_TIMEOUT),
    _op(0x03, "REQUEST SENSE", _R, SCST_SMALL_TIMEOUT | SCST_SKIP_UA | _ALL_ALLOWED, _len, ln=(4, 1)),
    _op(0x04, "FORMAT UNIT", _N, SCST_LONG_TIMEOUT | SCST_WRITE_MEDIUM | SCST_STRICTLY_SERIALIZED,
        get_cdb_info_format_unit),
    _op(0x08, "READ(6)", _R, _BLOCK_READ, get_cdb_info_lba_3_len_1_256, lba=(1, 3), ln=(4, 1)),
    _op(0x0A, "WRITE(6)", _W, _BLOCK_WRITE, get_cdb_info_lba_3_len_1_256, lba=(1, 3), ln=(4, 1)),
    _op(0x12, "INQUIRY", _R, SCST_SMALL_TIMEOUT | SCST_IMPLICIT_HQ | SCST_SKIP_UA | _ALL_ALLOWED,
        _len, ln=(3, 2)),
    _op(0x15, "MODE SELECT(6)", _W, SCST_STRICTLY_SERIALIZED, _len, ln=(4, 1)),
    _op(0x16, "RESERVE(6)", _N, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED
        | SCST_WRITE_EXCL_ALLOWED | SCST_EXCL_ACCESS_ALLOWED),
    _op(0x17, "RELEASE(6)", _N, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED | _ALL_ALLOWED),
    _op(0x1A, "MODE SENSE(6)", _R, SCST_SMALL_TIMEOUT | SCST_WRITE_EXCL_ALLOWED, _len, ln=(4, 1)),
    _op(0x1B, "START STOP UNIT", _N, SCST_LONG_TIMEOUT),
    _op(0x1C, "RECEIVE DIAGNOSTIC RESULTS", _R, SCST_WRITE_EXCL_ALLOWED, _len, ln=(3, 2)),
    _op(0x1D, "SEND DIAGNOSTIC", _W, 0, _len, ln=(3, 2)),
    _op(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", _N, SCST_LONG_TIMEOUT),
    # 10-byte CDBs
    _op(0x25, "READ CAPACITY(10)", _R, SCST_IMPLICIT_HQ | _ALL_ALLOWED, get_cdb_info_read_capacity),
    _op(0x28, "READ(10)", _R, _BLOCK_READ, _blk, lba=(2, 4), ln=(7, 2)),
    _op(0x2A, "WRITE(10)", _W, _BLOCK_WRITE, _blk, lba=(2, 4), ln=(7, 2)),
    _op(0x2B, "SEEK(10)", _N, 0, get_cdb_info_lba_len_none, lba=(2, 4)),
    _op(0x2E, "WRITE AND VERIFY(10)", _W, _BLOCK_WRITE, _blk, lba=(2, 4), ln=(7, 2)),
    _op(0x2F, "VERIFY(10)", _N, _BLOCK_READ, get_cdb_info_verify, lba=(2, 4), ln=(7, 2)),
    _op(0x34, "PRE-FETCH(10)", _N, SCST_INFO_VALID | SCST_WRITE_EXCL_ALLOWED,
        get_cdb_info_lba_len_none, lba=(2, 4), ln=(7, 2)),
    _op(0x35, "SYNCHRONIZE CACHE(10)", _N, SCST_INFO_VALID, get_cdb_info_lba_len_none,
        lba=(2, 4), ln=(7, 2)),
    _op(0x37, "READ DEFECT DATA(10)", _R, SCST_WRITE_EXCL_ALLOWED, _len, ln=(7, 2)),
    _op(0x3B, "WRITE BUFFER", _W, SCST_SMALL_TIMEOUT, _len, ln=(6, 3)),
    _op(0x3C, "READ BUFFER", _R, SCST_SMALL_TIMEOUT, _len, ln=(6, 3)),
    _op(0x41, "WRITE SAME(10)", _W, _BLOCK_WRITE, get_cdb_info_write_same, lba=(2, 4), ln=(7, 2)),
    _op(0x42, "UNMAP", _W, SCST_WRITE_MEDIUM, _len, ln=(7, 2)),
    # MMC-6 commands (vcdrom answers them; disks reject them in exec)
    _op(0x43, "READ TOC/PMA/ATIP", _R, SCST_SMALL_TIMEOUT | SCST_WRITE_EXCL_ALLOWED, _len,
        ln=(7, 2)),
    _op(0x46, "GET CONFIGURATION", _R, SCST_SMALL_TIMEOUT | SCST_IMPLICIT_HQ | _ALL_ALLOWED, _len,
        ln=(7, 2)),
    _op(0x4A, "GET EVENT STATUS NOTIFICATION", _R, SCST_SMALL_TIMEOUT | SCST_IMPLICIT_HQ
        | _ALL_ALLOWED, _len, ln=(7, 2)),
    _op(0x51, "READ DISC INFORMATION", _R, SCST_SMALL_TIMEOUT | SCST_WRITE_EXCL_ALLOWED, _len,
        ln=(7, 2)),
    _op(0x48, "SANITIZE", _W, SCST_LONG_TIMEOUT | SCST_WRITE_MEDIUM | SCST_STRICTLY_SERIALIZED,
        _len, ln=(7, 2)),
    _op(0x4C, "LOG SELECT", _W, SCST_STRICTLY_SERIALIZED, _len, ln=(7, 2)),
    _op(0x4D, "LOG SENSE", _R, SCST_SMALL_TIMEOUT | _ALL_ALLOWED, _len, ln=(7, 2)),
    _op(0x55, "MODE SELECT(10)", _W, SCST_STRICTLY_SERIALIZED, _len, ln=(7, 2)),
    _op(0x56, "RESERVE(10)", _N, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED
        | SCST_WRITE_EXCL_ALLOWED | SCST_EXCL_ACCESS_ALLOWED),
    _op(0x57, "RELEASE(10)", _N, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED | _ALL_ALLOWED),
    _op(0x5A, "MODE SENSE(10)", _R, SCST_SMALL_TIMEOUT | SCST_WRITE_EXCL_ALLOWED, _len, ln=(7, 2)),
    _op(0x5E, "PERSISTENT RESERVE IN", _R, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED
        | SCST_WRITE_EXCL_ALLOWED | SCST_EXCL_ACCESS_ALLOWED, _len, ln=(7, 2)),
    _op(0x5F, "PERSISTENT RESERVE OUT", _W, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_SERIALIZED
        | SCST_WRITE_EXCL_ALLOWED | SCST_EXCL_ACCESS_ALLOWED, _len, ln=(5, 4)),
    # 16-byte CDBs
    _op(0x83, "EXTENDED COPY", _W, SCST_WRITE_MEDIUM, _len, ln=(10, 4)),
    _op(0x84, "RECEIVE COPY RESULTS", _R, 0, _len, ln=(10, 4)),
    _op(0x88, "READ(16)", _R, _BLOCK_READ, _blk, lba=(2, 8), ln=(10, 4)),
    _op(0x89, "COMPARE AND WRITE", _W, _BLOCK_WRITE | SCST_SERIALIZED, get_cdb_info_compare_and_write,
        lba=(2, 8), ln=(13, 1)),
    _op(0x8A, "WRITE(16)", _W, _BLOCK_WRITE, _blk, lba=(2, 8), ln=(10, 4)),
    _op(0x8B, "ORWRITE(16)", _W, _BLOCK_WRITE, _blk, lba=(2, 8), ln=(10, 4)),
    _op(0x8E, "WRITE AND VERIFY(16)", _W, _BLOCK_WRITE, _blk, lba=(2, 8), ln=(10, 4)),
    _op(0x8F, "VERIFY(16)", _N, _BLOCK_READ, get_cdb_info_verify, lba=(2, 8), ln=(10, 4)),
    _op(0x90, "PRE-FETCH(16)", _N, SCST_INFO_VALID | SCST_WRITE_EXCL_ALLOWED,
        get_cdb_info_lba_len_none, lba=(2, 8), ln=(10, 4)),
    _op(0x91, "SYNCHRONIZE CACHE(16)", _N, SCST_INFO_VALID, get_cdb_info_lba_len_none,
        lba=(2, 8), ln=(10, 4)),
    _op(0x93, "WRITE SAME(16)", _W, _BLOCK_WRITE, get_cdb_info_write_same, lba=(2, 8), ln=(10, 4)),
    _op(0x9C, "WRITE ATOMIC(16)", _W, _BLOCK_WRITE, _blk, lba=(2, 8), ln=(12, 2)),
    _op(0x9E, "READ CAPACITY(16)", _R, SCST_IMPLICIT_HQ | _ALL_ALLOWED, _len, sa=0x10, ln=(10, 4)),
    _op(0x9E, "GET LBA STATUS", _R, SCST_WRITE_EXCL_ALLOWED, get_cdb_info_lba_alloc_len, sa=0x12,
        lba=(2, 8), ln=(10, 4)),
    # 12-byte CDBs
    _op(0xA0, "REPORT LUNS", _R, SCST_SMALL_TIMEOUT | SCST_IMPLICIT_HQ | SCST_SKIP_UA
        | SCST_LOCAL_CMD | SCST_FULLY_LOCAL_CMD | _ALL_ALLOWED, _len, ln=(6, 4)),
    _op(0xA2, "SECURITY PROTOCOL IN", _R, SCST_SMALL_TIMEOUT, _len, ln=(6, 4)),
    _op(0xA3, "REPORT IDENTIFYING INFORMATION", _R, SCST_SMALL_TIMEOUT | _ALL_ALLOWED, _len,
        sa=0x05, ln=(6, 4)),
    _op(0xA3, "REPORT TARGET PORT GROUPS", _R, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | _ALL_ALLOWED,
        _len, sa=0x0A, ln=(6, 4)),
    _op(0xA3, "REPORT SUPPORTED OPERATION CODES", _R, SCST_SMALL_TIMEOUT | _ALL_ALLOWED, _len,
        sa=0x0C, ln=(6, 4)),
    _op(0xA3, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", _R, SCST_SMALL_TIMEOUT | _ALL_ALLOWED,
        _len, sa=0x0D, ln=(6, 4)),
    _op(0xA3, "REPORT TIMESTAMP", _R, SCST_SMALL_TIMEOUT | _ALL_ALLOWED, _len, sa=0x0F, ln=(6, 4)),
    _op(0xA4, "SET TARGET PORT GROUPS", _W, SCST_SMALL_TIMEOUT | SCST_LOCAL_CMD | SCST_STRICTLY_SERIALIZED,
        _len, sa=0x0A, ln=(6, 4)),
    _op(0xA8, "READ(12)", _R, _BLOCK_READ, _blk, lba=(2, 4), ln=(6, 4)),
    _op(0xAA, "WRITE(12)", _W, _BLOCK_WRITE, _blk, lba=(2, 4), ln=(6, 4)),
    _op(0xAE, "WRITE AND VERIFY(12)", _W, _BLOCK_WRITE, _blk, lba=(2, 4), ln=(6, 4)),
    _op(0xAF, "VERIFY(12)", _N, _BLOCK_READ, get_cdb_info_verify, lba=(2, 4), ln=(6, 4)),
    _op(0xB5, "SECURITY PROTOCOL OUT", _W, SCST_SMALL_TIMEOUT, _len, ln=(6, 4)),
    _op(0xB7, "READ DEFECT DATA(12)", _R, SCST_WRITE_EXCL_ALLOWED, _len, ln=(6, 4)),
)

# Opcodes whose meaning depends on a service action in byte 1 (bits 4:0).
SERVICE_ACTION_OPCODES = frozenset((0x9E, 0x9F, 0xA3, 0xA4))


def _build_index() -> tuple[dict[int, scst_sdbops], dict[tuple[int, int], scst_sdbops]]:
    plain: dict[int, scst_sdbops] = {}
    by_sa: dict[tuple[int, int], scst_sdbops] = {}
    for e in scst_scsi_op_table:
        if e.sa >= 0:
            assert e.ops in SERVICE_ACTION_OPCODES, e
            assert (e.ops, e.sa) not in by_sa, e
            by_sa[(e.ops, e.sa)] = e
        else:
            assert e.ops not in SERVICE_ACTION_OPCODES and e.ops not in plain, e
            plain[e.ops] = e
    return plain, by_sa


_plain_ops, _sa_ops = _build_index()


def _lba_len_unpackers() -> dict[int, Callable[[bytes], tuple[int, ...]]]:
    """(LBA, length) readers for the READ/WRITE-style rows: one precompiled
    struct per opcode instead of two slicing conversions per command."""
    sizes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    out: dict[int, Callable[[bytes], tuple[int, ...]]] = {}
    for e in _plain_ops.values():
        if e.get_cdb_info is get_cdb_info_lba_len and e.lba_off + e.lba_len <= e.len_off:
            gap = e.len_off - e.lba_off - e.lba_len
            fmt = (f">{e.lba_off}x{sizes[e.lba_len]}" + (f"{gap}x" if gap else "")
                   + sizes[e.len_len])
            out[e.ops] = struct.Struct(fmt).unpack_from
    return out


_lba_len_unpack = _lba_len_unpackers()


def scst_lookup_op(cdb: bytes) -> scst_sdbops | None:
    """The table entry for this CDB (opcode and, where it has one, service
    action), or None when the command is not supported."""
    op = cdb[0]
    if op in SERVICE_ACTION_OPCODES:
        if len(cdb) < 2:
            return None
        return _sa_ops.get((op, cdb[1] & 0x1F))
    return _plain_ops.get(op)


def scst_op_supported(op: int, sa: int = -1) -> bool:
    """True if the table knows (op, sa); for REPORT SUPPORTED OPERATION CODES."""
    if op in SERVICE_ACTION_OPCODES:
        return (op, sa) in _sa_ops
    return op in _plain_ops


def scst_get_cdb_info(cmd: scst_cmd) -> int:
    """Decode cmd.cdb: fill cmd.op_name, op_flags, data_direction, lba,
    data_len and bufflen.

    Returns 0 when the command is known and decoded, 1 when the opcode (or
    its service action) is unknown, and -1 when the CDB is invalid, in
    which case the sense (ILLEGAL REQUEST, INVALID FIELD IN CDB with the
    field pointer) is already set on cmd.
    """
    cdb = cmd.cdb
    if not cdb:
        return 1
    op = cdb[0]
    # scst_lookup_op and scst_get_cdb_len, inline for the plain opcodes
    # (this runs once per command)
    sdbops = scst_lookup_op(cdb) if op in SERVICE_ACTION_OPCODES else _plain_ops.get(op)
    if sdbops is None:
        return 1
    cdb_len = _CDB_LEN_BY_GROUP[op >> 5]
    cmd.op_name = sdbops.op_name
    cmd.op_flags = sdbops.flags
    cmd.data_direction = sdbops.direction
    cmd.lba = 0
    if len(cdb) < cdb_len:
        # A short CDB cannot hold the fields; point at the last byte given.
        scst_set_invalid_field_in_cdb(cmd, len(cdb) - 1)
        return -1
    if cdb[cdb_len - 1] & CONTROL_BYTE_LINK_BIT:
        # Linked commands are obsolete in SAM-4/SPC-4 and not supported.
        scst_set_invalid_field_in_cdb(cmd, cdb_len - 1, 0)
        return -1
    decode = sdbops.get_cdb_info
    if decode is get_cdb_info_lba_len:
        # READ and WRITE: get_cdb_info_lba_len inline (one call less per command)
        lba, n = _lba_len_unpack[sdbops.ops](cdb)
        cmd.lba = lba
        dev = cmd.dev
        cmd.data_len = cmd.bufflen = n << (dev.block_shift if dev is not None else 9)
        return 0
    return decode(cmd, sdbops)
