"""Files: filp_open, vfs_readv/vfs_writev, fsync, fallocate, llseek.

Twin of fs/open.c, fs/read_write.c, fs/sync.c, fs/stat.c (vfs_getattr)
and fs/open.c's vfs_fallocate, with include/linux/fs.h and stat.h.

Contexts: filp_open, filp_close, vfs_readv, vfs_writev, vfs_fsync and
vfs_fallocate may sleep: task context only. vfs_readv_nowait never sleeps,
nor does vfs_getattr (one statx on the open file, inline).
vfs_iocb_iter_read/vfs_iocb_iter_write (asynchronous I/O on a kiocb) never
sleep and may be called from any context; they return -EIOCBQUEUED and
ki_complete runs later in softirq context. i_size_read from any context.

Differs from the kernel: the page cache is the host's. A read first tries
preadv(RWF_NOWAIT) inline, which succeeds when the host's page cache holds
the data; otherwise, and for every write, fsync and fallocate, the call goes
to the engine (the trio engine's io_uring, or its worker pool) and the task
sleeps on a completion until it returns (the host thread never blocks).
Errors are negative errno values. Every host call goes through the host-ops table (kshim.host.ops): under the
sim engine the "host" is an in-memory disk or a real file whose pool calls
complete in virtual time, in a seeded order.
A file opened O_DIRECT is O_DIRECT on the host: its buffers, offsets and
lengths must meet the alignment vfs_getattr(STATX_DIOALIGN) reports, which
page_alloc's pages do not (kshim.dmapool's blocks do). vfs_getattr takes
the open file (the kernel's takes a path) and answers only STATX_DIOALIGN.

Fault points (kshim.fault_file): fail_file_read, fail_file_write,
fail_file_fsync and fail_file_fallocate at the top of each call; on the
asynchronous path they are decided at submission (a DSYNC write's
fdatasync too) and still end in ki_complete, never by falling back to the
synchronous calls.

Tracepoints: block_rq_issue when a call goes to the worker pool,
block_rq_complete when it comes back (softirq) or when an inline
page-cache read is answered.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import host
from kshim.completion import complete, completion, wait_for_completion
from kshim.err import EAGAIN, EBADF, EOPNOTSUPP
from kshim.fault_file import (fail_file_fallocate, fail_file_fsync, fail_file_read,
                               fail_file_write, file_aio_fault, file_fault, file_flush_fault,
                               file_rw_fault)
from kshim.fault_inject import fault_attr
from kshim.host import io_job, ops
from kshim.sched import might_sleep
from kshim.tracepoint import TRACE_EVENT

O_RDONLY = host.O_RDONLY
O_WRONLY = host.O_WRONLY
O_RDWR = host.O_RDWR
O_CREAT = host.O_CREAT
O_EXCL = host.O_EXCL
O_TRUNC = host.O_TRUNC
O_DSYNC = host.O_DSYNC
O_SYNC = host.O_SYNC
O_DIRECT = host.O_DIRECT
O_LARGEFILE = host.O_LARGEFILE
FALLOC_FL_KEEP_SIZE = host.FALLOC_FL_KEEP_SIZE
FALLOC_FL_PUNCH_HOLE = host.FALLOC_FL_PUNCH_HOLE
FALLOC_FL_ZERO_RANGE = host.FALLOC_FL_ZERO_RANGE
SEEK_SET = host.SEEK_SET
SEEK_DATA = host.SEEK_DATA
SEEK_HOLE = host.SEEK_HOLE
STATX_DIOALIGN = host.STATX_DIOALIGN

EIOCBQUEUED = 529              # include/linux/errno.h: the I/O completes later

# kiocb.ki_flags
IOCB_DSYNC = 1 << 4            # this write reaches stable storage before it completes

stats = {"read_nowait_hits": 0, "read_pool": 0, "write_pool": 0, "fsync": 0, "aio_reads": 0,
         "aio_writes": 0}


class inode:
    __slots__ = ("i_size",)

    def __init__(self, size: int) -> None:
        self.i_size = size


class file:
    __slots__ = ("fd", "f_flags", "f_path", "f_inode", "nowait_read")

    def __init__(self, fd: int, flags: int, path: str, size: int) -> None:
        self.fd = fd
        self.f_flags = flags
        self.f_path = path
        self.f_inode = inode(size)
        self.nowait_read = ops.rwf_nowait and not flags & O_DIRECT


def filp_open(path: str, flags: int, mode: int = 0o600) -> "file | int":
    """Open path; return the file or -errno."""
    might_sleep()
    fd = _pool_call(ops.file_open, path, flags, mode)
    if fd < 0:
        return fd
    size = ops.file_size(fd)
    if size < 0:
        ops.file_close(fd)
        return size
    return file(fd, flags, path, size)


def filp_close(f: file) -> int:
    if f.fd < 0:
        return -EBADF
    fd, f.fd = f.fd, -1
    return ops.file_close(fd)


class kstat:
    """What vfs_getattr fills in: only the STATX_DIOALIGN fields."""
    __slots__ = ("result_mask", "dio_mem_align", "dio_offset_align")

    def __init__(self) -> None:
        self.result_mask = 0
        self.dio_mem_align = 0          # buffer address alignment for O_DIRECT
        self.dio_offset_align = 0       # file offset and length alignment; 0: no O_DIRECT


def vfs_getattr(f: file, stat: kstat, request_mask: int) -> int:
    """Fill stat for the open file: 0 or -errno. Only STATX_DIOALIGN is
    answered; stat.result_mask lacks it when the host kernel does not say
    (before Linux 6.1)."""
    r = ops.file_dio_align(f.fd)
    if isinstance(r, int):
        return r
    stat.result_mask = r[0] & request_mask & STATX_DIOALIGN
    stat.dio_mem_align, stat.dio_offset_align = (r[1], r[2]) if stat.result_mask else (0, 0)
    return 0


def file_inode(f: file) -> inode:
    return f.f_inode


def i_size_read(ino: inode) -> int:
    return ino.i_size


def i_size_write(ino: inode, size: int) -> None:
    ino.i_size = size


# include/trace/events/block.h's request issue and completion, for the
# host calls that stand in for the disk (op is the host call's name)
trace_block_rq_issue = TRACE_EVENT("block_rq_issue", ("op", "fd", "pos", "len"))
trace_block_rq_complete = TRACE_EVENT("block_rq_complete", ("op", "fd", "pos", "result"))


def _io_complete(job: io_job) -> None:
    complete(job.private)


def _io_complete_traced(job: io_job) -> None:
    done, op, fd, pos = job.private
    if trace_block_rq_complete.enabled:
        trace_block_rq_complete(op, fd, pos, job.result)
    complete(done)


def _pool_call(fn: Callable[..., int], *args: Any) -> int:
    """Run a blocking host call on the pool; sleep until it is done."""
    done = completion("vfs io")
    if trace_block_rq_issue.enabled:
        # The engine drops job.args once run: the completion keeps its fields.
        fd = args[0] if args and isinstance(args[0], int) else -1
        pos = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        n = host.iov_len(args[1]) if len(args) > 1 and isinstance(args[1], list) else 0
        trace_block_rq_issue(fn.__name__, fd, pos, n)
        job = io_job(fn, args, _io_complete_traced, (done, fn.__name__, fd, pos))
    else:
        job = io_job(fn, args, _io_complete, done)
    ops.io_submit(job)
    wait_for_completion(done)
    return job.result


class kiocb(io_job):
    """One asynchronous read or write (include/linux/fs.h): ki_complete(iocb,
    res) runs in softirq context with bytes done or -errno. The kiocb is
    also the engine's io_job (its fn, args and complete are set when it is
    submitted): one object per I/O, as the kernel's kiocb is embedded in
    the request that carries it; private is the submitter's."""

    __slots__ = ("ki_filp", "ki_pos", "ki_flags", "ki_complete", "ki_res")

    def __init__(self, f: file, pos: int, complete: Callable[["kiocb", int], None],
                 private: Any = None, flags: int = 0) -> None:
        self.ki_filp = f
        self.ki_pos = pos
        self.ki_flags = flags
        self.ki_complete = complete
        self.private = private
        self.result = 0
        self.ki_res = 0                 # -errno a fault gave a DSYNC write's fdatasync


