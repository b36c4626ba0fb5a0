"""The vdisk_blockio dev handler: a virtual disk on a block device or file
read and written with direct I/O, past the page cache.

Twin of the blockio half of scst/src/dev_handlers/scst_vdisk.c
(vdisk_attach/vdisk_detach for blockio, blockio_exec, blockio_exec_rw and
its bio end_io, vdisk_blockio_flush).

Contexts: attach and detach from task context (they open and close the
file, under the core's scst_mutex). exec() from a device kthread only:
every data command sleeps in a vfs call. exec_nowait() from any context:
a plain READ or WRITE of whole blocks that fits one bounce block starts
there as one asynchronous direct I/O and completes from softirq context
(SCST's blockio submits bios and completes in their end_io the same way);
anything else declines to the device's threads. start_fast() and
start_fast_list() (any context) start scst_core.fastpath's predicted
READ, and run of WRITEs, the same way, without a command, or decline.

Differs from SCST: SCST builds bios straight on the command's pages; here
the file is opened O_DIRECT on the host and each transfer goes through a
bounce block from a kshim.dmapool pool (page-aligned host memory), copied
to or from the command's buffers, because kshim's pages are not aligned
(docs/decisions/0013-blockio-aligned-buffers.md says why, with what was
measured). A WRITE that ends inside a block (the initiator sent fewer bytes
than the CDB asked for, which the core allows for plain WRITEs) reads that
last block first and writes it whole: read-modify-write, not a buffered
fallback. That read-modify-write is not atomic against an overlapping
command running at the same time: the other command's bytes of that block
may be overwritten with what the block held before. A file whose direct
I/O alignment (statx STATX_DIOALIGN) is larger than the device's block
size is refused at attach (SCST refuses a block size below the block
device's logical block size too). Flushing is fileio's: O_DIRECT bypasses
the page cache, not the device's write cache, so write_through, FUA and
SYNCHRONIZE CACHE flush with vfs_fsync_range (vdisk_need_sync). The
add_device parameters are fileio's but o_direct (always direct here).
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import page_alloc
from kshim.dmapool import dma_pool, dma_pool_alloc, dma_pool_create, dma_pool_destroy, dma_pool_free
from kshim.err import EINVAL, EIO, ENOMEM, ENOSPC
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO
from kshim.fault_file import fail_file_fsync, fail_file_read, fail_file_write
from kshim.fs import (EIOCBQUEUED, IOCB_DSYNC, O_DIRECT, STATX_DIOALIGN, file, file_inode,
                      filp_close, i_size_read, kiocb, kstat, vfs_getattr, vfs_iocb_iter_read,
                      vfs_iocb_iter_write, vfs_readv, vfs_writev)
from kshim.gfp import GFP_ATOMIC, GFP_KERNEL
from kshim.page_alloc import PAGE_SIZE
from kshim.printk import pr_err, pr_info
from kshim.scatterlist import sg_copy_from_buffer, sg_copy_to_buffer
from scst_core.const import (scst_sense_hardw_error, scst_sense_read_error,
                             scst_sense_space_allocation_failed, scst_sense_write_error)
from scst_core.lib import scst_cmd_iov, scst_set_cmd_error
from scst_core.scst import SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME, scst_cmd, scst_device
from vdisk.fileio import (MAX_PIECES, fileio_lba_status, fileio_open_backing,
                          fileio_publish_backing, fileio_sync, fileio_unmap)
from vdisk.vdisk import (scst_vdisk_dev, vdisk_add_device_parameters,
                         vdisk_detach_common, vdisk_do_exec, vdisk_io_ops, vdisk_make_devtype,
                         vdisk_fast_sense, vdisk_fast_writes, vdisk_io_error, vdisk_need_sync,
                         vdisk_set_io_error, vdisk_set_sense_info)

# Design notes:
# - One bounce pool for every blockio device, as the kernel's bio_set
#   fs_bio_set serves every block device: created by the first attach,
#   destroyed by the last detach (both under scst_mutex). It grows to the
#   number of transfers in flight at once (the devices' threads, plus an
#   EXTENDED COPY or SANITIZE moving data) and keeps its blocks.
# - A transfer larger than a bounce block goes in BLOCKIO_BOUNCE_SIZE
#   pieces; 1 MiB covers the usual 4 KiB..512 KiB commands in one piece
#   and is what the other chunked vdisk paths use. Untouched pages of a
#   block cost no host memory (the mmap is lazy).
# - An asynchronous READ or WRITE's kiocb keeps its bounce block when it
#   ends: up to BLOCKIO_IOCB_CACHE of them wait in blockio_iocb_cache for
#   the next command, as the kernel recycles a direct I/O's bio through
#   its per-CPU bio cache (IOCB_ALLOC_CACHE): no kiocb to build, no
#   dma_pool_alloc and dma_pool_free per command (decision 0065;
#   docs/performance.md, "Issue 12: blockio"). Bypassed while page
#   debugging is on, so the pool's checks see every block; emptied into
#   the pool by the last detach.

BLOCKIO_BOUNCE_SIZE = 1 << 20

BLOCKIO_IOCB_CACHE = 64

blockio_bounce_pool: dma_pool | None = None
blockio_nr_devs = 0                 # attached devices (protected by scst_mutex)
# (kiocb, its bounce block) ready for reuse. Taken in the submitter's
# context, given back in softirq: on the one CPU a softirq runs only
# between kthread runs, never inside this module's code, so no lock (as
# scst_core/mem.py's one-page pool).
blockio_iocb_cache: list[tuple[kiocb, memoryview]] = []

_ZEROS = bytes(BLOCKIO_BOUNCE_SIZE)


def _iov_copy(iov: list, skip: int, mem: memoryview, into_iov: bool) -> None:
    """Copy mem into the buffers of iov (into_iov), or fill mem from them,
    starting `skip` bytes into iov."""
    if skip == 0 and len(iov[0]) >= len(mem):
        if into_iov:
            iov[0][:len(mem)] = mem
        else:
            mem[:] = iov[0][:len(mem)]
        return
    done = 0
    for v in iov:                   # bounded: len(iov)
        n = len(v)
        if skip >= n:
            skip -= n
            continue
        k = min(n - skip, len(mem) - done)
        if into_iov:
            v[skip:skip + k] = mem[done:done + k]
        else:
            mem[done:done + k] = v[skip:skip + k]
        done += k
        skip = 0
        if done == len(mem):
            return


def _bounce_alloc(virt_dev: scst_vdisk_dev, cmd: scst_cmd) -> memoryview | None:
    bounce = dma_pool_alloc(blockio_bounce_pool, GFP_KERNEL)
    if bounce is None:
        pr_err(f"vdisk_blockio: {virt_dev.name}: no memory for a bounce buffer")
        scst_set_cmd_error(cmd, scst_sense_hardw_error)
    return bounce


def blockio_read_iov(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int,
                     iov: list) -> int:
    """Read `length` bytes at the block-aligned byte offset pos into iov:
    0, or -errno with the sense set."""
    bounce = _bounce_alloc(virt_dev, cmd)
    if bounce is None:
        return -ENOMEM
    mask = virt_dev.block_size - 1
    f = virt_dev.file
    try:
        done = 0
        while done < length:        # bounded: length / BLOCKIO_BOUNCE_SIZE pieces
            n = min(BLOCKIO_BOUNCE_SIZE, length - done)
            whole = (n + mask) & ~mask
            got, err = _read_piece(f, bounce, whole, pos + done)
            if err < 0:
                pr_err(f"vdisk_blockio: {virt_dev.name}: read of {whole} bytes at {pos + done} "
                       f"failed at {pos + done + got}: {err}")
                scst_set_cmd_error(cmd, scst_sense_read_error)
                vdisk_set_sense_info(cmd, (pos + done + got) >> virt_dev.block_shift)
                return err
            if got < n:
                # The file shrank under us: past its end reads as zeros.
                bounce[got:n] = _ZEROS[:n - got]
            _iov_copy(iov, done, bounce[:n], True)
            done += n
        return 0
    finally:
        dma_pool_free(blockio_bounce_pool, bounce)


def _read_piece(f: file, bounce: memoryview, whole: int, pos: int) -> tuple[int, int]:
    """Read whole bytes into bounce at pos, going on after a short count
    inside the file (a read that stops at a bad block returns what came
    before it first): (bytes read, 0 or -errno); short only at end of file."""
    got = 0
    for _ in range(MAX_PIECES):
        n = vfs_readv(f, [bounce[got:whole]], pos + got)
        if n < 0:
            return got, n
        got += n
        if got >= whole or n == 0 or pos + got >= i_size_read(file_inode(f)):
            return got, 0
    return got, -EIO


def _write_error(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int, n: int) -> int:
    pr_err(f"vdisk_blockio: {virt_dev.name}: write of {length} bytes at {pos} failed: {n}")
    if n == -ENOSPC and virt_dev.thin_provisioned:
        scst_set_cmd_error(cmd, scst_sense_space_allocation_failed)
    else:
        scst_set_cmd_error(cmd, scst_sense_write_error)
        vdisk_set_sense_info(cmd, (pos + max(n, 0)) >> virt_dev.block_shift)
    return n if n < 0 else -ENOSPC


def blockio_write_iov(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int,
                      iov: list) -> int:
    """Write `length` bytes from iov at the block-aligned byte offset pos;
    a last partial block is read, patched and written whole. 0, or -errno
    with the sense set."""
    bounce = _bounce_alloc(virt_dev, cmd)
    if bounce is None:
        return -ENOMEM
    bs = virt_dev.block_size
    f = virt_dev.file
    try:
        done = 0
        while done < length:        # bounded: length / BLOCKIO_BOUNCE_SIZE pieces
            n = min(BLOCKIO_BOUNCE_SIZE, length - done)
            whole = (n + bs - 1) & ~(bs - 1)
            if whole != n:
                # Read-modify-write of the block the data ends in.
                last = pos + done + whole - bs
                got = vfs_readv(f, [bounce[whole - bs:whole]], last)
                if got < 0:
                    pr_err(f"vdisk_blockio: {virt_dev.name}: reading block at {last} for a "
                           f"partial write failed: {got}")
                    scst_set_cmd_error(cmd, scst_sense_read_error)
                    return got
                if got < bs:
                    bounce[whole - bs + got:whole] = _ZEROS[:bs - got]
            _iov_copy(iov, done, bounce[:n], False)
            w = vfs_writev(f, [bounce[:whole]], pos + done)
            if w != whole:
                return _write_error(virt_dev, cmd, pos + done, whole, w)
            done += n
        return 0
    finally:
        dma_pool_free(blockio_bounce_pool, bounce)


def blockio_read(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return blockio_read_iov(virt_dev, cmd, pos, length, scst_cmd_iov(cmd))


def blockio_write(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return blockio_write_iov(virt_dev, cmd, pos, length, scst_cmd_iov(cmd))


def blockio_read_into(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: bytearray) -> int:
    return blockio_read_iov(virt_dev, cmd, pos, len(buf), [memoryview(buf)])


def blockio_write_buf(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int,
                      buf: "bytes | memoryview") -> int:
    return blockio_write_iov(virt_dev, cmd, pos, len(buf), [memoryview(buf)])


blockio_io_ops = vdisk_io_ops(read=blockio_read, write=blockio_write, read_into=blockio_read_into,
                              sync=fileio_sync, unmap=fileio_unmap, lba_status=fileio_lba_status,
                              write_buf=blockio_write_buf)


def _blockio_check_align(virt_dev: scst_vdisk_dev, f: file) -> int:
    """0 if direct I/O on f works in the device's blocks, else -errno."""
    st = kstat()
    ret = vfs_getattr(f, st, STATX_DIOALIGN)
    if ret < 0:
        pr_err(f"vdisk_blockio: {virt_dev.name}: cannot stat {virt_dev.filename}: {ret}")
        return ret
    if not st.result_mask & STATX_DIOALIGN:
        pr_info(f"vdisk_blockio: {virt_dev.name}: the host does not report the direct I/O "
                f"alignment of {virt_dev.filename}; assuming {virt_dev.block_size} bytes")
        return 0
    if st.dio_offset_align == 0:
        pr_err(f"vdisk_blockio: {virt_dev.name}: {virt_dev.filename} does not support direct I/O")
        return -EINVAL
    if st.dio_offset_align > virt_dev.block_size or st.dio_mem_align > PAGE_SIZE:
        pr_err(f"vdisk_blockio: {virt_dev.name}: {virt_dev.filename} needs direct I/O aligned to "
               f"{st.dio_offset_align} bytes, more than the blocksize {virt_dev.block_size}; use "
               f"blocksize={st.dio_offset_align} or vdisk_fileio")
        return -EINVAL
    return 0


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def blockio_attach(dev: scst_device) -> int:
    """Open the file or device O_DIRECT (creating a missing file sparse if a
    size was given), check its direct I/O alignment and publish the
    geometry. 0 or -errno."""
    global blockio_bounce_pool, blockio_nr_devs
    virt_dev: scst_vdisk_dev = dev.dh_priv
    f = fileio_open_backing(dev, O_DIRECT)
    if isinstance(f, int):
        return f
    ret = _blockio_check_align(virt_dev, f)
    if ret < 0:
        filp_close(f)
        return ret
    if blockio_bounce_pool is None:
        blockio_bounce_pool = dma_pool_create("vdisk_blockio", None, BLOCKIO_BOUNCE_SIZE,
                                              PAGE_SIZE, 0)
        if blockio_bounce_pool is None:
            filp_close(f)
            return -ENOMEM
    blockio_nr_devs += 1
    fileio_publish_backing(dev, f, blockio_io_ops)
    return 0


