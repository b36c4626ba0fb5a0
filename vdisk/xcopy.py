"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS for the vdisk handlers:
the copy manager of SPC-4 5.16 for block-to-block copies between the
vdisk LUNs one session can see, and the Third-party Copy VPD page
(SPC-4 7.8.17) that describes it.

Twin of scst/src/scst_copy_mgr.c (scst_cm_parse_descriptors,
scst_cm_parse_id_tgt_descr, scst_cm_parse_b2b_seg_descr,
scst_cm_rcv_copy_res_exec and the list identifier bookkeeping), plus the
third-party copy VPD page of scst_vdisk.c. Mirrors SPC-4 6.4 (EXTENDED
COPY, LID1 parameter list, 6.4.5 identification descriptor CSCD, 6.4.6.5
block device to block device segment) and 6.20 (RECEIVE COPY RESULTS:
COPY STATUS, OPERATING PARAMETERS, FAILED SEGMENT DETAILS).

Contexts: the exec functions run where vdisk exec runs: a device kthread
for vdisk_fileio (they sleep in the vfs calls of every device the copy
touches), the submitting context for vdisk_nullio. A copy issued to a
nullio LUN that would have to sleep (it touches a fileio LUN) while the
context is atomic is answered BUSY instead. vdisk_third_party_copy_vpd
never sleeps.