def _iocb_submit(fn: Callable[..., int], f: file, iov: list, iocb: kiocb,
                 done: Callable[[Any], None]) -> None:
    """Hand iocb to the engine as its io_job: done(iocb) runs in softirq."""
    if trace_block_rq_issue.enabled:
        trace_block_rq_issue(fn.__name__, f.fd, iocb.ki_pos, host.iov_len(iov))
    iocb.fn = fn
    iocb.args = (f.fd, iov, iocb.ki_pos)
    iocb.complete = done
    ops.io_submit(iocb)


def _iocb_read_done(iocb: kiocb) -> None:
    if trace_block_rq_complete.enabled:
        trace_block_rq_complete(ops.file_preadv.__name__, iocb.ki_filp.fd, iocb.ki_pos,
                                iocb.result)
    iocb.ki_complete(iocb, iocb.result)


_read_done: Callable[[Any], None] = _iocb_read_done       # as io_job.complete


def _iocb_write_done(iocb: kiocb) -> None:
    n = iocb.result
    if trace_block_rq_complete.enabled:
        trace_block_rq_complete(iocb.fn.__name__, iocb.ki_filp.fd, iocb.ki_pos, n)
    f = iocb.ki_filp
    if n > 0 and iocb.ki_pos + n > f.f_inode.i_size:
        f.f_inode.i_size = iocb.ki_pos + n
    if iocb.ki_res < 0 and n >= 0:
        n = iocb.ki_res                 # the write's fdatasync failed (a fault)
    iocb.ki_complete(iocb, n)


