"""SBC-3/SPC-4 behaviour of the common vdisk code, driven through the
nullio handler (no I/O, no engine needed: nullio's exec is atomic)."""
from __future__ import annotations

import struct

import pytest

from kshim import printk
from kshim.err import EINVAL
from scst_core.scst import SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME
from tests.vdisk.conftest import make_dev, run_cmd
from vdisk import vdisk as vd
from vdisk.nullio import nullio_devtype

GOOD = 0
CHECK = 0x02
INVALID_OPCODE = (5, 0x20, 0)
INVALID_FIELD_CDB = (5, 0x24, 0)
INVALID_FIELD_PARM = (5, 0x26, 0)
LBA_OOB = (5, 0x21, 0)
WRITE_PROTECTED = (7, 0x27, 0)
SAVING_UNSUP = (5, 0x39, 0)
MISCOMPARE = (0xE, 0x1D, 0)
NO_MEDIUM = (2, 0x3A, 0)

BS = 512
NBLOCKS = (64 << 20) // BS


@pytest.fixture
def dev():
    return make_dev(nullio_devtype, "null0", {"size": "64M"})


def inquiry(dev, evpd=0, page=0, alloc=255):
    return run_cmd(dev, [0x12, evpd, page, alloc >> 8, alloc & 0xFF, 0])


def read10(dev, lba, n, flags=0):
    return run_cmd(dev, [0x28, flags] + list(struct.pack(">I", lba & 0xFFFFFFFF)) + [0]
                   + list(struct.pack(">H", n)) + [0])


def write10(dev, lba, n, flags=0, bs=BS):
    return run_cmd(dev, [0x2A, flags] + list(struct.pack(">I", lba)) + [0] + list(struct.pack(">H", n))
                   + [0], bytes(n * bs))


def mode_sense6(dev, page, pc=0, dbd=0, alloc=255, subpage=0):
    return run_cmd(dev, [0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0])


def mode_select6(dev, plist, pf=1, sp=0):
    return run_cmd(dev, [0x15, (0x10 if pf else 0) | sp, 0, 0, len(plist), 0], plist)


def find_page(ms_data: bytes, hdr_len: int, bd_len: int, code: int) -> bytes | None:
    off = hdr_len + bd_len
    while off < len(ms_data):
        plen = ms_data[off + 1]
        if ms_data[off] & 0x3F == code:
            return ms_data[off:off + 2 + plen]
        off += 2 + plen
    return None


# ---------------------------------------------------------------- INQUIRY

def test_inquiry_standard_claims_spc4_cmdque_and_sizes_itself(dev):
    r = inquiry(dev, alloc=260)
    assert r.status == GOOD and r.done == [(SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)]
    d = r.data
    assert len(d) == 96 and d[4] == len(d) - 5
    assert d[0] == 0x00 and d[1] == 0x00            # disk, not removable
    assert d[2] == 0x06 and d[3] & 0x0F == 2 and d[3] & 0x10
    assert d[7] & 0x02                                # CMDQUE
    assert d[8:16] == b"USCST   " and d[16:32] == b"null0".ljust(16)
    descs = {int.from_bytes(d[i:i + 2], "big") for i in range(58, 74, 2)}
    assert {0x0460, 0x04C0} <= descs


def test_inquiry_truncates_to_allocation_length(dev):
    r = inquiry(dev, alloc=36)
    assert r.status == GOOD and len(r.data) == 36 and r.data[4] == 91


def test_inquiry_page_code_without_evpd_is_invalid_field_at_byte_2(dev):
    r = inquiry(dev, evpd=0, page=0x80)
    assert r.status == CHECK and r.key_asc_ascq == INVALID_FIELD_CDB
    assert r.field_pointer == (True, 2, -1)


def test_inquiry_unknown_vpd_page_is_invalid_field(dev):
    r = inquiry(dev, evpd=1, page=0x89)
    assert r.key_asc_ascq == INVALID_FIELD_CDB


def test_every_listed_vpd_page_is_readable_with_consistent_length(dev):
    r = inquiry(dev, evpd=1, page=0)
    assert r.status == GOOD
    pages = r.data[4:4 + int.from_bytes(r.data[2:4], "big")]
    assert list(pages) == sorted(pages) and {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} <= set(pages)
    for p in pages:
        rp = inquiry(dev, evpd=1, page=p)
        assert rp.status == GOOD, hex(p)
        assert rp.data[1] == p and len(rp.data) == 4 + int.from_bytes(rp.data[2:4], "big")


