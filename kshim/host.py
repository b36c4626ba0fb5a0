"""The host-operations table: everything below the emulated kernel, in one place.

Twin of nothing in the kernel; the shape is LKL's `struct lkl_host_operations`
(tools/lkl/include/lkl_host.h): one typed table of what the kernel needs
from whatever it runs on, filled by the engine at boot. kshim modules reach
the host ONLY through `ops`; no kshim module outside the engine modules
imports a host module (tests/boundary/test_layers.py enforces it).

The table (host_operations, one instance `ops` for the life of the process):

- clock: monotonic_ns, monotonic, time_ns, thread_time_ns, cpu_busy_ns
- console and debugging: console_write, getframe, getpid
- randomness: random_bytes (get_random_bytes), prandom_u32 (prandom_u32)
- aligned memory: alloc_aligned, free_aligned
- files: file_open, file_close, file_size, file_truncate, file_preadv_nowait,
  file_preadv, file_pwritev, file_fsync, file_fallocate, file_lseek,
  file_dio_align, rwf_nowait, file_cached (is a range in the page cache);
  the I/O pool: io_submit(io_job)
- sockets: sock_new, sock_bind, sock_listen, sock_accept, sock_connect,
  sock_setsockopt, sock_getsockopt, sock_name, sock_error, sock_shutdown,
  sock_recv_into, sock_recvmsg_into, sock_sendmsg, sock_sendfile (a file
  range from the page cache into the socket, no copy); readiness arming:
  sock_attach, sock_arm_rx, sock_arm_tx, sock_detach (also closes)
- Ceph RBD images (kshim.libceph; the trio engine through
  kshim.engine_rbd, refused by the sim): rbd_probe, rbd_open, rbd_size,
  rbd_close (open and close block: through io_submit), rbd_attach,
  rbd_detach (watch an image's completions or stop), rbd_submit(image,
  rbd_request), rbd_extent (allocation; blocks)
- timers: timer_kick(expires) (the earliest kshim.timer expiry moved earlier)
- signals and life cycle: request_shutdown

Filled by: kshim.engine_posix at import (the real host, so that code running
before any boot, printk included, has a clock and a console), then by each
engine at boot: kshim.engine_trio (real host + trio readiness) or
kshim.engine_sim (virtual clock, in-memory sockets and disks, one seeded
PRNG). set_ops() copies a whole table into `ops` and resets the clock bases
(on_clock_base hooks: jiffies, printk), so time restarts at 0 at each boot.

Contexts: every operation is callable from any context on the CPU thread and
none sleeps; blocking file work goes through io_submit, whose completion
runs in softirq context. Operations return a value or a negative errno and
never raise for an expected host outcome.

Hot path: kshim modules bind `ops` once at import (`from kshim.host import
ops`); a call is then one global and one slot lookup, as the plain module
function it replaced. The object never changes; set_ops() refills it.

Constants: the Linux ABI values of the flags kshim passes down (open flags,
socket options, MSG_*). Both engines interpret them; engine_posix checks at
import that the host agrees.
"""
from __future__ import annotations

from typing import Any, Callable

# -- Linux ABI constants -------------------------------------------------------

O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_TRUNC = 0o1000
O_DSYNC = 0o10000
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
O_CLOEXEC = 0o2000000
O_SYNC = 0o4010000

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 2
SO_ERROR = 4
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_KEEPALIVE = 9
TCP_NODELAY = 1
TCP_CORK = 3
TCP_QUICKACK = 12
MSG_PEEK = 0x2
MSG_DONTWAIT = 0x40
MSG_WAITALL = 0x100
MSG_NOSIGNAL = 0x4000
MSG_MORE = 0x8000
SHUT_RD = 0
SHUT_WR = 1
SHUT_RDWR = 2

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_SET = 0
SEEK_CUR = 1
SEEK_END = 2
SEEK_DATA = 3
SEEK_HOLE = 4
STATX_DIOALIGN = 0x2000


# -- the table ------------------------------------------------------------------

class io_job:
    """One blocking host call for the I/O pool: fn(*args) runs off the CPU
    (a host thread, or later in virtual time under the sim), .result gets its
    return value, then complete(job) runs in softirq context, like a bio's
    end_io. private is the submitter's (a completion, a kiocb)."""

    __slots__ = ("fn", "args", "result", "complete", "private")

    def __init__(self, fn: Callable[..., int], args: tuple, complete: Callable[["io_job"], None],
                 private: Any = None) -> None:
        self.fn = fn
        self.args = args
        self.result = 0
        self.complete = complete
        self.private = private


RBD_OP_READ = 0
RBD_OP_WRITE = 1
RBD_OP_FLUSH = 2
RBD_OP_DISCARD = 3
RBD_OP_WRITE_ZEROES = 4