_write_done: Callable[[Any], None] = _iocb_write_done     # as io_job.complete


def _iocb_write_unsynced(f: file, iocb: kiocb, iov: list, err: int) -> None:
    """An armed fail_file_fsync failed this DSYNC write's fdatasync: the
    write still runs (its bytes may reach the page cache; no second fault
    is decided for it), the sync does not, and ki_complete gets err."""
    iocb.ki_res = err
    _iocb_submit(ops.file_pwritev, f, iov, iocb, _iocb_write_done)


def vfs_iocb_iter_read(f: file, iocb: kiocb, iov: list) -> int:
    """Start reading into the buffers at iocb.ki_pos: -EIOCBQUEUED (the
    buffers belong to the I/O until ki_complete runs). An armed
    fail_file_read is decided here (file_aio_fault): ki_complete then gets
    -errno, or a short count (the bytes before a failing range). Never
    sleeps."""
    stats["aio_reads"] += 1
    if fail_file_read.armed or trace_block_rq_issue.enabled:
        return _iocb_start(fail_file_read, ops.file_preadv, _iocb_read_done, f, iocb, iov)
    # _iocb_start's common case inline: vdisk_blockio's READ path
    iocb.fn = ops.file_preadv
    iocb.args = (f.fd, iov, iocb.ki_pos)
    iocb.complete = _read_done
    ops.io_submit(iocb)
    return -EIOCBQUEUED


def vfs_iocb_iter_write(f: file, iocb: kiocb, iov: list) -> int:
    """Start writing the buffers at iocb.ki_pos: -EIOCBQUEUED. With
    IOCB_DSYNC the write and an fdatasync of its range go out as one host
    job (file_pwritev_sync: on io_uring the file's DSYNC writes of an engine
    pass are linked to one ranged fsync; docs/decisions/0064, 0066), so
    ki_complete runs only after the bytes are stable, and the syncs of
    different passes run in parallel. Armed fail_file_write and
    fail_file_fsync are decided here (file_aio_fault, file_flush_fault):
    ki_complete then gets -errno or a short count; a failed fdatasync
    still lets the write run. Never sleeps."""
    stats["aio_writes"] += 1
    if not iocb.ki_flags & IOCB_DSYNC:
        if fail_file_write.armed or trace_block_rq_issue.enabled:
            return _iocb_start(fail_file_write, ops.file_pwritev, _iocb_write_done, f, iocb, iov)
        # _iocb_start's common case inline: the write-back WRITE's path
        iocb.fn = ops.file_pwritev
        iocb.args = (f.fd, iov, iocb.ki_pos)
        iocb.complete = _write_done
        ops.io_submit(iocb)
        return -EIOCBQUEUED
    stats["fsync"] += 1
    if fail_file_fsync.armed and file_flush_fault(
            f, lambda _: _iocb_write_synced(f, iocb, iov),
            lambda err: _iocb_write_unsynced(f, iocb, iov, err)):
        return -EIOCBQUEUED
    return _iocb_start(fail_file_write, ops.file_pwritev_sync, _iocb_write_done, f, iocb, iov)


def _iocb_write_synced(f: file, iocb: kiocb, iov: list) -> None:
    _iocb_start(fail_file_write, ops.file_pwritev_sync, _iocb_write_done, f, iocb, iov)


def _iocb_start(attr: fault_attr, op: Callable[..., int], done: Callable[[Any], None],
                f: file, iocb: kiocb, iov: list) -> int:
    """Submit one asynchronous read or write, or let its armed fault point
    take it over (file_aio_fault): -EIOCBQUEUED either way."""
    if attr.armed and file_aio_fault(attr, f, iov, iocb.ki_pos,
                                     lambda v: _iocb_submit(op, f, v, iocb, done),
                                     lambda err: iocb.ki_complete(iocb, err)):
        return -EIOCBQUEUED
    if trace_block_rq_issue.enabled:
        _iocb_submit(op, f, iov, iocb, done)
        return -EIOCBQUEUED
    iocb.fn = op
    iocb.args = (f.fd, iov, iocb.ki_pos)
    iocb.complete = done
    ops.io_submit(iocb)
    return -EIOCBQUEUED


