"""Fault injection: make emulated primitives fail on purpose, reproducibly.

Twin of lib/fault-inject.c and include/linux/fault-inject.h, with the
point definitions of mm/failslab.c (failslab), mm/fail_page_alloc.c
(fail_page_alloc), kernel/fail_function.c (fail_function and
ALLOW_ERROR_INJECTION) and the per-task make-it-fail and fail-nth files of
fs/proc/base.c.

A point is a fault_attr; a primitive tests it at its top:

    if failslab.armed and should_failslab(c, gfp):
        return None

`armed` is one attribute load when the point is off. should_fail(attr,
size) applies the kernel's rules in the kernel's order: the task's fail-nth
countdown first (it ignores every other rule), then task-filter, space,
times, interval, probability, the stack filters; then it counts, prints
(verbose) and says yes.

Contexts: should_fail and the hook helpers from any context (softirq
included); the helpers that sleep (a blocking recv delayed by msleep) only
where the primitive itself may sleep. The debugfs attribute callbacks run in
task context like every sysfs store.

Differs from the kernel:
- randomness comes from a per-point prandom generator seeded from `seed`
  (drawn through kshim.random32 at boot, shown and settable in debugfs), so a
  run with the same seeds and the same order of calls fails the same calls;
- require-start/end and reject-start/end hold module or function names, not
  addresses: a stack frame is in the range if its module ("iscsi_scst",
  "iscsi_scst.nthread") or its function ("scst_rx_cmd") is named by either
  end, so the usual ranges (one module, one function) are start=end;
- failslab's ignore-gfp-wait defaults to N (the kernel's is Y), so the
  GFP_KERNEL allocations, nearly all of ours, can fail; cache-filter takes
  the cache names in `cache` instead of /sys/kernel/slab/<cache>/failslab;
- every point has `injected` (faults injected so far; write 0 to reset);
- points the kernel lacks: fail_mempool, fail_sock_recv, fail_sock_send,
  fail_file_{read,write,fsync,fallocate}, fail_queue_work, fail_timer,
  fail_wakeup, fail_trylock, fail_softirq, each with the knobs in POINTS;
  subsystems declare their own with DECLARE_FAULT_ATTR (scst_core's
  fail_scsi_cmd, iscsi_scst's fail_iscsi_pdu);
- seeds: a point whose seed the user did not set draws a new one through
  the engine's randomness when first armed after each boot (a sched boot
  hook), so a run with no fault armed draws nothing;
- make-it-fail and fail-nth live in debug/fault-inject/ (written as
  "PID-or-COMM VALUE"), not in /proc/PID; a COMM may be a pattern, which
  also marks kthreads started later;
- enumerate mode (debug/fault-inject/enumerate): "record" notes every
  injection site a scenario reaches (a site is a point plus the first caller
  outside kshim); writing a site's number then fails that site the first
  time it is reached, once, and nothing else. A driver runs the scenario
  once per site and checks how it ended (tools/fault_campaign.py).

Debug aids: verbose=1 prints one line per injected fault, verbose=2 also
the stack (through printk, at most 10 messages per 5 seconds per point).
"""
from __future__ import annotations

import fnmatch
import functools
from typing import Any, Callable, TypeVar

import attrs

from kshim import sched
from kshim.bug import dump_stack, getframe
from kshim.err import EAGAIN, ECONNRESET, EDQUOT, EINVAL, EIO, ENOMEM, ENOSPC, EPIPE, ETIMEDOUT
from kshim.gfp import __GFP_DIRECT_RECLAIM, __GFP_NOFAIL
from kshim.jiffies import HZ, jiffies, msecs_to_jiffies
from kshim.kobject import kobj_type, kobject, kobject_create_and_add, kobject_put
from kshim.printk import KERN_WARNING, printk
from kshim.random32 import (get_random_u64, prandom_seed_state, prandom_u32_state,
                            reciprocal_scale, rnd_state)
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, kernel_kobj, kobj_attribute, sysfs_create_file

_KSHIM_DIR = __file__.rpartition("/")[0] + "/"
_RATELIMIT_BURST = 10
_RATELIMIT_JIFFIES = 5 * HZ
ENUMERATE_MAX_SITES = 4096           # sites one enumeration records, at most
_RESETS = ("ECONNRESET", "EPIPE", "ETIMEDOUT")   # socket errors that end the connection
_ERRNOS = {"EIO": EIO, "ENOSPC": ENOSPC, "EDQUOT": EDQUOT, "ECONNRESET": ECONNRESET,
           "EPIPE": EPIPE, "ETIMEDOUT": ETIMEDOUT, "EAGAIN": EAGAIN, "ENOMEM": ENOMEM,
           "EINVAL": EINVAL}


@attrs.define(slots=True, eq=False)
class fault_attr:
    """struct fault_attr: one injection point and its rules."""
    name: str
    # set from debugfs, the command line or a test (task context); read anywhere
    probability: int = 0            # percent of eligible calls that fail
    interval: int = 1               # only every interval-th eligible call may fail
    times: int = 1                  # failures left; -1: no limit
    space: int = 0                  # bytes (size) that pass before failures start
    verbose: int = 2
    task_filter: bool = False       # only tasks with make-it-fail
    require_start: str = ""
    require_end: str = ""
    reject_start: str = ""
    reject_end: str = ""
    stacktrace_depth: int = 32
    seed: int = 0
    seed_fixed: bool = False        # seed written by the user: kept across boots
    seed_pending: bool = False      # draw a seed when the point is next armed
    params: dict = attrs.field(factory=dict)    # the point's own knobs (POINTS)
    # counters, one CPU: no lock
    count: int = 0                  # eligible calls seen (interval)
    injected: int = 0
    armed: bool = False             # should the primitive call should_fail at all?
    rnd: rnd_state = attrs.field(factory=rnd_state)
    rl_begin: int = 0               # verbose ratelimit window start (jiffies)
    rl_printed: int = 0


