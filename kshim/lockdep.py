"""The lock validator: lock classes, their order graph, context checks and lock_stat.

Twin of kernel/locking/lockdep.c, include/linux/lockdep.h and
kernel/locking/lockdep_proc.c (/proc/lock_stat).

Contexts: lock_acquire/lock_release are called by kshim.spinlock and
kshim.mutex (spinlocks, rwlocks, mutexes, rw_semaphores) from any context,
only while their debug switch is on. The lockdep_assert_* calls from anywhere.

What it checks, each reported through kshim.bug.report_bug the first time
it is seen, before anything deadlocks:
- "possible circular locking dependency detected": a new "B taken while A
  held" edge closes a cycle in the order graph (ABBA and longer chains).
  The report names the chain and carries the stack where each existing edge
  was first seen, plus the current one.
- "possible recursive locking detected": a lock taken while a lock of the
  same class is held (same struct field in two objects); use the _nested
  calls with a subclass to say the nesting is ordered.
- "inconsistent lock state": a class taken in softirq context and also in
  process context with softirqs enabled ({IN-SOFTIRQ-W} vs {SOFTIRQ-ON-W},
  the "spin_lock without _bh" bug), with both stacks.
- "SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected": a softirq-safe lock
  held while a softirq-unsafe one is taken (directly or through the graph).
- lockdep_assert_held() on a lock the current task does not hold.
Unlock by a non-owner, sleeping while holding a spinlock and locks held at
kthread exit are reported by the lock modules and kshim.sched, which read
the held-lock list kept here.

A lock class is named by its key: lockdep_set_class(), else the lock's name
when it was given one (spinlock_t("conn.cmd_list_lock")), else the file and
line that created it (captured when lockdep is on), else the lock instance
itself.

Differs from the kernel: no lock chains cache, no hardirq states (there are
no hardirqs), and recursive read locks (rwlock_t readers) take no part in
the order graph. After a report lockdep keeps checking (the kernel turns
itself off), but reports each problem once per boot. kshim.sched's boot
resets the graph, the usage bits and the statistics (a reboot). Locks taken
before lockdep was switched on are unknown to it; releasing them is ignored.

Debug aids: this is one. lock_stat() prints /proc/lock_stat-like text:
acquisitions, contentions, wait and hold times, and how often a lock was
held across schedule(). Tracepoints lock_contended, lock_acquired (with the
wait) and lock_release (with the hold time) fire where lock_stat counts.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import attrs

from kshim import sched
from kshim.bug import caller_site, format_entries, getframe, report_bug, stack_capture
from kshim.host import ops
from kshim.tracepoint import TRACE_EVENT

debug_locks = True       # flipped by kshim.debug

SINGLE_DEPTH_NESTING = 1
MAX_LOCKDEP_SUBCLASSES = 8

# usage bits (softirq states; there are no hardirqs)
LOCK_USED_IN_SOFTIRQ = 0x1
LOCK_USED_IN_SOFTIRQ_READ = 0x2
LOCK_ENABLED_SOFTIRQ = 0x4
LOCK_ENABLED_SOFTIRQ_READ = 0x8
_USAGE_NAMES = {LOCK_USED_IN_SOFTIRQ: "IN-SOFTIRQ-W", LOCK_USED_IN_SOFTIRQ_READ: "IN-SOFTIRQ-R",
                LOCK_ENABLED_SOFTIRQ: "SOFTIRQ-ON-W", LOCK_ENABLED_SOFTIRQ_READ: "SOFTIRQ-ON-R"}
# a new usage bit conflicts with these existing ones
_CONFLICTS = {
    LOCK_USED_IN_SOFTIRQ: LOCK_ENABLED_SOFTIRQ | LOCK_ENABLED_SOFTIRQ_READ,
    LOCK_USED_IN_SOFTIRQ_READ: LOCK_ENABLED_SOFTIRQ,
    LOCK_ENABLED_SOFTIRQ: LOCK_USED_IN_SOFTIRQ | LOCK_USED_IN_SOFTIRQ_READ,
    LOCK_ENABLED_SOFTIRQ_READ: LOCK_USED_IN_SOFTIRQ,
}
_SAFE = LOCK_USED_IN_SOFTIRQ | LOCK_USED_IN_SOFTIRQ_READ
_UNSAFE = LOCK_ENABLED_SOFTIRQ

DEFAULT_NAMES = frozenset({"spinlock", "rwlock", "mutex", "rwsem", "raw_spinlock"})

_cpu = sched.cpu
_gen = 1                 # bumped at each boot: classes reset lazily
_classes: dict[Any, "lock_class"] = {}
_all_classes: list["lock_class"] = []
_reported: set = set()


_lock_files: set[str] = {__file__}


def register_lock_file(path: str) -> None:
    """Frames in this file are lock internals: blame their caller."""
    _lock_files.add(path)


def lock_site_raw() -> tuple:
    """(code, line) of the first caller outside the lock modules: cheap to
    take on every acquisition; site_str() formats it for a report."""
    f = getframe(1)
    files = _lock_files
    while f is not None and f.f_code.co_filename in files:
        f = f.f_back
    if f is None:
        return (None, 0)
    return (f.f_code, f.f_lineno)


def site_str(site: "tuple | str") -> str:
    """'file:line (function)' of a lock_site_raw() value."""
    if isinstance(site, str):
        return site
    co, line = site
    if co is None:
        return "?"
    return f"{co.co_filename}:{line} ({co.co_name})"


def lock_site() -> str:
    """'file:line (function)' of the first caller outside the lock modules."""
    f = getframe(1)
    files = _lock_files
    while f is not None and f.f_code.co_filename in files:
        f = f.f_back
    if f is None:
        return "?"
    return f"{f.f_code.co_filename}:{f.f_lineno} ({f.f_code.co_name})"


# include/trace/events/lock.h, with lock_stat's times (only while lockdep is on)
trace_lock_contended = TRACE_EVENT("lock_contended", ("lock",))
trace_lock_acquired = TRACE_EVENT("lock_acquired", ("lock", "wait_ns"))
trace_lock_release = TRACE_EVENT("lock_release", ("lock", "hold_ns"))


class lock_class_key:
    """A static key naming a lock class (struct lock_class_key)."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name or caller_site()

    def __repr__(self) -> str:
        return f"<lock_class_key {self.name}>"