class rbd_request:
    """One asynchronous request on an RBD image: op (RBD_OP_*), the byte
    offset and length, iov (the buffers of a READ or WRITE, written or
    read in place). The engine sets .result (>= 0, or -errno), then runs
    complete(req) in softirq context, like a bio's end_io. private is the
    submitter's."""

    __slots__ = ("op", "off", "length", "iov", "result", "complete", "private")

    def __init__(self, op: int, off: int, length: int, iov: list,
                 complete: Callable[["rbd_request"], None], private: Any = None) -> None:
        self.op = op
        self.off = off
        self.length = length
        self.iov = iov
        self.result = 0
        self.complete = complete
        self.private = private


class host_operations:
    """The typed host-ops table. A socket handle (`hs`) and a file descriptor
    are opaque to kshim: only the engine that made them looks inside. `sk`
    arguments are kshim.net.sock objects; an engine keeps its own per-socket
    state in sk.engine_priv and flips sk.rx_armed/sk.tx_armed off when it
    delivers sk_data_ready/sk_write_space."""

    __slots__ = (
        "monotonic_ns", "monotonic", "time_ns", "thread_time_ns", "cpu_busy_ns",
        "console_write", "getframe", "getpid",
        "random_bytes", "prandom_u32",
        "alloc_aligned", "free_aligned",
        "file_open", "file_close", "file_size", "file_truncate", "file_preadv_nowait",
        "file_preadv", "file_pwritev", "file_pwritev_sync", "file_fsync", "file_fallocate",
        "file_lseek", "file_dio_align", "rwf_nowait", "file_cached", "io_submit",
        "sock_new", "sock_bind", "sock_listen", "sock_accept", "sock_connect",
        "sock_setsockopt", "sock_getsockopt", "sock_name", "sock_error", "sock_shutdown",
        "sock_recv_into", "sock_recvmsg_into", "sock_sendmsg", "sock_sendfile",
        "sock_attach", "sock_arm_rx", "sock_arm_tx", "sock_detach",
        "rbd_probe", "rbd_open", "rbd_size", "rbd_close", "rbd_attach", "rbd_detach",
        "rbd_submit", "rbd_extent",
        "timer_kick", "request_shutdown",
    )

    # clock: ns/seconds of a monotonic clock, wall ns since the epoch, CPU ns
    monotonic_ns: Callable[[], int]
    monotonic: Callable[[], float]
    time_ns: Callable[[], int]
    thread_time_ns: Callable[[], int]
    # the CPU spins for ns (udelay/mdelay): the real host returns at once,
    # the sim's clock moves on by ns
    cpu_busy_ns: Callable[[int], None]
    # console and debugging aids
    console_write: Callable[[str], None]
    getframe: Callable[[int], Any]             # sys._getframe(depth) or None
    getpid: Callable[[], int]
    # randomness: crypto-grade bytes; a fast pseudo-random u32 (seeded under the sim)
    random_bytes: Callable[[int], bytes]
    prandom_u32: Callable[[], int]
    # aligned memory: a zeroed, page-aligned writable memoryview or -ENOMEM;
    # free: 0, or -EBUSY while another view of it lives
    alloc_aligned: Callable[[int], "memoryview | int"]
    free_aligned: Callable[[memoryview], int]
    # files: fds and -errno; preadv/pwritev/fsync/fallocate/open may block,
    # so kshim runs them through io_submit; the rest never block
    file_open: Callable[[str, int, int], int]
    file_close: Callable[[int], int]
    file_size: Callable[[int], int]
    file_truncate: Callable[[int, int], int]
    file_preadv_nowait: Callable[[int, list, int], int]
    file_preadv: Callable[[int, list, int], int]
    file_pwritev: Callable[[int, list, int], int]
    # write, then fdatasync what it wrote: bytes written or -errno (either failing)
    file_pwritev_sync: Callable[[int, list, int], int]
    file_fsync: Callable[[int, bool], int]
    file_fallocate: Callable[[int, int, int, int], int]
    file_lseek: Callable[[int, int, int], int]
    file_dio_align: Callable[[int], "tuple[int, int, int] | int"]
    rwf_nowait: bool                           # file_preadv_nowait can succeed at all
    # (fd, pos, count): 1 if every page of the range is in the page cache
    # (a sendfile of it will not wait for the disk), 0 if not, -ENOSYS
    # where the host cannot tell; never blocks
    file_cached: Callable[[int, int, int], int]
    io_submit: Callable[[io_job], None]
    # sockets: non-blocking; bytes or -errno (-EAGAIN when it would block)
    sock_new: Callable[[int, int, int], Any]
    sock_bind: Callable[[Any, tuple], int]
    sock_listen: Callable[[Any, int], int]
    sock_accept: Callable[[Any], "tuple[Any, tuple] | int"]
    sock_connect: Callable[[Any, "tuple | str"], int]   # a path for AF_UNIX
    sock_setsockopt: Callable[[Any, int, int, int], int]
    sock_getsockopt: Callable[[Any, int, int], int]
    sock_name: Callable[[Any, bool], "tuple | int"]
    sock_error: Callable[[Any], int]
    sock_shutdown: Callable[[Any, int], int]
    sock_recv_into: Callable[[Any, Any, int], int]
    sock_recvmsg_into: Callable[[Any, list, int], int]
    sock_sendmsg: Callable[[Any, list, int], int]
    # (hs, fd, pos, count, flags): bytes of the file at pos sent from the
    # page cache without a copy (fewer when the socket fills: -EAGAIN if
    # none; 0 when the file ends at pos), or -errno of the socket or of
    # the file (-EIO). MSG_MORE in flags: more of the stream follows.
    sock_sendfile: Callable[[Any, int, int, int, int], int]
    # readiness: attach starts watching sk (rx armed); arm_* asks for one
    # sk_data_ready / sk_write_space; detach stops watching and closes sk.host
    sock_attach: Callable[[Any], None]
    sock_arm_rx: Callable[[Any], None]
    sock_arm_tx: Callable[[Any], None]
    sock_detach: Callable[[Any], None]
    # Ceph RBD images: probe says '' or why they cannot be used; open
    # (conf, user, pool, image, librados options) blocks (run it through
    # io_submit) and gives an image handle or (-errno, failed step); close
    # blocks too, after detach. attach starts delivering the image's
    # completions, submit starts a request (0 or -errno, then complete()
    # in softirq context)
    rbd_probe: Callable[[], str]
    rbd_open: Callable[[str, str, str, str, "dict[str, str]"], Any]
    rbd_size: Callable[[Any], int]
    rbd_close: Callable[[Any], int]
    rbd_attach: Callable[[Any], None]
    rbd_detach: Callable[[Any], None]
    rbd_submit: Callable[[Any, rbd_request], int]
    # (allocated, bytes) of the run at an offset, within a length; blocks
    rbd_extent: Callable[[Any, int, int], "tuple[bool, int] | int"]
    # timers: the earliest pending expiry (jiffies) became earlier
    timer_kick: Callable[[int], None]
    # signals and life cycle: begin an orderly stop (any context)
    request_shutdown: Callable[[], None]


