"""Virtual disk SBC-3 commands beyond plain READ/WRITE: WRITE SAME(10/16),
COMPARE AND WRITE, ORWRITE(16), WRITE ATOMIC(16), PRE-FETCH(10/16), READ
DEFECT DATA(10/12), FORMAT UNIT and SANITIZE.

Twin of the parts of scst/src/dev_handlers/scst_vdisk.c that implement
these commands (vdisk_exec_write_same, vdisk_exec_caw, vdisk_exec_pre_fetch,
vdisk_exec_read_defect_data, vdisk_exec_format_unit, vdisk_exec_sanitize),
split out of vdisk.py per STYLE.md; the common checks live in vdisk.py.

Contexts: exec functions run where vdisk exec runs: a device kthread for
vdisk_fileio (they sleep in vfs calls and, for COMPARE AND WRITE and
ORWRITE, on the device's caw_mutex), any context for vdisk_nullio (its
io_ops never sleep, and the mutex is then never contended).

Differs from SCST: WRITE SAME and SANITIZE run synchronously in the
command's thread (SCST splits large WRITE SAMEs into sub-commands);
SANITIZE IMMED is accepted but the command completes only when the erase
is done. COMPARE AND WRITE and ORWRITE are atomic against each other and
against WRITE ATOMIC, not against plain WRITEs (which do not take the
device mutex, to keep the data path lock-free).
"""
from __future__ import annotations

from kshim.mutex import mutex_lock, mutex_unlock
from scst_core.const import (SAM_STAT_CONDITION_MET, scst_sense_block_out_range_error, scst_sense_miscompare_error,
                             scst_sense_parameter_list_length_invalid)
from scst_core.lib import (scst_get_buf_full, scst_set_cmd_error, scst_set_invalid_field_in_cdb,
                           scst_set_invalid_field_in_parm_list)
from scst_core.scst import scst_cmd
from vdisk.vdisk import (VDISK_MAX_CAW_BLOCKS, VDISK_MAX_WRITE_SAME_BYTES, scst_vdisk_dev,
                         vdisk_copy_resp, vdisk_need_sync, vdisk_set_sense_info)

# Design notes:
# - Commands whose Data-Out is not the data written (WRITE SAME sends one
#   block, COMPARE AND WRITE two halves) write through io_ops.write_buf in
#   chunks of at most _CHUNK bytes, so memory stays bounded whatever the
#   range.
# - A WRITE SAME with UNMAP=1 deallocates the range whatever its data
#   block holds (as SCST does, and as libiscsi's UnmapUntilEnd expects):
#   holes read back as zeros, which LBPRZ=1 promises.

_CHUNK = 1 << 20


def _fua(cmd: scst_cmd) -> bool:
    return bool(cmd.cdb[1] & 0x08)