class lock_dep:
    """An edge of the order graph: where `after` was first taken under `before`."""

    __slots__ = ("stack", "held_site", "task")

    def __init__(self, stack: tuple, held_site: tuple, task: str) -> None:
        self.stack = stack
        self.held_site = held_site
        self.task = task


class lock_class:
    """A lock class: its order edges, usage bits and lock_stat counters."""

    __slots__ = ("name", "subclass", "gen", "after", "before", "usage", "usage_stack",
                 "subclasses", "acquisitions", "contentions", "wait_ns", "wait_max",
                 "hold_ns", "hold_max", "sched_holds")

    def __init__(self, name: str, subclass: int = 0) -> None:
        self.name = name
        self.subclass = subclass
        self.subclasses: dict[int, lock_class] = {}
        self.gen = 0
        self._reset()

    def _reset(self) -> None:
        self.gen = _gen
        _all_classes.append(self)          # each class once per boot
        self.after: dict[lock_class, lock_dep] = {}
        self.before: dict[lock_class, lock_dep] = {}
        self.usage = 0
        self.usage_stack: dict[int, tuple] = {}
        self.acquisitions = 0
        self.contentions = 0
        self.wait_ns = 0
        self.wait_max = 0
        self.hold_ns = 0
        self.hold_max = 0
        self.sched_holds = 0

    def __repr__(self) -> str:
        return f"<lock_class {self.fullname}>"

    @property
    def fullname(self) -> str:
        return self.name if not self.subclass else f"{self.name}/{self.subclass}"


