"""Helpers shared by the core, target drivers and dev handlers: sense data,
response lengths, data buffers, LUN encoding.

Twin of the corresponding parts of scst/src/scst_lib.c.

Contexts: any; nothing here sleeps.

Differs from SCST: sense triples are (key, asc, ascq) tuples; the data
buffer helpers return memoryviews over the command's pages instead of
kmapped pointers.
"""
from __future__ import annotations

from kshim.scatterlist import sg_virt
from scst_core.const import (SAM_STAT_CHECK_CONDITION, SCST_SENSE_BUFFERSIZE,
                             SCST_STANDARD_SENSE_LEN, scst_sense_invalid_field_in_cdb,
                             scst_sense_invalid_field_in_parm_list)
from scst_core.scst import scst_cmd


def scst_build_sense(buf: bytearray, d_sense: bool, key: int, asc: int, ascq: int) -> int:
    """Fill buf with fixed (0x70) or descriptor (0x72) format sense; return its length."""
    if d_sense:
        buf[0:8] = bytes((0x72, key & 0x0F, asc, ascq, 0, 0, 0, 0))
        return 8
    buf[0:SCST_STANDARD_SENSE_LEN] = bytes(SCST_STANDARD_SENSE_LEN)
    buf[0] = 0x70
    buf[2] = key & 0x0F
    buf[7] = SCST_STANDARD_SENSE_LEN - 8
    buf[12] = asc
    buf[13] = ascq
    return SCST_STANDARD_SENSE_LEN


def _d_sense(cmd: scst_cmd) -> bool:
    return cmd.dev is not None and cmd.dev.d_sense


def scst_set_cmd_error(cmd: scst_cmd, sense: tuple[int, int, int]) -> None:
    """CHECK CONDITION with the given sense (key, asc, ascq)."""
    cmd.status = SAM_STAT_CHECK_CONDITION
    if cmd.sense is None:
        cmd.sense = bytearray(SCST_SENSE_BUFFERSIZE)
    cmd.sense_valid_len = scst_build_sense(cmd.sense, _d_sense(cmd), *sense)
    cmd.resp_data_len = 0


def _set_field_pointer(cmd: scst_cmd, sense: tuple[int, int, int], in_cdb: bool,
                       field_offs: int, bit_offs: int) -> None:
    scst_set_cmd_error(cmd, sense)
    sks = bytes((0x80 | (0x40 if in_cdb else 0) | ((0x08 | (bit_offs & 7)) if bit_offs >= 0 else 0),
                 (field_offs >> 8) & 0xFF, field_offs & 0xFF))
    buf = cmd.sense
    if _d_sense(cmd):
        # sense-key specific descriptor (type 2, length 6)
        buf[8:16] = bytes((0x02, 0x06, 0, 0)) + sks + b"\x00"
        buf[7] = 8
        cmd.sense_valid_len = 16
    else:
        buf[15:18] = sks


def scst_set_invalid_field_in_cdb(cmd: scst_cmd, field_offs: int, bit_offs: int = -1) -> None:
    """ILLEGAL REQUEST, INVALID FIELD IN CDB with the field pointer set."""
    _set_field_pointer(cmd, scst_sense_invalid_field_in_cdb, True, field_offs, bit_offs)


def scst_set_invalid_field_in_parm_list(cmd: scst_cmd, field_offs: int, bit_offs: int = -1) -> None:
    _set_field_pointer(cmd, scst_sense_invalid_field_in_parm_list, False, field_offs, bit_offs)


def scst_set_cmd_error_status(cmd: scst_cmd, status: int) -> None:
    cmd.status = status
    cmd.resp_data_len = 0


def scst_set_resp_data_len(cmd: scst_cmd, n: int) -> None:
    cmd.resp_data_len = n if n < cmd.bufflen else cmd.bufflen


def scst_get_buf_full(cmd: scst_cmd) -> memoryview:
    """The whole data buffer (cmd.bufflen bytes), contiguous."""
    sg = cmd.sg
    if len(sg) == 1:
        return sg_virt(sg[0])[:cmd.bufflen]
    if not sg:
        return memoryview(bytearray(0))
    # Larger than one high-order allocation: gather a copy (rare: > 4 MiB).
    out = bytearray()
    for s in sg:
        out += sg_virt(s)
    return memoryview(out)[:cmd.bufflen]


def scst_cmd_iov(cmd: scst_cmd) -> list[memoryview]:
    """Buffers covering exactly cmd.data_len bytes (the data the device
    reads or writes), for vfs_readv/vfs_writev."""
    left = cmd.data_len
    sg = cmd.sg
    if len(sg) == 1:
        s = sg[0]
        if s.length >= left:        # the common case: one buffer holds it all
            return [s.page.mv[s.offset:s.offset + left]]
    out = []
    for s in sg:
        v = sg_virt(s)
        if len(v) >= left:
            out.append(v[:left])
            break
        out.append(v)
        left -= len(v)
    return out


def scst_unpack_lun(lun: bytes) -> int:
    """Decode an 8-byte SAM LUN (peripheral or flat addressing); -1 if not supported."""
    method = lun[0] >> 6
    if any(lun[2:8]):
        return -1
    if method == 0:
        return lun[1] if lun[0] == 0 else -1
    if method == 1:
        return ((lun[0] & 0x3F) << 8) | lun[1]
    return -1


def scst_pack_lun(lun: int) -> bytes:
    if lun < 256:
        return bytes((0, lun, 0, 0, 0, 0, 0, 0))
    return bytes((0x40 | ((lun >> 8) & 0x3F), lun & 0xFF, 0, 0, 0, 0, 0, 0))
