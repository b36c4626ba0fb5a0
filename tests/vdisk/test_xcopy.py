"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS of vdisk.xcopy, end to end:
a real uscstd on 127.0.0.1 serving real files through an access-group
configuration, driven by the project's initiator (tests/initiator.py).

What is checked: a copy between two LUNs moves exactly the named blocks
(compared in the backing files); a copy within one LUN whose destination
overlaps its source above it behaves like memmove; a copy naming a LUN of
another access group is refused with COPY ABORTED, COPY TARGET DEVICE NOT
REACHABLE and copies nothing, from either side; a read-only destination is
DATA PROTECT; a source range past the end is COPY ABORTED with the segment
pointer, and FAILED SEGMENT DETAILS returns that sense; OPERATING
PARAMETERS agree with VPD page 0x8F and with what the copy manager
enforces; COPY STATUS reports a held copy once. After every refusal the
LUNs still serve I/O and the server log stays clean.
"""
from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Iterator

import pytest

import uscstd_support
from initiator import Initiator, ScsiResult
from scsi_support import naa_designator, xcopy_b2b, xcopy_cdb, xcopy_cscd, xcopy_plist

IQN = "iqn.2026-11.org.uscst:xcopy"
FENCED = "iqn.2026-11.org.uscst:fenced-xc1"
OPEN = "iqn.2026-11.org.uscst:open-xc1"
BS = 512
DEV_BYTES = 4 << 20
LUN_SRC, LUN_DST, LUN_RO = 0, 1, 2

GOOD = 0
CHECK = 0x02
COPY_ABORTED = 0x0A
UNREACHABLE = (0x0D, 0x02)


def _config(tmp: Path) -> str:
    return f"""HANDLER vdisk_fileio {{
\tDEVICE src0 {{
\t\tfilename {tmp}/src0.img
\t}}
\tDEVICE dst0 {{
\t\tfilename {tmp}/dst0.img
\t}}
\tDEVICE ro0 {{
\t\tfilename {tmp}/ro0.img
\t}}
\tDEVICE grp0 {{
\t\tfilename {tmp}/grp0.img
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN} {{
\t\tLUN {LUN_SRC} src0
\t\tLUN {LUN_DST} dst0
\t\tLUN {LUN_RO} ro0 {{
\t\t\tread_only 1
\t\t}}
\t\tGROUP fenced {{
\t\t\tLUN 0 grp0
\t\t\tINITIATOR iqn.2026-11.org.uscst:fenced-*
\t\t}}
\t\tenabled 1
\t}}
}}
"""


@pytest.fixture(scope="module")
def xc_srv(tmp_path_factory) -> Iterator:
    tmp = tmp_path_factory.mktemp("xcopy")
    rnd = random.Random(5)
    (tmp / "src0.img").write_bytes(rnd.randbytes(DEV_BYTES))
    (tmp / "grp0.img").write_bytes(rnd.randbytes(DEV_BYTES))
    (tmp / "dst0.img").write_bytes(bytes(DEV_BYTES))
    (tmp / "ro0.img").write_bytes(bytes(DEV_BYTES))
    cfg = tmp / "xc.conf"
    cfg.write_text(_config(tmp))
    srv = uscstd_support.start_uscstd(tmp / "srv", "--config", str(cfg), "--data-dir",
                                      str(tmp / "data"), disk=None, size=None, iqn=IQN)
    srv.tmp = tmp
    try:
        yield srv
    finally:
        try:
            uscstd_support.finish_uscstd(srv)
        finally:
            srv.kill()


def _login(srv, name: str = OPEN) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=30.0, initiator_name=name)
    ini.connect()
    ini.login(IQN)
    return ini


def _xcopy(ini: Initiator, plist: bytes, lun: int = LUN_SRC) -> ScsiResult:
    return ini.scsi(xcopy_cdb(len(plist)), lun, data_out=plist)


def _rcr(ini: Initiator, sa: int, lid: int = 0, lun: int = LUN_SRC) -> ScsiResult:
    cdb = struct.pack(">BBB7sIBB", 0x84, sa, lid, bytes(7), 1024, 0, 0)
    return ini.scsi(cdb, lun, read_len=1024)


def _file(srv, name: str) -> bytes:
    return (srv.tmp / f"{name}.img").read_bytes()


def _key_asc(res: ScsiResult) -> tuple:
    return (res.status, res.sense_key, res.asc_ascq)


def test_copy_between_two_luns_moves_exactly_the_named_blocks(xc_srv) -> None:
    ini = _login(xc_srv)
    try:
        before = _file(xc_srv, "dst0")
        src, dst = naa_designator(ini, LUN_SRC), naa_designator(ini, LUN_DST)
        # 3000 blocks: two full 1 MiB chunks and a short tail.
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(src), xcopy_cscd(dst)], [xcopy_b2b(0, 1, 3000, 8, 100)]))
        assert res.ok, res
        srcf, dstf = _file(xc_srv, "src0"), _file(xc_srv, "dst0")
        assert dstf[100 * BS:3100 * BS] == srcf[8 * BS:3008 * BS]
        assert dstf[:100 * BS] == before[:100 * BS]
        assert dstf[3100 * BS:] == before[3100 * BS:]
        # and the initiator reads back what the file holds
        assert ini.read10(100, 8, lun=LUN_DST).check().data == srcf[8 * BS:16 * BS]
    finally:
        ini.close()
    xc_srv.assert_healthy()


def test_overlapping_copy_within_one_lun_behaves_like_memmove(xc_srv) -> None:
    ini = _login(xc_srv)
    try:
        naa = naa_designator(ini, LUN_DST)
        pattern = random.Random(7).randbytes(2100 * BS)
        ini.write10(4000, pattern[:1050 * BS], lun=LUN_DST).check()
        ini.write10(5050, pattern[1050 * BS:], lun=LUN_DST).check()
        # destination 1000 blocks above the source, 2100 blocks long
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(naa)], [xcopy_b2b(0, 0, 2100, 4000, 5000)]), lun=LUN_DST)
        assert res.ok, res
        dstf = _file(xc_srv, "dst0")
        assert dstf[5000 * BS:7100 * BS] == pattern
        assert dstf[4000 * BS:5000 * BS] == pattern[:1000 * BS]
    finally:
        ini.close()
    xc_srv.assert_healthy()


def test_copy_naming_a_lun_of_another_group_is_refused_and_copies_nothing(xc_srv) -> None:
    fenced = _login(xc_srv, FENCED)
    other = _login(xc_srv)
    try:
        grp = naa_designator(fenced, 0)
        src, dst = naa_designator(other, LUN_SRC), naa_designator(other, LUN_DST)
        assert grp not in (src, dst)
        grp_before, dst_before = _file(xc_srv, "grp0"), _file(xc_srv, "dst0")
        # fenced session: a LUN it cannot see as the source
        res = _xcopy(fenced, xcopy_plist([xcopy_cscd(src), xcopy_cscd(grp)], [xcopy_b2b(0, 1, 64, 0, 0)]),
                     lun=0)
        assert _key_asc(res) == (CHECK, COPY_ABORTED, UNREACHABLE), res
        # the open session: the fenced group's LUN as the destination
        res = _xcopy(other, xcopy_plist([xcopy_cscd(src), xcopy_cscd(grp)], [xcopy_b2b(0, 1, 64, 0, 0)]))
        assert _key_asc(res) == (CHECK, COPY_ABORTED, UNREACHABLE), res
        # ... and as the source
        res = _xcopy(other, xcopy_plist([xcopy_cscd(grp), xcopy_cscd(dst)], [xcopy_b2b(0, 1, 64, 0, 200)]))
        assert _key_asc(res) == (CHECK, COPY_ABORTED, UNREACHABLE), res
        # the same copy inside the fenced group is fine, so the refusal was the group
        res = _xcopy(fenced, xcopy_plist([xcopy_cscd(grp)], [xcopy_b2b(0, 0, 0, 0, 0)]), lun=0)
        assert res.ok, res
        assert _file(xc_srv, "grp0") == grp_before
        assert _file(xc_srv, "dst0") == dst_before
        assert fenced.read10(0, 4, lun=0).check().data == grp_before[:4 * BS]
        assert other.read10(0, 4, lun=LUN_DST).check().data == dst_before[:4 * BS]
    finally:
        fenced.close()
        other.close()
    xc_srv.assert_healthy()


def test_read_only_destination_and_source_past_the_end_are_refused(xc_srv) -> None:
    ini = _login(xc_srv)
    try:
        src, ro, dst = naa_designator(ini, LUN_SRC), naa_designator(ini, LUN_RO), naa_designator(ini, LUN_DST)
        ro_before, dst_before = _file(xc_srv, "ro0"), _file(xc_srv, "dst0")
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(src), xcopy_cscd(ro)], [xcopy_b2b(0, 1, 8, 0, 0)]))
        assert _key_asc(res) == (CHECK, 0x07, (0x27, 0x00)), res
        last = DEV_BYTES // BS
        # segment 1 reads 2 blocks from the last LBA: nothing moves, not even segment 0
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(src), xcopy_cscd(dst)],
                                 [xcopy_b2b(0, 1, 8, 0, 300), xcopy_b2b(0, 1, 2, last - 1, 400)],
                                 lid=9, usage=0))
        assert _key_asc(res) == (CHECK, COPY_ABORTED, (0x00, 0x00)), res
        s = res.sense
        if s[0] & 0x7F == 0x70:              # fixed format: segment number, segment pointer
            assert int.from_bytes(s[8:12], "big") == 1
            assert s[15] & 0xA0 == 0xA0 and int.from_bytes(s[16:18], "big") == 12
        fsd = _rcr(ini, 0x04, lid=9).check().data
        slen = int.from_bytes(fsd[58:60], "big")
        assert fsd[56] == CHECK and bytes(fsd[60:60 + slen]) == s, fsd.hex()
        assert _file(xc_srv, "ro0") == ro_before and _file(xc_srv, "dst0") == dst_before
        assert ini.read10(0, 1, lun=LUN_SRC).ok and ini.read10(0, 1, lun=LUN_RO).ok
    finally:
        ini.close()
    xc_srv.assert_healthy()


def test_operating_parameters_agree_with_vpd_and_are_enforced(xc_srv) -> None:
    ini = _login(xc_srv)
    try:
        op = _rcr(ini, 0x03).check().data
        avail, = struct.unpack_from(">I", op, 0)
        assert avail == len(op) - 4 and len(op) >= 44
        max_cscd, max_seg, max_list, max_seg_len = struct.unpack_from(">HHII", op, 8)
        assert (max_cscd, max_seg) == (8, 64) and max_list == 8 * 32 + 64 * 28
        assert max_seg_len >= 0xFFFF * BS // 2
        assert op[20:24] == bytes(4)         # no inline data
        assert sorted(op[44:44 + op[43]]) == [0x02, 0xE4]
        # VPD 0x8F is listed and its Parameter Data descriptor says the same
        assert 0x8F in ini.inquiry(LUN_SRC, evpd=True, page=0x00).check().data[4:]
        vpd = ini.inquiry(LUN_SRC, evpd=True, page=0x8F, alloc_len=1024).check().data
        off, found = 4, {}
        while off + 4 <= len(vpd):           # bounded by the page length
            t, n = struct.unpack_from(">HH", vpd, off)
            assert n % 4 == 0, (t, n)
            found[t] = vpd[off + 4:off + 4 + n]
            off += 4 + n
        assert struct.unpack_from(">HHI", found[0x0004], 2) == (max_cscd, max_seg, max_list)
        cmds = found[0x0001]
        assert cmds[1:1 + cmds[0]] == bytes((0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04))
        # one CSCD over the maximum, then one segment over it
        naa = naa_designator(ini, LUN_SRC)
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(naa)] * (max_cscd + 1), [xcopy_b2b(0, 0, 0, 0, 0)]))
        assert _key_asc(res) == (CHECK, 0x05, (0x26, 0x06)), res
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(naa)], [xcopy_b2b(0, 0, 0, 0, 0)] * (max_seg + 1)))
        assert _key_asc(res) == (CHECK, 0x05, (0x26, 0x08)), res
        res = _xcopy(ini, xcopy_plist([xcopy_cscd(naa)] * max_cscd, [xcopy_b2b(0, 0, 0, 0, 0)] * max_seg))
        assert res.ok, res
    finally:
        ini.close()
    xc_srv.assert_healthy()


def test_copy_status_reports_a_held_copy_once(xc_srv) -> None:
    ini = _login(xc_srv)
    try:
        res = _rcr(ini, 0x00, lid=33)
        assert _key_asc(res) == (CHECK, 0x05, (0x24, 0x00)), res
        src, dst = naa_designator(ini, LUN_SRC), naa_designator(ini, LUN_DST)
        plist = xcopy_plist([xcopy_cscd(src), xcopy_cscd(dst)], [xcopy_b2b(0, 1, 16, 0, 7000)],
                            lid=33, usage=0)
        assert _xcopy(ini, plist).ok
        cs = _rcr(ini, 0x00, lid=33).check().data
        assert cs[:4] == (8).to_bytes(4, "big")
        assert cs[4] & 0x7F == 0x01                       # completed without errors
        assert int.from_bytes(cs[5:7], "big") == 1        # segments processed
        assert cs[7] == 0 and int.from_bytes(cs[8:12], "big") == 16 * BS
        res = _rcr(ini, 0x00, lid=33)                     # reported, then forgotten
        assert _key_asc(res) == (CHECK, 0x05, (0x24, 0x00)), res
        # another session never sees this nexus's list ids
        assert _xcopy(ini, plist).ok
        other = _login(xc_srv)
        try:
            res = _rcr(other, 0x00, lid=33)
            assert _key_asc(res) == (CHECK, 0x05, (0x24, 0x00)), res
        finally:
            other.close()
    finally:
        ini.close()
    xc_srv.assert_healthy()