def _write_pattern(cmd: scst_cmd, virt_dev: scst_vdisk_dev, pos: int, length: int,
                   block: bytes) -> int:
    """Write `block` repeated over [pos, pos+length): 0 or nonzero with the
    sense set. Bounded: length / _CHUNK writes."""
    ops = virt_dev.io_ops
    bs = len(block)
    chunk = block * max(1, min(_CHUNK, length) // bs)
    done = 0
    while done < length:
        n = min(len(chunk), length - done)
        ret = ops.write_buf(virt_dev, cmd, pos + done, memoryview(chunk)[:n])
        if ret != 0:
            return ret
        done += n
    return 0


# ---------------------------------------------------------------- WRITE SAME

def vdisk_exec_write_same(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    cdb = cmd.cdb
    sixteen = cdb[0] == 0x93
    anchor = bool(cdb[1] & 0x10)
    unmap = bool(cdb[1] & 0x08)
    ndob = sixteen and bool(cdb[1] & 0x01)
    shift = virt_dev.block_shift
    lba = cmd.lba
    nblocks = cmd.data_len >> shift
    if anchor:
        # ANCHOR needs UNMAP, and anchored LBAs are not supported (ANC_SUP=0).
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    if lba > virt_dev.nblocks or lba + nblocks > virt_dev.nblocks:
        scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
        return
    if nblocks == 0:
        # WSNZ=0: zero blocks means "to the end of the medium".
        if lba >= virt_dev.nblocks:
            scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
            return
        nblocks = virt_dev.nblocks - lba
    elif (nblocks << shift) > VDISK_MAX_WRITE_SAME_BYTES:
        scst_set_invalid_field_in_cdb(cmd, 10 if sixteen else 7)
        return
    if unmap and not virt_dev.thin_provisioned:
        # LBPWS/LBPWS10 are 0 on a fully provisioned device.
        scst_set_invalid_field_in_cdb(cmd, 1, 3)
        return
    bs = 1 << shift
    if ndob:
        block = bytes(bs)
    else:
        block = bytes(scst_get_buf_full(cmd)[:bs])
        if len(block) < bs:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return
    pos = lba << shift
    length = nblocks << shift
    ops = virt_dev.io_ops
    if unmap:
        # Deallocate whatever the data (SCST does the same); LBPRZ=1, so
        # the range reads back as zeros.
        ops.unmap(virt_dev, cmd, pos, length)
        return
    if _write_pattern(cmd, virt_dev, pos, length, block) != 0:
        return
    if vdisk_need_sync(cmd, virt_dev, False):
        ops.sync(virt_dev, cmd, pos, length)


# ---------------------------------------------------------------- COMPARE AND WRITE / ORWRITE

def vdisk_exec_caw(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """SBC-3 5.2: compare the first half of the Data-Out with the medium,
    write the second half if they match; MISCOMPARE with the offset of the
    first differing byte in INFORMATION otherwise."""
    n = cmd.cdb[13]
    if n == 0:
        return
    if n > VDISK_MAX_CAW_BLOCKS:
        scst_set_invalid_field_in_cdb(cmd, 13)
        return
    shift = virt_dev.block_shift
    length = n << shift
    data = scst_get_buf_full(cmd)
    if len(data) < 2 * length:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    pos = cmd.lba << shift
    ops = virt_dev.io_ops
    got = bytearray(length)
    mutex_lock(virt_dev.caw_mutex)
    try:
        if ops.read_into(virt_dev, cmd, pos, got) != 0:
            return
        want = data[:length]
        if got != want:
            i = next(i for i in range(length) if got[i] != want[i])
            scst_set_cmd_error(cmd, scst_sense_miscompare_error)
            vdisk_set_sense_info(cmd, i)
            return
        if ops.write_buf(virt_dev, cmd, pos, data[length:2 * length]) != 0:
            return
    finally:
        mutex_unlock(virt_dev.caw_mutex)
    if vdisk_need_sync(cmd, virt_dev, _fua(cmd)):
        ops.sync(virt_dev, cmd, pos, length)


def vdisk_exec_orwrite(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """ORWRITE(16) (SBC-3 5.8), BMOP 000b: medium := medium OR data."""
    length = cmd.data_len
    if length == 0:
        return
    pos = cmd.lba << virt_dev.block_shift
    ops = virt_dev.io_ops
    data = scst_get_buf_full(cmd)
    got = bytearray(length)
    mutex_lock(virt_dev.caw_mutex)
    try:
        if ops.read_into(virt_dev, cmd, pos, got) != 0:
            return
        res = (int.from_bytes(got, "little") | int.from_bytes(data[:length], "little")) \
            .to_bytes(length, "little")
        if ops.write_buf(virt_dev, cmd, pos, res) != 0:
            return
    finally:
        mutex_unlock(virt_dev.caw_mutex)
    if vdisk_need_sync(cmd, virt_dev, _fua(cmd)):
        ops.sync(virt_dev, cmd, pos, length)


def vdisk_exec_write_atomic(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """WRITE ATOMIC(16) (SBC-4 5.48): all or nothing, within the block
    limits page's atomic transfer limits; ATOMIC BOUNDARY must be 0 (no
    boundary support is reported)."""
    cdb = cmd.cdb
    if cdb[10] or cdb[11]:
        scst_set_invalid_field_in_cdb(cmd, 10)
        return
    length = cmd.data_len
    if length == 0:
        return
    from vdisk.vdisk import VDISK_MAX_ATOMIC_BYTES
    if length > VDISK_MAX_ATOMIC_BYTES:
        scst_set_invalid_field_in_cdb(cmd, 12)
        return
    pos = cmd.lba << virt_dev.block_shift
    ops = virt_dev.io_ops
    mutex_lock(virt_dev.caw_mutex)
    try:
        if ops.write_buf(virt_dev, cmd, pos, scst_get_buf_full(cmd)[:length]) != 0:
            return
    finally:
        mutex_unlock(virt_dev.caw_mutex)
    if vdisk_need_sync(cmd, virt_dev, _fua(cmd)):
        ops.sync(virt_dev, cmd, pos, length)


# ---------------------------------------------------------------- PRE-FETCH

def vdisk_exec_pre_fetch(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """SBC-3 5.9/5.10: the range must be on the medium; a zero count means
    to the end. The page cache holds what fits, so answer CONDITION MET (the
    blocks fit in the cache) without reading them."""
    shift = virt_dev.block_shift
    lba = cmd.lba
    n = cmd.data_len >> shift
    if lba > virt_dev.nblocks or lba + n > virt_dev.nblocks:
        scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
        return
    cmd.status = SAM_STAT_CONDITION_MET


# ---------------------------------------------------------------- READ DEFECT DATA

def vdisk_exec_read_defect_data(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """No defects: an empty list in the requested format (SBC-3 5.18/5.19)."""
    cdb = cmd.cdb
    if cdb[0] == 0x37:
        flags = cdb[2] & 0x1F
        vdisk_copy_resp(cmd, bytes((0, flags, 0, 0)))
    else:
        flags = cdb[1] & 0x1F
        vdisk_copy_resp(cmd, bytes((0, flags, 0, 0, 0, 0, 0, 0)))


# ---------------------------------------------------------------- FORMAT UNIT / SANITIZE

def _erase_medium(cmd: scst_cmd, virt_dev: scst_vdisk_dev, block: bytes | None) -> int:
    """Overwrite the whole medium with `block` repeated, or deallocate it
    (block None) where the backend can, writing zeros where it cannot."""
    length = virt_dev.nblocks << virt_dev.block_shift
    ops = virt_dev.io_ops
    if block is None:
        if virt_dev.thin_provisioned:
            return ops.unmap(virt_dev, cmd, 0, length)
        block = bytes(virt_dev.block_size)
    ret = _write_pattern(cmd, virt_dev, 0, length, block)
    if ret == 0 and not virt_dev.nv_cache:
        ret = ops.sync(virt_dev, cmd, 0, 0)
    return ret


def vdisk_exec_format_unit(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """FORMAT UNIT (SBC-3 5.3): no protection information, no defect lists
    beyond the empty one; the medium is left as it is (a virtual disk has
    nothing to reformat). FMTPINFO must be 0; with FMTDATA the short or
    long parameter list header is checked."""
    cdb = cmd.cdb
    if cdb[1] & 0xC0:                   # FMTPINFO: no protection information
        scst_set_invalid_field_in_cdb(cmd, 1, 7)
        return
    if not cdb[1] & 0x10:
        return
    data = scst_get_buf_full(cmd)
    longlist = bool(cdb[1] & 0x20)
    hdr = 8 if longlist else 4
    if len(data) < hdr:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    if data[0] & 0x07:                  # PROTECTION FIELD USAGE
        scst_set_invalid_field_in_parm_list(cmd, 0, 2)
        return
    if data[1] & 0x20:                  # IP: an initialization pattern follows
        scst_set_invalid_field_in_parm_list(cmd, 1, 5)
        return
    dl_len = int.from_bytes(data[4:8] if longlist else data[2:4], "big")
    if dl_len:
        scst_set_invalid_field_in_parm_list(cmd, 4 if longlist else 2)
        return


SANITIZE_OVERWRITE = 0x01
SANITIZE_BLOCK_ERASE = 0x02
SANITIZE_CRYPTO_ERASE = 0x03
SANITIZE_EXIT_FAILURE_MODE = 0x1F


def vdisk_exec_sanitize(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """SANITIZE (SBC-3 5.30): OVERWRITE writes the given pattern over the
    whole medium, BLOCK ERASE deallocates it (zeros where it cannot),
    CRYPTOGRAPHIC ERASE is the same as BLOCK ERASE for us (no media
    encryption key to change), EXIT FAILURE MODE succeeds (no sanitize
    ever fails into that mode). Parameter list rules: only OVERWRITE has
    one; its length must be INITIALIZATION PATTERN LENGTH + 4 and the
    pattern 1..block size bytes."""
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    plen = int.from_bytes(cdb[7:9], "big")
    if cdb[1] & 0x40:                   # reserved
        scst_set_invalid_field_in_cdb(cmd, 1, 6)
        return
    for i in range(2, 7):               # reserved bytes
        if cdb[i]:
            scst_set_invalid_field_in_cdb(cmd, i)
            return
    if sa == SANITIZE_OVERWRITE:
        if plen < 5 or plen > virt_dev.block_size + 4:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return
        data = scst_get_buf_full(cmd)
        count = data[0] & 0x1F
        if data[0] & 0x60:              # INVERT / TEST: not supported
            scst_set_invalid_field_in_parm_list(cmd, 0, 7 if data[0] & 0x80 else 6)
            return
        if count == 0:
            scst_set_invalid_field_in_parm_list(cmd, 0, 4)
            return
        pat_len = int.from_bytes(data[2:4], "big")
        if pat_len == 0 or pat_len > virt_dev.block_size:
            scst_set_invalid_field_in_parm_list(cmd, 2)
            return
        if pat_len + 4 != plen:
            scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
            return
        pattern = bytes(data[4:4 + pat_len])
        bs = virt_dev.block_size
        block = (pattern * (bs // pat_len + 1))[:bs]
        _erase_medium(cmd, virt_dev, block)
    elif sa in (SANITIZE_BLOCK_ERASE, SANITIZE_CRYPTO_ERASE):
        if plen:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return
        _erase_medium(cmd, virt_dev, None)
    elif sa == SANITIZE_EXIT_FAILURE_MODE:
        if plen:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return
    else:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)


def vdisk_sbc_exec_table() -> dict:
    return {
        0x04: vdisk_exec_format_unit,
        0x34: vdisk_exec_pre_fetch,
        0x37: vdisk_exec_read_defect_data,
        0x41: vdisk_exec_write_same,
        0x48: vdisk_exec_sanitize,
        0x89: vdisk_exec_caw,
        0x8B: vdisk_exec_orwrite,
        0x90: vdisk_exec_pre_fetch,
        0x93: vdisk_exec_write_same,
        0x9C: vdisk_exec_write_atomic,
        0xB7: vdisk_exec_read_defect_data,
    }