def vfs_readv(f: file, iov: list, pos: int) -> int:
    """Read into the buffers at pos: bytes read (short only at end of file)
    or -errno."""
    might_sleep()
    if fail_file_read.armed and (r := file_rw_fault(fail_file_read, f, iov, pos,
                                                    vfs_readv)) is not None:
        return r
    want = host.iov_len(iov)
    got = 0
    if f.nowait_read:
        n = ops.file_preadv_nowait(f.fd, iov, pos)
        if n == want or (n >= 0 and pos + n >= f.f_inode.i_size):
            stats["read_nowait_hits"] += 1
            return n
        if n > 0:
            got = n
            iov = host.iov_advance(iov, n)
        elif n == -EOPNOTSUPP:
            f.nowait_read = False
        elif n != -EAGAIN:
            return n
    stats["read_pool"] += 1
    n = _pool_call(ops.file_preadv, f.fd, iov, pos + got)
    if n < 0:
        return got or n
    return got + n


def vfs_readv_nowait(f: file, iov: list, pos: int, count: int = -1) -> int:
    """Read only if the page cache holds all of it (IOCB_NOWAIT): bytes read
    (all, or fewer at end of file) or -EAGAIN; never sleeps, any context.
    count is the buffers' total length, as an iov_iter carries it, when
    the caller knows it (fileio's READ does); -1 counts it here."""
    if not f.nowait_read or fail_file_read.armed:     # a fault is decided by vfs_readv
        return -EAGAIN
    want = count if count >= 0 else host.iov_len(iov)
    n = ops.file_preadv_nowait(f.fd, iov, pos)
    if trace_block_rq_complete.enabled:
        # Served (or refused) inline from the page cache: no issue event.
        trace_block_rq_complete("preadv_nowait", f.fd, pos, n)
    if n == want or (n >= 0 and pos + n >= f.f_inode.i_size):
        stats["read_nowait_hits"] += 1
        return n
    return n if n < 0 else -EAGAIN


def vfs_writev(f: file, iov: list, pos: int) -> int:
    """Write the buffers at pos: bytes written or -errno."""
    might_sleep()
    if fail_file_write.armed and (r := file_rw_fault(fail_file_write, f, iov, pos,
                                                     vfs_writev)) is not None:
        return r
    stats["write_pool"] += 1
    n = _pool_call(ops.file_pwritev, f.fd, iov, pos)
    if n > 0 and pos + n > f.f_inode.i_size:
        f.f_inode.i_size = pos + n
    return n


def vfs_fsync_range(f: file, start: int, end: int, datasync: bool) -> int:
    might_sleep()
    if fail_file_fsync.armed and (r := file_fault(fail_file_fsync, f)) is not None:
        return r
    stats["fsync"] += 1
    return _pool_call(ops.file_fsync, f.fd, datasync)


def vfs_fsync(f: file, datasync: bool) -> int:
    return vfs_fsync_range(f, 0, (1 << 63) - 1, datasync)


def vfs_fallocate(f: file, mode: int, offset: int, length: int) -> int:
    might_sleep()
    if fail_file_fallocate.armed and (r := file_fault(fail_file_fallocate, f, mode)) is not None:
        return r
    ret = _pool_call(ops.file_fallocate, f.fd, mode, offset, length)
    if ret == 0 and not mode & FALLOC_FL_KEEP_SIZE and offset + length > f.f_inode.i_size:
        f.f_inode.i_size = offset + length
    return ret


def vfs_truncate(f: file, size: int) -> int:
    might_sleep()
    ret = _pool_call(ops.file_truncate, f.fd, size)
    if ret == 0:
        f.f_inode.i_size = size
    return ret


def vfs_llseek(f: file, offset: int, whence: int) -> int:
    """SEEK_SET/SEEK_DATA/SEEK_HOLE; -ENXIO past the last data."""
    return ops.file_lseek(f.fd, offset, whence)


def vfs_getsize(f: file) -> int:
    """Re-read the size from the host (after the file changed underneath)."""
    size = ops.file_size(f.fd)
    if size >= 0:
        f.f_inode.i_size = size
    return size