def test_unit_serial_number_is_stable_and_differs_per_name():
    a1 = make_dev(nullio_devtype, "alpha", {"size": "1M"})
    a2 = make_dev(nullio_devtype, "alpha", {"size": "1M"})
    b = make_dev(nullio_devtype, "beta", {"size": "1M"})
    s = [inquiry(d, 1, 0x80).data[4:] for d in (a1, a2, b)]
    assert s[0] == s[1] != s[2] and len(s[0]) > 0


def test_device_identification_has_t10_vendor_and_naa_designators(dev):
    d = inquiry(dev, 1, 0x83).data
    off, found = 4, {}
    while off < len(d):
        found[d[off + 1] & 0x0F] = (d[off] & 0x0F, d[off + 4:off + 4 + d[off + 3]])
        off += 4 + d[off + 3]
    assert off == len(d)
    code_set, t10 = found[1]
    assert code_set == 2 and t10.startswith(b"USCST   ")
    code_set, naa = found[3]
    assert code_set == 1 and len(naa) == 8 and naa[0] >> 4 == 3
    assert naa == make_dev(nullio_devtype, "null0", {"size": "1M"}).dh_priv.naa_id


def test_device_identification_appends_the_ports_designators_from_the_core(dev):
    """scst_core.tg supplies the relative target port and the port's SCSI
    name string (iSCSI: PIV=1, protocol 5, association 01b)."""
    from scst_core.scst import scst_session, scst_tgt, scst_tgt_template
    tgt = scst_tgt(scst_tgt_template("iscsi"), "iqn.2026-11.org.uscst:p", rel_tgt_id=3)
    sess = scst_session(tgt, "iqn.i")
    d = run_cmd(dev, [0x12, 1, 0x83, 0, 255, 0], sess=sess).data
    assert bytes((0x51, 0x94, 0, 4, 0, 0, 0, 3)) in d            # relative target port 3
    name = b"iqn.2026-11.org.uscst:p,t,0x0001\x00"
    name += bytes(-len(name) % 4)
    assert d.endswith(bytes((0x53, 0x98, 0, len(name))) + name)
    assert bytes((0x51, 0x95)) not in d                          # in no device group


def test_block_limits_page_is_sbc3_length_and_reports_no_unmap_when_thick(dev):
    d = inquiry(dev, 1, 0xB0).data
    assert d[3] == 0x3C and len(d) == 0x40
    assert int.from_bytes(d[8:12], "big") > 0                  # max transfer length
    assert int.from_bytes(d[20:24], "big") == 0 and int.from_bytes(d[24:28], "big") == 0
    assert inquiry(dev, 1, 0xB2).data[5] & 0x80 == 0           # no LBPU


def test_thin_device_reports_lbpu_unmap_limits_and_lbpme():
    dev = make_dev(nullio_devtype, "thin0", {"size": "1M", "thin_provisioned": "1"})
    assert inquiry(dev, 1, 0xB2).data[5] & 0x80
    bl = inquiry(dev, 1, 0xB0).data
    assert 0 < int.from_bytes(bl[20:24], "big") <= 1 << 20
    assert 0 < int.from_bytes(bl[24:28], "big") <= 1 << 20
    rc = run_cmd(dev, [0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])
    assert rc.data[14] & 0x80


@pytest.mark.parametrize("params, lbppbe", [({}, 0), ({"physical_blocksize": "4096"}, 3),
                                            ({"blocksize": "4096", "physical_blocksize": "8192"}, 1)])
def test_read_capacity16_reports_logical_blocks_per_physical_block(params, lbppbe):
    dev = make_dev(nullio_devtype, "pb", {"size": "1M", **params})
    rc = run_cmd(dev, [0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])
    assert rc.data[13] & 0x0F == lbppbe


def test_standard_inquiry_claims_third_party_copy_and_vpd_lists_its_page(dev):
    assert inquiry(dev).data[5] & 0x08                                  # 3PC
    assert 0x8F in inquiry(dev, 1, 0x00).data[4:]


def test_block_characteristics_reports_non_rotating_when_asked():
    dev = make_dev(nullio_devtype, "ssd", {"size": "1M", "rotational": "0"})
    assert inquiry(dev, 1, 0xB1).data[4:6] == b"\x00\x01"


# ---------------------------------------------------------------- simple commands