Differs from SCST: SCST's copy manager is a core service with its own
target and session, which sends internal READ/WRITE commands through the
normal command path to each device. Ours lives in the vdisk handler and
moves the data itself through the devices' vdisk_io_ops (read_into /
write_buf) in chunks of at most 1 MiB, synchronously in the EXTENDED COPY
command's thread; so only vdisk devices can be copy targets, and a long
copy holds its issuing device's thread. Copy targets are looked up by
their NAA designator (VPD 0x83) among the LUNs of the issuing session
only (SCST searches every device and then checks the initiator name
against every access group); a designator found nowhere in that session,
a LUN of another group included, is COPY TARGET DEVICE NOT REACHABLE.
Reservations of a copy target other than the issuing LUN are checked as
if the issuing I_T nexus sent the READ or WRITE itself (RESERVATION
CONFLICT); a read-only destination is DATA PROTECT, WRITE PROTECTED, as a
WRITE to it would be. An I/O error of a copy target is reported with that
target's own sense data (MEDIUM ERROR ...), not wrapped in COPY ABORTED.
No inline or held data, no stream devices, no ROD tokens (LID4), no
embedded CSCD sense data in COPY ABORTED sense. List identifiers are kept
per session (the I_T nexus), at most _CM_MAX_LIDS_PER_SESS of them.
"""
from __future__ import annotations

import attrs

from kshim.printk import pr_info_ratelimited
from kshim.sched import cond_resched, in_atomic
from kshim.spinlock import spin_lock_bh, spin_unlock_bh, spinlock_t
from scst_core.cdbprobe import scst_get_cdb_info
from scst_core.const import (COPY_ABORTED, ILLEGAL_REQUEST, SAM_STAT_BUSY,
                             SAM_STAT_RESERVATION_CONFLICT,
                             scst_sense_parameter_list_length_invalid,
                             scst_sense_write_protected)
from scst_core.lib import (scst_get_buf_full, scst_set_cmd_error,
                           scst_set_cmd_error_status, scst_set_invalid_field_in_cdb,
                           scst_set_invalid_field_in_parm_list)
from scst_core.pres import scst_pr_is_cmd_allowed
from scst_core.scst import scst_cmd, scst_session, scst_tgt_dev
from vdisk.vdisk import scst_vdisk_dev, vdisk_copy_resp, vdisk_need_sync

# Design notes:
# - Everything that can be checked without moving data is checked before
#   the first byte moves: the parameter list, every CSCD (the access
#   group check among them), every segment's indexes, ranges, write
#   protection and reservations. So a refused copy copies nothing, and the
#   only errors left for the copy loop are I/O errors and aborts.
# - The list id is registered once the header, descriptor types and CSCDs
#   are good (an ILLEGAL REQUEST there leaves no trace, as in SCST); from
#   the segment checks on, a failure is kept for FAILED SEGMENT DETAILS.
# - LU ID TYPE and NUL (CSCD byte 1, bits 7:5) are obsolete in SPC-4 and
#   ignored, as libiscsi's ValidTgtDescr expects of an SPC-4 device.
# - Chunks are 1 MiB (a multiple of every block size); a copy within one
#   device whose destination overlaps the source above it runs from the
#   end backwards, so every source block is read before it is overwritten.
# - Limits: the descriptor list maximum is exactly what _CM_MAX_TGT_DESCR_CNT
#   identification CSCDs plus _CM_MAX_SEG_DESCR_CNT block-to-block segments
#   take, so each of "too many CSCDs", "too many segments" and "list too
#   long" can be reached on its own.

_CM_CHUNK = 1 << 20
_CM_MAX_TGT_DESCR_CNT = 8                    # MAXIMUM CSCD DESCRIPTOR COUNT
_CM_MAX_SEG_DESCR_CNT = 64                   # MAXIMUM SEGMENT DESCRIPTOR COUNT
_CM_ID_DESCR_LEN = 32                        # identification CSCD descriptor
_CM_B2B_DESCR_LEN = 28                       # block -> block segment descriptor
_CM_MAX_DESCR_LIST_LEN = (_CM_MAX_TGT_DESCR_CNT * _CM_ID_DESCR_LEN
                          + _CM_MAX_SEG_DESCR_CNT * _CM_B2B_DESCR_LEN)
_CM_MAX_SEGMENT_LEN = 256 << 20              # MAXIMUM SEGMENT LENGTH, bytes
_CM_DATA_SEG_GRANULARITY_LOG2 = 9            # 512 bytes
_CM_MAX_CONCURRENT = 255                     # MAXIMUM CONCURRENT COPIES
_CM_MAX_LIDS_PER_SESS = 32                   # list ids remembered per I_T nexus
_CM_MAX_SESS = 256                           # sessions with list ids remembered

EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84
EC_SA_LID1 = 0x00
RCR_SA_COPY_STATUS = 0x00
RCR_SA_OPERATING_PARAMETERS = 0x03
RCR_SA_FAILED_SEGMENT_DETAILS = 0x04
RCR_SUPPORTED_SAS = (RCR_SA_COPY_STATUS, RCR_SA_OPERATING_PARAMETERS,
                     RCR_SA_FAILED_SEGMENT_DETAILS)

EC_DESCR_B2B = 0x02                          # block device -> block device segment
EC_DESCR_ID_CSCD = 0xE4                      # identification descriptor CSCD
_IMPLEMENTED_DESCRS = (EC_DESCR_B2B, EC_DESCR_ID_CSCD)

# LIST ID USAGE (parameter list byte 1, bits 4:3)
LID_USAGE_HOLD = 0
LID_USAGE_RESERVED = 1
LID_USAGE_NO_HOLD = 2
LID_USAGE_NONE = 3

# RECEIVE COPY RESULTS COPY STATUS, COPY MANAGER STATUS
CM_STATUS_IN_PROGRESS = 0x00
CM_STATUS_COMPLETED = 0x01
CM_STATUS_COMPLETED_ERR = 0x02

# sense triples not in scst_core.const (named as in scst_const.h)
scst_sense_copy_target_dev_unreachable = (COPY_ABORTED, 0x0D, 0x02)
scst_sense_copy_aborted_no_info = (COPY_ABORTED, 0x00, 0x00)
scst_sense_too_many_target_descriptors = (ILLEGAL_REQUEST, 0x26, 0x06)
scst_sense_unsupported_tgt_descr_type = (ILLEGAL_REQUEST, 0x26, 0x07)
scst_sense_too_many_segment_descriptors = (ILLEGAL_REQUEST, 0x26, 0x08)
scst_sense_unsupported_seg_descr_type = (ILLEGAL_REQUEST, 0x26, 0x09)
scst_sense_inline_data_length_exceeded = (ILLEGAL_REQUEST, 0x26, 0x0B)
scst_sense_operation_in_progress = (ILLEGAL_REQUEST, 0x00, 0x16)

VPD_THIRD_PARTY_COPY = 0x8F                  # SPC-4 7.8.17
# Third-party Copy VPD page descriptor types (SPC-4 7.8.17.2)
_TPC_SUPPORTED_COMMANDS = 0x0001
_TPC_PARAMETER_DATA = 0x0004
_TPC_SUPPORTED_DESCRIPTORS = 0x0008
_TPC_SUPPORTED_CSCD_IDS = 0x000C
_TPC_GENERAL_COPY_OPERATIONS = 0x8001


@attrs.define(slots=True, eq=False)
class scst_cm_list_id:
    """What RECEIVE COPY RESULTS reports about one EXTENDED COPY
    (scst_copy_mgr.c: struct scst_cm_list_id). Protected by scst_cm_lock."""
    cm_lid: int
    cm_hold: bool                       # LIST ID USAGE 00b: kept after completion
    cm_done: bool = False
    cm_segs_processed: int = 0
    cm_written_size: int = 0            # bytes written to destinations
    cm_status: int = 0                  # SAM status it completed with
    cm_sense: bytes = b""


@attrs.define(slots=True, eq=False)
class _cm_tgt_descr:
    """One parsed CSCD descriptor (scst_copy_mgr.c: scst_cm_tgt_descr)."""
    param_offs: int
    virt_dev: scst_vdisk_dev
    tgt_dev: scst_tgt_dev | None = None  # the session's for it


@attrs.define(slots=True, eq=False)
class _cm_seg:
    """One block -> block segment, checked and ready to run."""
    src: _cm_tgt_descr
    dst: _cm_tgt_descr
    src_pos: int                        # byte offsets on the devices
    dst_pos: int
    length: int                         # bytes


# The list ids of each session (I_T nexus): sess -> {list id -> record}.
# Only non-sleeping code touches it, under scst_cm_lock.
scst_cm_lock = spinlock_t("scst_cm_lock")
scst_cm_sess_lids: dict[scst_session, dict[int, scst_cm_list_id]] = {}


# ---------------------------------------------------------------- sense

def _put_copy_aborted(cmd: scst_cmd, sense: tuple[int, int, int], seg_num: int,
                      field_offs: int, sd: bool, bit_offs: int = -1) -> None:
    """COPY ABORTED with the segment number in COMMAND-SPECIFIC INFORMATION
    and a segment pointer (SPC-4 4.5.2.4.6) to the field in error: SD set
    means field_offs is relative to the segment descriptor, clear means to
    the parameter list."""
    scst_set_cmd_error(cmd, sense)
    sks = bytes((0x80 | (0x20 if sd else 0) | ((0x08 | (bit_offs & 7)) if bit_offs >= 0 else 0),
                 (field_offs >> 8) & 0xFF, field_offs & 0xFF))
    buf = cmd.sense
    if cmd.dev is not None and cmd.dev.d_sense:
        # command-specific information descriptor, then sense-key specific
        buf[8:20] = bytes((0x01, 0x0A, 0, 0)) + seg_num.to_bytes(8, "big")
        buf[20:28] = bytes((0x02, 0x06, 0, 0)) + sks + b"\x00"
        buf[7] = 20
        cmd.sense_valid_len = 28
    else:
        buf[8:12] = seg_num.to_bytes(4, "big")
        buf[15:18] = sks


# ---------------------------------------------------------------- list ids

def _sess_lids(sess: scst_session) -> dict[int, scst_cm_list_id]:
    """The session's list-id table, creating it; drops the tables of
    sessions that are gone. Call with scst_cm_lock held."""
    lids = scst_cm_sess_lids.get(sess)
    if lids is None:
        if len(scst_cm_sess_lids) >= _CM_MAX_SESS:
            for s in [s for s in scst_cm_sess_lids if s not in s.tgt.sess_list]:
                del scst_cm_sess_lids[s]
            if len(scst_cm_sess_lids) >= _CM_MAX_SESS:
                del scst_cm_sess_lids[next(iter(scst_cm_sess_lids))]
        lids = scst_cm_sess_lids[sess] = {}
    return lids


def scst_cm_add_list_id(cmd: scst_cmd, lid: int, hold: bool) -> scst_cm_list_id | None:
    """Register an EXTENDED COPY's list id as in progress. None, with
    OPERATION IN PROGRESS set, if the same list id is still running on this
    I_T nexus. A finished one with the same id is replaced."""
    spin_lock_bh(scst_cm_lock)
    try:
        lids = _sess_lids(cmd.sess)
        old = lids.get(lid)
        if old is not None and not old.cm_done:
            scst_set_cmd_error(cmd, scst_sense_operation_in_progress)
            return None
        lids.pop(lid, None)
        if len(lids) >= _CM_MAX_LIDS_PER_SESS:
            # Forget the oldest finished one (dicts keep insertion order).
            victim = next((k for k, v in lids.items() if v.cm_done), None)
            if victim is None:
                scst_set_cmd_error_status(cmd, SAM_STAT_BUSY)
                return None
            del lids[victim]
        rec = lids[lid] = scst_cm_list_id(cm_lid=lid, cm_hold=hold)
        return rec
    finally:
        spin_unlock_bh(scst_cm_lock)


def scst_cm_list_id_done(cmd: scst_cmd, rec: scst_cm_list_id) -> None:
    """The copy ended: keep its results if the initiator asked us to hold
    them or it failed (for FAILED SEGMENT DETAILS), else forget it."""
    spin_lock_bh(scst_cm_lock)
    rec.cm_done = True
    rec.cm_status = cmd.status
    rec.cm_sense = bytes(cmd.sense[:cmd.sense_valid_len]) if cmd.status and cmd.sense else b""
    lids = scst_cm_sess_lids.get(cmd.sess)
    if lids is not None and lids.get(rec.cm_lid) is rec and not rec.cm_hold and not cmd.status:
        del lids[rec.cm_lid]
    spin_unlock_bh(scst_cm_lock)


def _find_list_id(cmd: scst_cmd, lid: int) -> scst_cm_list_id | None:
    lids = scst_cm_sess_lids.get(cmd.sess)
    return lids.get(lid) if lids is not None else None


# ---------------------------------------------------------------- parsing

def _find_cscd_dev(cmd: scst_cmd, d: memoryview) -> tuple[scst_vdisk_dev, scst_tgt_dev] | None:
    """The session's LUN whose NAA designator the CSCD names, or None."""
    code_set = d[4] & 0x0F
    assoc_type = d[5] & 0x3F                 # ASSOCIATION and DESIGNATOR TYPE
    n = d[7]
    if code_set != 0x01 or assoc_type != 0x03 or n > 20:
        return None
    desig = bytes(d[8:8 + n])
    for tgt_dev in list(cmd.sess.sess_tgt_dev_list.values()):
        vd = tgt_dev.dev.dh_priv
        if isinstance(vd, scst_vdisk_dev) and not vd.cdrom and vd.naa_id == desig:
            return vd, tgt_dev
    return None


