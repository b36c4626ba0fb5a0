"""The vdisk_fileio dev handler: a virtual disk backed by a regular file.

Twin of the fileio half of scst/src/dev_handlers/scst_vdisk.c
(vdisk_attach/vdisk_detach for fileio, fileio_exec, vdev_read/vdev_write
through the file, vdisk_fsync).

Contexts: attach and detach from task context (they open and close the
file). exec() from a device kthread only: every data command sleeps in a
vfs call. exec_nowait() from any context: it serves READs from the page
cache without sleeping, starts plain WRITEs asynchronously (completed from
softirq context, as a bio's end_io completes SCST's blockio commands), or
declines. read_fast() (scst_core.fastpath's READ, any context) reads
from the page cache only, or declines; start_fast_list() (its WRITEs,
any context) starts the writes as exec_nowait() does, or declines. A cached READ of
fileio_sendfile_min..fileio_sendfile_max bytes (module parameters),
when the target driver can send from a file, is not read at all:
cmd.data_file names the range, and the driver sends it from the page
cache with kshim.net.kernel_sendfile (decision 0067).

Differs from SCST: I/O goes through kshim.fs's vfs_readv/vfs_writev into
the command's own buffers (no iovec page mapping); fsync_range flushes the
whole file (the host has no ranged datasync we use). A file that is
missing is created sparse when a size was given.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim.err import EIO, EOPNOTSUPP, ENOSPC, ENXIO, IS_ERR
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO
from kshim.fault_file import fail_file_fsync, fail_file_write
from kshim.filemap import file_extent, filemap_range_cached
from kshim.fs import (EIOCBQUEUED, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, IOCB_DSYNC,
                      O_CREAT, O_DIRECT, O_DSYNC, O_LARGEFILE, O_RDONLY, O_RDWR, SEEK_DATA,
                      SEEK_HOLE, file, filp_close, filp_open, file_inode, i_size_read, kiocb, vfs_fallocate,
                      vfs_fsync_range, vfs_iocb_iter_write, vfs_llseek, vfs_readv,
                      vfs_readv_nowait, vfs_truncate, vfs_writev)
from kshim.printk import pr_err, pr_info
from scst_core.const import (scst_sense_read_error, scst_sense_space_allocation_failed,
                             scst_sense_write_error)
from scst_core.lib import scst_cmd_iov, scst_set_cmd_error
from scst_core.scst import SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME, scst_cmd, scst_device
from vdisk import vdisk as vdisk_mod
from vdisk.vdisk import (scst_vdisk_dev, vdisk_attach_common,
                         vdisk_detach_common, vdisk_do_exec, vdisk_io_ops, vdisk_make_devtype,
                         vdisk_fast_sense, vdisk_fast_writes, vdisk_io_error, vdisk_need_sync,
                         vdisk_set_io_error, vdisk_set_sense_info)


def _zero_tail(iov: list, skip: int) -> None:
    """Zero the buffers past the first `skip` bytes (a read hit EOF)."""
    for v in iov:
        n = len(v)
        if skip >= n:
            skip -= n
            continue
        v[skip:] = bytes(n - skip)
        skip = 0


MAX_PIECES = 64       # short counts one request may be continued after


def _iov_skip(iov: list, n: int) -> list:
    """The buffers past the first n bytes."""
    out = []
    for v in iov:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(memoryview(v)[n:])
        n = 0
    return out


def _rw_all(write: bool, virt_dev: scst_vdisk_dev, iov: list, pos: int,
            length: int) -> tuple[int, int]:
    """Read or write all of it, going on after short counts (a read or
    write that stops at a bad block returns what came before it first):
    (bytes done, 0 or -errno). A read stops early only at end of file."""
    f = virt_dev.file
    done = 0
    for _ in range(MAX_PIECES):
        rest = iov if not done else _iov_skip(iov, done)
        n = vfs_writev(f, rest, pos + done) if write else vfs_readv(f, rest, pos + done)
        if n < 0:
            return done, n
        done += n
        if done >= length:
            return done, 0
        if n == 0:
            return done, -ENOSPC if write else 0
        if not write and pos + done >= i_size_read(file_inode(f)):
            return done, 0
    return done, -EIO


def _medium_error(virt_dev: scst_vdisk_dev, cmd: scst_cmd, sense: tuple, pos: int) -> None:
    """MEDIUM ERROR naming the first failing block in the INFORMATION field."""
    scst_set_cmd_error(cmd, sense)
    vdisk_set_sense_info(cmd, pos >> virt_dev.block_shift)


def fileio_read(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    iov = scst_cmd_iov(cmd)
    n, err = _rw_all(False, virt_dev, iov, pos, length)
    if err < 0:
        pr_err(f"vdisk_fileio: {virt_dev.name}: read of {length} bytes at {pos} failed at "
               f"{pos + n}: {err}")
        _medium_error(virt_dev, cmd, scst_sense_read_error, pos + n)
        return err
    if n < length:
        # The file shrank under us or is shorter than the device: read zeros.
        _zero_tail(iov, n)
    return 0


def _write_failed(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int, n: int,
                  err: int) -> int:
    pr_err(f"vdisk_fileio: {virt_dev.name}: write of {length} bytes at {pos} failed at "
           f"{pos + n}: {err}")
    if err == -ENOSPC and virt_dev.thin_provisioned:
        scst_set_cmd_error(cmd, scst_sense_space_allocation_failed)
    else:
        _medium_error(virt_dev, cmd, scst_sense_write_error, pos + n)
    return err


def fileio_write(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    n, err = _rw_all(True, virt_dev, scst_cmd_iov(cmd), pos, length)
    if err < 0:
        return _write_failed(virt_dev, cmd, pos, length, n, err)
    return 0


def fileio_read_into(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: bytearray) -> int:
    n, err = _rw_all(False, virt_dev, [memoryview(buf)], pos, len(buf))
    if err < 0:
        pr_err(f"vdisk_fileio: {virt_dev.name}: verify read at {pos} failed at {pos + n}: {err}")
        _medium_error(virt_dev, cmd, scst_sense_read_error, pos + n)
        return err
    if n < len(buf):
        buf[n:] = bytes(len(buf) - n)
    return 0


def fileio_sync(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    """Flush the range to stable storage: the host's fdatasync, which also
    flushes the device's cache (vdisk_fileio and vdisk_blockio). A failure
    fails this command (the WRITE or SYNCHRONIZE CACHE it covers) and names
    the range's first block; the host reports an fsync error once, so a
    later command does not see it again."""
    end = pos + length - 1 if length else (1 << 63) - 1
    ret = vfs_fsync_range(virt_dev.file, pos, end, True)
    if ret < 0:
        pr_err(f"{virt_dev.dev.handler.name}: {virt_dev.name}: fsync failed: {ret}")
        _medium_error(virt_dev, cmd, scst_sense_write_error, pos)
    return ret


def fileio_write_buf(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int,
                     buf: "bytes | memoryview") -> int:
    n, err = _rw_all(True, virt_dev, [memoryview(buf)], pos, len(buf))
    if err < 0:
        return _write_failed(virt_dev, cmd, pos, len(buf), n, err)
    return 0


_ZEROS = bytes(1 << 20)


def fileio_unmap(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    """Punch a hole (vdisk_fileio and vdisk_blockio)."""
    ret = vfs_fallocate(virt_dev.file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, length)
    if ret == -EOPNOTSUPP:
        # LBPRZ promises zeros: write them (bounded: length / 1 MiB writes).
        done = 0
        while done < length:
            n = min(len(_ZEROS), length - done)
            ret = virt_dev.io_ops.write_buf(virt_dev, cmd, pos + done, memoryview(_ZEROS)[:n])
            if ret != 0:
                return ret
            done += n
        return 0
    if ret < 0:
        pr_err(f"{virt_dev.dev.handler.name}: {virt_dev.name}: punching {length} bytes at {pos} "
               f"failed: {ret}")
        scst_set_cmd_error(cmd, scst_sense_write_error)
    return ret


def fileio_lba_status(virt_dev: scst_vdisk_dev, lba: int) -> tuple[bool, int]:
    """Mapped or not, and for how many blocks, from SEEK_DATA/SEEK_HOLE."""
    shift = virt_dev.block_shift
    pos = lba << shift
    f = virt_dev.file
    data = vfs_llseek(f, pos, SEEK_DATA)
    if data == -ENXIO:                  # no data after pos: a hole to the end
        return False, virt_dev.nblocks - lba
    if data < 0:
        return True, virt_dev.nblocks - lba
    if data > pos:
        return False, max(1, (data >> shift) - lba)
    hole = vfs_llseek(f, pos, SEEK_HOLE)
    if hole < 0:
        return True, virt_dev.nblocks - lba
    return True, max(1, ((hole + (1 << shift) - 1) >> shift) - lba)


fileio_io_ops = vdisk_io_ops(read=fileio_read, write=fileio_write, read_into=fileio_read_into,
                             sync=fileio_sync, unmap=fileio_unmap, lba_status=fileio_lba_status,
                             write_buf=fileio_write_buf)


def fileio_open_backing(dev: scst_device, extra_flags: int) -> "file | int":
    """Open the device's backing file or block device with extra_flags (and
    O_DSYNC if asked), creating a missing file sparse when a size was given.
    The file, or -errno after a log line naming the handler and device.
    Shared by vdisk_fileio and vdisk_blockio."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    who = f"{dev.handler.name}: {virt_dev.name}"
    flags = (O_RDONLY if virt_dev.rd_only else O_RDWR) | O_LARGEFILE | extra_flags
    if virt_dev.o_dsync and not virt_dev.rd_only:
        flags |= O_DSYNC
    want_size = virt_dev.file_size
    f = filp_open(virt_dev.filename, flags)
    if isinstance(f, int) and want_size > 0 and not virt_dev.rd_only:
        f = filp_open(virt_dev.filename, flags | O_CREAT, 0o600)
        if not isinstance(f, int):
            ret = vfs_truncate(f, want_size)
            if ret < 0:
                pr_err(f"{who}: cannot size {virt_dev.filename} to {want_size} bytes: {ret}")
                filp_close(f)
                return ret
            pr_info(f"{who}: created sparse {virt_dev.filename} of {want_size} bytes")
    if IS_ERR(f):
        direct = " O_DIRECT" if flags & O_DIRECT else ""
        pr_err(f"{who}: cannot open {virt_dev.filename}{direct}: {f}")
    return f