def test_request_sense_without_pending_sense_returns_no_sense_fixed_or_descriptor(dev):
    r = run_cmd(dev, [0x03, 0, 0, 0, 252, 0])
    assert r.status == GOOD and r.data[0] == 0x70 and r.data[2] == 0 and len(r.data) == 18
    r = run_cmd(dev, [0x03, 1, 0, 0, 252, 0])
    assert r.status == GOOD and r.data[0] == 0x72 and r.data[1:4] == b"\x00\x00\x00"


def test_test_unit_ready_is_good(dev):
    assert run_cmd(dev, [0, 0, 0, 0, 0, 0]).status == GOOD


def test_known_but_unimplemented_command_is_invalid_opcode(dev):
    r = run_cmd(dev, [0x4D, 0, 0x00, 0, 0, 0, 0, 0, 255, 0])       # LOG SENSE
    assert r.probe == 0 and r.key_asc_ascq == INVALID_OPCODE and r.done


def test_read_capacity10_reports_last_lba_and_block_size(dev):
    r = run_cmd(dev, [0x25] + [0] * 9)
    assert struct.unpack(">II", r.data) == (NBLOCKS - 1, BS)


def test_read_capacity10_saturates_for_huge_devices():
    dev = make_dev(nullio_devtype, "huge", {"size": "4T"})
    r = run_cmd(dev, [0x25] + [0] * 9)
    assert struct.unpack(">II", r.data) == (0xFFFFFFFF, 512)
    r = run_cmd(dev, [0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])
    assert struct.unpack(">QI", r.data[:12]) == ((4 << 40) // 512 - 1, 512)


def test_read_capacity10_lba_without_pmi_is_invalid_field(dev):
    r = run_cmd(dev, [0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    assert r.key_asc_ascq == INVALID_FIELD_CDB and r.field_pointer[1] == 2


@pytest.mark.parametrize("alloc", [0, 1, 8, 13, 31, 32, 64])
def test_read_capacity16_honours_allocation_length(dev, alloc):
    r = run_cmd(dev, [0x9E, 0x10] + [0] * 8 + list(struct.pack(">I", alloc)) + [0, 0])
    assert r.status == GOOD and len(r.data) == min(alloc, 32)


def test_start_stop_unit_load_eject_on_fixed_medium_is_rejected(dev):
    assert run_cmd(dev, [0x1B, 1, 0, 0, 0x01, 0]).status == GOOD          # start
    assert run_cmd(dev, [0x1B, 1, 0, 0, 0x00, 0]).status == GOOD          # stop
    r = run_cmd(dev, [0x1B, 1, 0, 0, 0x02, 0])                            # eject
    assert r.key_asc_ascq == INVALID_FIELD_CDB and r.field_pointer == (True, 4, 1)


def test_removable_medium_ejects_loads_and_honours_prevent():
    dev = make_dev(nullio_devtype, "rm", {"size": "1M", "removable": "1"})
    assert inquiry(dev).data[1] & 0x80
    assert run_cmd(dev, [0x1E, 0, 0, 0, 1, 0]).status == GOOD            # prevent
    r = run_cmd(dev, [0x1B, 0, 0, 0, 0x02, 0])
    assert r.key_asc_ascq == (5, 0x53, 0x02)
    assert run_cmd(dev, [0x1E, 0, 0, 0, 0, 0]).status == GOOD            # allow
    assert run_cmd(dev, [0x1B, 0, 0, 0, 0x02, 0]).status == GOOD         # eject
    assert run_cmd(dev, [0, 0, 0, 0, 0, 0]).key_asc_ascq == NO_MEDIUM
    assert read10(dev, 0, 1).key_asc_ascq == NO_MEDIUM
    assert run_cmd(dev, [0x1B, 0, 0, 0, 0x13, 0]).status == GOOD         # PC != 0: no eject/load
    assert run_cmd(dev, [0x1B, 0, 0, 0, 0x03, 0]).status == GOOD         # load
    assert run_cmd(dev, [0, 0, 0, 0, 0, 0]).status == GOOD


def test_prevent_allow_is_accepted_on_fixed_medium(dev):
    assert run_cmd(dev, [0x1E, 0, 0, 0, 1, 0]).status == GOOD
    assert run_cmd(dev, [0x1E, 0, 0, 0, 0, 0]).status == GOOD


# ---------------------------------------------------------------- READ / WRITE / VERIFY

def test_read10_returns_zeros_from_nullio(dev):
    r = read10(dev, 5, 2)
    assert r.status == GOOD and r.data == bytes(2 * BS)


@pytest.mark.parametrize("lba,n", [(NBLOCKS, 1), (NBLOCKS - 1, 2), (0x80000000, 1), (0xFFFFFFFF, 1),
                                   (NBLOCKS + 1, 0), (0xFFFFFFFF, 0)])
def test_read10_beyond_eol_returns_lba_out_of_range(dev, lba, n):
    r = read10(dev, lba, n)
    assert r.status == CHECK and r.key_asc_ascq == LBA_OOB


def test_read10_zero_blocks_at_lba0_and_last_block_are_good(dev):
    assert read10(dev, 0, 0).status == GOOD
    assert read10(dev, NBLOCKS - 1, 1).status == GOOD


@pytest.mark.parametrize("prot", range(1, 8))
def test_read10_rdprotect_is_invalid_field_without_pi(dev, prot):
    r = read10(dev, 0, 1, flags=prot << 5)
    assert r.key_asc_ascq == INVALID_FIELD_CDB and r.field_pointer == (True, 1, 7)


def test_read_write_with_dpo_fua_are_accepted_and_dpofua_is_advertised(dev):
    assert mode_sense6(dev, 0x3F).data[2] & 0x10
    for flags in (0x10, 0x08, 0x18):
        assert read10(dev, 0, 1, flags).status == GOOD
        assert write10(dev, 0, 1, flags).status == GOOD


def test_read6_beyond_eol_returns_lba_out_of_range():
    dev = make_dev(nullio_devtype, "small", {"size": "1M"})
    n = (1 << 20) // 512
    r = run_cmd(dev, [0x08, (n - 1) >> 16, ((n - 1) >> 8) & 0xFF, (n - 1) & 0xFF, 2, 0])
    assert r.key_asc_ascq == LBA_OOB
    r = run_cmd(dev, [0x08, 0x1F, 0xFF, 0xFF, 1, 0])
    assert r.key_asc_ascq == LBA_OOB


def test_write_to_read_only_device_is_data_protect():
    dev = make_dev(nullio_devtype, "ro", {"size": "1M", "read_only": "1"})
    r = write10(dev, 0, 1)
    assert r.key_asc_ascq == WRITE_PROTECTED
    assert read10(dev, 0, 1).status == GOOD
    assert mode_sense6(dev, 0x3F).data[2] & 0x80                          # WP


def test_verify10_bytchk0_checks_range_only(dev):
    assert run_cmd(dev, [0x2F, 0, 0, 0, 0, 0, 0, 0, 8, 0]).status == GOOD
    r = run_cmd(dev, [0x2F, 0] + list(struct.pack(">I", NBLOCKS - 1)) + [0, 0, 2, 0])
    assert r.key_asc_ascq == LBA_OOB


def test_verify10_bytchk1_compares_and_reports_miscompare_offset(dev):
    assert run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 0, 0, 0, 2, 0], bytes(2 * BS)).status == GOOD
    data = bytearray(2 * BS)
    data[700] = ord("X")
    r = run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 0, 0, 0, 2, 0], bytes(data))
    assert r.key_asc_ascq == MISCOMPARE
    assert r.sense[0] & 0x80 and int.from_bytes(r.sense[3:7], "big") == 700