def _parse_id_cscd(cmd: scst_cmd, buf: memoryview, offs: int) -> _cm_tgt_descr | None:
    """An identification descriptor CSCD (SPC-4 6.4.5.6): a LU of this
    session named by its NAA designator. None with the sense set."""
    d = buf[offs:offs + _CM_ID_DESCR_LEN]
    # Byte 1 bits 7:5 (LU ID TYPE, NUL) are obsolete in SPC-4: ignored,
    # the descriptor always names a LU by its designator.
    if d[1] & 0x1F:                          # only direct-access block devices
        scst_set_invalid_field_in_parm_list(cmd, offs + 1, 4)
        return None
    found = _find_cscd_dev(cmd, d)
    if found is None:
        pr_info_ratelimited(f"vdisk: EXTENDED COPY from {cmd.sess.initiator_name}: CSCD at "
                            f"{offs} names no LUN of its session ({bytes(d[4:8 + min(d[7], 20)]).hex()})")
        _put_copy_aborted(cmd, scst_sense_copy_target_dev_unreachable, 0, offs, False)
        return None
    vd, tgt_dev = found
    if vd.dev is None or vd.io_ops is None or not vd.media_present or \
            vd.sanitize_state:   # sanitizing (vdisk.sbc): not usable
        _put_copy_aborted(cmd, scst_sense_copy_target_dev_unreachable, 0, offs, False)
        return None
    if int.from_bytes(d[29:32], "big") != vd.block_size:   # DISK BLOCK LENGTH
        scst_set_invalid_field_in_parm_list(cmd, offs + 29)
        return None
    return _cm_tgt_descr(param_offs=offs, virt_dev=vd, tgt_dev=tgt_dev)