def blockio_detach(dev: scst_device) -> None:
    global blockio_bounce_pool, blockio_nr_devs
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_detach_common(dev, virt_dev)
    f = virt_dev.file
    if isinstance(f, file):
        filp_close(f)
    virt_dev.file = None
    virt_dev.dev = None
    blockio_nr_devs -= 1
    if blockio_nr_devs == 0:
        while blockio_iocb_cache:   # bounded: BLOCKIO_IOCB_CACHE
            dma_pool_free(blockio_bounce_pool, blockio_iocb_cache.pop()[1])
        dma_pool_destroy(blockio_bounce_pool)
        blockio_bounce_pool = None


def blockio_exec(cmd: scst_cmd) -> int:
    return vdisk_do_exec(cmd)


_READ_OPS = frozenset((0x08, 0x28, 0xA8, 0x88))
_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A))


def _blockio_end_io(iocb: kiocb, n: int) -> None:
    """End of an asynchronous direct READ or WRITE (softirq context)."""
    cmd, bounce, write = iocb.private
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    length = cmd.data_len
    # A read short of the file's end stopped at a bad block, as a write
    # short of its length did.
    short = n < length and (write or iocb.ki_pos + n < i_size_read(file_inode(iocb.ki_filp)))
    if n < 0 or short:
        vdisk_set_io_error(cmd, *vdisk_io_error(virt_dev, write, iocb.ki_pos, length, n))
    elif not write:
        if n < length:
            bounce[n:length] = _ZEROS[:length - n]      # the file shrank: zeros past its end
        sg_copy_from_buffer(cmd.sg, cmd.sg_cnt, bounce[:length])
        cmd.resp_data_len = length
    _blockio_iocb_put(iocb, bounce)
    cmd.scst_cmd_done(cmd, SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)     # vdisk_cmd_done