def test_verify_vrprotect_is_invalid_field(dev):
    r = run_cmd(dev, [0x2F, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])
    assert r.key_asc_ascq == INVALID_FIELD_CDB


def test_synchronize_cache_checks_range(dev):
    assert run_cmd(dev, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == GOOD
    r = run_cmd(dev, [0x35, 0] + list(struct.pack(">I", NBLOCKS)) + [0, 0, 1, 0])
    assert r.key_asc_ascq == LBA_OOB
    r = run_cmd(dev, [0x91, 0] + list(struct.pack(">Q", NBLOCKS + 5)) + [0, 0, 0, 0, 0, 0])
    assert r.key_asc_ascq == LBA_OOB


def test_unmap_on_thick_device_is_invalid_opcode(dev):
    plist = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, 8)
    r = run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, len(plist), 0], plist)
    assert r.key_asc_ascq == INVALID_OPCODE


def test_unmap_on_thin_device_checks_each_descriptor_range():
    dev = make_dev(nullio_devtype, "thin1", {"size": "1M", "thin_provisioned": "yes"})
    n = (1 << 20) // 512
    ok = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, 8)
    assert run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, len(ok), 0], ok).status == GOOD
    bad = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", n - 1, 2)
    assert run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, len(bad), 0], bad).key_asc_ascq == LBA_OOB
    short = b"\x00" * 4
    r = run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, len(short), 0], short)
    assert r.key_asc_ascq == (5, 0x1A, 0)