# name -> (type, default, choices or None) of the knobs a point adds
_SOCK_KNOBS = {"error": (str, "ECONNRESET", ("ECONNRESET", "EPIPE", "ETIMEDOUT", "EAGAIN",
                                              "short", "delay")),
               "delay-ms": (int, 100, None)}
_FILE_KNOBS = {"error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT", "short", "delay")),
               "start": (int, 0, None), "end": (int, -1, None), "path": (str, "", None),
               "delay-ms": (int, 100, None)}
POINTS: dict[str, dict[str, tuple]] = {
    "failslab": {"ignore-gfp-wait": (bool, False, None), "cache-filter": (bool, False, None),
                 "cache": (str, "", None)},
    "fail_page_alloc": {"ignore-gfp-wait": (bool, False, None), "min-order": (int, 0, None)},
    "fail_mempool": {},
    "fail_function": {},
    "fail_sock_recv": _SOCK_KNOBS,
    "fail_sock_send": _SOCK_KNOBS,
    "fail_file_read": _FILE_KNOBS,
    "fail_file_write": _FILE_KNOBS,
    "fail_file_fsync": {"error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT", "delay")),
                        "path": (str, "", None), "delay-ms": (int, 100, None)},
    "fail_file_fallocate": {"error": (str, "EIO", ("EIO", "ENOSPC", "EDQUOT")),
                            "mode": (str, "all", ("all", "punch-hole", "allocate")),
                            "path": (str, "", None)},
    "fail_queue_work": {"delay-ms": (int, 50, None)},
    "fail_timer": {"error": (str, "late", ("early", "late")), "delay-ms": (int, 50, None)},
    "fail_wakeup": {},
    "fail_trylock": {},
    "fail_softirq": {"delay-ms": (int, 10, None)},
}
# The points enumerate mode walks unless told otherwise: those whose fault
# is a failure the code must handle (not a delay).
ENUMERATE_POINTS = ("failslab", "fail_page_alloc", "fail_mempool", "fail_function",
                    "fail_sock_recv", "fail_sock_send", "fail_file_read", "fail_file_write",
                    "fail_file_fsync", "fail_file_fallocate")


def _new_point(name: str) -> fault_attr:
    a = fault_attr(name, params={k: d for k, (_t, d, _c) in POINTS[name].items()})
    a.seed = get_random_u64() & 0xFFFFFFFFFFFF
    prandom_seed_state(a.rnd, a.seed)
    return a


failslab = _new_point("failslab")
fail_page_alloc = _new_point("fail_page_alloc")
fail_mempool = _new_point("fail_mempool")
fail_function = _new_point("fail_function")
fail_sock_recv = _new_point("fail_sock_recv")
fail_sock_send = _new_point("fail_sock_send")
fail_file_read = _new_point("fail_file_read")
fail_file_write = _new_point("fail_file_write")
fail_file_fsync = _new_point("fail_file_fsync")
fail_file_fallocate = _new_point("fail_file_fallocate")
fail_queue_work = _new_point("fail_queue_work")
fail_timer = _new_point("fail_timer")
fail_wakeup = _new_point("fail_wakeup")
fail_trylock = _new_point("fail_trylock")
fail_softirq = _new_point("fail_softirq")
fault_points: dict[str, fault_attr] = {a.name: a for a in (
    failslab, fail_page_alloc, fail_mempool, fail_function, fail_sock_recv, fail_sock_send,
    fail_file_read, fail_file_write, fail_file_fsync, fail_file_fallocate, fail_queue_work,
    fail_timer, fail_wakeup, fail_trylock, fail_softirq)}


def _boot() -> None:
    """A boot (sched_init): points whose seed the user did not set draw a
    new one through the engine's randomness when they are next armed, so
    under the sim engine they follow the run's seed (and a run with no
    fault armed draws nothing); tasks of the earlier boot are forgotten."""
    for a in fault_points.values():
        a.seed_pending = not a.seed_fixed
        a.count = 0
    _state.make_it_fail = set()
    _state.fail_nth = {}
    _rearm()


sched.boot_hooks.append(_boot)


def DECLARE_FAULT_ATTR(name: str, knobs: dict[str, tuple]) -> fault_attr:
    """A point a subsystem declares for itself (the kernel's
    DECLARE_FAULT_ATTR plus fault_create_debugfs_attr): its knobs are
    name -> (type, default, choices or None); its debugfs directory appears
    with the others (at once if debugfs is already up)."""
    POINTS[name] = knobs
    a = fault_points[name] = _new_point(name)
    root = kernel_kobj.entries.get("debug")
    if root is not None and "fault-inject" in root.entries:
        _point_dir(root, name)
    return a


# -- per task: make-it-fail and fail-nth ---------------------------------------

@attrs.define(slots=True, eq=False)
class _enum_site:
    index: int
    point: str
    where: str
    hits: int = 0
    injected: int = 0