def _pr_allows(cmd: scst_cmd, descr: _cm_tgt_descr, write: bool) -> bool:
    """Would the device's reservations let this I_T nexus READ (WRITE) it?"""
    if descr.virt_dev.dev is cmd.dev:
        return True                          # the core checked the EXTENDED COPY itself
    probe = scst_cmd(sess=cmd.sess, tgt=cmd.tgt, tgtt=cmd.tgtt,
                     cdb=bytes((0x8A if write else 0x88,)) + bytes(15))
    probe.dev = descr.virt_dev.dev
    probe.tgt_dev = descr.tgt_dev
    if scst_get_cdb_info(probe) != 0:
        return False
    return scst_pr_is_cmd_allowed(probe)


def _parse_b2b_seg(cmd: scst_cmd, buf: memoryview, offs: int, seg_num: int,
                   cscds: list[_cm_tgt_descr]) -> _cm_seg | None:
    """A block device to block device segment descriptor (SPC-4 6.4.6.5),
    checked against both devices. None with the sense set."""
    d = buf[offs:offs + _CM_B2B_DESCR_LEN]
    src_idx = int.from_bytes(d[4:6], "big")
    dst_idx = int.from_bytes(d[6:8], "big")
    for idx, field in ((src_idx, 4), (dst_idx, 6)):
        if idx >= len(cscds):
            _put_copy_aborted(cmd, scst_sense_copy_aborted_no_info, seg_num, field, True)
            return None
    src, dst = cscds[src_idx], cscds[dst_idx]
    svd, dvd = src.virt_dev, dst.virt_dev
    dc = bool(d[1] & 0x02)
    nblocks = int.from_bytes(d[10:12], "big")
    length = nblocks << (dvd.block_shift if dc else svd.block_shift)
    if length % svd.block_size or length % dvd.block_size:
        _put_copy_aborted(cmd, scst_sense_copy_aborted_no_info, seg_num, 10, True)
        return None
    src_lba = int.from_bytes(d[12:20], "big")
    dst_lba = int.from_bytes(d[20:28], "big")
    if (src_lba << svd.block_shift) + length > (svd.nblocks << svd.block_shift):
        _put_copy_aborted(cmd, scst_sense_copy_aborted_no_info, seg_num, 12, True)
        return None
    if (dst_lba << dvd.block_shift) + length > (dvd.nblocks << dvd.block_shift):
        _put_copy_aborted(cmd, scst_sense_copy_aborted_no_info, seg_num, 20, True)
        return None
    if length and (dvd.rd_only or dvd.dev.swp or getattr(dst.tgt_dev, "rd_only", False)):
        scst_set_cmd_error(cmd, scst_sense_write_protected)
        return None
    if length and not (_pr_allows(cmd, src, False) and _pr_allows(cmd, dst, True)):
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
        return None
    return _cm_seg(src=src, dst=dst, src_pos=src_lba << svd.block_shift,
                   dst_pos=dst_lba << dvd.block_shift, length=length)