# ---------------------------------------------------------------- MODE SENSE / SELECT

def test_mode_sense6_all_pages_has_header_block_descriptor_and_pages_in_order(dev):
    d = mode_sense6(dev, 0x3F).data
    assert d[0] == len(d) - 1 and d[3] == 8
    assert struct.unpack(">I", d[4:8])[0] == NBLOCKS and int.from_bytes(d[9:12], "big") == BS
    codes, off = [], 12
    while off < len(d):
        codes.append(d[off] & 0x3F)
        off += 2 + d[off + 1]
    assert off == len(d) and codes == [0x01, 0x08, 0x0A, 0x1C]


def test_mode_sense6_caching_page_reports_write_cache_disabled_by_default(dev):
    page = find_page(mode_sense6(dev, 0x08, dbd=1).data, 4, 0, 0x08)
    assert page is not None and page[1] == 0x12 and not page[2] & 0x04


def test_mode_sense_control_page_is_the_same_alone_and_in_all_pages(dev):
    alone = find_page(mode_sense6(dev, 0x0A).data, 4, 8, 0x0A)
    allp = find_page(mode_sense6(dev, 0x3F).data, 4, 8, 0x0A)
    assert alone == allp and alone[1] == 0x0A
    assert alone[3] >> 4 in (0, 1) and (alone[3] >> 1) & 3 != 2


def test_mode_sense_saved_values_are_not_supported(dev):
    r = mode_sense6(dev, 0x3F, pc=3)
    assert r.key_asc_ascq == SAVING_UNSUP


def test_mode_sense_unknown_page_and_subpage_are_invalid_fields(dev):
    assert mode_sense6(dev, 0x19).key_asc_ascq == INVALID_FIELD_CDB
    assert mode_sense6(dev, 0x08, subpage=1).key_asc_ascq == INVALID_FIELD_CDB
    assert mode_sense6(dev, 0x3F, subpage=0xFF).status == GOOD


def test_mode_sense_changeable_values_show_wce_and_control_bits(dev):
    d = mode_sense6(dev, 0x3F, pc=1, dbd=1).data
    assert find_page(d, 4, 0, 0x08)[2] == 0x04
    ctl = find_page(d, 4, 0, 0x0A)
    assert ctl[2] & 0x04 and ctl[4] & 0x08


def test_mode_sense6_truncates_without_changing_mode_data_length(dev):
    full = mode_sense6(dev, 0x3F).data
    r = mode_sense6(dev, 0x3F, alloc=4)
    assert r.data == full[:4]


def test_mode_sense10_with_llbaa_returns_long_block_descriptor(dev):
    r = run_cmd(dev, [0x5A, 0x10, 0x3F, 0, 0, 0, 0, 0x10, 0, 0])
    d = r.data
    assert int.from_bytes(d[0:2], "big") == len(d) - 2 and d[4] & 1 and d[6:8] == b"\x00\x10"
    assert struct.unpack(">Q", d[8:16])[0] == NBLOCKS and struct.unpack(">I", d[20:24])[0] == BS


def _current_page(dev, code):
    return bytearray(find_page(mode_sense6(dev, code, dbd=1).data, 4, 0, code))


def test_mode_select_sets_wce_for_write_back_and_clears_it_for_write_through(dev):
    page = _current_page(dev, 0x08)
    assert not page[2] & 0x04 and dev.dh_priv.wt_flag is True      # the default
    page[2] |= 0x04
    assert mode_select6(dev, bytes(4) + bytes(page)).status == GOOD
    assert dev.dh_priv.wt_flag is False
    assert _current_page(dev, 0x08)[2] & 0x04
    page[2] &= ~0x04
    assert mode_select6(dev, bytes(4) + bytes(page)).status == GOOD
    assert dev.dh_priv.wt_flag is True


def test_mode_select_changing_unchangeable_field_is_invalid_field_in_parameter_list(dev):
    page = _current_page(dev, 0x08)
    page[2] |= 0x01                                                     # RCD
    r = mode_select6(dev, bytes(4) + bytes(page))
    assert r.key_asc_ascq == INVALID_FIELD_PARM
    assert r.field_pointer == (False, 4 + 2, 0)
    assert dev.dh_priv.wt_flag is True


def test_mode_select_is_all_or_nothing_across_pages(dev):
    cache = _current_page(dev, 0x08)
    cache[2] |= 0x04
    ctl = _current_page(dev, 0x0A)
    ctl[8] = 0                                                          # busy timeout: fixed
    r = mode_select6(dev, bytes(4) + bytes(cache) + bytes(ctl))
    assert r.key_asc_ascq == INVALID_FIELD_PARM and dev.dh_priv.wt_flag is True


