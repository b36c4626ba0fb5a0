"""io_uring for the engine's file I/O: liburing bound with cffi.

Twin of nothing in the kernel: this is the host side of kshim's block I/O,
like the seed's AIO service. The trio engine (kshim/engine_trio.py) routes the
pool jobs that are plain reads, writes and fsyncs here when the ring could
be set up, and keeps its worker pool for everything else and as the
fallback when io_uring is refused.

- Submission: submit() writes one SQE per job (IORING_OP_READ/WRITE for one
  buffer, READV/WRITEV for several, FSYNC). Write-sync jobs (OP_WRITE_SYNC,
  decisions 0064 and 0066) wait for flush(), which writes the ones of each
  file as one chain: the WRITEs linked (IOSQE_IO_LINK) one after the other
  and to one FSYNC with IORING_FSYNC_DATASYNC of the range they cover, each
  write's CQE skipped unless it fails or comes up short; at most
  URING_CHAIN_MAX writes per chain, and a chain ends with the write that
  brings it to URING_CHAIN_BYTES (large writes keep a sync each, in
  parallel). flush() then makes one io_uring_enter
  for every SQE queued since the last one. The engine calls flush() once
  per pass, after the run queue drained: the submissions of a pass are
  batched, and the write-through writes of a pass share one fdatasync.
  With submit_batch N > 0 (USCST_IO_URING_SUBMIT_BATCH at start; off
  by default) submit() also flushes whenever N reads are queued, as the
  kernel's blk_plug is flushed at its request limit, so the device starts
  on a pass's first reads while the CPU prepares the rest (decision 0063:
  one batch per pass holds vdisk_blockio's QD32 reads in lock-step;
  breaking it cost 12-17% more CPU per READ here, each io_uring_enter
  ringing the VM's virtio doorbell, for +4% IOPS on a quiet machine, so
  it is off). Only reads count: a read that reaches the ring waits on the
  device (a direct read, or a page-cache miss); a buffered write is CPU
  work an early flush only splits into more system calls (+9% CPU per
  write-back WRITE, no gain). Such a flush also chains the write-sync
  jobs pending at that moment.
- Completion: the ring signals an eventfd the engine's trio task waits on;
  reap() takes at most URING_REAP_MAX completions per pass. The ring is
  set up with IORING_SETUP_COOP_TASKRUN where the kernel has it, so an
  io-wq worker finishing a write does not interrupt the CPU thread with
  an IPI (decision 0056); `setup` says which. A short transfer
  is resubmitted for the rest (as host._all_iov repeats a blocking call);
  a finished job gets job.result (bytes or -errno) and goes back to the
  engine, which runs job.complete in softirq context like a bio's end_io.
- Limits (the seed's): at most URING_FILE_MAX operations outstanding per
  file; more wait in that file's backlog, refilled when the file's count
  drops below URING_FILE_REFILL.
- Statistics: stats, and show_stats() for the live tree.

Contexts: the engine's host thread only (the CPU thread); nothing sleeps.

Why cffi API mode (decision 0028): liburing's io_uring_get_sqe, the prep
helpers and io_uring_cq_advance are static inline in liburing.h, so a
dlopen()ed liburing.so cannot call them. The small C part below is compiled
once per source/Python version into a cache directory (first use, ~2 s) and
imported from there afterwards. No compiler, no liburing headers, a kernel
without io_uring (ENOSYS), or USCST_IO_URING=0 in the environment: open()
says why, and the engine keeps its worker pool.
"""
from __future__ import annotations

import errno as _errno
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from collections import deque
from typing import Any

from kshim.host import iov_advance, iov_len

URING_ENTRIES = 256          # SQ size; the CQ is twice that
URING_FILE_MAX = 256         # outstanding operations per file
URING_FILE_REFILL = 32       # a file's backlog refills below this
URING_REAP_MAX = 64          # completions per engine pass
URING_CHAIN_MAX = 8          # write-sync jobs linked to one fdatasync
URING_CHAIN_BYTES = 64 << 10  # a chain ends with the write that reaches this
# Reads queued before submit() flushes the SQ itself, mid-pass (blk_plug's
# request limit); 0: only the pass's flush (docs/decisions/0063).
URING_SUBMIT_BATCH = 0