def _blockio_iocb_get(f: file, pos: int, flags: int,
                      complete: Callable[[kiocb, int], None]) -> tuple[kiocb, memoryview] | None:
    """A kiocb and bounce block for a direct I/O at pos: a kept pair
    (blockio_iocb_cache), else a new kiocb on a block of the pool; None
    when the pool has no block now. The caller sets .private."""
    if blockio_iocb_cache:
        iocb, bounce = blockio_iocb_cache.pop()
        iocb.ki_filp = f
        iocb.ki_pos = pos
        iocb.ki_flags = flags
        iocb.ki_complete = complete
        iocb.result = iocb.ki_res = 0
        return iocb, bounce
    b = dma_pool_alloc(blockio_bounce_pool, GFP_ATOMIC)
    if b is None:
        return None
    return kiocb(f, pos, complete, None, flags), b


def _blockio_iocb_put(iocb: kiocb, bounce: memoryview) -> None:
    """An I/O is over: keep its kiocb and bounce block for the next one."""
    if len(blockio_iocb_cache) < BLOCKIO_IOCB_CACHE and not page_alloc.debug_pagealloc:
        iocb.private = None         # the command is not the cache's to keep
        blockio_iocb_cache.append((iocb, bounce))
    else:
        dma_pool_free(blockio_bounce_pool, bounce)