def test_mode_select_save_pages_and_bad_page_length_are_rejected(dev):
    page = _current_page(dev, 0x08)
    assert mode_select6(dev, bytes(4) + bytes(page), sp=1).key_asc_ascq == INVALID_FIELD_CDB
    bad = bytes(page[:1]) + b"\x0a" + bytes(10)
    assert mode_select6(dev, bytes(4) + bad).key_asc_ascq == INVALID_FIELD_PARM
    assert mode_select6(dev, bytes(3)).key_asc_ascq == (5, 0x1A, 0)


def test_mode_select_d_sense_switches_errors_to_descriptor_format(dev):
    ctl = _current_page(dev, 0x0A)
    ctl[2] |= 0x04
    assert mode_select6(dev, bytes(4) + bytes(ctl)).status == GOOD
    r = read10(dev, NBLOCKS, 1)
    assert r.sense[0] == 0x72 and r.key_asc_ascq == LBA_OOB
    ctl[2] &= ~0x04
    assert mode_select6(dev, bytes(4) + bytes(ctl)).status == GOOD
    assert read10(dev, NBLOCKS, 1).sense[0] == 0x70


def test_mode_select_swp_write_protects_the_medium(dev):
    ctl = _current_page(dev, 0x0A)
    ctl[4] |= 0x08
    assert mode_select6(dev, bytes(4) + bytes(ctl)).status == GOOD
    assert _current_page(dev, 0x0A)[4] & 0x08
    assert read10(dev, 0, 1).status == GOOD
    assert write10(dev, 0, 1).key_asc_ascq == WRITE_PROTECTED
    ctl[4] &= ~0x08
    assert mode_select6(dev, bytes(4) + bytes(ctl)).status == GOOD
    assert write10(dev, 0, 1).status == GOOD


def test_mode_select_with_block_descriptor_of_other_block_size_is_rejected(dev):
    page = _current_page(dev, 0x08)
    bd = struct.pack(">IB", 0, 0) + (4096).to_bytes(3, "big")
    r = mode_select6(dev, bytes((0, 0, 0, 8)) + bd + bytes(page))
    assert r.key_asc_ascq == INVALID_FIELD_PARM and r.field_pointer[1] == 4 + 5
    bd = struct.pack(">IB", 0, 0) + BS.to_bytes(3, "big")
    assert mode_select6(dev, bytes((0, 0, 0, 8)) + bd + bytes(page)).status == GOOD


# ---------------------------------------------------------------- management parameters

def test_unknown_add_device_parameter_is_einval_with_a_line_naming_it():
    printk.log_buf.clear()
    assert vd.vdisk_alloc_dev("vdisk_nullio", "x", {"size": "1M", "bogus_param": "1"}) == -EINVAL
    assert any("bogus_param" in m for _, _, m in printk.log_buf)


@pytest.mark.parametrize("params", [{"size": "12Q"}, {"size": "1M", "blocksize": "1000"},
                                    {"size": "1M", "read_only": "maybe"}, {"size": "1M", "prod_id": "x" * 17},
                                    {"size": "1M", "physical_blocksize": "3000"},
                                    {"size": "1M", "blocksize": "4096", "physical_blocksize": "512"}])
def test_bad_add_device_values_are_einval(params):
    assert vd.vdisk_alloc_dev("vdisk_nullio", "x", params) == -EINVAL


def test_fileio_needs_a_filename():
    assert vd.vdisk_alloc_dev("vdisk_fileio", "x", {"size": "1M"}) == -EINVAL


@pytest.mark.parametrize("s,n", [("512", 512), ("4K", 4096), ("10M", 10 << 20), ("2g", 2 << 30),
                                 ("1T", 1 << 40), ("3MB", 3 << 20), ("x", -1), ("", -1)])
def test_vdisk_parse_size(s, n):
    assert vd.vdisk_parse_size(s) == n


def test_blocksize_4096_changes_geometry():
    dev = make_dev(nullio_devtype, "big4k", {"size": "1M", "blocksize": "4096"})
    assert dev.block_size == 4096 and dev.block_shift == 12
    r = run_cmd(dev, [0x25] + [0] * 9)
    assert struct.unpack(">II", r.data) == (255, 4096)
    assert read10(dev, 255, 1).data == bytes(4096)
    assert read10(dev, 255, 2).key_asc_ascq == LBA_OOB