OP_READ = 0
OP_WRITE = 1
OP_FSYNC = 2
OP_WRITE_SYNC = 3            # a write, then an fdatasync of its range
_OP_LINKED_WRITE = 4         # glue only: a write linked to the next SQE
_OP_CHAIN = 5                # ops only: write-sync jobs sharing one fdatasync
# user_data of a chain's write: the chain's key, this bit, and the write's
# index in the chain from bit _MEMBER_SHIFT; the chain's fdatasync has the key.
_WRITE_PART = 1 << 62
_MEMBER_SHIFT = 48
_KEY_MASK = (1 << _MEMBER_SHIFT) - 1

# How the kernel tells the CPU thread of a completion an io-wq worker
# finished (buffered writes and fsyncs run there). Without
# IORING_SETUP_COOP_TASKRUN (Linux 5.19) it interrupts the thread with a
# reschedule IPI (a VM exit under virtualisation) to run the completion's
# task_work: measured at about a third of the CPU of a 4K write-back write
# (docs/decisions/0056). With it, the task_work waits for the thread's
# next system call, which at load comes within microseconds; a sleeping
# thread is still woken. An older kernel refuses the flag (EINVAL): the
# ring is then set up without it. USCST_IO_URING_SETUP=ipi asks for that.
IORING_SETUP_COOP_TASKRUN = 1 << 8
_SETUPS = (("coop_taskrun", IORING_SETUP_COOP_TASKRUN), ("ipi", 0))

_CDEF = """
struct io_uring { ...; };
struct iovec { void *iov_base; size_t iov_len; };
int io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags);
void io_uring_queue_exit(struct io_uring *ring);
int io_uring_submit(struct io_uring *ring);
int io_uring_register_eventfd(struct io_uring *ring, int fd);
int uscst_prep(struct io_uring *ring, int op, int fd, void *buf, unsigned len,
               unsigned long long off, int rw_flags, unsigned long long data,
               unsigned long long sync_off);
int uscst_prepv(struct io_uring *ring, int op, int fd, void *iov, unsigned nr,
                unsigned long long off, int rw_flags, unsigned long long data,
                unsigned long long sync_off);
unsigned uscst_reap(struct io_uring *ring, unsigned long long *data, int *res, unsigned max);
unsigned uscst_sq_ready(struct io_uring *ring);
unsigned uscst_sq_space(struct io_uring *ring);
"""

