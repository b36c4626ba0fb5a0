"""The real host's operations: the POSIX half of the host-ops table.

Twin of nothing in the kernel: LKL's posix-host.c plays this part. Thin,
non-blocking system calls that return a value or a negative errno and never
raise for an expected outcome, plus worker_pool, the host threads that run
blocking file calls for the trio engine.

Fills kshim.host.ops at import (posix_ops()), so kshim has a clock and a
console before any engine boots; kshim.engine_trio adds its readiness, I/O
pool and life-cycle operations to the same functions at boot. The sim engine
reuses alloc_aligned/free_aligned, getframe and the real-file calls.

Contexts: any, on the CPU thread; none sleeps. worker_pool threads run the
blocking calls (file_preadv, file_pwritev, ...) and report through a post
function the engine gives.

Differs: nothing to differ from; this is the boundary itself. Engine module:
may import host modules (not trio).
"""
from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import queue
import random
import socket
import sys
import threading
import time
from typing import Any, Callable, cast

from kshim import engine_rbd, host
from kshim.host import host_operations, iov_advance, iov_len

RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_AT_EMPTY_PATH = 0x1000
STATX_DIOALIGN = host.STATX_DIOALIGN
# struct statx (include/uapi/linux/stat.h): size, and where stx_mask,
# stx_dio_mem_align and stx_dio_offset_align sit
_STATX_SIZE = 256
_STX_MASK = 0
_STX_DIO_MEM_ALIGN = 0x98
_STX_DIO_OFFSET_ALIGN = 0x9C
_prandom = random.Random()


def _neg(e: OSError) -> int:
    return -(e.errno or _errno.EIO)


# -- clock ------------------------------------------------------------------



# -- console ----------------------------------------------------------------

def console_write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def prandom_u32() -> int:
    """A fast, non-cryptographic u32 (lib/random32.c's prandom_u32)."""
    return _prandom.getrandbits(32)


def random_bytes(n: int) -> bytes:
    """n bytes from the host's CSPRNG."""
    return os.urandom(n)


# -- files ------------------------------------------------------------------

