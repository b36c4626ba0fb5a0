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
io_ops never sleep, and the mutex is then never contended). A sanitize
operation runs in a kthread of its own (vdisk_sanitize/<device>);
vdisk_sanitize_check and vdisk_sanitize_sense run wherever exec runs;
vdisk_sanitize_stop sleeps (task context: device detach).

SANITIZE (SBC-3 4.11, 5.30) runs in the background. vdisk_exec_sanitize
checks the CDB and parameter list, puts the device in the sanitize state
and starts the kthread, which erases the medium. IMMED=1 completes GOOD at
once; IMMED=0 completes when the operation ends, from the kthread. Aborting
that command (ABORT TASK, a reset, nexus loss) ends the command within one
step of the erase, never the operation, which goes on through resets and
logouts (4.11.1). While it runs, vdisk_do_exec terminates every command but
INQUIRY and REQUEST SENSE (REPORT LUNS is answered by the core) with NOT
READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS and the progress
indication in the sense-key specific field (4.11.2); fileio's
exec_nowait declines READs then, so they meet the same gate; REQUEST SENSE
returns that sense with GOOD status. An operation that fails leaves the
failure mode (4.11.4): every command but those and SANITIZE gets MEDIUM
ERROR, SANITIZE COMMAND FAILED until a sanitize succeeds or, if the failed
one had AUSE=1, EXIT FAILURE MODE ends it.

Pacing: OVERWRITE (and BLOCK ERASE where zeros must be written) writes in
steps of at most 1 MiB at sanitize_rate MiB/s, a device attribute settable
in scst.conf and the management tree, default 10 (VDISK_SANITIZE_RATE). A
real medium is overwritten in minutes to hours; our file would be done in
milliseconds while the erase kept the one CPU and the I/O pool busy, and
nobody could watch the operation run. At 10 MiB/s a 64 MiB LUN takes 6.4
s: longer than the ~4.5 s after which libiscsi's SCSI.Sanitize.Reset
checks that the operation is still running (a 3 s sleep, five task
management functions, a reconnect after 1 s), yet short enough that its
Overwrite test (three overwrites) stays near 20 s. Deallocating (BLOCK and
CRYPTO ERASE on a thin device) moves no data and is not paced.