# Our own glue: one call per SQE and one per batch of CQEs, so Python pays
# one cffi crossing where liburing's inline API would need several.
_CSRC = r"""
#include <errno.h>
#include <liburing.h>

#define USCST_WRITE_PART (1ULL << 62)

/* A write linked to the next SQE; it posts a CQE only if it fails or is
   short (a failure cancels the rest of the chain). */
static void uscst_link(struct io_uring_sqe *sqe)
{
    sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
}

/* op 3: the write's SQE (already prepared) is linked to an fdatasync of
   the bytes from sync_off to the write's end (the op's whole range when
   the write repeats the rest of a short one); the write posts a CQE only
   if it fails or is short (its user_data then has USCST_WRITE_PART), the
   fdatasync always posts one. A chain of one. */
static void uscst_link_sync(struct io_uring *ring, struct io_uring_sqe *sqe, int fd,
                            unsigned long long end, unsigned long long sync_off,
                            unsigned long long data)
{
    struct io_uring_sqe *sync = io_uring_get_sqe(ring);

    uscst_link(sqe);
    sqe->user_data = data | USCST_WRITE_PART;
    io_uring_prep_fsync(sync, fd, IORING_FSYNC_DATASYNC);
    sync->off = sync_off;
    sync->len = (unsigned)(end - sync_off);
    sync->user_data = data;
}

int uscst_prep(struct io_uring *ring, int op, int fd, void *buf, unsigned len,
               unsigned long long off, int rw_flags, unsigned long long data,
               unsigned long long sync_off)
{
    struct io_uring_sqe *sqe;

    if (op == 3 && io_uring_sq_space_left(ring) < 2)
        return -EBUSY;
    sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    if (op == 0)
        io_uring_prep_read(sqe, fd, buf, len, off);
    else if (op == 2) {
        /* off and len: the range to sync (0, 0: the whole file) */
        io_uring_prep_fsync(sqe, fd, rw_flags);
        sqe->off = off;
        sqe->len = len;
    } else
        io_uring_prep_write(sqe, fd, buf, len, off);
    if (op != 2)
        sqe->rw_flags = rw_flags;
    sqe->user_data = data;
    if (op == 3)
        uscst_link_sync(ring, sqe, fd, off + len, sync_off, data);
    else if (op == 4)
        uscst_link(sqe);
    return 0;
}

int uscst_prepv(struct io_uring *ring, int op, int fd, void *iov, unsigned nr,
                unsigned long long off, int rw_flags, unsigned long long data,
                unsigned long long sync_off)
{
    struct io_uring_sqe *sqe;
    unsigned i, len = 0;

    if (op == 3 && io_uring_sq_space_left(ring) < 2)
        return -EBUSY;
    sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    if (op == 0)
        io_uring_prep_readv(sqe, fd, (const struct iovec *)iov, nr, off);
    else
        io_uring_prep_writev(sqe, fd, (const struct iovec *)iov, nr, off);
    sqe->rw_flags = rw_flags;
    sqe->user_data = data;
    if (op == 3) {
        for (i = 0; i < nr; i++)
            len += ((const struct iovec *)iov)[i].iov_len;
        uscst_link_sync(ring, sqe, fd, off + len, sync_off, data);
    } else if (op == 4)
        uscst_link(sqe);
    return 0;
}

unsigned uscst_reap(struct io_uring *ring, unsigned long long *data, int *res, unsigned max)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == max)
            break;
        data[n] = cqe->user_data;
        res[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(ring, n);
    return n;
}

unsigned uscst_sq_ready(struct io_uring *ring)
{
    return io_uring_sq_ready(ring);
}

unsigned uscst_sq_space(struct io_uring *ring)
{
    return io_uring_sq_space_left(ring);
}
"""

_lib_cache: "tuple[Any, Any] | None" = None


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "uscst")