def blockio_exec_nowait(cmd: scst_cmd) -> bool:
    """Start a plain READ or WRITE (6/10/12/16) of whole blocks, at most one
    bounce block long, without sleeping; decline anything else."""
    op = cmd.cdb[0]
    write = op in _WRITE_OPS
    if not write and op not in _READ_OPS:
        return False
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    length = cmd.data_len
    if (cmd.status or virt_dev.sanitize_state or not length or length > BLOCKIO_BOUNCE_SIZE
            or length & (virt_dev.block_size - 1)
            or (write and cmd.write_len != length)):
        return False
    f = virt_dev.file
    pos = cmd.lba << virt_dev.block_shift
    flags = 0
    if write:
        fua = op != 0x0A and bool(cmd.cdb[1] & 0x08)
        flags = IOCB_DSYNC if vdisk_need_sync(cmd, virt_dev, fua) else 0
    got = _blockio_iocb_get(f, pos, flags, _blockio_end_io)
    if got is None:
        return False                        # the threads' path waits for memory
    iocb, bounce = got
    iocb.private = (cmd, bounce, write)
    if write:
        sg_copy_to_buffer(cmd.sg, cmd.sg_cnt, bounce[:length])
        ret = vfs_iocb_iter_write(f, iocb, [bounce[:length]])
    else:
        ret = vfs_iocb_iter_read(f, iocb, [bounce[:length]])
    if ret != -EIOCBQUEUED:                 # not queued: the threads' path does it
        _blockio_iocb_put(iocb, bounce)
        return False
    return True