Differs from SCST: WRITE SAME runs synchronously in the command's thread
(SCST splits large WRITE SAMEs into sub-commands). COMPARE AND WRITE and
ORWRITE are atomic against each other and against WRITE ATOMIC, not
against plain WRITEs (which do not take the device mutex, to keep the data
path lock-free). Differs from SBC-3: the sanitize state lives in memory, so
an operation does not survive the device: removing it stops the kthread
(kthread_stop) and a re-created device starts outside the sanitize state.
Errors parse() finds (LBA out of range, write protection) come before
SANITIZE IN PROGRESS, and commands already executing when a sanitize
starts finish unhindered.
"""
from __future__ import annotations

from kshim.err import EINTR, IS_ERR
from kshim.jiffies import HZ, jiffies
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.mutex import mutex_lock, mutex_unlock
from kshim.printk import pr_err, pr_info
from kshim.sched import cond_resched
from kshim.timer import schedule_timeout_interruptible
from scst_core.const import (MEDIUM_ERROR, NOT_READY, SAM_STAT_CONDITION_MET,
                             scst_sense_block_out_range_error, scst_sense_miscompare_error,
                             scst_sense_parameter_list_length_invalid)
from scst_core.lib import (scst_build_sense, scst_get_buf_full, scst_set_cmd_error,
                           scst_set_invalid_field_in_cdb, scst_set_invalid_field_in_parm_list)
from scst_core.scst import scst_cmd
from vdisk.vdisk import (VDISK_EXEC_ASYNC, VDISK_MAX_CAW_BLOCKS, VDISK_MAX_WRITE_SAME_BYTES,
                         VDISK_SANITIZE_FAILED, VDISK_SANITIZE_IN_PROGRESS, VDISK_SANITIZE_NONE,
                         scst_vdisk_dev, vdisk_cmd_done, vdisk_copy_resp, vdisk_need_sync,
                         vdisk_set_sense_info)

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
        # WSNZ=0: zero blocks means "to the end of the medium", within the
        # MAXIMUM WRITE SAME LENGTH like any other count (SBC-4 5.50).
        if lba >= virt_dev.nblocks:
            scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
            return
        nblocks = virt_dev.nblocks - lba
    if (nblocks << shift) > VDISK_MAX_WRITE_SAME_BYTES:
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
    from vdisk.vdisk import VDISK_MAX_ATOMIC_BYTES  # cycle: vdisk imports sbc
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

# SBC-3 4.11.2: the commands a logical unit still processes while a
# sanitize operation runs (REPORT LUNS never reaches a dev handler: the
# core answers it); after a failed one, SANITIZE too (4.11.4).
_SANITIZE_ALLOWED_OPS = frozenset((0x03, 0x12))     # REQUEST SENSE, INQUIRY
_sense_sanitize_in_progress = (NOT_READY, 0x04, 0x1B)   # LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS
_sense_sanitize_failed = (MEDIUM_ERROR, 0x31, 0x03)     # SANITIZE COMMAND FAILED
# Bytes deallocated per step of a BLOCK/CRYPTO ERASE on a thin device
# (holes cost no data transfer: not paced, only cut into steps so the
# kthread looks at kthread_should_stop and aborted commands between them).
_UNMAP_STEP = 64 << 20
# A paced step lasts at most HZ / _STEPS_PER_SEC jiffies: how late an
# aborted SANITIZE IMMED=0 or a kthread_stop is noticed.
_STEPS_PER_SEC = 10


def vdisk_sense_set_progress(sense: bytearray, n: int, progress: int) -> int:
    """Put a progress indication (SPC-4 4.5.2.4.4: SKSV=1, 0..65535) in the
    sense-key specific field of the fixed or descriptor format sense in
    sense[:n] (as scst_build_sense made it); return its new length."""
    sks = bytes((0x80, (progress >> 8) & 0xFF, progress & 0xFF))
    if sense[0] & 0x7F in (0x72, 0x73):
        sense[8:16] = bytes((0x02, 0x06, 0, 0)) + sks + b"\x00"
        sense[7] = 8
        return 16
    sense[15:18] = sks
    return n


def vdisk_sanitize_sense(buf: bytearray, desc: bool, virt_dev: scst_vdisk_dev) -> int:
    """The sense REQUEST SENSE returns in the sanitize state: IN PROGRESS
    with the progress indication, or SANITIZE COMMAND FAILED. Its length."""
    if virt_dev.sanitize_state == VDISK_SANITIZE_IN_PROGRESS:
        n = scst_build_sense(buf, desc, *_sense_sanitize_in_progress)
        return vdisk_sense_set_progress(buf, n, virt_dev.sanitize_progress)
    return scst_build_sense(buf, desc, *_sense_sanitize_failed)


def vdisk_sanitize_check(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bool:
    """vdisk_do_exec's gate while virt_dev.sanitize_state is set: True if
    the command is terminated (its sense set), False if it runs."""
    op = cmd.cdb[0]
    if op in _SANITIZE_ALLOWED_OPS:
        return False
    if virt_dev.sanitize_state == VDISK_SANITIZE_IN_PROGRESS:
        scst_set_cmd_error(cmd, _sense_sanitize_in_progress)
        cmd.sense_valid_len = vdisk_sense_set_progress(cmd.sense, cmd.sense_valid_len,
                                                       virt_dev.sanitize_progress)
        return True
    if op == 0x48:
        return False                    # a new SANITIZE may end the failure mode
    scst_set_cmd_error(cmd, _sense_sanitize_failed)
    return True


def _sanitize_reap_aborted(virt_dev: scst_vdisk_dev) -> None:
    """An aborted SANITIZE IMMED=0 (ABORT TASK, a reset, nexus loss) ends
    now; the operation goes on (SBC-3 4.11.1)."""
    cmd = virt_dev.sanitize_cmd
    if cmd is not None and cmd.aborted:
        virt_dev.sanitize_cmd = None
        vdisk_cmd_done(cmd)


def _sanitize_medium(virt_dev: scst_vdisk_dev, block: bytes | None) -> int:
    """Overwrite the whole medium with `block` repeated, or deallocate it
    (block None) where the backend can, writing zeros where it cannot.
    Writes are paced at virt_dev.sanitize_rate. 0, -EINTR if
    kthread_stop() asked us to stop, or the backend's nonzero error.
    Bounded: medium size / step iterations."""
    length = virt_dev.nblocks << virt_dev.block_shift
    ops = virt_dev.io_ops
    bs = virt_dev.block_size
    # The io_ops report errors as sense on a command: this one absorbs it
    # (the operation has no command of its own once IMMED=1 returned).
    sink = scst_cmd(sess=None, tgt=None, tgtt=None, cdb=bytes(16))
    sink.dev = virt_dev.dev
    if block is None and not virt_dev.thin_provisioned:
        block = bytes(bs)
    if block is None:
        rate, step, chunk = 0, _UNMAP_STEP, b""
    else:
        rate = virt_dev.sanitize_rate << 20
        step = min(_CHUNK, max(bs, (rate // _STEPS_PER_SEC) // bs * bs))
        chunk = block * (step // bs)
    start = jiffies()
    done = 0
    ret = 0
    while done < length:
        if kthread_should_stop():
            return -EINTR
        n = min(step, length - done)
        if block is None:
            ret = ops.unmap(virt_dev, sink, done, n)
        else:
            ret = ops.write_buf(virt_dev, sink, done, memoryview(chunk)[:n])
        if ret != 0:
            return ret
        done += n
        virt_dev.sanitize_progress = min(done * 65536 // length, 65535)
        _sanitize_reap_aborted(virt_dev)
        delay = start + done * HZ // rate - jiffies() if rate else 0
        if delay > 0:
            schedule_timeout_interruptible(delay)
        else:
            cond_resched()
    if not virt_dev.nv_cache:
        ret = ops.sync(virt_dev, sink, 0, 0)
    return ret


def vdisk_sanitize_thread(data: tuple) -> int:
    """The sanitize operation's kthread: erase, leave the sanitize state
    (or enter the failure mode), end a waiting SANITIZE IMMED=0."""
    virt_dev, block = data
    ret = _sanitize_medium(virt_dev, block)
    cmd = virt_dev.sanitize_cmd
    virt_dev.sanitize_cmd = None
    if ret == 0:
        virt_dev.sanitize_state = VDISK_SANITIZE_NONE
        pr_info(f"vdisk: {virt_dev.name}: sanitize done")
    else:
        # SBC-3 4.11.4: commands fail with SANITIZE COMMAND FAILED until a
        # sanitize succeeds (or EXIT FAILURE MODE, if AUSE was set).
        virt_dev.sanitize_state = VDISK_SANITIZE_FAILED
        pr_err(f"vdisk: {virt_dev.name}: sanitize "
               f"{'stopped' if ret == -EINTR else 'failed'} at "
               f"{virt_dev.sanitize_progress * 100 // 65536}%: {ret}")
    virt_dev.sanitize_thread = None
    # Nothing below sleeps: vdisk_sanitize_stop() never sees us half-gone.
    if cmd is not None:
        if ret != 0:
            scst_set_cmd_error(cmd, _sense_sanitize_failed)
        vdisk_cmd_done(cmd)
    return ret


def vdisk_sanitize_stop(virt_dev: scst_vdisk_dev) -> None:
    """Device removal: stop a running sanitize operation and wait for its
    kthread to exit (the medium is left in the failure mode). Task
    context."""
    t = virt_dev.sanitize_thread
    if t is not None:
        kthread_stop(t)


def _sanitize_start(cmd: scst_cmd, virt_dev: scst_vdisk_dev, block: bytes | None) -> int | None:
    """Start the operation in its own kthread. IMMED=1: the command
    completes now, GOOD; IMMED=0: the kthread completes it at the end
    (VDISK_EXEC_ASYNC), or early if it is aborted."""
    cdb = cmd.cdb
    immed = bool(cdb[1] & 0x80)
    virt_dev.sanitize_state = VDISK_SANITIZE_IN_PROGRESS
    virt_dev.sanitize_progress = 0
    virt_dev.sanitize_ause = bool(cdb[1] & 0x20)
    virt_dev.sanitize_cmd = None if immed else cmd
    t = kthread_run(vdisk_sanitize_thread, (virt_dev, block), "vdisk_sanitize/%s", virt_dev.name)
    if IS_ERR(t):
        virt_dev.sanitize_cmd = None
        virt_dev.sanitize_state = VDISK_SANITIZE_FAILED
        scst_set_cmd_error(cmd, _sense_sanitize_failed)
        return None
    virt_dev.sanitize_thread = t
    pr_info(f"vdisk: {virt_dev.name}: sanitize (service action {cdb[1] & 0x1F:#x}) started, "
            f"{virt_dev.nblocks << virt_dev.block_shift} bytes at {virt_dev.sanitize_rate} MiB/s"
            f"{'' if block is None else ' (paced)'}")
    return None if immed else VDISK_EXEC_ASYNC


def vdisk_exec_sanitize(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> int | None:
    """SANITIZE (SBC-3 5.30): OVERWRITE writes the given pattern over the
    whole medium, BLOCK ERASE deallocates it (zeros where it cannot),
    CRYPTOGRAPHIC ERASE is the same as BLOCK ERASE for us (no media
    encryption key to change); each runs in the background (SBC-3 4.11).
    EXIT FAILURE MODE leaves the failure mode of a sanitize that failed
    with AUSE=1, is refused after one with AUSE=0, and is a no-op
    otherwise. Parameter list rules: only OVERWRITE has one; its length
    must be INITIALIZATION PATTERN LENGTH + 4 and the pattern 1..block
    size bytes."""
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    plen = int.from_bytes(cdb[7:9], "big")
    if cdb[1] & 0x40:                   # reserved
        scst_set_invalid_field_in_cdb(cmd, 1, 6)
        return None
    for i in range(2, 7):               # reserved bytes
        if cdb[i]:
            scst_set_invalid_field_in_cdb(cmd, i)
            return None
    if sa == SANITIZE_OVERWRITE:
        if plen < 5 or plen > virt_dev.block_size + 4:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return None
        data = scst_get_buf_full(cmd)
        count = data[0] & 0x1F
        if data[0] & 0x60:              # INVERT / TEST: not supported
            scst_set_invalid_field_in_parm_list(cmd, 0, 7 if data[0] & 0x80 else 6)
            return None
        if count == 0:
            scst_set_invalid_field_in_parm_list(cmd, 0, 4)
            return None
        pat_len = int.from_bytes(data[2:4], "big")
        if pat_len == 0 or pat_len > virt_dev.block_size:
            scst_set_invalid_field_in_parm_list(cmd, 2)
            return None
        if pat_len + 4 != plen:
            scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
            return None
        pattern = bytes(data[4:4 + pat_len])
        bs = virt_dev.block_size
        return _sanitize_start(cmd, virt_dev, (pattern * (bs // pat_len + 1))[:bs])
    if sa in (SANITIZE_BLOCK_ERASE, SANITIZE_CRYPTO_ERASE):
        if plen:
            scst_set_invalid_field_in_cdb(cmd, 7)
            return None
        return _sanitize_start(cmd, virt_dev, None)
    if sa == SANITIZE_EXIT_FAILURE_MODE:
        if plen:
            scst_set_invalid_field_in_cdb(cmd, 7)
        elif virt_dev.sanitize_state == VDISK_SANITIZE_FAILED:
            if virt_dev.sanitize_ause:
                virt_dev.sanitize_state = VDISK_SANITIZE_NONE
                pr_info(f"vdisk: {virt_dev.name}: sanitize failure mode left")
            else:
                # AUSE=0: only a sanitize that succeeds ends the failure mode.
                scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return None
    scst_set_invalid_field_in_cdb(cmd, 1, 4)
    return None


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

