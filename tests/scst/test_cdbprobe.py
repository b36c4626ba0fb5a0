"""The command decoding table: known vs unknown, direction, LBA and lengths."""
from __future__ import annotations

import pytest

from scst_core import cdbprobe
from scst_core.cdbprobe import scst_get_cdb_info, scst_get_cdb_len, scst_scsi_op_table
from scst_core.const import TYPE_DISK
from scst_core.scst import (SCST_DATA_NONE, SCST_DATA_READ, SCST_DATA_WRITE, SCST_WRITE_MEDIUM,
                            scst_cmd, scst_dev_type, scst_device)

R, W, N = SCST_DATA_READ, SCST_DATA_WRITE, SCST_DATA_NONE


def _cmd(cdb, block_shift=None, pad=True):
    cdb = bytes(cdb)
    cmd = scst_cmd(sess=None, tgt=None, tgtt=None, cdb=cdb.ljust(16, b"\x00") if pad else cdb)
    if block_shift is not None:
        cmd.dev = scst_device(TYPE_DISK, scst_dev_type("t", TYPE_DISK), "d",
                              block_shift=block_shift, block_size=1 << block_shift)
    return cmd


def _probe(cdb, block_shift=9, pad=True):
    cmd = _cmd(cdb, block_shift, pad)
    r = scst_get_cdb_info(cmd)
    return r, cmd