@attrs.define(slots=True, eq=False)
class _fault_state:
    """Task and enumerate state, all touched on the one CPU: no lock."""
    # tasks leave both when they exit (_forget, a task exit hook)
    make_it_fail: set = attrs.field(factory=set)
    make_it_fail_comms: list = attrs.field(factory=list)     # fnmatch patterns
    fail_nth: dict = attrs.field(factory=dict)    # task -> countdown
    enum_mode: str = "off"                # off | record | target
    enum_points: tuple = ENUMERATE_POINTS
    enum_sites: dict = attrs.field(factory=dict)   # key -> _enum_site
    enum_target: str | None = None
    enum_done: bool = False


_state = _fault_state()


def _rearm() -> None:
    """Recompute every point's `armed` after a rule changed."""
    nth = any(n > 0 for n in _state.fail_nth.values())
    for a in fault_points.values():
        a.armed = (nth or (a.probability > 0 and a.times != 0)
                   or (_state.enum_mode != "off" and a.name in _state.enum_points))
        if a.armed and a.seed_pending:
            a.seed_pending = False
            a.seed = get_random_u64() & 0xFFFFFFFFFFFF
            prandom_seed_state(a.rnd, a.seed)


def _forget(task: sched.task_struct) -> None:
    """A task exits: it leaves make-it-fail and fail-nth."""
    _state.make_it_fail.discard(task)
    if _state.fail_nth.pop(task, None) is not None:
        _rearm()


def _track(task: sched.task_struct) -> None:
    if _forget not in task.exit_hooks:
        task.exit_hooks.append(_forget)


def set_make_it_fail(task: sched.task_struct, on: bool) -> None:
    """/proc/PID/make-it-fail: mark a task for the points with task-filter."""
    if on:
        _track(task)
        _state.make_it_fail.add(task)
    else:
        _state.make_it_fail.discard(task)


def set_fail_nth(task: sched.task_struct, nth: int) -> None:
    """/proc/PID/task/TID/fail-nth: the task's nth call (1-based) of any
    point fails; 0 cancels."""
    if nth > 0:
        _track(task)
        _state.fail_nth[task] = nth
    else:
        _state.fail_nth.pop(task, None)
    _rearm()


def get_fail_nth(task: sched.task_struct) -> int:
    """What is left of the countdown (0: none pending, or it fired)."""
    return _state.fail_nth.get(task, 0)


def _task_marked(t: sched.task_struct) -> bool:
    if t in _state.make_it_fail:
        return True
    comm = t.comm
    if any(fnmatch.fnmatchcase(comm, p) for p in _state.make_it_fail_comms):
        set_make_it_fail(t, True)
        return True
    return False


# -- should_fail -----------------------------------------------------------------

def _frame_names(f: Any) -> tuple[str, str]:
    return f.f_globals.get("__name__", "?"), f.f_code.co_name


def _in_range(mod: str, fn: str, start: str, end: str) -> bool:
    for name in (start, end):
        if name and (fn == name or mod == name or mod.startswith(name + ".")):
            return True
    return False


def _fail_stacktrace(attr: fault_attr) -> bool:
    """The kernel's fail_stacktrace: no frame in the reject range, and (if
    a require range is set) some frame in it, within stacktrace-depth."""
    found = not (attr.require_start or attr.require_end)
    f = getframe(2)            # should_fail's caller, upwards
    depth = attr.stacktrace_depth
    while f is not None and depth > 0:
        mod, fn = _frame_names(f)
        if _in_range(mod, fn, attr.reject_start, attr.reject_end):
            return False
        if not found and _in_range(mod, fn, attr.require_start, attr.require_end):
            found = True
        f = f.f_back
        depth -= 1
    return found


def _caller_site() -> str:
    """'module:line function' of the first caller outside kshim."""
    f = getframe(3)
    while f is not None and f.f_code.co_filename.startswith(_KSHIM_DIR):
        f = f.f_back
    if f is None:
        return "?"
    mod, fn = _frame_names(f)
    return f"{mod}:{f.f_lineno} {fn}"


def _enumerate(attr: fault_attr, label: str) -> bool:
    st = _state
    if attr.name not in st.enum_points:
        return False
    key = f"{label} {_caller_site()}"
    site = st.enum_sites.get(key)
    if site is None:
        if len(st.enum_sites) >= ENUMERATE_MAX_SITES:
            return False
        site = st.enum_sites[key] = _enum_site(len(st.enum_sites), label, key.split(" ", 1)[1])
    site.hits += 1
    if st.enum_mode == "target" and key == st.enum_target and not st.enum_done:
        st.enum_done = True
        site.injected += 1
        return True
    return False


def _report(attr: fault_attr, why: str) -> None:
    if not attr.verbose:
        return
    now = jiffies()
    if now - attr.rl_begin > _RATELIMIT_JIFFIES:
        attr.rl_begin = now
        attr.rl_printed = 0
    if attr.rl_printed >= _RATELIMIT_BURST:
        return
    attr.rl_printed += 1
    printk(KERN_WARNING + f"FAULT_INJECTION: forcing a failure. name {attr.name}{why}, "
           f"interval {attr.interval}, probability {attr.probability}, space {attr.space}, "
           f"times {attr.times}, task {sched.current().comm}")
    if attr.verbose > 1:
        dump_stack(3)