def scst_cm_parse_descriptors(cmd: scst_cmd,
                              buf: memoryview) -> tuple[int, int, list, list] | None:
    """Check an LID1 parameter list (SPC-4 6.4.3): header, descriptor
    types and counts, and resolve its CSCDs. Returns (list id, list id
    usage, CSCDs, segment descriptor offsets), or None with the sense set.
    The segments are checked by the caller once the list id is registered,
    so that their errors are kept for FAILED SEGMENT DETAILS."""
    plen = len(buf)
    if plen < 16:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return None
    lid = buf[0]
    usage = (buf[1] >> 3) & 0x03
    if usage == LID_USAGE_RESERVED:
        scst_set_invalid_field_in_parm_list(cmd, 1, 4)
        return None
    if usage == LID_USAGE_NONE and lid != 0:
        scst_set_invalid_field_in_parm_list(cmd, 0)
        return None
    cscd_len = int.from_bytes(buf[2:4], "big")
    seg_len = int.from_bytes(buf[8:12], "big")
    inline_len = int.from_bytes(buf[12:16], "big")
    if 16 + cscd_len + seg_len + inline_len > plen or \
            cscd_len + seg_len > _CM_MAX_DESCR_LIST_LEN:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return None
    if inline_len:
        scst_set_cmd_error(cmd, scst_sense_inline_data_length_exceeded)
        return None
    if cscd_len % _CM_ID_DESCR_LEN:
        scst_set_invalid_field_in_parm_list(cmd, 2)
        return None
    if cscd_len // _CM_ID_DESCR_LEN > _CM_MAX_TGT_DESCR_CNT:
        scst_set_cmd_error(cmd, scst_sense_too_many_target_descriptors)
        return None
    if cscd_len == 0 and seg_len:
        scst_set_invalid_field_in_parm_list(cmd, 2)
        return None
    # Descriptor types and counts first: no LU is looked at before the
    # whole list is known to be well formed.
    seg_start = 16 + cscd_len
    seg_end = seg_start + seg_len
    for offs in range(16, seg_start, _CM_ID_DESCR_LEN):
        if buf[offs] != EC_DESCR_ID_CSCD:
            scst_set_cmd_error(cmd, scst_sense_unsupported_tgt_descr_type)
            return None
    seg_offs: list[int] = []
    offs = seg_start
    while offs < seg_end:                     # bounded: seg_len / 28 iterations
        if len(seg_offs) == _CM_MAX_SEG_DESCR_CNT:
            scst_set_cmd_error(cmd, scst_sense_too_many_segment_descriptors)
            return None
        if buf[offs] != EC_DESCR_B2B:
            scst_set_cmd_error(cmd, scst_sense_unsupported_seg_descr_type)
            return None
        if offs + 4 > seg_end or \
                int.from_bytes(buf[offs + 2:offs + 4], "big") != _CM_B2B_DESCR_LEN - 4:
            scst_set_invalid_field_in_parm_list(cmd, offs + 2)
            return None
        if offs + _CM_B2B_DESCR_LEN > seg_end:
            scst_set_invalid_field_in_parm_list(cmd, 8)
            return None
        seg_offs.append(offs)
        offs += _CM_B2B_DESCR_LEN
    cscds = []
    for offs in range(16, seg_start, _CM_ID_DESCR_LEN):
        c = _parse_id_cscd(cmd, buf, offs)
        if c is None:
            return None
        cscds.append(c)
    return lid, usage, cscds, seg_offs