CASES = [
    # cdb, block shift, (name, direction, lba, data_len, bufflen)
    ([0x00, 0, 0, 0, 0, 0], 9, ("TEST UNIT READY", N, 0, 0, 0)),
    ([0x12, 1, 0x83, 0x01, 0x02, 0], 9, ("INQUIRY", R, 0, 258, 258)),
    ([0x03, 0, 0, 0, 18, 0], 9, ("REQUEST SENSE", R, 0, 18, 18)),
    ([0x08, 0x1F, 0xFF, 0xFE, 0, 0], 9, ("READ(6)", R, 0x1FFFFE, 256 * 512, 256 * 512)),
    ([0x08, 0xE0, 0x00, 0x10, 4, 0], 12, ("READ(6)", R, 0x10, 4 * 4096, 4 * 4096)),
    ([0x0A, 0, 0, 5, 2, 0], 9, ("WRITE(6)", W, 5, 1024, 1024)),
    ([0x28, 0, 0x12, 0x34, 0x56, 0x78, 0, 0x01, 0x00, 0], 9,
     ("READ(10)", R, 0x12345678, 256 * 512, 256 * 512)),
    ([0x2A, 0x08, 0, 0, 0, 9, 0, 0, 3, 0], 12, ("WRITE(10)", W, 9, 3 * 4096, 3 * 4096)),
    ([0xA8, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0], 9, ("READ(12)", R, 1, 1024, 1024)),
    ([0xAA, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0], 9, ("WRITE(12)", W, 1, 1024, 1024)),
    ([0x88, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 9, ("READ(16)", R, 1 << 32, 4096, 4096)),
    ([0x8A, 0, 0xFF] + [0xFF] * 7 + [0, 0, 0, 1, 0, 0], 9, ("WRITE(16)", W, (1 << 64) - 1, 512, 512)),
    ([0x2F, 0x00, 0, 0, 0, 7, 0, 0, 4, 0], 9, ("VERIFY(10)", N, 7, 2048, 0)),
    ([0x2F, 0x02, 0, 0, 0, 7, 0, 0, 4, 0], 9, ("VERIFY(10)", W, 7, 2048, 2048)),
    ([0x2F, 0x06, 0, 0, 0, 7, 0, 0, 4, 0], 9, ("VERIFY(10)", W, 7, 2048, 512)),
    ([0x8F, 0x02] + [0] * 7 + [3] + [0, 0, 0, 2, 0, 0], 9, ("VERIFY(16)", W, 3, 1024, 1024)),
    ([0x35, 0, 0, 0, 0, 4, 0, 0, 2, 0], 9, ("SYNCHRONIZE CACHE(10)", N, 4, 1024, 0)),
    ([0x91, 0] + [0] * 7 + [4] + [0, 0, 0, 0, 0, 0], 9, ("SYNCHRONIZE CACHE(16)", N, 4, 0, 0)),
    ([0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0], 9, ("WRITE SAME(10)", W, 0, 4096, 512)),
    ([0x93, 0x01] + [0] * 8 + [0, 0, 0, 8, 0, 0], 9, ("WRITE SAME(16)", N, 0, 4096, 0)),
    ([0x89, 0] + [0] * 8 + [0, 0, 0, 2, 0, 0], 9, ("COMPARE AND WRITE", W, 0, 1024, 2048)),
    ([0x1A, 0, 0x3F, 0, 0xC0, 0], 9, ("MODE SENSE(6)", R, 0, 0xC0, 0xC0)),
    ([0x5A, 0, 0x3F, 0, 0, 0, 0, 0x10, 0x00, 0], 9, ("MODE SENSE(10)", R, 0, 4096, 4096)),
    ([0x15, 0x10, 0, 0, 24, 0], 9, ("MODE SELECT(6)", W, 0, 24, 24)),
    ([0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0], 9, ("MODE SELECT(10)", W, 0, 28, 28)),
    ([0x25] + [0] * 9, 9, ("READ CAPACITY(10)", R, 0, 8, 8)),
    ([0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0], 9, ("READ CAPACITY(16)", R, 0, 32, 32)),
    ([0x9E, 0x12] + [0] * 7 + [9] + [0, 0, 0, 24, 0, 0], 9, ("GET LBA STATUS", R, 9, 24, 24)),
    ([0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], 9, ("REPORT LUNS", R, 0, 4096, 4096)),
    ([0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 9, ("REPORT TARGET PORT GROUPS", R, 0, 256, 256)),
    ([0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], 9, ("PERSISTENT RESERVE OUT", W, 0, 24, 24)),
    ([0x5E, 0x00, 0, 0, 0, 0, 0, 0x20, 0, 0], 9, ("PERSISTENT RESERVE IN", R, 0, 0x2000, 0x2000)),
    ([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 9, ("UNMAP", W, 0, 24, 24)),
    ([0x1B, 1, 0, 0, 2, 0], 9, ("START STOP UNIT", N, 0, 0, 0)),
    ([0x1E, 0, 0, 0, 1, 0], 9, ("PREVENT ALLOW MEDIUM REMOVAL", N, 0, 0, 0)),
]


@pytest.mark.parametrize("cdb,shift,expect", CASES, ids=[c[2][0] + f"-{i}" for i, c in enumerate(CASES)])
def test_known_command_is_decoded(cdb, shift, expect):
    r, cmd = _probe(cdb, shift)
    assert r == 0 and cmd.status == 0
    assert (cmd.op_name, cmd.data_direction, cmd.lba, cmd.data_len, cmd.bufflen) == expect


@pytest.mark.parametrize("cdb", [[0xFF], [0x02], [0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0, 0x09],
                                 [0x9E, 0x1F], [0xA3, 0x00], [0x9F, 0x11], [0xA4, 0x06], [0xC0]])
def test_unknown_opcode_or_service_action_returns_1(cdb):
    r, cmd = _probe(cdb)
    assert r == 1 and cmd.status == 0


def test_verify_bytchk_10b_is_invalid_field_with_pointer():
    r, cmd = _probe([0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0])
    assert r == -1 and cmd.status == 0x02
    s = cmd.sense
    assert (s[2] & 0x0F, s[12], s[13]) == (5, 0x24, 0)
    assert s[15] & 0xC0 == 0xC0 and s[15] & 0x0F == 0x08 | 2 and s[16:18] == b"\x00\x01"


def test_link_bit_in_control_byte_is_invalid_field():
    r, cmd = _probe([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x01])
    assert r == -1 and cmd.sense[12] == 0x24 and cmd.sense[17] == 9


def test_short_cdb_is_invalid_field():
    r, cmd = _probe([0x88, 0, 0, 0], pad=False)
    assert r == -1 and cmd.sense[12] == 0x24


def test_without_a_device_block_commands_assume_512_byte_blocks():
    cmd = _cmd([0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    assert scst_get_cdb_info(cmd) == 0 and cmd.bufflen == 1024


def test_write_commands_carry_write_medium_and_reads_do_not():
    for op in (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0x8E, 0x41, 0x93, 0x42, 0x89):
        assert cdbprobe.scst_lookup_op(bytes([op, 0])).flags & SCST_WRITE_MEDIUM, hex(op)
    for op in (0x08, 0x28, 0xA8, 0x88, 0x2F, 0x12, 0x1A, 0x25):
        assert not cdbprobe.scst_lookup_op(bytes([op, 0])).flags & SCST_WRITE_MEDIUM, hex(op)


def test_table_fields_fit_inside_the_cdb_of_their_group():
    for e in scst_scsi_op_table:
        n = scst_get_cdb_len(e.ops)
        assert n in (6, 10, 12, 16), e.op_name
        assert e.lba_off + e.lba_len <= n - 1 and e.len_off + e.len_len <= n - 1, e.op_name


def test_op_supported_distinguishes_service_actions():
    assert cdbprobe.scst_op_supported(0x28)
    assert cdbprobe.scst_op_supported(0x9E, 0x10) and not cdbprobe.scst_op_supported(0x9E, 0x11)
    assert not cdbprobe.scst_op_supported(0xFF)