def should_fail(attr: fault_attr, size: int, label: str = "") -> bool:
    """Should this call of the point fail? Counts and reports a yes.
    `label` names the site for enumerate mode (default: the point)."""
    if not attr.armed:
        return False
    cur = sched.current()
    nth = _state.fail_nth.get(cur) if _state.fail_nth else None
    if nth:
        nth -= 1
        _state.fail_nth[cur] = nth
        if nth:
            return False
        _rearm()
        attr.injected += 1
        _report(attr, " (fail-nth)")
        return True
    if _state.enum_mode != "off":
        if _enumerate(attr, label or attr.name):
            attr.injected += 1
            _report(attr, " (enumerate)")
            return True
        return False
    if attr.task_filter and (not sched.in_task() or not _task_marked(cur)):
        return False
    if attr.space > size:
        attr.space -= size
        return False
    if attr.times == 0:
        return False
    if attr.interval > 1:
        attr.count += 1
        if attr.count % attr.interval:
            return False
    if attr.probability <= reciprocal_scale(prandom_u32_state(attr.rnd), 100):
        return False
    if (attr.require_start or attr.require_end or attr.reject_start or attr.reject_end) \
            and not _fail_stacktrace(attr):
        return False
    if attr.times > 0:
        attr.times -= 1
        if attr.times == 0:
            _rearm()
    attr.injected += 1
    _report(attr, "")
    return True


# -- memory: mm/failslab.c, mm/fail_page_alloc.c, mempool -----------------------

def should_failslab(cache: Any, gfp: int) -> bool:
    """failslab for one allocation from `cache` (a kshim.slab.kmem_cache)."""
    p = failslab.params
    if gfp & __GFP_NOFAIL:
        return False
    if p["ignore-gfp-wait"] and gfp & __GFP_DIRECT_RECLAIM:
        return False
    if p["cache-filter"] and cache.name not in p["cache"].split():
        return False
    return should_fail(failslab, cache.size or 1, f"failslab:{cache.name}")


def should_fail_alloc_page(gfp: int, order: int) -> bool:
    p = fail_page_alloc.params
    if gfp & __GFP_NOFAIL or order < p["min-order"]:
        return False
    if p["ignore-gfp-wait"] and gfp & __GFP_DIRECT_RECLAIM:
        return False
    return should_fail(fail_page_alloc, 4096 << order)


def should_fail_mempool(pool: Any, gfp: int) -> bool:
    """Act as if the pool's allocator and reserve were both empty. A
    sleeping allocation is only failed when an element is out (it then
    waits for its return); otherwise it would wait forever."""
    if gfp & __GFP_DIRECT_RECLAIM and not pool.out:
        return False
    return should_fail(fail_mempool, 1)


# -- sockets -------------------------------------------------------------------------

def _later(ms: int, fn: Callable[[Any], None], arg: Any) -> None:
    """Call fn(arg) in softirq context after ms milliseconds (a timer that
    fail_timer leaves alone)."""
    from kshim.timer import mod_timer, timer_list   # timer imports this module for its hook
    t = timer_list(lambda _t: fn(arg), name=f"fault delay {getattr(fn, '__name__', fn)}")
    armed, fail_timer.armed = fail_timer.armed, False
    try:
        mod_timer(t, jiffies() + msecs_to_jiffies(ms))
    finally:
        fail_timer.armed = armed


def _sock_reset(sk: Any, err: int) -> int:
    from kshim.net import TCP_CLOSE, _set_state     # net imports this module for its hooks
    sk.sk_err = err
    _set_state(sk, TCP_CLOSE)
    return -err