class held_lock:
    """One entry of a task's held-lock list."""

    __slots__ = ("lock", "cls", "read", "trylock", "acquire_ns", "site")

    def __init__(self, lock: Any, cls: lock_class, read: int, trylock: bool, site: tuple) -> None:
        self.lock = lock
        self.cls = cls
        self.read = read
        self.trylock = trylock
        self.acquire_ns = ops.monotonic_ns()
        self.site = site

    def __repr__(self) -> str:
        return f"{self.cls.fullname} acquired at {site_str(self.site)}"


def lockdep_init_map(lock: Any, depth: int = 2) -> None:
    """Name the class of a lock created with its default name by the site
    that created it (called by the lock constructors while lockdep is on)."""
    if debug_locks and lock.name in DEFAULT_NAMES and lock.key is None:
        lock.key = f"{lock.name}@{caller_site(depth)}"


def lockdep_set_class(lock: Any, key: "lock_class_key | str") -> None:
    lock.key = key
    lock.dep_map = None


def lockdep_set_class_and_name(lock: Any, key: "lock_class_key | str", name: str) -> None:
    lock.name = name
    lockdep_set_class(lock, key)


def lockdep_set_novalidate_class(lock: Any) -> None:
    """Exempt a lock from the order checks (its acquisitions are not tracked)."""
    lock.key = _NOVALIDATE
    lock.dep_map = None


_NOVALIDATE = lock_class_key("(novalidate)")


def _base_class(lock: Any) -> lock_class:
    cls = lock.dep_map
    if cls is None:
        key = lock.key
        if key is None and lock.name not in DEFAULT_NAMES:
            key = lock.name
        if key is None:
            cls = lock_class(f"{lock.name}@{id(lock):#x}")   # an instance of its own
        else:
            cls = _classes.get(key)
            if cls is None:
                name = key if isinstance(key, str) else key.name
                cls = _classes[key] = lock_class(name)
        lock.dep_map = cls
    if cls.gen != _gen:
        cls._reset()
        for sub in cls.subclasses.values():
            sub._reset()
    return cls


def _class_of(lock: Any, subclass: int) -> lock_class:
    base = _base_class(lock)
    if not subclass:
        return base
    cls = base.subclasses.get(subclass)
    if cls is None:
        cls = base.subclasses[subclass] = lock_class(base.name, subclass)
    elif cls.gen != _gen:
        cls._reset()
    return cls


def _once(key: Any) -> bool:
    if key in _reported:
        return False
    _reported.add(key)
    return True


def lock_acquire(lock: Any, subclass: int = 0, trylock: bool = False, read: int = 0,
                 softirq_checks: bool = True) -> tuple | None:
    """Record that the current context takes `lock` (read: 0 exclusive,
    1 shared, 2 recursive shared); the first caller outside the lock
    modules is the one to blame. Return that site (code, line), or None
    when lockdep is off."""
    if not debug_locks:
        return None
    cls = _class_of(lock, subclass)
    if lock.key is _NOVALIDATE:
        return None
    t = _cpu.curr
    held = t.held_locks
    site = lock_site_raw()
    if held:
        for h in held:
            hc = h.cls
            if hc is cls:
                if (read == 2 and h.read == 2) or trylock:
                    continue
                if _once(("recursive", cls)):
                    report_bug("possible recursive locking detected", task=t.comm,
                               lock=cls.fullname, held_at=site_str(h.site),
                               acquiring_at=site_str(site),
                               hint="use the _nested call with a subclass if the nesting "
                                    "is ordered")
                continue
            if trylock or read == 2 or h.read == 2:
                continue
            if cls not in hc.after:
                _add_dep(hc, cls, h, t, site)
    if softirq_checks:
        c = _cpu
        if c.softirq_serving:
            bit = LOCK_USED_IN_SOFTIRQ_READ if read else LOCK_USED_IN_SOFTIRQ
        elif not (c.bh_disable_count or c.irqs_off):
            bit = LOCK_ENABLED_SOFTIRQ_READ if read else LOCK_ENABLED_SOFTIRQ
        else:
            bit = 0
        if bit and not (cls.usage & bit):
            _mark_usage(cls, bit, t, site)
    cls.acquisitions += 1
    held.append(held_lock(lock, cls, read, trylock, site))
    return site