def file_open(path: str, flags: int, mode: int) -> int:
    """Return an fd or -errno."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as e:
        return _neg(e)


def file_close(fd: int) -> int:
    try:
        os.close(fd)
        return 0
    except OSError as e:
        return _neg(e)


def file_size(fd: int) -> int:
    try:
        st = os.fstat(fd)
    except OSError as e:
        return _neg(e)
    if st.st_size == 0 and not os.path.isfile(f"/proc/self/fd/{fd}"):
        # A block device: its size comes from seeking to the end.
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            return _neg(e)
    return st.st_size


def file_truncate(fd: int, size: int) -> int:
    try:
        os.ftruncate(fd, size)
        return 0
    except OSError as e:
        return _neg(e)


def file_preadv_nowait(fd: int, iov: list, pos: int) -> int:
    """Read only what the page cache holds; -EAGAIN if it would block."""
    try:
        return os.preadv(fd, iov, pos, RWF_NOWAIT)
    except OSError as e:
        return _neg(e)


def _all_iov(op: Callable[[int, list, int], int], fd: int, iov: list, pos: int,
             eof_ok: bool) -> int:
    """Repeat a blocking preadv/pwritev until every byte is done: bytes done,
    fewer at end of file for reads, or -errno."""
    try:
        total = 0
        want = iov_len(iov)
        while total < want:
            n = op(fd, iov, pos + total)
            if n <= 0:
                if eof_ok or total:
                    break
                return -_errno.EIO
            total += n
            if total < want:
                iov = iov_advance(iov, n)
        return total
    except OSError as e:
        return _neg(e)


def file_preadv(fd: int, iov: list, pos: int) -> int:
    """Blocking read: for pool threads only."""
    return _all_iov(os.preadv, fd, iov, pos, True)


def file_pwritev(fd: int, iov: list, pos: int) -> int:
    """Blocking write: for pool threads only."""
    return _all_iov(os.pwritev, fd, iov, pos, False)


def file_pwritev_sync(fd: int, iov: list, pos: int) -> int:
    """Blocking write, then fdatasync: for pool threads only. The bytes
    written, or -errno if either call failed."""
    n = file_pwritev(fd, iov, pos)
    if n < 0:
        return n
    ret = file_fsync(fd, True)
    return ret if ret < 0 else n


def file_fsync(fd: int, datasync: bool) -> int:
    try:
        (os.fdatasync if datasync else os.fsync)(fd)
        return 0
    except OSError as e:
        return _neg(e)


def file_fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    try:
        if mode == 0:
            os.posix_fallocate(fd, offset, length)
            return 0
        return _fallocate_raw(fd, mode, offset, length)
    except OSError as e:
        return _neg(e)


_libc: Any = None


def _libc_get() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        _libc = lib
    return _libc


def _fallocate_raw(fd: int, mode: int, offset: int, length: int) -> int:
    if _libc_get().fallocate(fd, mode, offset, length) != 0:
        return -ctypes.get_errno()
    return 0


def file_lseek(fd: int, offset: int, whence: int) -> int:
    try:
        return os.lseek(fd, offset, whence)
    except OSError as e:
        return _neg(e)


def file_dio_align(fd: int) -> "tuple[int, int, int] | int":
    """statx(STATX_DIOALIGN) of an open file: (result mask, dio_mem_align,
    dio_offset_align), the alignments are 0 when the mask lacks
    STATX_DIOALIGN (kernels before 6.1, or no direct I/O); or -errno."""
    statx = getattr(_libc_get(), "statx", None)
    if statx is None:
        return -_errno.ENOSYS
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if statx(fd, b"", _AT_EMPTY_PATH, STATX_DIOALIGN, buf) != 0:
        return -ctypes.get_errno()
    raw = buf.raw
    mask = int.from_bytes(raw[_STX_MASK:_STX_MASK + 4], "little")
    if not mask & STATX_DIOALIGN:
        return mask, 0, 0
    return (mask, int.from_bytes(raw[_STX_DIO_MEM_ALIGN:_STX_DIO_MEM_ALIGN + 4], "little"),
            int.from_bytes(raw[_STX_DIO_OFFSET_ALIGN:_STX_DIO_OFFSET_ALIGN + 4], "little"))


# cachestat(2) (Linux 6.5): the page-cache residency of a file range in one
# call; the same number on every architecture (include/uapi/asm-generic/unistd.h)
_NR_CACHESTAT = 451
_PAGE_SIZE = mmap.PAGESIZE


class _cachestat_range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("nr_cache", "nr_dirty", "nr_writeback",
                                               "nr_evicted", "nr_recently_evicted")]


# One CPU thread calls file_cached: one argument block, made once (0.6 us a
# call through ctypes, against ~10 us to copy 128 KiB).
_cs_range = _cachestat_range()
_cs_out = _cachestat()
_cs_args: Any = None


def file_cached(fd: int, pos: int, count: int) -> int:
    """1 if every page of [pos, pos+count) is in the page cache, 0 if not,
    -ENOSYS where cachestat(2) is missing (older kernels), or -errno."""
    global _cs_args
    if _cs_args is None:
        lib = _libc_get()
        _cs_args = (lib.syscall, ctypes.byref(_cs_range), ctypes.byref(_cs_out))
    syscall, rng, out = _cs_args
    _cs_range.off = pos
    _cs_range.len = count
    if syscall(_NR_CACHESTAT, fd, rng, out, 0) != 0:
        return -ctypes.get_errno()
    pages = (pos + count + _PAGE_SIZE - 1) // _PAGE_SIZE - pos // _PAGE_SIZE
    return 1 if _cs_out.nr_cache >= pages else 0


# -- aligned memory ---------------------------------------------------------

def alloc_aligned(size: int) -> "memoryview | int":
    """size bytes of zeroed anonymous memory at an address aligned to the
    host page (an mmap), as a writable memoryview; or -ENOMEM."""
    try:
        return memoryview(mmap.mmap(-1, size))
    except (OSError, ValueError, OverflowError):
        return -_errno.ENOMEM


def free_aligned(mv: memoryview) -> int:
    """Give memory from alloc_aligned back to the host: 0, or -EBUSY while
    another view of it is alive (it goes when that view does)."""
    m = cast(mmap.mmap, mv.obj)
    try:
        mv.release()
        m.close()
    except BufferError:
        return -_errno.EBUSY
    return 0


# -- sockets ----------------------------------------------------------------

def sock_new(family: int, type_: int, proto: int) -> "socket.socket | int":
    try:
        s = socket.socket(family, type_, proto)
    except OSError as e:
        return _neg(e)
    s.setblocking(False)
    return s


def sock_bind(s: socket.socket, addr: tuple) -> int:
    try:
        s.bind(addr)
        return 0
    except OSError as e:
        return _neg(e)


def sock_listen(s: socket.socket, backlog: int) -> int:
    try:
        s.listen(backlog)
        return 0
    except OSError as e:
        return _neg(e)


def sock_accept(s: socket.socket) -> "tuple[socket.socket, tuple] | int":
    try:
        ns, addr = s.accept()
    except OSError as e:
        return _neg(e)
    ns.setblocking(False)
    return ns, addr


def sock_connect(s: socket.socket, addr: "tuple | str") -> int:
    """addr: (host, port), or a path for AF_UNIX."""
    try:
        err = s.connect_ex(addr)
    except OSError as e:           # an address connect_ex cannot even try (a path too long)
        return _neg(e)
    return -err if err else 0


def sock_setsockopt(s: socket.socket, level: int, opt: int, val: int) -> int:
    try:
        s.setsockopt(level, opt, val)
        return 0
    except OSError as e:
        return _neg(e)


def sock_getsockopt(s: socket.socket, level: int, opt: int) -> int:
    try:
        return s.getsockopt(level, opt)
    except OSError as e:
        return _neg(e)


def sock_name(s: socket.socket, peer: bool) -> "tuple | int":
    try:
        return s.getpeername() if peer else s.getsockname()
    except OSError as e:
        return _neg(e)


def sock_error(s: socket.socket) -> int:
    return -s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def sock_shutdown(s: socket.socket, how: int) -> int:
    try:
        s.shutdown(how)
        return 0
    except OSError as e:
        return _neg(e)


def sock_close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


def sock_fileno(s: socket.socket) -> int:
    return s.fileno()


# -- worker pool ------------------------------------------------------------

class worker_pool:
    """A few host threads that run blocking calls and report through `post`.

    `post(job)` is called on the worker thread with the finished job; the
    engine passes a function that hands it to the event loop.
    """

    def __init__(self, nthreads: int, post: Callable[[Any], None]) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._post = post
        self._threads = [threading.Thread(target=self._run, name=f"kshim-io/{i}", daemon=True)
                         for i in range(nthreads)]
        for t in self._threads:
            t.start()

    def submit(self, job: Any) -> None:
        """job has .fn, .args; .result is set before it is posted back."""
        self._q.put(job)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except OSError as e:
                job.result = _neg(e)
            # Hold no buffer past the call (this thread keeps `job` until
            # the next one): kshim.dmapool unmaps memory only when no view
            # of it is left.
            job.args = ()
            self._post(job)

    def stop(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(timeout=5)


def sock_recv_into(s: socket.socket, buf: "memoryview | bytearray", flags: int) -> int:
    """Bytes received, 0 at end of stream, or -errno (-EAGAIN when empty)."""
    try:
        return s.recv_into(buf, 0, flags)
    except OSError as e:
        return _neg(e)


def sock_recvmsg_into(s: socket.socket, bufs: list, flags: int) -> int:
    try:
        return s.recvmsg_into(bufs, 0, flags)[0]
    except OSError as e:
        return _neg(e)


# A plain int: or-ing socket's IntFlag members runs enum.__or__ in Python
# (two calls per send on the data path).
_SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)


def sock_sendmsg(s: socket.socket, bufs: list, flags: int) -> int:
    """Bytes sent (maybe fewer than offered) or -errno (-EAGAIN when full)."""
    try:
        return s.sendmsg(bufs, (), flags | _SEND_FLAGS)
    except OSError as e:
        return _neg(e)


def sock_sendfile(s: socket.socket, fd: int, pos: int, count: int, flags: int) -> int:
    """sendfile(2) of count bytes of fd at pos: bytes sent (short when the
    socket fills or the file ends), 0 when the file ends at pos, or -errno
    (-EAGAIN when full). sendfile(2) takes no flags: MSG_MORE is not
    honoured, each call pushes its last segment."""
    try:
        return os.sendfile(s.fileno(), fd, pos, count)
    except OSError as e:
        return _neg(e)


def _no_engine(*_args: Any) -> Any:
    raise RuntimeError("kshim engine not running: socket readiness and the I/O pool "
                       "need a booted engine")


def _nothing(*_args: Any) -> None:
    return None


def cpu_busy_ns(ns: int) -> None:
    """A busy wait on the one CPU could not see anything change: return."""


def posix_ops() -> host_operations:
    """A full table of the real host's operations. Readiness, the I/O pool
    and request_shutdown are placeholders that an engine replaces at boot."""
    t = host_operations()
    t.monotonic_ns = time.monotonic_ns
    t.monotonic = time.monotonic
    t.time_ns = time.time_ns
    t.thread_time_ns = time.thread_time_ns
    t.cpu_busy_ns = cpu_busy_ns
    t.console_write = console_write
    t.getframe = sys._getframe        # call-site capture, cheaper than inspect
    t.getpid = os.getpid
    t.random_bytes = os.urandom
    t.prandom_u32 = prandom_u32
    t.alloc_aligned = alloc_aligned
    t.free_aligned = free_aligned
    t.file_open = file_open
    t.file_close = file_close
    t.file_size = file_size
    t.file_truncate = file_truncate
    t.file_preadv_nowait = file_preadv_nowait
    t.file_preadv = file_preadv
    t.file_pwritev = file_pwritev
    t.file_pwritev_sync = file_pwritev_sync
    t.file_fsync = file_fsync
    t.file_fallocate = file_fallocate
    t.file_lseek = file_lseek
    t.file_dio_align = file_dio_align
    t.rwf_nowait = bool(RWF_NOWAIT)
    t.file_cached = file_cached
    t.io_submit = _no_engine
    t.sock_new = sock_new
    t.sock_bind = sock_bind
    t.sock_listen = sock_listen
    t.sock_accept = sock_accept
    t.sock_connect = sock_connect
    t.sock_setsockopt = sock_setsockopt
    t.sock_getsockopt = sock_getsockopt
    t.sock_name = sock_name
    t.sock_error = sock_error
    t.sock_shutdown = sock_shutdown
    t.sock_recv_into = sock_recv_into
    t.sock_recvmsg_into = sock_recvmsg_into
    t.sock_sendmsg = sock_sendmsg
    t.sock_sendfile = sock_sendfile
    t.sock_attach = _nothing
    t.sock_arm_rx = _nothing
    t.sock_arm_tx = _nothing
    t.sock_detach = _no_engine
    t.rbd_probe = engine_rbd.probe
    t.rbd_open = engine_rbd.image_open
    t.rbd_size = engine_rbd.image_size
    t.rbd_close = engine_rbd.image_close
    t.rbd_extent = engine_rbd.image_extent
    t.rbd_attach = _no_engine
    t.rbd_detach = _nothing
    t.rbd_submit = _no_engine
    t.timer_kick = _nothing
    t.request_shutdown = _nothing
    return t


def _check_abi() -> None:
    """kshim.host's Linux ABI constants must be the host's own."""
    pairs = {"O_CREAT": os.O_CREAT, "O_EXCL": os.O_EXCL, "O_TRUNC": os.O_TRUNC,
             "O_DSYNC": os.O_DSYNC, "O_SYNC": os.O_SYNC, "O_CLOEXEC": os.O_CLOEXEC,
             "O_DIRECT": getattr(os, "O_DIRECT", host.O_DIRECT),
             "AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
             "SOCK_STREAM": socket.SOCK_STREAM, "SOL_SOCKET": socket.SOL_SOCKET,
             "SO_REUSEADDR": socket.SO_REUSEADDR, "SO_SNDBUF": socket.SO_SNDBUF,
             "SO_RCVBUF": socket.SO_RCVBUF, "SO_KEEPALIVE": socket.SO_KEEPALIVE,
             "SO_ERROR": socket.SO_ERROR, "TCP_NODELAY": socket.TCP_NODELAY,
             "MSG_DONTWAIT": socket.MSG_DONTWAIT, "MSG_PEEK": socket.MSG_PEEK,
             "MSG_WAITALL": socket.MSG_WAITALL, "SHUT_RDWR": socket.SHUT_RDWR,
             "SEEK_SET": os.SEEK_SET}
    wrong = [k for k, v in pairs.items() if getattr(host, k) != v]
    if wrong:
        raise ImportError(f"kshim.host's ABI constants differ from this host's: {wrong}")


_check_abi()
host.set_ops(posix_ops())