def missing_ops(table: host_operations) -> list[str]:
    """Names of the operations table leaves unset."""
    return [n for n in host_operations.__slots__ if not hasattr(table, n)]


ops = host_operations()
_clock_base_hooks: list[Callable[[], None]] = []


def on_clock_base(hook: Callable[[], None]) -> None:
    """Call hook() whenever the table is (re)filled: clock users take their
    time base there (jiffies and printk count from boot)."""
    _clock_base_hooks.append(hook)


def set_ops(table: host_operations, *, rebase: bool = True) -> None:
    """Fill `ops` from a complete table (engines, at boot and at stop), then,
    if rebase, reset the clock bases. Raise ValueError naming what the table
    lacks."""
    missing = missing_ops(table)
    if missing:
        raise ValueError(f"host_operations table lacks: {', '.join(missing)}")
    for name in host_operations.__slots__:
        setattr(ops, name, getattr(table, name))
    if rebase:
        for hook in _clock_base_hooks:
            hook()


def current_ops() -> host_operations:
    """A copy of the table now in `ops` (to restore it later)."""
    t = host_operations()
    for name in host_operations.__slots__:
        if hasattr(ops, name):
            setattr(t, name, getattr(ops, name))
    return t


# -- buffer-list helpers (pure; shared by engines and kshim) ---------------------

def iov_len(iov: list) -> int:
    """Total length of a list of buffers."""
    n = 0
    for b in iov:
        n += len(b)
    return n


def iov_advance(iov: list, n: int) -> list:
    """The buffers left after the first n bytes (a new list; views, no copies)."""
    out = []
    for b in iov:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(memoryview(b)[n:] if n else b)
        n = 0
    return out


def iov_head(iov: list, n: int) -> list:
    """Views of the first n bytes of a list of buffers (no copies). An
    element that slices itself (a memoryview, kshim.filemap's file_extent)
    is cut as it is."""
    out = []
    for b in iov:
        if n <= 0:
            break
        mv = memoryview(b) if isinstance(b, (bytes, bytearray)) else b
        out.append(mv[:n])
        n -= len(mv)
    return out