def sock_fault(attr: fault_attr, sock_: Any, vec: list, flags: int,
               primitive: Callable[..., int], *args: Any) -> int | None:
    """The fault a socket primitive (kernel_sendmsg or kernel_recvmsg) is to
    show for this call: its result, or None to go on normally. `primitive`
    is the caller, called again (with this point disarmed) for a short
    transfer; args are its arguments after vec."""
    from kshim.net import MSG_DONTWAIT, O_NONBLOCK  # net imports this module for its hooks
    want = sum(len(v) for v in vec)
    err = attr.params["error"]
    if attr.space and err in _RESETS and not (_state.fail_nth or _state.enum_mode != "off"):
        return _sock_reset_after(attr, sock_, vec, want, primitive, args)
    if not should_fail(attr, want):
        return None
    sk = sock_.sk
    nonblock = bool(flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK)
    recv = attr is fail_sock_recv
    ready = sk.sk_data_ready if recv else sk.sk_write_space
    if err == "short":
        if want < 2:
            return None
        cut = _cut(vec, max(1, want // 2))
        attr.armed = False
        try:
            n = primitive(sock_, cut, *args)
        finally:
            _rearm()
        if n > 0 and not recv and nonblock:
            _later(0, ready, sk)          # as when a short send arms sk_write_space
        return n
    if err in ("EAGAIN", "delay"):
        if not nonblock:
            if err == "delay":
                from kshim.timer import msleep   # timer imports this module for its hook
                msleep(attr.params["delay-ms"])
            return None
        _later(attr.params["delay-ms"] if err == "delay" else 0, ready, sk)
        return -EAGAIN
    return _sock_reset(sk, _ERRNOS[err])


def _sock_reset_after(attr: fault_attr, sock_: Any, vec: list, want: int,
                      primitive: Callable[..., int], args: tuple) -> int:
    """A reset after `space` bytes: count the bytes really moved; the call
    that reaches the budget moves exactly the rest of it (a short transfer
    if it asked for more) and, if the point's rules then say fail, resets
    the socket after it: the call returns its count, the next one the
    error (kshim.net's sock_error)."""
    attr.armed = False
    try:
        n = primitive(sock_, _cut(vec, attr.space) if want > attr.space else vec, *args)
    finally:
        _rearm()
    if n > 0:
        attr.space -= n
        if attr.space == 0 and should_fail(attr, 0):
            sock_.sk.sk_err = _ERRNOS[attr.params["error"]]
    return n


def _cut(vec: list, n: int) -> list:
    """The first n bytes of an iovec list, as memoryviews."""
    out = []
    for v in vec:
        if n <= 0:
            break
        mv = memoryview(v)
        out.append(mv[:n])
        n -= len(mv)
    return out


# -- files ---------------------------------------------------------------------------

def _file_match(attr: fault_attr, f: Any) -> bool:
    path = attr.params["path"]
    return not path or path in f.f_path


def file_rw_fault(attr: fault_attr, f: Any, iov: list, pos: int,
                  primitive: Callable[[Any, list, int], int]) -> int | None:
    """The fault vfs_readv or vfs_writev is to show: its result, or None to
    go on. With a byte range [start, end), only I/O that overlaps it fails,
    and an I/O that starts before the range transfers the bytes before it
    first (a short count, as a real read or write stopping at a bad sector
    returns), so the next call, at the range, gets the error."""
    if not _file_match(attr, f):
        return None
    p = attr.params
    want = sum(len(v) for v in iov)
    start, end = p["start"], p["end"]
    if end < 0:
        end = 1 << 63
    if pos + want <= start or pos >= end:
        return None
    if not should_fail(attr, want):
        return None
    err = p["error"]
    if err == "delay":
        from kshim.timer import msleep   # timer imports this module for its hook
        msleep(p["delay-ms"])
        return None
    if start > pos or err == "short":
        n = start - pos if start > pos else max(1, want // 2)
        if n >= want:
            return None
        attr.armed = False
        try:
            return primitive(f, _cut(iov, n), pos)
        finally:
            _rearm()
    return -_ERRNOS[err]


def file_aio_fault(attr: fault_attr, f: Any, iov: list, pos: int,
                   submit: Callable[[list], None], fail: Callable[[int], None]) -> bool:
    """The fault of an asynchronous read or write (vfs_iocb_iter_read or
    vfs_iocb_iter_write), decided at submission; never sleeps, any context.
    False: go on. True: the fault took the I/O over, and it still ends in
    ki_complete (softirq), as the caller expects: `submit(iov)` ran with
    the bytes before the range or half of them (a short count), or runs
    delay-ms later (delay); or `fail(-errno)` runs from a timer (an error
    where the I/O starts)."""
    if not _file_match(attr, f):
        return False
    p = attr.params
    want = sum(len(v) for v in iov)
    start, end = p["start"], p["end"]
    if end < 0:
        end = 1 << 63
    if pos + want <= start or pos >= end or not should_fail(attr, want):
        return False
    err = p["error"]
    if err == "delay":
        _later(p["delay-ms"], submit, iov)
        return True
    if start > pos or err == "short":
        n = start - pos if start > pos else max(1, want // 2)
        if n >= want:
            return False
        submit(_cut(iov, n))
        return True
    _later(0, fail, -_ERRNOS[err])
    return True


def file_flush_fault(f: Any, flush: Callable[[Any], None], fail: Callable[[int], None]) -> bool:
    """The fault of the fdatasync that DSYNC asynchronous writes share
    (kshim.fs's group flush), decided when it starts; never sleeps. False:
    go on. True: `fail(-errno)` runs from a timer (every write of the group
    fails), or `flush(None)` runs delay-ms later."""
    if not _file_match(fail_file_fsync, f) or not should_fail(fail_file_fsync, 1):
        return False
    p = fail_file_fsync.params
    if p["error"] == "delay":
        _later(p["delay-ms"], flush, None)
    else:
        _later(0, fail, -_ERRNOS[p["error"]])
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
    return -_ERRNOS[p["error"]]


# -- scheduling --------------------------------------------------------------------

def timer_fault(expires: int) -> int:
    """A timer armed for `expires` fires delay-ms early or late."""
    if not should_fail(fail_timer, 1):
        return expires
    d = msecs_to_jiffies(fail_timer.params["delay-ms"])
    if fail_timer.params["error"] == "early":
        return max(jiffies(), expires - d)
    return expires + d


def work_fault(wq: Any, work: Any, queue: Callable[[Any, Any], bool]) -> bool:
    """Delay a queue_work by delay-ms: True if it was put off. The item is
    pending meanwhile; a cancel in the delay drops it, as it would a queued
    one. `queue` (queue_work) runs later with the point disarmed."""
    if not should_fail(fail_queue_work, 1):
        return False
    work.pending = True
    work.wq = wq

    def late(_arg: Any) -> None:
        if not work.pending:
            return                          # cancelled during the delay
        work.pending = False
        fail_queue_work.armed = False
        try:
            queue(wq, work)
        finally:
            _rearm()
    _later(fail_queue_work.params["delay-ms"], late, None)
    return True


def softirq_fault(fn: Callable[[Any], None], arg: Any) -> bool:
    """Delay a raised softirq fn(arg) by delay-ms: True if it was put off
    (it then runs from a timer, in softirq context as before)."""
    if not should_fail(fail_softirq, 1):
        return False
    _later(fail_softirq.params["delay-ms"], fn, arg)
    return True


def trylock_fault() -> bool:
    """Should this mutex_trylock/spin_trylock fail although the lock is free?"""
    return should_fail(fail_trylock, 1)


def wakeup_fault(task: sched.task_struct) -> None:
    """Maybe wake a task about to sleep, with nothing for it (a spurious
    wake-up): its wait loop must test its condition again."""
    if should_fail(fail_wakeup, 1):
        from kshim.softirq import raise_softirq   # softirq imports this module for its hook
        raise_softirq(sched.wake_up_process, task)


# -- fail_function: ALLOW_ERROR_INJECTION -----------------------------------------

EI_ETYPE_NULL = "NULL"
EI_ETYPE_ERRNO = "ERRNO"
EI_ETYPE_ERRNO_NULL = "ERRNO_NULL"
EI_ETYPE_TRUE = "TRUE"


@attrs.define(slots=True, eq=False)
class fei_attr:
    """One injectable function: kernel/fail_function.c's fei_attr."""
    name: str
    etype: str
    retval: Any
    inject: bool = False            # listed in fail_function/inject


error_injection_list: dict[str, fei_attr] = {}
F = TypeVar("F", bound=Callable[..., Any])


def _default_retval(etype: str) -> Any:
    return {EI_ETYPE_NULL: None, EI_ETYPE_ERRNO: -ENOMEM, EI_ETYPE_ERRNO_NULL: -ENOMEM,
            EI_ETYPE_TRUE: 1}[etype]


def ALLOW_ERROR_INJECTION(etype: str) -> Callable[[F], F]:
    """Mark a kernel-layer function injectable: once named in
    debug/fail_function/inject, a call may return `retval` instead of
    running (the kernel overrides the function's return the same way).
    Enumerate mode walks every injectable function, listed or not."""
    def mark(fn: F) -> F:
        ent = error_injection_list[fn.__name__] = fei_attr(fn.__name__, etype,
                                                           _default_retval(etype))
        label = f"fail_function:{fn.__name__}"

        @functools.wraps(fn)
        def injectable(*args: Any, **kwargs: Any) -> Any:
            if fail_function.armed and (ent.inject or _state.enum_mode != "off") \
                    and should_fail(fail_function, 1, label):
                return ent.retval
            return fn(*args, **kwargs)
        return injectable  # type: ignore[return-value]
    return mark


def fei_inject(name: str, on: bool = True) -> int:
    """Add (or remove) a function to the injected set: 0 or -EINVAL."""
    ent = error_injection_list.get(name)
    if ent is None:
        return -EINVAL
    ent.inject = on
    return 0


# -- setting attributes by name (debugfs, --fault, USCST_FAULTS) -------------------

_COMMON = {"probability": int, "interval": int, "times": int, "space": int, "verbose": int,
           "task-filter": bool, "require-start": str, "require-end": str,
           "reject-start": str, "reject-end": str, "stacktrace-depth": int, "seed": int,
           "injected": int}


def _parse(kind: type, text: str) -> Any:
    text = text.strip()
    if kind is bool:
        if text not in ("Y", "N", "y", "n", "1", "0"):
            raise ValueError(f"expected Y or N, got {text!r}")
        return text in ("Y", "y", "1")
    if kind is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    return text


def fault_attr_set(point: str, name: str, value: str) -> None:
    """Set one attribute of a point by its debugfs name; ValueError with a
    one-line reason if the point, the name or the value is wrong."""
    attr = fault_points.get(point)
    if attr is None:
        raise ValueError(f"unknown fault point {point!r} (known: {', '.join(fault_points)})")
    name = name.strip().replace("_", "-")
    if name in _COMMON:
        v = _parse(_COMMON[name], value)
        if name == "probability" and not 0 <= v <= 100:
            raise ValueError(f"{point}: probability must be 0..100, got {v}")
        if name in ("interval", "stacktrace-depth") and v < 1:
            raise ValueError(f"{point}: {name} must be at least 1, got {v}")
        if name == "times" and v < -1:
            raise ValueError(f"{point}: times must be -1 or more, got {v}")
        if name in ("space", "injected") and v < 0:
            raise ValueError(f"{point}: {name} must not be negative, got {v}")
        if name == "verbose" and v not in (0, 1, 2):
            raise ValueError(f"{point}: verbose must be 0, 1 or 2, got {v}")
        setattr(attr, name.replace("-", "_"), v)
        if name == "seed":
            prandom_seed_state(attr.rnd, v)
            attr.seed_fixed = True
            attr.seed_pending = False
        if name in ("seed", "interval"):
            attr.count = 0              # the interval counts from now
        _rearm()
        return
    if point == "fail_function" and name == "inject":
        if fei_inject(value.strip().lstrip("!"), not value.strip().startswith("!")) < 0:
            raise ValueError(f"fail_function: {value.strip()!r} is not an injectable function "
                             f"(known: {', '.join(error_injection_list)})")
        return
    knob = POINTS[point].get(name)
    if knob is None:
        known = ", ".join(list(_COMMON) + list(POINTS[point]))
        raise ValueError(f"{point} has no attribute {name!r} (known: {known})")
    kind, _default, choices = knob
    v = _parse(kind, value)
    if choices is not None and v not in choices:
        raise ValueError(f"{point}: {name} must be one of {', '.join(choices)}, got {v!r}")
    if kind is int and name != "end" and v < 0:
        raise ValueError(f"{point}: {name} must not be negative, got {v}")
    attr.params[name] = v


def fault_attr_get(point: str, name: str) -> str:
    """The text of one attribute, as its debugfs file shows it."""
    attr = fault_points[point]
    v = (getattr(attr, name.replace("-", "_")) if name in _COMMON else attr.params[name])
    return ("Y" if v else "N") if isinstance(v, bool) else str(v)


def parse_fault_spec(spec: str) -> list[tuple[str, str, str]]:
    """'POINT:attr=value,attr=value' -> [(point, attr, value), ...], checked
    against the known points and attributes (values are checked on apply).
    ValueError with a one-line reason."""
    point, sep, rest = spec.strip().partition(":")
    if not sep or not point:
        raise ValueError(f"fault spec {spec!r}: expected POINT:attr=value[,attr=value...]")
    if point not in fault_points:
        raise ValueError(f"fault spec {spec!r}: unknown point {point!r} "
                         f"(known: {', '.join(fault_points)})")
    out = []
    for item in rest.split(","):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"fault spec {spec!r}: {item!r} is not attr=value")
        out.append((point, name.strip(), value.strip()))
    return out


def apply_fault_specs(specs: list[str], dry_run: bool = False) -> None:
    """Apply --fault / USCST_FAULTS specs in order, all or nothing:
    ValueError (one line) and nothing changed if one is wrong. dry_run:
    only check them."""
    items = [it for s in specs for it in parse_fault_spec(s)]
    saved = {n: attrs.evolve(a, params=dict(a.params)) for n, a in fault_points.items()}
    try:
        for point, name, value in items:
            fault_attr_set(point, name, value)
        if dry_run:
            raise ValueError("")
    except ValueError as e:
        for n, a in saved.items():
            p = fault_points[n]
            for f in ("probability", "interval", "times", "space", "verbose", "task_filter",
                      "require_start", "require_end", "reject_start", "reject_end",
                      "stacktrace_depth", "seed", "seed_fixed", "seed_pending", "params"):
                setattr(p, f, getattr(a, f))
            prandom_seed_state(p.rnd, p.seed)
        _rearm()
        if str(e):
            raise


def split_env_specs(text: str) -> list[str]:
    """USCST_FAULTS: specs separated by ';' or whitespace."""
    return [s for part in text.split(";") for s in part.split() if s]


def fault_reset() -> None:
    """Every point back to its defaults (off); tasks and enumerate cleared."""
    for name, a in fault_points.items():
        fresh = _new_point(name)
        fresh.seed = a.seed
        prandom_seed_state(fresh.rnd, fresh.seed)
        for f in attrs.fields(fault_attr):
            setattr(a, f.name, getattr(fresh, f.name))
    _state.make_it_fail = set()
    _state.make_it_fail_comms.clear()
    _state.fail_nth = {}
    enumerate_stop()
    for ent in error_injection_list.values():
        ent.inject = False
        ent.retval = _default_retval(ent.etype)


# -- enumerate mode ---------------------------------------------------------------

def enumerate_record(points: tuple = ENUMERATE_POINTS) -> None:
    """Start recording the sites a scenario reaches (nothing fails)."""
    _state.enum_mode = "record"
    _state.enum_points = points
    _state.enum_sites = {}
    _state.enum_target = None
    _state.enum_done = False
    _rearm()


def enumerate_target(index: int) -> int:
    """Fail site number `index` the next time it is reached, once: 0 or
    -EINVAL. Sites found meanwhile are added to the list."""
    for key, s in _state.enum_sites.items():
        if s.index == index:
            _state.enum_mode = "target"
            _state.enum_target = key
            _state.enum_done = False
            _rearm()
            return 0
    return -EINVAL


def enumerate_stop() -> None:
    _state.enum_mode = "off"
    _state.enum_target = None
    _rearm()


def enumerate_sites() -> list[_enum_site]:
    return sorted(_state.enum_sites.values(), key=lambda s: s.index)


# -- debugfs: /sys/kernel/debug/<point>/<attribute> -------------------------------

def _show(kobj: kobject, a: kobj_attribute) -> str:
    return fault_attr_get(kobj.name, a.private) + "\n"


def _store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    try:
        fault_attr_set(kobj.name, a.private, buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: {e}")
        return -EINVAL
    return len(buf)


def _task_by_key(key: str) -> list[sched.task_struct]:
    if key.isdigit():
        t = sched.find_task_by_pid(int(key))
        return [t] if t is not None else []
    return [t for t in list(sched.all_tasks.values()) if fnmatch.fnmatchcase(t.comm, key)]


def _two_words(buf: str) -> tuple[str, int]:
    parts = buf.split()
    if len(parts) != 2:
        raise ValueError("expected 'PID-or-COMM VALUE'")
    return parts[0], _parse(int, parts[1])


def _store_make_it_fail(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    try:
        key, on = _two_words(buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: make-it-fail: {e}")
        return -EINVAL
    if not key.isdigit():
        comms = _state.make_it_fail_comms
        if on and key not in comms:
            comms.append(key)
        elif not on and key in comms:
            comms.remove(key)
    for t in _task_by_key(key):
        set_make_it_fail(t, bool(on))
    return len(buf)


def _show_make_it_fail(_k: kobject, _a: kobj_attribute) -> str:
    names = [f"{t.pid} {t.comm}" for t in list(_state.make_it_fail)]
    return "".join(f"{n}\n" for n in sorted(names + _state.make_it_fail_comms))


def _store_fail_nth(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    try:
        key, nth = _two_words(buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: fail-nth: {e}")
        return -EINVAL
    tasks = _task_by_key(key)
    if not tasks or nth < 0:
        return -EINVAL
    for t in tasks:
        set_fail_nth(t, nth)
    return len(buf)


def _show_fail_nth(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{t.pid} {t.comm} {n}\n" for t, n in list(_state.fail_nth.items()))


def _store_enumerate(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    words = buf.split()
    if words[:1] == ["record"]:
        bad = [p for p in words[1:] if p not in fault_points]
        if bad:
            return -EINVAL
        enumerate_record(tuple(words[1:]) or ENUMERATE_POINTS)
    elif words == ["off"]:
        enumerate_stop()
    elif len(words) == 1 and words[0].isdigit():
        if enumerate_target(int(words[0])) < 0:
            return -EINVAL
    else:
        return -EINVAL
    return len(buf)


def _show_enumerate(_k: kobject, _a: kobj_attribute) -> str:
    st = _state
    if st.enum_mode == "target":
        s = st.enum_sites[st.enum_target]
        return f"target {s.index} {'injected' if st.enum_done else 'pending'}\n"
    return st.enum_mode + "\n"


def _show_sites(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{s.index} hits={s.hits} injected={s.injected} {s.point} {s.where}\n"
                   for s in enumerate_sites())


def _show_fei_inject(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{e.name}\n" for e in error_injection_list.values() if e.inject)


def _store_fei_inject(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    """kernel/fail_function.c's inject file: NAME adds, !NAME removes, an
    empty write clears."""
    name = buf.strip()
    if not name:
        for e in error_injection_list.values():
            e.inject = False
        return len(buf)
    if fei_inject(name.lstrip("!"), not name.startswith("!")) < 0:
        return -EINVAL
    return len(buf)


def _show_fei_list(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{e.name}\t{e.etype}\t{e.retval}\n" for e in error_injection_list.values())


def _show_retval(kobj: kobject, _a: kobj_attribute) -> str:
    return f"{error_injection_list[kobj.name].retval}\n"


def _store_retval(kobj: kobject, _a: kobj_attribute, buf: str) -> int:
    ent = error_injection_list[kobj.name]
    text = buf.strip()
    try:
        v: Any = None if text in ("NULL", "None") else int(text, 0)
    except ValueError:
        return -EINVAL
    if ent.etype == EI_ETYPE_ERRNO and (v is None or not -4095 <= v < 0):
        return -EINVAL
    if ent.etype == EI_ETYPE_NULL and v is not None:
        return -EINVAL
    ent.retval = v
    return len(buf)


def _fei_refresh(kobj: kobject) -> None:
    """fail_function/<func>/ exists while func is in inject, as the kernel
    creates it when the name is written to inject."""
    for name, ent in error_injection_list.items():
        if ent.inject and name not in kobj.entries:
            d = kobject_create_and_add(name, kobj)
            if d is not None:
                sysfs_create_file(d, __ATTR("retval", S_IRUGO | S_IWUSR, _show_retval,
                                            _store_retval))
        elif not ent.inject and isinstance(kobj.entries.get(name), kobject):
            kobject_put(kobj.entries[name])


def _point_dir(root: kobject, point: str) -> None:
    rw = S_IRUGO | S_IWUSR
    d = kobject_create_and_add(point, root,
                               kobj_type(refresh=_fei_refresh) if point == "fail_function"
                               else None)
    if d is None:
        return
    for name in list(_COMMON) + list(POINTS[point]):
        sysfs_create_file(d, __ATTR(name, rw, _show, _store, private=name))
    if point == "fail_function":
        sysfs_create_file(d, __ATTR("inject", rw, _show_fei_inject, _store_fei_inject))
        sysfs_create_file(d, __ATTR("injectable", S_IRUGO, _show_fei_list, None))


def debugfs_init() -> kobject | None:
    """Create /sys/kernel/debug/<point>/... and debug/fault-inject/ (once)."""
    root = kernel_kobj.entries.get("debug")
    if root is None:
        root = kobject_create_and_add("debug", kernel_kobj)
    if root is None or "fault-inject" in root.entries:
        return root
    rw = S_IRUGO | S_IWUSR
    for point in fault_points:
        _point_dir(root, point)
    ctl = kobject_create_and_add("fault-inject", root)
    if ctl is not None:
        sysfs_create_file(ctl, __ATTR("make-it-fail", rw, _show_make_it_fail,
                                      _store_make_it_fail))
        sysfs_create_file(ctl, __ATTR("fail-nth", rw, _show_fail_nth, _store_fail_nth))
        sysfs_create_file(ctl, __ATTR("enumerate", rw, _show_enumerate, _store_enumerate))
        sysfs_create_file(ctl, __ATTR("sites", S_IRUGO, _show_sites, None))
    return root


def statistics() -> dict[str, int]:
    """Faults injected per point."""
    return {n: a.injected for n, a in fault_points.items()}

