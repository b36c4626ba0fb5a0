"""The SBC-3 commands of vdisk.sbc and the REPORT SUPPORTED OPERATION
CODES table of vdisk.opcodes, against real files on the real engine."""
from __future__ import annotations

import struct

from kshim.timer import msleep
from tests.vdisk.conftest import make_dev, run_cmd
from vdisk.fileio import fileio_devtype
from vdisk.nullio import nullio_devtype

GOOD = 0
CHECK = 0x02
CONDITION_MET = 0x04
MISCOMPARE = (0xE, 0x1D, 0)
INVALID_FIELD_CDB = (5, 0x24, 0)
LBA_OOB = (5, 0x21, 0)
BS = 512


def ws(op, lba, n, flags=0):
    if op == 0x41:
        return [0x41, flags] + list(struct.pack(">I", lba)) + [0] + list(struct.pack(">H", n)) + [0]
    return [0x93, flags] + list(struct.pack(">QI", lba, n)) + [0, 0]


def caw(lba, n):
    return [0x89, 0] + list(struct.pack(">Q", lba)) + [0, 0, 0, n, 0, 0]


def rd16(lba, n):
    return [0x88, 0] + list(struct.pack(">QI", lba, n)) + [0, 0]


def wr16(lba, n):
    return [0x8A, 0] + list(struct.pack(">QI", lba, n)) + [0, 0]


