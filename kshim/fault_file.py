"""File fault points: read, write, fsync and fallocate errors, short
transfers, delays.

Ours: the kernel has no such points (its nearest are the block layer's
fail_make_request and fail_io_timeout). The framework is
kshim/fault_inject.py; kshim/fs.py tests the points at the top of
vfs_readv, vfs_writev, vfs_fsync_range and vfs_fallocate, and at
submission on the asynchronous path (vfs_iocb_iter_read,
vfs_iocb_iter_write and the fdatasync DSYNC writes share).

Contexts: file_rw_fault and file_fault as the synchronous calls (a
`delay` sleeps: task context); file_aio_fault and file_flush_fault never
sleep, any context.

The faults (the `error` knob): EIO, ENOSPC, EDQUOT, short (half the
bytes), delay (delay-ms). read and write faults only hit I/O overlapping
[start, end) of files whose path contains `path`; an I/O that begins
before `start` first transfers the bytes before it (a short count, as a
read or write stopping at a bad sector returns). fsync faults fail the call
once (as Linux reports a writeback error once per file); on the shared
asynchronous fdatasync every write of the group gets the error.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim.fault_inject import (DECLARE_FAULT_ATTR, fault_attr, fault_call_later, fault_errno,
                                fault_rearm, should_fail)
from kshim.host import iov_head

_FILE_KNOBS = {"error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT", "short", "delay")),
               "start": (int, 0, None), "end": (int, -1, None), "path": (str, "", None),
               "delay-ms": (int, 100, None)}
fail_file_read = DECLARE_FAULT_ATTR("fail_file_read", _FILE_KNOBS)
fail_file_write = DECLARE_FAULT_ATTR("fail_file_write", _FILE_KNOBS)
fail_file_fsync = DECLARE_FAULT_ATTR("fail_file_fsync", {
    "error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT", "delay")), "path": (str, "", None),
    "delay-ms": (int, 100, None)})
fail_file_fallocate = DECLARE_FAULT_ATTR("fail_file_fallocate", {
    "error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT")),
    "mode": (str, "all", ("all", "punch-hole", "allocate")), "path": (str, "", None)})


def _file_match(attr: fault_attr, f: Any) -> bool:
    path = attr.params["path"]
    return not path or path in f.f_path


def _rw_fault_decide(attr: fault_attr, f: Any, iov: list, pos: int) -> tuple[str, int] | None:
    """Whether and how a read or write of iov at pos fails, one decision
    for the synchronous and the asynchronous path so both fail alike:
    None, ("delay", ms), ("short", bytes to transfer first) or ("error",
    -errno). With a byte range [start, end), only I/O that overlaps it
    fails, and an I/O that starts before the range is cut short at it."""
    if not _file_match(attr, f):
        return None
    p = attr.params
    want = sum(len(v) for v in iov)
    start, end = p["start"], p["end"]
    if end < 0:
        end = 1 << 63
    if pos + want <= start or pos >= end or not should_fail(attr, want):
        return None
    err = p["error"]
    if err == "delay":
        return "delay", p["delay-ms"]
    if start > pos or err == "short":
        n = start - pos if start > pos else max(1, want // 2)
        return ("short", n) if n < want else None
    return "error", -fault_errno(err)


def file_rw_fault(attr: fault_attr, f: Any, iov: list, pos: int,
                  primitive: Callable[[Any, list, int], int]) -> int | None:
    """The fault vfs_readv or vfs_writev is to show: its result, or None to
    go on. A short one transfers the bytes before the range first (as a
    real read or write stopping at a bad sector returns), so the next call,
    at the range, gets the error."""
    d = _rw_fault_decide(attr, f, iov, pos)
    if d is None:
        return None
    kind, v = d
    if kind == "delay":
        from kshim.timer import msleep   # timer imports this module for its hook
        msleep(v)
        return None
    if kind == "short":
        attr.armed = False
        try:
            return primitive(f, iov_head(iov, v), pos)
        finally:
            fault_rearm()
    return v


def file_aio_fault(attr: fault_attr, f: Any, iov: list, pos: int,
                   submit: Callable[[list], None], fail: Callable[[int], None]) -> bool:
    """The fault of an asynchronous read or write (vfs_iocb_iter_read or
    vfs_iocb_iter_write), decided at submission; never sleeps, any context.
    False: go on. True: the fault took the I/O over, and it still ends in
    ki_complete (softirq), as the caller expects: `submit(iov)` ran with
    the bytes before the range or half of them (a short count), or runs
    delay-ms later (delay); or `fail(-errno)` runs from a timer (an error
    where the I/O starts)."""
    d = _rw_fault_decide(attr, f, iov, pos)
    if d is None:
        return False
    kind, v = d
    if kind == "delay":
        fault_call_later(v, submit, iov)
    elif kind == "short":
        submit(iov_head(iov, v))
    else:
        fault_call_later(0, fail, v)
    return True


def file_flush_fault(f: Any, flush: Callable[[Any], None], fail: Callable[[int], None]) -> bool:
    """The fault of the fdatasync a DSYNC asynchronous write is linked to
    (kshim.fs's vfs_iocb_iter_write), decided when the write is submitted;
    never sleeps. False: go on. True: `fail(-errno)` runs from a timer (the
    write runs without its sync and fails with -errno), or `flush(None)`
    runs delay-ms later."""
    if not _file_match(fail_file_fsync, f) or not should_fail(fail_file_fsync, 1):
        return False
    p = fail_file_fsync.params
    if p["error"] == "delay":
        fault_call_later(p["delay-ms"], flush, None)
    else:
        fault_call_later(0, fail, -fault_errno(p["error"]))
    return True


def file_fault(attr: fault_attr, f: Any, mode: int = 0) -> int | None:
    """The fault vfs_fsync_range or vfs_fallocate is to show: -errno, or None."""
    if not _file_match(attr, f):
        return None
    p = attr.params
    if attr is fail_file_fallocate and p["mode"] != "all":
        from kshim.fs import FALLOC_FL_PUNCH_HOLE  # fs imports this module for its hooks
        if (p["mode"] == "punch-hole") != bool(mode & FALLOC_FL_PUNCH_HOLE):
            return None
    if not should_fail(attr, 1):
        return None
    if p["error"] == "delay":
        from kshim.timer import msleep   # timer imports this module for its hook
        msleep(p["delay-ms"])
        return None
    return -fault_errno(p["error"])