# ---------------------------------------------------------------- data movement

def _cm_copy_seg(cmd: scst_cmd, seg: _cm_seg, rec: scst_cm_list_id | None,
                 may_sleep: bool) -> int:
    """Copy one segment in chunks of at most _CM_CHUNK bytes: 0, or the
    backend's nonzero return with the sense it set. Bounded: length /
    _CM_CHUNK chunks."""
    svd, dvd = seg.src.virt_dev, seg.dst.virt_dev
    length = seg.length
    if length == 0:
        return 0
    backwards = svd is dvd and seg.src_pos < seg.dst_pos < seg.src_pos + length
    chunk = bytearray(min(_CM_CHUNK, length))
    nchunks = (length + _CM_CHUNK - 1) // _CM_CHUNK
    for i in range(nchunks):
        if cmd.aborted:
            return 1
        off = (nchunks - 1 - i) * _CM_CHUNK if backwards else i * _CM_CHUNK
        n = min(_CM_CHUNK, length - off)
        piece = chunk if n == len(chunk) else bytearray(n)     # only the short tail
        ret = svd.io_ops.read_into(svd, cmd, seg.src_pos + off, piece)
        if ret != 0:
            return ret
        ret = dvd.io_ops.write_buf(dvd, cmd, seg.dst_pos + off, memoryview(piece))
        if ret != 0:
            return ret
        if rec is not None:
            rec.cm_written_size += n
        if may_sleep:
            cond_resched()
    if vdisk_need_sync(cmd, dvd, False):
        return dvd.io_ops.sync(dvd, cmd, seg.dst_pos, length)
    return 0


# ---------------------------------------------------------------- EXTENDED COPY