def test_write_same_repeats_the_block_and_unmap_reads_back_zeros(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(b"\xAA" * (1 << 20))

    def body():
        dev = make_dev(fileio_devtype, "ws0", {"filename": str(path), "thin_provisioned": "1"})
        blk = bytes(range(256)) * 2
        w = run_cmd(dev, ws(0x93, 10, 5), blk)
        r = run_cmd(dev, rd16(10, 5))
        u = run_cmd(dev, ws(0x41, 10, 5, flags=0x08), b"\xFF" * BS)   # UNMAP=1
        r2 = run_cmd(dev, rd16(10, 5))
        bad_len = run_cmd(dev, ws(0x41, 0, 1), b"\x00" * (2 * BS))    # two blocks sent
        anchor = run_cmd(dev, ws(0x41, 0, 1, flags=0x10), bytes(BS))
        oob = run_cmd(dev, ws(0x93, 2047, 2), bytes(BS))
        dev.handler.detach(dev)
        return (w.status, r.data == blk * 5, u.status, r2.data == bytes(5 * BS),
                bad_len.key_asc_ascq, anchor.key_asc_ascq, oob.key_asc_ascq)
    assert kernel(body) == (GOOD, True, GOOD, True, INVALID_FIELD_CDB, INVALID_FIELD_CDB, LBA_OOB)


def test_write_same_zero_blocks_writes_to_the_end_of_the_medium(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        dev = make_dev(fileio_devtype, "ws1", {"filename": str(path)})
        w = run_cmd(dev, ws(0x41, 120, 0), b"\x5A" * BS)
        dev.handler.detach(dev)
        return w.status
    assert kernel(body) == GOOD
    disk = path.read_bytes()
    assert disk[120 * BS:] == b"\x5A" * (8 * BS) and disk[:120 * BS] == bytes(120 * BS)


def test_write_same_zero_blocks_past_the_maximum_write_same_length_is_invalid_field(kernel):
    def body():
        dev = make_dev(nullio_devtype, "ws2", {"size": "128M"})
        nblocks = (128 << 20) // BS
        whole = run_cmd(dev, ws(0x93, 0, 0), bytes(BS))
        tail = run_cmd(dev, ws(0x93, nblocks // 2, 0), bytes(BS))
        dev.handler.detach(dev)
        return whole.key_asc_ascq, tail.status
    assert kernel(body) == (INVALID_FIELD_CDB, GOOD)


def test_compare_and_write_writes_on_match_and_reports_miscompare_offset(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        dev = make_dev(fileio_devtype, "caw0", {"filename": str(path)})
        run_cmd(dev, wr16(4, 2), b"A" * (2 * BS))
        ok = run_cmd(dev, caw(4, 2), b"A" * (2 * BS) + b"B" * (2 * BS))
        after = run_cmd(dev, rd16(4, 2)).data
        verify = bytearray(b"B" * (2 * BS))
        verify[700] = 0
        miss = run_cmd(dev, caw(4, 2), bytes(verify) + b"C" * (2 * BS))
        still = run_cmd(dev, rd16(4, 2)).data
        dev.handler.detach(dev)
        s = miss.sense
        return ok.status, after, miss.key_asc_ascq, bool(s[0] & 0x80), \
            int.from_bytes(s[3:7], "big"), still
    st, after, sense, valid, info, still = kernel(body)
    assert (st, sense, valid, info) == (GOOD, MISCOMPARE, True, 700)
    assert after == b"B" * (2 * BS) and still == after


def test_orwrite_ors_the_data_into_the_medium(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(b"\x0F" * (64 << 10))

    def body():
        dev = make_dev(fileio_devtype, "or0", {"filename": str(path)})
        w = run_cmd(dev, [0x8B, 0] + list(struct.pack(">QI", 1, 1)) + [0, 0], b"\xF0" * BS)
        r = run_cmd(dev, rd16(1, 1))
        dev.handler.detach(dev)
        return w.status, r.data
    assert kernel(body) == (GOOD, b"\xFF" * BS)


def test_sanitize_overwrite_fills_the_medium_with_the_pattern(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(32 << 10))

    def body():
        dev = make_dev(fileio_devtype, "san0", {"filename": str(path)})
        plist = bytes((0x01, 0, 0, 2)) + b"\xDE\xAD"
        s = run_cmd(dev, [0x48, 0x01, 0, 0, 0, 0, 0, 0, len(plist), 0], plist)
        # IMMED=0: the sanitize kthread completes the command at the end
        # (32 KiB at the default 10 MiB/s: ~3 ms). Bounded: 2 s.
        for _ in range(200):
            if s.done:
                break
            msleep(10)
        reserved = run_cmd(dev, [0x48, 0x02, 0, 3, 0, 0, 0, 0, 0, 0])
        dev.handler.detach(dev)
        return bool(s.done), s.cmd.status, reserved.key_asc_ascq
    assert kernel(body) == (True, GOOD, INVALID_FIELD_CDB)
    assert path.read_bytes() == b"\xDE\xAD" * (16 << 10)


def test_prefetch_in_range_is_condition_met_and_beyond_eol_out_of_range():
    dev = make_dev(nullio_devtype, "pf0", {"size": "1M"})
    ok = run_cmd(dev, [0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0])
    oob = run_cmd(dev, [0x90, 0] + list(struct.pack(">QI", 2047, 2)) + [0, 0])
    assert ok.status == CONDITION_MET
    assert oob.key_asc_ascq == LBA_OOB


def _rsoc(dev, opts, op=0, sa=0, rctd=0):
    return run_cmd(dev, [0xA3, 0x0C, (0x80 if rctd else 0) | opts, op, sa >> 8, sa & 0xFF,
                         0, 0, 0x10, 0, 0, 0])


def test_report_supported_opcodes_lists_what_exec_dispatches_with_timeouts():
    dev = make_dev(nullio_devtype, "rs0", {"size": "1M"})
    r = _rsoc(dev, 0, rctd=1)
    assert r.status == GOOD
    n = int.from_bytes(r.data[:4], "big")
    ops, off = set(), 4
    while off < 4 + n:
        d = r.data[off:off + 8]
        assert d[5] & 0x02                  # CTDP
        assert int.from_bytes(r.data[off + 8:off + 10], "big") == 10
        ops.add((d[0], int.from_bytes(d[2:4], "big") if d[5] & 0x01 else -1))
        off += 20
    assert {(0x28, -1), (0x89, -1), (0x93, -1), (0x9E, 0x10), (0x48, 0x02), (0x5E, -1)} <= ops
    assert (0x43, -1) not in ops            # READ TOC is for vcdrom only
    one = _rsoc(dev, 1, op=0x2A)
    assert one.data[1] & 0x07 == 3 and one.data[4] == 0x2A and one.data[5] == 0x18
    assert _rsoc(dev, 1, op=0x9E).key_asc_ascq == INVALID_FIELD_CDB
    assert _rsoc(dev, 2, op=0x9E, sa=0x10).data[1] & 0x07 == 3
    assert _rsoc(dev, 1, op=0xC0).data[1] & 0x07 == 1     # not supported


def test_block_limits_and_extended_inquiry_pages():
    dev = make_dev(nullio_devtype, "bl0", {"size": "1M"})
    bl = run_cmd(dev, [0x12, 1, 0xB0, 0, 0xFF, 0]).data
    assert len(bl) == 64 and bl[3] == 0x3C and bl[5] == 255
    assert int.from_bytes(bl[36:44], "big") > 0         # MAXIMUM WRITE SAME LENGTH
    ext = run_cmd(dev, [0x12, 1, 0x86, 0, 0xFF, 0]).data
    assert ext[1] == 0x86 and ext[3] == 0x3C and ext[5] & 0x01
    pages = run_cmd(dev, [0x12, 1, 0x00, 0, 0xFF, 0]).data
    assert 0x86 in pages[4:]