def lock_release(lock: Any) -> None:
    """Forget that the current context holds `lock` (its topmost entry)."""
    held = _cpu.curr.held_locks
    for i in range(len(held) - 1, -1, -1):
        h = held[i]
        if h.lock is lock:
            del held[i]
            dt = ops.monotonic_ns() - h.acquire_ns
            cls = h.cls
            cls.hold_ns += dt
            if dt > cls.hold_max:
                cls.hold_max = dt
            if trace_lock_release.enabled:
                trace_lock_release(cls.fullname, dt)
            return
    # Taken before lockdep was on, or released by another task: the lock
    # modules report owner errors themselves.


def lock_contended(lock: Any) -> None:
    """The current task is about to wait for `lock` (lock_stat)."""
    if debug_locks:
        cls = lock.dep_map
        if cls is not None and cls.gen == _gen:
            cls.contentions += 1
            if trace_lock_contended.enabled:
                trace_lock_contended(cls.fullname)


def lock_acquired(lock: Any, wait_ns: int) -> None:
    """The current task got `lock` after waiting wait_ns (lock_stat)."""
    if debug_locks:
        cls = lock.dep_map
        if cls is not None and cls.gen == _gen:
            cls.wait_ns += wait_ns
            if wait_ns > cls.wait_max:
                cls.wait_max = wait_ns
            if trace_lock_acquired.enabled:
                trace_lock_acquired(cls.fullname, wait_ns)


def _schedule_hook(t: sched.task_struct) -> None:
    for h in t.held_locks:
        h.cls.sched_holds += 1


sched.lockdep_schedule_hook = _schedule_hook


# -- the order graph --------------------------------------------------------------

def _path(src: lock_class, dst: lock_class, forward: bool = True) -> list[lock_class] | None:
    """Classes from src to dst along `after` (or `before`) edges, or None."""
    prev: dict[lock_class, lock_class | None] = {src: None}
    q = deque([src])
    while q:
        c = q.popleft()
        if c is dst:
            out = []
            while c is not None:
                out.append(c)
                c = prev[c]
            return out[::-1]
        for n in (c.after if forward else c.before):
            if n not in prev:
                prev[n] = c
                q.append(n)
    return None


def _find(src: lock_class, mask: int, forward: bool) -> list[lock_class] | None:
    """Path from src to the first class (src included) with a usage bit in mask."""
    prev: dict[lock_class, lock_class | None] = {src: None}
    q = deque([src])
    while q:
        c = q.popleft()
        if c.usage & mask:
            out = []
            while c is not None:
                out.append(c)
                c = prev[c]
            return out[::-1]
        for n in (c.after if forward else c.before):
            if n not in prev:
                prev[n] = c
                q.append(n)
    return None


def _edge_stacks(path: list[lock_class]) -> str:
    parts = []
    for a, b in zip(path, path[1:], strict=False):
        d = a.after.get(b)
        if d is None:
            continue
        parts.append(f"-> {b.fullname} taken while holding {a.fullname} (held since {site_str(d.held_site)}),"
                     f" task {d.task}, first seen at:\n{format_entries(d.stack, '    ')}")
    return "".join(parts)