def vdisk_exec_extended_copy(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """EXTENDED COPY(LID1) (SPC-4 6.4)."""
    sa = cmd.cdb[1] & 0x1F
    if sa != EC_SA_LID1:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    if cmd.bufflen == 0:
        return                                   # an empty parameter list copies nothing
    buf = scst_get_buf_full(cmd)
    parsed = scst_cm_parse_descriptors(cmd, buf)
    if parsed is None:
        return
    lid, usage, cscds, seg_offs = parsed
    rec = None
    if usage != LID_USAGE_NONE:
        rec = scst_cm_add_list_id(cmd, lid, usage == LID_USAGE_HOLD)
        if rec is None:
            return
    try:
        # Every segment is checked before any data moves.
        segs = []
        for i, offs in enumerate(seg_offs):
            seg = _parse_b2b_seg(cmd, buf, offs, i, cscds)
            if seg is None:
                if rec is not None:
                    rec.cm_segs_processed = i
                return
            segs.append(seg)
        may_sleep = not in_atomic()
        if not may_sleep and any(not s.src.virt_dev.nullio or not s.dst.virt_dev.nullio
                                 for s in segs if s.length):
            scst_set_cmd_error_status(cmd, SAM_STAT_BUSY)
            return
        for i, seg in enumerate(segs):
            if rec is not None:
                rec.cm_segs_processed = i
            if _cm_copy_seg(cmd, seg, rec, may_sleep) != 0:
                break
            if rec is not None:
                rec.cm_segs_processed = i + 1
    finally:
        if rec is not None:
            scst_cm_list_id_done(cmd, rec)


# ---------------------------------------------------------------- RECEIVE COPY RESULTS

def _rcr_copy_status(cmd: scst_cmd, rec: scst_cm_list_id) -> bytes:
    """COPY STATUS (SPC-4 6.20.3): 12 bytes."""
    if not rec.cm_done:
        st = CM_STATUS_IN_PROGRESS
    else:
        st = CM_STATUS_COMPLETED_ERR if rec.cm_status else CM_STATUS_COMPLETED
    count, units = rec.cm_written_size, 0x00          # bytes
    if count > 0xFFFFFFFF:
        count, units = count >> 10, 0x01              # kibibytes
    out = bytearray(12)
    out[0:4] = (8).to_bytes(4, "big")
    out[4] = st                                       # HDD=0: no held data
    out[5:7] = min(rec.cm_segs_processed, 0xFFFF).to_bytes(2, "big")
    out[7] = units
    out[8:12] = count.to_bytes(4, "big")
    return bytes(out)


def _rcr_failed_segment_details(rec: scst_cm_list_id) -> bytes:
    """FAILED SEGMENT DETAILS (SPC-4 6.20.5): the sense data of a failed
    copy; only the 4-byte header (AVAILABLE DATA 0) for one that is running
    or did not fail."""
    if not rec.cm_done or not rec.cm_status:
        return bytes(4)
    sense = rec.cm_sense
    out = bytearray(60 + len(sense))
    out[0:4] = (len(out) - 4).to_bytes(4, "big")
    out[56] = rec.cm_status                           # COPY COMMAND STATUS
    out[58:60] = len(sense).to_bytes(2, "big")
    out[60:] = sense
    return bytes(out)


def scst_cm_operating_parameters() -> bytes:
    """OPERATING PARAMETERS (SPC-4 6.20.4), consistent with what
    scst_cm_parse_descriptors enforces and with VPD page 0x8F."""
    out = bytearray(44 + len(_IMPLEMENTED_DESCRS))
    out[0:4] = (len(out) - 4).to_bytes(4, "big")
    out[4] = 0x01                                     # SNLID: list ids not required
    out[8:10] = _CM_MAX_TGT_DESCR_CNT.to_bytes(2, "big")
    out[10:12] = _CM_MAX_SEG_DESCR_CNT.to_bytes(2, "big")
    out[12:16] = _CM_MAX_DESCR_LIST_LEN.to_bytes(4, "big")
    out[16:20] = _CM_MAX_SEGMENT_LEN.to_bytes(4, "big")
    # MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE
    # TRANSFER SIZE: 0 (none of them)
    out[34:36] = _CM_MAX_CONCURRENT.to_bytes(2, "big")   # TOTAL CONCURRENT COPIES
    out[36] = _CM_MAX_CONCURRENT                      # MAXIMUM CONCURRENT COPIES
    out[37] = _CM_DATA_SEG_GRANULARITY_LOG2
    out[43] = len(_IMPLEMENTED_DESCRS)
    out[44:] = bytes(_IMPLEMENTED_DESCRS)
    return bytes(out)


def vdisk_exec_receive_copy_results(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """RECEIVE COPY RESULTS (SPC-4 6.20), LID1 service actions."""
    sa = cmd.cdb[1] & 0x1F
    if sa == RCR_SA_OPERATING_PARAMETERS:
        vdisk_copy_resp(cmd, scst_cm_operating_parameters())
        return
    if sa not in (RCR_SA_COPY_STATUS, RCR_SA_FAILED_SEGMENT_DETAILS):
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    lid = cmd.cdb[2]
    spin_lock_bh(scst_cm_lock)
    rec = _find_list_id(cmd, lid)
    if rec is None:
        spin_unlock_bh(scst_cm_lock)
        scst_set_invalid_field_in_cdb(cmd, 2)         # no such operation on this nexus
        return
    if sa == RCR_SA_COPY_STATUS:
        data = _rcr_copy_status(cmd, rec)
        forget = rec.cm_done and not rec.cm_status    # nothing more to report
    else:
        data = _rcr_failed_segment_details(rec)
        forget = rec.cm_done and bool(rec.cm_status)
    if forget:
        lids = scst_cm_sess_lids.get(cmd.sess)
        if lids is not None and lids.get(lid) is rec:
            del lids[lid]
    spin_unlock_bh(scst_cm_lock)
    vdisk_copy_resp(cmd, data)


# ---------------------------------------------------------------- VPD 0x8F

def _tpc_descr(dtype: int, body: bytes) -> bytes:
    """One third-party copy descriptor, padded to a multiple of 4 bytes."""
    body = body + bytes((-(4 + len(body))) & 3)
    return dtype.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def vdisk_third_party_copy_vpd(virt_dev: scst_vdisk_dev) -> bytes:
    """Third-party Copy VPD page (SPC-4 7.8.17) without its 4-byte header:
    Supported Commands, Parameter Data, Supported Descriptors, Supported
    CSCD Descriptor IDs and General Copy Operations descriptors."""
    cmds = bytes((EXTENDED_COPY, 1, EC_SA_LID1,
                  RECEIVE_COPY_RESULTS, len(RCR_SUPPORTED_SAS))) + bytes(RCR_SUPPORTED_SAS)
    out = _tpc_descr(_TPC_SUPPORTED_COMMANDS, bytes((len(cmds),)) + cmds)
    params = bytearray(28)
    params[2:4] = _CM_MAX_TGT_DESCR_CNT.to_bytes(2, "big")
    params[4:6] = _CM_MAX_SEG_DESCR_CNT.to_bytes(2, "big")
    params[6:10] = _CM_MAX_DESCR_LIST_LEN.to_bytes(4, "big")
    # MAXIMUM INLINE DATA LENGTH (params[10:14]): 0
    out += _tpc_descr(_TPC_PARAMETER_DATA, bytes(params))
    out += _tpc_descr(_TPC_SUPPORTED_DESCRIPTORS,
                      bytes((len(_IMPLEMENTED_DESCRS),)) + bytes(_IMPLEMENTED_DESCRS))
    out += _tpc_descr(_TPC_SUPPORTED_CSCD_IDS, bytes(2))     # none beyond CSCD indexes
    gen = bytearray(28)
    gen[0:4] = _CM_MAX_CONCURRENT.to_bytes(4, "big")         # TOTAL CONCURRENT COPIES
    gen[4:8] = _CM_MAX_CONCURRENT.to_bytes(4, "big")         # MAXIMUM IDENTIFIED CONCURRENT COPIES
    gen[8:12] = _CM_MAX_SEGMENT_LEN.to_bytes(4, "big")
    gen[12] = _CM_DATA_SEG_GRANULARITY_LOG2
    out += _tpc_descr(_TPC_GENERAL_COPY_OPERATIONS, bytes(gen))
    return out


def vdisk_xcopy_exec_table() -> dict:
    """opcode -> exec function for the copy commands."""
    return {
        EXTENDED_COPY: vdisk_exec_extended_copy,
        RECEIVE_COPY_RESULTS: vdisk_exec_receive_copy_results,
    }