def fileio_publish_backing(dev: scst_device, f: file, io_ops: vdisk_io_ops) -> None:
    """The opened backing store becomes the device's: its size (what the
    file has, whatever size was asked), thin provisioning when not set
    explicitly, the data path, the geometry."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    size = i_size_read(file_inode(f))
    if virt_dev.file_size > 0 and virt_dev.file_size != size:
        pr_info(f"{dev.handler.name}: {virt_dev.name}: {virt_dev.filename} has {size} bytes; "
                f"using that, not the requested {virt_dev.file_size}")
    if not virt_dev.thin_provisioned_set and not virt_dev.rd_only:
        # As SCST does: thin provisioning when the file can punch holes
        # (a punch past the end of the file changes nothing).
        virt_dev.thin_provisioned = vfs_fallocate(
            f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, max(size, 0), 4096) == 0
    virt_dev.file = f
    virt_dev.dsync_open = bool(f.f_flags & O_DSYNC)
    virt_dev.file_size = size
    virt_dev.io_ops = io_ops
    vdisk_attach_common(dev, virt_dev)


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def fileio_attach(dev: scst_device) -> int:
    """Open the backing file (creating it sparse if a size was given and it
    is missing) and publish the geometry. 0 or -errno."""
    f = fileio_open_backing(dev, O_DIRECT if dev.dh_priv.o_direct else 0)
    if isinstance(f, int):
        return f
    fileio_publish_backing(dev, f, fileio_io_ops)
    return 0


def fileio_detach(dev: scst_device) -> None:
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_detach_common(dev, virt_dev)
    f = virt_dev.file
    if isinstance(f, file):
        filp_close(f)
    virt_dev.file = None
    virt_dev.dev = None


def fileio_exec(cmd: scst_cmd) -> int:
    return vdisk_do_exec(cmd)


_READ_OPS = frozenset((0x08, 0x28, 0xA8, 0x88))
_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A))


def _fileio_write_done(iocb: kiocb, n: int) -> None:
    """End of an asynchronous WRITE (softirq context)."""
    cmd: scst_cmd = iocb.private
    if n != cmd.data_len:
        # A short count stopped at the first block it did not write.
        vdisk_set_io_error(cmd, *vdisk_io_error(cmd.dev.dh_priv, True, iocb.ki_pos, cmd.data_len,
                                                n))
    cmd.scst_cmd_done(cmd, SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)     # vdisk_cmd_done


def fileio_exec_nowait(cmd: scst_cmd) -> bool:
    """A READ whose data the page cache holds completes here, in the
    submitting context. A plain WRITE (6/10/12/16) starts here as one
    asynchronous write, durable (IOCB_DSYNC) when the device is
    write-through or the command has FUA, which flushes what
    vdisk_exec_write's fsync would, and completes from softirq. Anything
    else, and a WRITE that needs the device's threads, goes to them."""
    op = cmd.cdb[0]
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    if op in _WRITE_OPS:
        if cmd.status or virt_dev.sanitize_state or not cmd.data_len:
            return False
        fua = op != 0x0A and bool(cmd.cdb[1] & 0x08)
        # vdisk_need_sync is false unless one of these holds: asked only then
        flags = (IOCB_DSYNC if (fua or virt_dev.wt_flag) and vdisk_need_sync(cmd, virt_dev, fua)
                 else 0)
        f = virt_dev.file
        return vfs_iocb_iter_write(f, kiocb(f, cmd.lba << virt_dev.block_shift, _fileio_write_done,
                                            cmd, flags), scst_cmd_iov(cmd)) == -EIOCBQUEUED
    if op not in _READ_OPS or cmd.status or (op != 0x08 and cmd.cdb[1] & 0x08):
        return False
    if virt_dev.sanitize_state:
        return False                        # vdisk_do_exec answers it (SBC-3 4.11)
    length = cmd.data_len
    if length:
        f = virt_dev.file
        pos = cmd.lba << virt_dev.block_shift
        cached = -EOPNOTSUPP
        if length >= vdisk_mod.fileio_sendfile_min and length <= vdisk_mod.fileio_sendfile_max \
                and cmd.sendfile_ok:
            cached = filemap_range_cached(f, pos, length)
            if cached == 0:
                return False                # not all cached: the device's threads read it
            if cached == 1:
                # Zero-copy: the driver sends these bytes from the page
                # cache (decision 0067); nothing is read into sg.
                cmd.data_file = file_extent(f, pos, length)
        if cached != 1 and vfs_readv_nowait(f, scst_cmd_iov(cmd), pos, length) != length:
            return False
        cmd.resp_data_len = length          # a READ's data_len never exceeds its bufflen
    cmd.scst_cmd_done(cmd, SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)     # vdisk_cmd_done
    return True