def blockio_start_fast(dev: scst_device, lba: int, buf: memoryview,
                       done: Callable[[Any, bytes], None], priv: Any) -> bool:
    """scst_core.fastpath's READ: one asynchronous direct I/O through a
    bounce block, as blockio_exec_nowait starts a plain one, done(priv,
    sense) from softirq (the data in buf by then); False when the full
    path must answer: out of range, sanitizing, no medium, no bounce
    block at hand, or fail_file_read armed (the full path's site)."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    length = len(buf)
    if (virt_dev.sanitize_state or not virt_dev.media_present or fail_file_read.armed
            or lba + (length >> virt_dev.block_shift) > virt_dev.nblocks):
        return False
    f = virt_dev.file
    got = _blockio_iocb_get(f, lba << virt_dev.block_shift, 0, _blockio_fast_end_io)
    if got is None:
        return False
    iocb, bounce = got
    iocb.private = ((dev, buf, 0, done, priv), bounce)
    vfs_iocb_iter_read(f, iocb, [bounce[:length]])
    return True


def blockio_start_fast_list(dev: scst_device, items: list,
                            done: Callable[[Any, bytes], None]) -> int:
    """scst_core.fastpath's WRITEs: each (lba, buf, fua, priv) of the
    longest run it can, copied to a bounce block and started as one
    asynchronous direct write, as blockio_exec_nowait starts a plain one,
    done(priv, sense) from softirq; how many it started: 0 when the
    full path must answer: write-protected, sanitizing, no medium, or a
    file fault point armed (the full path's site); the run stops at one
    out of range or with no bounce block at hand."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    if (virt_dev.sanitize_state or not virt_dev.media_present or virt_dev.rd_only or dev.swp
            or fail_file_write.armed or fail_file_fsync.armed):
        return 0
    f = virt_dev.file
    k = 0
    for pos, buf, flags, priv in vdisk_fast_writes(virt_dev, items):
        got = _blockio_iocb_get(f, pos, flags, _blockio_fast_end_io)
        if got is None:
            break
        iocb, bounce = got
        iocb.private = ((dev, buf, 1, done, priv), bounce)
        length = len(buf)
        bounce[:length] = buf
        vfs_iocb_iter_write(f, iocb, [bounce[:length]])
        k += 1
    return k


def _blockio_fast_end_io(iocb: kiocb, n: int) -> None:
    """End of a predicted direct READ or WRITE (softirq): the data or the
    sense _blockio_end_io would give the command."""
    (dev, buf, write, done, priv), bounce = iocb.private
    length = len(buf)
    short = n < length and (write or iocb.ki_pos + n < i_size_read(file_inode(iocb.ki_filp)))
    sense = b""
    if n < 0 or short:
        sense = vdisk_fast_sense(dev, *vdisk_io_error(dev.dh_priv, write, iocb.ki_pos, length, n))
    elif not write:
        if n < length:
            bounce[n:length] = _ZEROS[:length - n]      # the file shrank: zeros past its end
        buf[:] = bounce[:length]
    _blockio_iocb_put(iocb, bounce)
    done(priv, sense)


blockio_devtype = vdisk_make_devtype("vdisk_blockio", blockio_exec, blockio_attach,
                                     blockio_detach, exec_atomic=False,
                                     exec_nowait=blockio_exec_nowait,
                                     start_fast=blockio_start_fast,
                                     start_fast_list=blockio_start_fast_list)
blockio_devtype.add_device_parameters = tuple(p for p in vdisk_add_device_parameters
                                              if p != "o_direct")