def _add_dep(prev: lock_class, nxt: lock_class, h: held_lock, t: sched.task_struct,
             site: tuple) -> None:
    stack = stack_capture(3)
    cycle = _path(nxt, prev)
    prev.after[nxt] = nxt.before[prev] = lock_dep(stack, h.site, t.comm)
    if cycle is not None and _once(("cycle", frozenset(cycle))):
        chain = " -> ".join(c.fullname for c in cycle + [nxt])
        report_bug("possible circular locking dependency detected", task=t.comm,
                   acquiring=nxt.fullname, acquiring_at=site_str(site), holding=prev.fullname,
                   held_since=site_str(h.site), chain=chain,
                   existing_dependency=_edge_stacks(cycle),
                   this_dependency=format_entries(stack, "    "))
        return
    safe = _find(prev, _SAFE, forward=False)
    if safe is not None:
        unsafe = _find(nxt, _UNSAFE, forward=True)
        if unsafe is not None:
            _report_safe_unsafe(safe[-1], unsafe[-1], safe[::-1] + unsafe, t)


def _report_safe_unsafe(safe: lock_class, unsafe: lock_class, path: list[lock_class],
                        t: sched.task_struct) -> None:
    if not _once(("safe-unsafe", safe, unsafe)):
        return
    bit_s = LOCK_USED_IN_SOFTIRQ if safe.usage & LOCK_USED_IN_SOFTIRQ else LOCK_USED_IN_SOFTIRQ_READ
    report_bug("SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", task=t.comm,
               safe=safe.fullname, unsafe=unsafe.fullname,
               chain=" -> ".join(c.fullname for c in path),
               safe_usage_stack=format_entries(safe.usage_stack.get(bit_s, ()), "    "),
               unsafe_usage_stack=format_entries(unsafe.usage_stack.get(LOCK_ENABLED_SOFTIRQ, ()),
                                                 "    "))


def _mark_usage(cls: lock_class, bit: int, t: sched.task_struct, site: tuple) -> None:
    stack = stack_capture(3)
    cls.usage |= bit
    cls.usage_stack[bit] = stack
    clash = cls.usage & _CONFLICTS[bit]
    if clash:
        old = clash & -clash
        if _once(("inconsistent", cls)):
            report_bug("inconsistent lock state", task=t.comm, lock=cls.fullname,
                       usage=f"{{{_USAGE_NAMES[old]}}} -> {{{_USAGE_NAMES[bit]}}}",
                       at=site_str(site), callback=sched._softirq_name(),
                       hint="take it with spin_lock_bh (or _irq) in process context",
                       first_usage_stack=format_entries(cls.usage_stack.get(old, ()), "    "),
                       this_usage_stack=format_entries(stack, "    "))
        return
    if bit & _SAFE:
        unsafe = _find(cls, _UNSAFE, forward=True)
        if unsafe is not None and unsafe[-1] is not cls:
            _report_safe_unsafe(cls, unsafe[-1], unsafe, t)
    elif bit == LOCK_ENABLED_SOFTIRQ:
        safe = _find(cls, _SAFE, forward=False)
        if safe is not None and safe[-1] is not cls:
            _report_safe_unsafe(safe[-1], cls, safe[::-1], t)


# -- assertions -------------------------------------------------------------------

def lockdep_is_held(lock: Any) -> bool:
    """Does the current context hold `lock`? (Owner fields answer for locks
    taken before lockdep was on.)"""
    for h in _cpu.curr.held_locks:
        if h.lock is lock:
            return True
    owner = getattr(lock, "owner", None)
    if owner is None:
        owner = getattr(lock, "writer", None)
    return owner is _cpu.curr


def lockdep_assert_held(lock: Any) -> None:
    if debug_locks and not lockdep_is_held(lock) and not getattr(lock, "readers", 0):
        report_bug("lockdep_assert_held() failed", lock=getattr(lock, "name", lock),
                   task=_cpu.curr.comm, at=caller_site())


def lockdep_assert_held_write(lock: Any) -> None:
    if debug_locks and not lockdep_is_held(lock):
        report_bug("lockdep_assert_held_write() failed", lock=getattr(lock, "name", lock),
                   task=_cpu.curr.comm, at=caller_site())


def lockdep_assert_held_read(lock: Any) -> None:
    if debug_locks and not getattr(lock, "readers", 0):
        report_bug("lockdep_assert_held_read() failed", lock=getattr(lock, "name", lock),
                   task=_cpu.curr.comm, at=caller_site())