def fileio_read_fast(dev: scst_device, lba: int, buf: memoryview) -> bool:
    """scst_core.fastpath's READ: all of buf from the page cache, in range,
    with the medium present, or False (the full path then answers, with
    the same data or sense). What fileio_exec_nowait would send from the
    page cache without reading (decision 0067) it leaves to the full path
    too."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    length = len(buf)
    if (virt_dev.sanitize_state or not virt_dev.media_present
            or lba + (length >> virt_dev.block_shift) > virt_dev.nblocks
            or vdisk_mod.fileio_sendfile_min <= length <= vdisk_mod.fileio_sendfile_max):
        return False
    return vfs_readv_nowait(virt_dev.file, [buf], lba << virt_dev.block_shift, length) == length


def fileio_start_fast_list(dev: scst_device, items: list,
                           done: Callable[[Any, bytes], None]) -> int:
    """scst_core.fastpath's WRITEs: each (lba, buf, fua, priv) of the
    longest run it can written asynchronously, as fileio_exec_nowait
    starts a plain WRITE (durable when FUA or write-through asks),
    done(priv, sense) from softirq; how many it started: 0 when the
    full path must answer: an O_DIRECT file (the buffers are not
    aligned), write-protected, no medium, sanitizing, or a file fault
    point armed (the full path's site); the run stops at one out of
    range."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    if (virt_dev.o_direct or virt_dev.sanitize_state or not virt_dev.media_present
            or virt_dev.rd_only or dev.swp or fail_file_write.armed or fail_file_fsync.armed):
        return 0
    f = virt_dev.file
    k = 0
    for pos, buf, flags, priv in vdisk_fast_writes(virt_dev, items):
        vfs_iocb_iter_write(f, kiocb(f, pos, _fileio_write_fast_done,
                                     (dev, len(buf), done, priv), flags), [buf])
        k += 1
    return k


def _fileio_write_fast_done(iocb: kiocb, n: int) -> None:
    """End of a predicted WRITE (softirq): the sense _fileio_write_done
    would set, built for the fast path's done."""
    dev, length, done, priv = iocb.private
    if n == length:
        done(priv, b"")
        return
    done(priv, vdisk_fast_sense(dev, *vdisk_io_error(dev.dh_priv, True, iocb.ki_pos, length, n)))


fileio_devtype = vdisk_make_devtype("vdisk_fileio", fileio_exec, fileio_attach, fileio_detach,
                                    exec_atomic=False, exec_nowait=fileio_exec_nowait,
                                    read_fast=fileio_read_fast,
                                    start_fast_list=fileio_start_fast_list)
