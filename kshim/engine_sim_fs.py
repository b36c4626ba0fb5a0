"""The sim engine's storage: in-memory disks and real files, in virtual time.

Part of kshim.engine_sim (the file and I/O-pool operations of the host-ops
table).

- A path in Simulation.disks (path -> bytearray) is an in-memory disk; a
  path registered with add_real_file() is opened on the host; opening any
  other path with O_CREAT makes a new in-memory file, without it -ENOENT.
  So a run never depends on, nor leaves anything in, the host's file system
  unless asked to.
- io_submit: the job's call runs when its seeded latency has passed, then
  its completion runs in softirq context; jobs in flight together complete
  in a seeded order (as a device would reorder them).
- file_preadv_nowait (the page-cache probe) hits with probability
  Simulation.page_cache_hit, so runs take both the inline and the pool path;
  file_cached (the residency probe of a zero-copy READ) draws the same way.

Contexts: the operations run on the CPU (any context); the "blocking" ones
(preadv, pwritev, fsync, fallocate, open) are only ever called from an I/O
job, which the simulation runs between events.

Differs from a host: fsync always succeeds at once; O_DIRECT alignment is
not enforced (file_dio_align reports no STATX_DIOALIGN); holes read as
zeros and SEEK_DATA/SEEK_HOLE see one data extent.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kshim import engine_posix, host, softirq
from kshim.host import io_job, iov_len

if TYPE_CHECKING:
    from kshim.engine_sim import Simulation

_MEMFD_BASE = 1 << 20        # in-memory fds start here; host fds stay below


class sim_files:
    """The files of one Simulation and their operations."""

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        self.disks: dict[str, bytearray] = {}
        self.real_paths: set[str] = set()
        self._fds: dict[int, bytearray] = {}
        self._real_fds: set[int] = set()
        self._next_fd = _MEMFD_BASE
        self._next_job = 0

    def add_real_file(self, path: str) -> None:
        """Let the simulated machine open path on the host."""
        self.real_paths.add(path)

    def release(self) -> None:
        for fd in list(self._real_fds):
            engine_posix.file_close(fd)
        self._real_fds.clear()
        self._fds.clear()

    def fill_ops(self, t: host.host_operations) -> None:
        t.file_open = self.file_open
        t.file_close = self.file_close
        t.file_size = self.file_size
        t.file_truncate = self.file_truncate
        t.file_preadv_nowait = self.file_preadv_nowait
        t.file_preadv = self.file_preadv
        t.file_pwritev = self.file_pwritev
        t.file_pwritev_sync = self.file_pwritev_sync
        t.file_fsync = self.file_fsync
        t.file_fallocate = self.file_fallocate
        t.file_lseek = self.file_lseek
        t.file_dio_align = self.file_dio_align
        t.rwf_nowait = True
        t.file_cached = self.file_cached
        t.io_submit = self.io_submit

    # -- the I/O pool ------------------------------------------------------------

    def io_submit(self, job: io_job) -> None:
        self._next_job += 1
        name = getattr(job.fn, "__name__", "io")
        self.sim.schedule(self.sim.draw(self.sim.io_latency_ns), self._io_done, job,
                          f"io {self._next_job} {name}")

    def _io_done(self, job: io_job) -> None:
        job.result = job.fn(*job.args)
        job.args = ()
        softirq.softirq_run(job.complete, job)

    # -- operations ----------------------------------------------------------------

    def file_open(self, path: str, flags: int, mode: int) -> int:
        if path in self.real_paths:
            fd = engine_posix.file_open(path, flags, mode)
            if fd >= 0:
                self._real_fds.add(fd)
            return fd
        data = self.disks.get(path)
        if data is None:
            if not flags & host.O_CREAT:
                return -errno.ENOENT
            data = self.disks[path] = bytearray()
        elif flags & host.O_CREAT and flags & host.O_EXCL:
            return -errno.EEXIST
        if flags & host.O_TRUNC:
            del data[:]
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = data
        return fd

    def file_close(self, fd: int) -> int:
        if fd in self._real_fds:
            self._real_fds.discard(fd)
            return engine_posix.file_close(fd)
        return 0 if self._fds.pop(fd, None) is not None else -errno.EBADF

    def file_size(self, fd: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_size(fd)
        data = self._fds.get(fd)
        return -errno.EBADF if data is None else len(data)

    def file_truncate(self, fd: int, size: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_truncate(fd, size)
        data = self._fds.get(fd)
        if data is None:
            return -errno.EBADF
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))
        return 0

    def file_cached(self, fd: int, pos: int, count: int) -> int:
        """As file_preadv_nowait's probe (the same one draw): in the page
        cache with probability Simulation.page_cache_hit."""
        return 0 if self.sim.rng.random() >= self.sim.page_cache_hit else 1

    def file_preadv_nowait(self, fd: int, iov: list, pos: int) -> int:
        if self.sim.rng.random() >= self.sim.page_cache_hit:
            return -errno.EAGAIN
        return self.file_preadv(fd, iov, pos)

    def file_preadv(self, fd: int, iov: list, pos: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_preadv(fd, iov, pos)
        data = self._fds.get(fd)
        if data is None:
            return -errno.EBADF
        done = 0
        src = memoryview(data)
        for b in iov:
            start = pos + done
            k = min(len(b), max(len(data) - start, 0))
            if k <= 0:
                break
            b[:k] = src[start:start + k]
            done += k
            if k < len(b):
                break
        src.release()
        return done

    def file_pwritev(self, fd: int, iov: list, pos: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_pwritev(fd, iov, pos)
        data = self._fds.get(fd)
        if data is None:
            return -errno.EBADF
        end = pos + iov_len(iov)
        if end > len(data):
            data.extend(bytes(end - len(data)))
        at = pos
        for b in iov:
            n = len(b)
            data[at:at + n] = b
            at += n
        return end - pos

    def file_pwritev_sync(self, fd: int, iov: list, pos: int) -> int:
        n = self.file_pwritev(fd, iov, pos)
        if n < 0:
            return n
        ret = self.file_fsync(fd, True)
        return ret if ret < 0 else n

    def file_fsync(self, fd: int, datasync: bool) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_fsync(fd, datasync)
        return 0 if fd in self._fds else -errno.EBADF

    def file_fallocate(self, fd: int, mode: int, offset: int, length: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_fallocate(fd, mode, offset, length)
        data = self._fds.get(fd)
        if data is None:
            return -errno.EBADF
        end = offset + length
        if mode & (host.FALLOC_FL_PUNCH_HOLE | host.FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(data))
            if stop > offset:
                data[offset:stop] = bytes(stop - offset)
        if end > len(data) and not mode & host.FALLOC_FL_KEEP_SIZE:
            data.extend(bytes(end - len(data)))
        return 0

    def file_lseek(self, fd: int, offset: int, whence: int) -> int:
        if fd < _MEMFD_BASE:
            return engine_posix.file_lseek(fd, offset, whence)
        data = self._fds.get(fd)
        if data is None:
            return -errno.EBADF
        size = len(data)
        if whence == host.SEEK_SET:
            return offset
        if whence == host.SEEK_END:
            return size + offset
        if whence in (host.SEEK_DATA, host.SEEK_HOLE):
            if offset >= size:
                return -errno.ENXIO
            return offset if whence == host.SEEK_DATA else size
        return -errno.EINVAL

    def file_dio_align(self, fd: int) -> "tuple[int, int, int] | int":
        if fd < _MEMFD_BASE:
            return engine_posix.file_dio_align(fd)
        return (0, 0, 0) if fd in self._fds else -errno.EBADF