def lockdep_assert_not_held(lock: Any) -> None:
    if debug_locks and lockdep_is_held(lock):
        report_bug("lockdep_assert_not_held() failed", lock=getattr(lock, "name", lock),
                   task=_cpu.curr.comm, at=caller_site())


def lockdep_assert_none_held_once() -> None:
    if debug_locks and _cpu.curr.held_locks:
        report_bug("lockdep_assert_none_held_once() failed", task=_cpu.curr.comm,
                   held=[repr(h) for h in _cpu.curr.held_locks])


def lockdep_assert_irqs_disabled() -> None:
    if debug_locks and not _cpu.irqs_off:
        report_bug("lockdep_assert_irqs_disabled() failed", at=caller_site())


def lockdep_assert_irqs_enabled() -> None:
    if debug_locks and _cpu.irqs_off:
        report_bug("lockdep_assert_irqs_enabled() failed", at=caller_site())


def lockdep_assert_in_softirq() -> None:
    if debug_locks and not (_cpu.softirq_serving or _cpu.bh_disable_count):
        report_bug("lockdep_assert_in_softirq() failed", at=caller_site())


def lockdep_assert_preemption_disabled() -> None:
    if debug_locks and not _cpu.preempt_count:
        report_bug("lockdep_assert_preemption_disabled() failed", at=caller_site())


def debug_show_held_locks(t: sched.task_struct | None = None) -> str:
    t = t or _cpu.curr
    if not t.held_locks:
        return f"no locks held by {t.comm}/{t.pid}.\n"
    lines = [f"{len(t.held_locks)} locks held by {t.comm}/{t.pid}:"]
    lines += [f" #{i}: {h!r}" for i, h in enumerate(t.held_locks)]
    return "\n".join(lines) + "\n"


def debug_locks_off() -> None:
    global debug_locks
    debug_locks = False


def lockdep_reset() -> None:
    """Forget the graph, the usage bits and the statistics (a reboot)."""
    global _gen
    _gen += 1
    _reported.clear()
    _all_classes.clear()


sched.boot_hooks.append(lockdep_reset)


# -- statistics -------------------------------------------------------------------

@attrs.frozen
class lock_class_stats:
    """One lock class in statistics()."""

    name: str
    acquisitions: int
    contentions: int
    wait_ns: int
    wait_max_ns: int
    hold_ns: int
    hold_max_ns: int
    sched_holds: int


def statistics() -> list[lock_class_stats]:
    """Per lock class of this boot, as /proc/lock_stat has them."""
    return [lock_class_stats(c.fullname, c.acquisitions, c.contentions, c.wait_ns, c.wait_max,
                             c.hold_ns, c.hold_max, c.sched_holds)
            for c in _all_classes if c.acquisitions]


def lock_stat() -> str:
    """/proc/lock_stat-like text, most acquired class first."""
    lines = [f"{'class name':<40} {'acquisitions':>12} {'contentions':>11} {'wait-max us':>11} "
             f"{'wait-total us':>13} {'hold-max us':>11} {'hold-total us':>13} {'sched-holds':>11}"]
    for s in sorted(statistics(), key=lambda s: s.acquisitions, reverse=True):
        lines.append(f"{s.name[-40:]:<40} {s.acquisitions:>12} {s.contentions:>11} "
                     f"{s.wait_max_ns / 1e3:>11.1f} {s.wait_ns / 1e3:>13.1f} "
                     f"{s.hold_max_ns / 1e3:>11.1f} {s.hold_ns / 1e3:>13.1f} {s.sched_holds:>11}")
    return "\n".join(lines) + "\n"


def lockdep_stats() -> dict[str, int]:
    """/proc/lockdep_stats-like counts for this boot."""
    live = _all_classes
    return {"lock-classes": len(live),
            "direct dependencies": sum(len(c.after) for c in live),
            "reported problems": len(_reported)}