def _load_lib() -> "tuple[Any, Any] | str":
    """(ffi, lib) of the compiled glue, building it into the cache on first
    use; or why not, as one line."""
    global _lib_cache
    if _lib_cache is not None:
        return _lib_cache
    try:
        import cffi            # function-local: only the io_uring path needs it
    except ImportError as e:
        return f"cffi is not installed ({e})"
    tag = hashlib.sha256((_CDEF + _CSRC + sys.version + cffi.__version__).encode()).hexdigest()
    modname = f"_uscst_uring_{tag[:16]}"
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    cache = _cache_dir()
    path = os.path.join(cache, modname + suffix)
    if not os.path.exists(path):
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        ffi.set_source(modname, _CSRC, libraries=["uring"])
        try:
            os.makedirs(cache, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                # the compiler's chatter goes to our stderr: keep it quiet
                built = _quiet(lambda: ffi.compile(tmpdir=tmp))
                os.replace(built, path)         # atomic against a concurrent build
        except Exception as e:                  # compiler, headers, library, disk
            return f"cannot build the liburing glue in {cache}: {str(e).splitlines()[0][:200]}"
    try:
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as e:
        return f"cannot load {path}: {e}"
    _lib_cache = (mod.ffi, mod.lib)
    return _lib_cache


def _quiet(fn: Any) -> Any:
    """Run fn with fds 1 and 2 sent to /dev/null (the C compiler writes there)."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        return fn()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _rest(iov: list) -> int:
    return len(iov[0]) if len(iov) == 1 else iov_len(iov)


class uring:
    """The process's ring: open() it, submit() jobs, flush() once per pass,
    reap() after the eventfd fires."""

    def __init__(self, ffi: Any, lib: Any, ring: Any, efd: int, setup: str) -> None:
        self.ffi = ffi
        self.lib = lib
        self.ring = ring
        self.efd = efd
        self.setup = setup                     # which of _SETUPS the kernel took
        self.queued = 0                        # SQEs written since the last flush
        self.queued_reads = 0                  # of which reads (submit_batch)
        self.submit_batch = URING_SUBMIT_BATCH  # 0: reads wait for the pass's flush too
        # user_data -> op in flight: (job, op, fd, iov, pos, flags, done,
        # pin); iov is what is left to transfer after `done` bytes, pin the
        # cffi view(s) keeping the buffers' memory for the kernel. A tuple,
        # not an object: the job is the one object an I/O allocates. A
        # chain is (members, _OP_CHAIN, fd, None, 0, 0, 0, None), each
        # member (job, iov, pos, flags, done, pin) in chain order.
        self.ops: dict[int, tuple] = {}
        # fd -> write-sync jobs (job, iov, pos, flags, done) waiting for
        # flush() to chain them; counted in per_file and queued already.
        self.pending: dict[int, list] = {}
        self.next_id = 1
        self.per_file: dict[int, int] = {}     # fd -> ops in flight
        self.backlog: dict[int, deque] = {}    # fd -> ops over URING_FILE_MAX
        self._data = ffi.new("unsigned long long[]", URING_REAP_MAX)
        self._res = ffi.new("int[]", URING_REAP_MAX)
        self.stats = {"submits": 0, "ops_submitted": 0, "completions": 0, "reap_passes": 0,
                      "max_per_pass": 0, "high_water": 0, "backlogged": 0, "resubmits": 0,
                      "sync_chains": 0, "chained_writes": 0, "rechained": 0}

    @classmethod
    def open(cls) -> "uring | str":
        """A ready ring, or a one-line reason why io_uring cannot be used."""
        if os.environ.get("USCST_IO_URING", "1") in ("0", "off", "no"):
            return "refused by USCST_IO_URING=0"
        lib = _load_lib()
        if isinstance(lib, str):
            return lib
        ffi, clib = lib
        ring = ffi.new("struct io_uring *")
        want = os.environ.get("USCST_IO_URING_SETUP", "")
        setups = [s for s in _SETUPS if s[0] == want] or list(_SETUPS)
        ret = -_errno.EINVAL
        setup = ""
        for name, flags in setups:
            setup = name
            ret = clib.io_uring_queue_init(URING_ENTRIES, ring, flags)
            if ret != -_errno.EINVAL:
                break
        if ret < 0:
            return f"io_uring_queue_init: {os.strerror(-ret)} ({_errno.errorcode.get(-ret, ret)})"
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError as e:
            clib.io_uring_queue_exit(ring)
            return f"eventfd: {e.strerror}"
        ret = clib.io_uring_register_eventfd(ring, efd)
        if ret < 0:
            clib.io_uring_queue_exit(ring)
            os.close(efd)
            return f"io_uring_register_eventfd: {os.strerror(-ret)}"
        return cls(ffi, clib, ring, efd, setup)

    def close(self) -> None:
        self.lib.io_uring_queue_exit(self.ring)
        os.close(self.efd)
        for ent in self.ops.values():
            if ent[1] == _OP_CHAIN:
                for m in ent[0]:
                    self._unpin(m[5])
            else:
                self._unpin(ent[7])
        self.ops.clear()
        self.pending.clear()

    # -- submission -----------------------------------------------------

    def submit(self, job: Any, op: int, fd: int, iov: list, pos: int, flags: int = 0,
               done: int = 0) -> None:
        """Queue job for the next flush(): a read or write of the buffers in
        iov at pos (OP_WRITE_SYNC: then an fdatasync of that range, shared
        with the file's other write-sync jobs of the pass), or an fsync
        (flags 1: data only). done: bytes of the job a short transfer
        already did (iov is the rest)."""
        per_file = self.per_file
        n = per_file.get(fd, 0)
        key = self.next_id
        if op <= OP_WRITE and len(iov) == 1 and n < URING_FILE_MAX:
            # The common case (vdisk's READs, write-back WRITEs): one buffer,
            # one glue call.
            if op:
                pin = self.ffi.from_buffer(iov[0])
            else:
                pin = self.ffi.from_buffer(iov[0], require_writable=True)
            ret = self.lib.uscst_prep(self.ring, op, fd, pin, len(pin), pos + done, flags, key,
                                      pos)
        elif n >= URING_FILE_MAX or op == OP_WRITE_SYNC:
            self._hold(job, op, fd, iov, pos, flags, done, n)
            return
        elif op == OP_FSYNC:
            pin = None
            ret = self.lib.uscst_prep(self.ring, OP_FSYNC, fd, self.ffi.NULL, 0, 0, flags, key, 0)
        else:
            vec, pin, _nbytes = self._pin_vec(iov, op == OP_READ)
            ret = self.lib.uscst_prepv(self.ring, op, fd, vec, len(iov), pos + done, flags, key,
                                       pos)
        if ret:                         # -EBUSY, the SQ full: submit what is there, then retry
            self._unpin(pin)
            self.flush()
            self.submit(job, op, fd, iov, pos, flags, done)
            return
        self.next_id = key + 1
        self.ops[key] = (job, op, fd, iov, pos, flags, done, pin)
        per_file[fd] = n + 1
        self.queued += 1
        if not op and self.submit_batch:        # a read (OP_READ is 0)
            self.queued_reads += 1
            if self.queued_reads >= self.submit_batch:
                self.flush()

    def _hold(self, job: Any, op: int, fd: int, iov: list, pos: int, flags: int, done: int,
              n: int) -> None:
        """submit() of a job that gets no SQE yet: into the file's backlog
        when it has n >= URING_FILE_MAX in flight, else (a write-sync job)
        among the file's pending ones for flush() to chain."""
        if n >= URING_FILE_MAX:
            self.stats["backlogged"] += 1
            self.backlog.setdefault(fd, deque()).append((job, op, fd, iov, pos, flags, done))
            return
        q = self.pending.get(fd)
        if q is None:
            self.pending[fd] = [(job, iov, pos, flags, done)]
        else:
            q.append((job, iov, pos, flags, done))
        self.per_file[fd] = n + 1
        self.queued += 1

    def _pin_vec(self, iov: list, writable: bool) -> tuple[Any, list, int]:
        """A struct iovec[] over the buffers of iov, the cffi views that keep
        them for the kernel (the vector first), and their total length."""
        ffi = self.ffi
        vec = ffi.new("struct iovec[]", len(iov))
        pin = [vec]
        total = 0
        for i, buf in enumerate(iov):
            b = ffi.from_buffer(buf, require_writable=writable)
            pin.append(b)
            vec[i].iov_base = b
            vec[i].iov_len = len(b)
            total += len(b)
        return vec, pin, total

    def flush(self) -> None:
        """Chain the pending write-sync jobs, then one io_uring_enter for
        every SQE queued since the last flush."""
        if not self.queued:
            return
        if self.pending:
            pending = self.pending
            self.pending = {}
            for fd, q in pending.items():
                if len(q) == 1:
                    self._chain(fd, q)
                    continue
                start = nbytes = 0
                for i, ent in enumerate(q):
                    nbytes += _rest(ent[1])
                    if i + 1 - start == URING_CHAIN_MAX or nbytes >= URING_CHAIN_BYTES:
                        self._chain(fd, q[start:i + 1])
                        start = i + 1
                        nbytes = 0
                if start < len(q):
                    self._chain(fd, q[start:])
        ret = self.lib.io_uring_submit(self.ring)
        st = self.stats
        st["submits"] += 1
        # Ops only end after a flush has submitted them, so the most in
        # flight is seen here.
        if len(self.ops) > st["high_water"]:
            st["high_water"] = len(self.ops)
        if ret > 0:
            st["ops_submitted"] += ret
            self.queued = self.lib.uscst_sq_ready(self.ring) + len(self.pending)
            self.queued_reads = 0
        # ret < 0 (EAGAIN, EBUSY: the kernel is short of resources): the
        # SQEs stay queued and the next pass submits them again.

    def _chain(self, fd: int, q: list) -> None:
        """Write the SQEs of write-sync jobs q of file fd: each write
        linked to the next, the last to one fdatasync of the range from the
        lowest start to the highest end (a job's whole range, also after a
        short write: `pos` is where it began). The link orders the sync
        after every write (decision 0066); one CQE ends the chain unless a
        write fails or comes up short."""
        ffi, lib, ring = self.ffi, self.lib, self.ring
        k = len(q)
        if lib.uscst_sq_space(ring) < k + 1:
            lib.io_uring_submit(ring)     # a chain must not straddle two submits
            self.stats["submits"] += 1
            if lib.uscst_sq_space(ring) < k + 1:
                self.pending.setdefault(fd, []).extend(q)    # the next flush's
                return
        key = self.next_id
        self.next_id = key + 1
        members = []
        lo = hi = -1
        for i, (job, iov, pos, flags, done) in enumerate(q):
            data = key | _WRITE_PART | (i << _MEMBER_SHIFT)
            if len(iov) == 1:
                pin: Any = ffi.from_buffer(iov[0])
                nb = len(pin)
                end = pos + done + nb
                if k == 1:          # write and sync in one glue call
                    lib.uscst_prep(ring, OP_WRITE_SYNC, fd, pin, nb, pos + done, flags, key, pos)
                else:
                    lib.uscst_prep(ring, _OP_LINKED_WRITE, fd, pin, nb, pos + done, flags, data,
                                   0)
            else:
                vec, pin, nb = self._pin_vec(iov, False)
                end = pos + done + nb
                lib.uscst_prepv(ring, OP_WRITE_SYNC if k == 1 else _OP_LINKED_WRITE, fd, vec,
                                len(iov), pos + done, flags, key if k == 1 else data, pos)
            members.append((job, iov, pos, flags, done, pin))
            if lo < 0 or pos < lo:
                lo = pos
            if end > hi:
                hi = end
        if k > 1:
            span = hi - lo if hi - lo <= 0xFFFFFFFF else 0     # 0: on to the end of the file
            lib.uscst_prep(ring, OP_FSYNC, fd, ffi.NULL, span, lo, 1, key, 0)
        self.queued += 1                    # the sync's SQE
        ops = self.ops
        ops[key] = (members, _OP_CHAIN, fd, None, 0, 0, 0, None)
        st = self.stats
        st["sync_chains"] += 1
        st["chained_writes"] += k

    # -- completion -----------------------------------------------------

    def eventfd_clear(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass

    def reap(self) -> list:
        """Up to URING_REAP_MAX finished jobs, each with .result set. Short
        transfers are resubmitted for the rest, not returned."""
        n = self.lib.uscst_reap(self.ring, self._data, self._res, URING_REAP_MAX)
        if not n:
            return []
        st = self.stats
        st["reap_passes"] += 1
        st["completions"] += n
        if n > st["max_per_pass"]:
            st["max_per_pass"] = n
        out: list = []
        data, res = self._data, self._res
        ops = self.ops
        per_file = self.per_file
        backlog = self.backlog          # the same dict throughout (_put_file edits it)
        for i in range(n):
            key = data[i]
            r = res[i]
            if key & _WRITE_PART:
                # A write of a chain failed or came up short: the kernel
                # cancels the rest of the chain without CQEs (the failed
                # write skipped success), so this ends the chain.
                ckey = key & _KEY_MASK
                ent = ops.get(ckey)
                if ent is None:
                    continue            # a cancelled write's CQE: its chain ended
                idx = (key >> _MEMBER_SHIFT) & 0xFF
                if r == _rest(ent[0][idx][1]):
                    continue            # posted anyway: the sync's CQE ends it
                del ops[ckey]
                self._chain_broken(ent, idx, r, out)
                continue
            # The op's cffi views go with it (refcounting releases them).
            ent = ops.pop(key, None)
            if ent is None:
                continue                # a cancelled sync's CQE, its op ended
            job, op, fd, iov, pos, flags, done, _pin = ent
            if op == _OP_CHAIN:         # every write and the sync done
                left = per_file[fd] - len(job)
                per_file[fd] = left
                if not left or backlog:
                    self._put_file(fd, left)
                for m in job:
                    mjob = m[0]
                    mjob.result = (m[4] + _rest(m[1])) if r == 0 else r
                    mjob.args = ()
                    out.append(mjob)
                continue
            left = per_file[fd] - 1
            per_file[fd] = left
            if not left or backlog:
                self._put_file(fd, left)
            if op != OP_FSYNC and r > 0:
                if r < (len(iov[0]) if len(iov) == 1 else iov_len(iov)):
                    # Short: repeat for the rest (a read that got 0 is at EOF).
                    self._resubmit(ent, r)
                    continue
                r += done
            elif op != OP_FSYNC and r == 0:
                r = done if (done or op == OP_READ) else -_errno.EIO
            elif r < 0 and done:
                r = done
            job.result = r
            job.args = ()
            out.append(job)
        return out

    def _chain_broken(self, ent: tuple, idx: int, r: int, out: list) -> None:
        """Write idx of chain ent failed (r < 0) or wrote only r bytes: the
        writes before it are unsynced, those after it never ran. Its job
        ends with the error, or repeats the rest; the others go out again
        in a new chain (rewriting the same bytes is harmless, and their
        buffers are still theirs), so each still completes only after a
        sync that followed its write."""
        members, _op, fd = ent[0], ent[1], ent[2]
        per_file = self.per_file
        per_file[fd] -= len(members)
        st = self.stats
        for i, (job, iov, pos, flags, done, pin) in enumerate(members):
            self._unpin(pin)
            if i != idx:
                st["rechained"] += 1
                self.submit(job, OP_WRITE_SYNC, fd, iov, pos, flags, done)
            elif r > 0:
                st["resubmits"] += 1
                self.submit(job, OP_WRITE_SYNC, fd, iov_advance(iov, r), pos, flags, done + r)
            else:
                job.result = r or -_errno.EIO
                job.args = ()
                out.append(job)
        self._put_file(fd, per_file[fd])

    def _resubmit(self, ent: tuple, r: int) -> None:
        """The op `ent` transferred r bytes short of its buffers: issue the rest."""
        job, op, fd, iov, pos, flags, done, pin = ent
        self._unpin(pin)
        self.stats["resubmits"] += 1
        self.submit(job, op, fd, iov_advance(iov, r), pos, flags, done + r)

    def _put_file(self, fd: int, left: int) -> None:
        """fd has `left` operations in flight after a completion: refill
        from its backlog, or forget it when nothing is left."""
        q = self.backlog.get(fd)
        if q and left < URING_FILE_REFILL:
            while q and self.per_file[fd] < URING_FILE_MAX:   # bounded: URING_FILE_MAX
                self.submit(*q.popleft())
        elif left == 0 and not q:
            del self.per_file[fd]
            self.backlog.pop(fd, None)

    def _unpin(self, pin: Any) -> None:
        """Release an op's cffi views before its buffers are used again."""
        if pin is None:
            return
        for b in pin if isinstance(pin, list) else (pin,):
            self.ffi.release(b)

    def show_stats(self) -> str:
        st = self.stats
        per_submit = st["ops_submitted"] / st["submits"] if st["submits"] else 0.0
        per_pass = st["completions"] / st["reap_passes"] if st["reap_passes"] else 0.0
        per_chain = st["chained_writes"] / st["sync_chains"] if st["sync_chains"] else 0.0
        return (f"submit_batch {self.submit_batch}\n"
                f"submits {st['submits']}\nops_submitted {st['ops_submitted']}\n"
                f"ops_per_submit {per_submit:.2f}\ncompletions {st['completions']}\n"
                f"completions_per_pass {per_pass:.2f}\nmax_completions_per_pass "
                f"{st['max_per_pass']}\nin_flight {len(self.ops)}\nhigh_water "
                f"{st['high_water']}\nbacklogged {st['backlogged']}\n"
                f"resubmits {st['resubmits']}\nsync_chains {st['sync_chains']}\n"
                f"chained_writes {st['chained_writes']}\nwrites_per_sync {per_chain:.2f}\n"
                f"rechained {st['rechained']}\n")

