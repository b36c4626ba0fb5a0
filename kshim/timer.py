"""Timers, schedule_timeout, msleep and delays.

Twin of kernel/time/timer.c, kernel/time/sleep_timeout.c and
include/linux/timer.h, delay.h.

Contexts: timer callbacks run in softirq context and must not sleep.
mod_timer, add_timer, del_timer from any context; del_timer_sync,
schedule_timeout and msleep from a task only.

Differs from the kernel: pending timers sit in a heap ordered by expiry
instead of a wheel; the engine is told the earliest expiry and calls
run_timers() when it passes (ops.timer_kick, kshim.host). Removal is lazy (stale heap entries are skipped),
so del_timer and mod_timer stay O(log n). With one CPU a callback is never
running while a task calls del_timer_sync, so that call only deletes.
from_timer(timer) returns timer.data, the owner the caller stored there
(Python has no container_of). udelay/ndelay/mdelay spin through
ops.cpu_busy_ns: on the real host they return at once (a busy wait on one
CPU could not see anything change); under the sim engine virtual time moves
on by the delay, as a spinning CPU's would. schedule_timeout reuses one
timer per task (the kernel puts one on the stack). The boot (kshim.sched)
drops every pending timer of an earlier engine run.

Debug aids (debug_objects): timer_setup() or add_timer() on a pending timer,
and freeing an object that holds a pending timer (through kshim.slab), are
reported as ODEBUG problems naming the callback; del_timer_sync() from the
timer's own callback is reported (it would deadlock in the kernel). A
callback that sleeps is caught by might_sleep() as sleeping in softirq.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable

import attrs

from kshim import debugobjects, sched
from kshim.bug import report_bug
from kshim.fault_sched import fail_timer, timer_fault
from kshim.host import ops
from kshim.jiffies import jiffies, jiffies_to_msecs, msecs_to_jiffies, usecs_to_jiffies
from kshim.sched import (MAX_SCHEDULE_TIMEOUT, TASK_IDLE, TASK_INTERRUPTIBLE, TASK_KILLABLE,
                         TASK_RUNNING, TASK_UNINTERRUPTIBLE)
from kshim.softirq import softirq_run

TIMER_DEFERRABLE = 0x1
TIMER_PINNED = 0x2
TIMER_IRQSAFE = 0x4

_cpu = sched.cpu


class timer_list:
    __slots__ = ("function", "expires", "flags", "_seq", "_pending", "name", "data", "shutdown")

    def __init__(self, function: Callable[["timer_list"], None] | None = None,
                 flags: int = 0, name: str = "") -> None:
        self.function = function
        self.expires = 0
        self.flags = flags
        self._seq = 0
        self._pending = False
        self.name = name or getattr(function, "__qualname__", "timer")
        self.data: Any = None     # the owner, for from_timer()
        self.shutdown = False

    def __repr__(self) -> str:
        return f"<timer_list {self.name} pending={self._pending} expires={self.expires}>"


_heap: list[tuple[int, int, timer_list]] = []
_seq = 0
_npending = 0
_running: timer_list | None = None
_armed = 0
_fired = 0


def timer_setup(timer: timer_list, function: Callable[[timer_list], None], flags: int = 0) -> None:
    if timer._pending and debugobjects.debug_objects:
        debugobjects.debug_object_init(timer, "timer_setup")
    timer.function = function
    timer.flags = flags
    timer.shutdown = False
    timer.name = getattr(function, "__qualname__", "timer")


timer_setup_on_stack = timer_setup


def setup_timer(timer: timer_list, function: Callable[[timer_list], None], data: Any) -> None:
    """Old API: the callback finds `data` in timer.data."""
    timer_setup(timer, function)
    timer.data = data


def DEFINE_TIMER(function: Callable[[timer_list], None]) -> timer_list:
    return timer_list(function)


def from_timer(timer: timer_list) -> Any:
    """The object owning `timer` (what the caller stored in timer.data)."""
    return timer.data


def destroy_timer_on_stack(timer: timer_list) -> None:
    if timer._pending and debugobjects.debug_objects:
        debugobjects.debug_check_no_obj_freed(timer, "destroy_timer_on_stack")


def timer_pending(timer: timer_list) -> bool:
    return timer._pending


def mod_timer(timer: timer_list, expires: int) -> int:
    """(Re)arm timer for `expires` jiffies. Return 1 if it was pending."""
    global _seq, _npending, _armed
    if fail_timer.armed:
        expires = timer_fault(expires)
    was = timer._pending
    if was:
        if timer.expires == expires:
            return 1
    elif timer.shutdown:
        return 0
    _seq += 1
    timer._seq = _seq
    timer.expires = expires
    if not was:
        _npending += 1
        timer._pending = True
    _armed += 1
    h = _heap
    first = not h or expires < h[0][0]
    heapq.heappush(h, (expires, _seq, timer))
    if len(h) > 64 and len(h) > 4 * _npending:
        _compact()
    if first:
        ops.timer_kick(expires)
    return 1 if was else 0


def mod_timer_pending(timer: timer_list, expires: int) -> int:
    """Modify only a pending timer; return 1 if it was pending."""
    if not timer._pending:
        return 0
    return mod_timer(timer, expires)


def timer_reduce(timer: timer_list, expires: int) -> int:
    """Arm, or move a pending timer earlier (never later)."""
    if timer._pending and timer.expires <= expires:
        return 1
    return mod_timer(timer, expires)


def add_timer(timer: timer_list) -> None:
    if timer._pending:
        if debugobjects.debug_objects:
            report_bug("add_timer() on a pending timer", timer=timer.name)
        return
    mod_timer(timer, timer.expires)


def add_timer_on(timer: timer_list, cpu: int) -> None:
    add_timer(timer)


def del_timer(timer: timer_list) -> int:
    """Deactivate; return 1 if it was pending."""
    global _npending
    if not timer._pending:
        return 0
    timer._pending = False
    _npending -= 1
    return 1


def try_to_del_timer_sync(timer: timer_list) -> int:
    """1 if deleted while pending, 0 if not pending, -1 if its callback is running."""
    if _running is timer:
        return -1
    return del_timer(timer)


def del_timer_sync(timer: timer_list) -> int:
    if _running is timer and debugobjects.debug_objects:
        report_bug("del_timer_sync() from the timer's own callback (deadlock)", timer=timer.name)
    return del_timer(timer)


def timer_shutdown(timer: timer_list) -> int:
    """Delete and make later arming a no-op (until timer_setup)."""
    timer.shutdown = True
    return del_timer(timer)


timer_delete = del_timer
timer_delete_sync = del_timer_sync
timer_shutdown_sync = timer_shutdown


def _compact() -> None:
    _heap[:] = [e for e in _heap if e[2]._pending and e[2]._seq == e[1]]
    heapq.heapify(_heap)


def next_expiry() -> int | None:
    """Earliest pending expiry in jiffies, or None (engine use)."""
    h = _heap
    while h:
        exp, seq, t = h[0]
        if t._pending and t._seq == seq:
            return exp
        heapq.heappop(h)
    return None


def run_timers() -> None:
    """Fire every expired timer in softirq context (engine use)."""
    global _npending, _running, _fired
    now = jiffies()
    h = _heap
    while h and h[0][0] <= now:
        exp, seq, t = heapq.heappop(h)
        if not t._pending or t._seq != seq:
            continue
        t._pending = False
        _npending -= 1
        _fired += 1
        _running = t
        try:
            softirq_run(t.function, t)
        finally:
            _running = None


def _timers_boot() -> None:
    """Forget the timers of an earlier boot."""
    global _npending
    for _, _, t in _heap:
        t._pending = False
    _heap.clear()
    _npending = 0


sched.boot_hooks.append(_timers_boot)


def debug_timer_free(timer: timer_list) -> None:
    """Report (and delete) a pending timer about to be freed."""
    if timer._pending:
        report_bug("ODEBUG: free active (active state 0) object type: timer_list hint: "
                   f"{timer.name}", object_type="timer_list", hint=timer.name)
        del_timer(timer)


def _timer_hint(t: timer_list) -> str | None:
    return t.name if t._pending else None


debugobjects.debug_object_register(timer_list, "timer_list", _timer_hint, del_timer)


# -- sleeping ----------------------------------------------------------------------

def _process_timeout(timer: timer_list) -> None:
    sched.wake_up_process(timer.data)


def schedule_timeout(timeout: int) -> int:
    """Sleep in the current state for up to `timeout` jiffies; return the
    jiffies left (0 when it timed out). MAX_SCHEDULE_TIMEOUT sleeps until
    woken."""
    if timeout == MAX_SCHEDULE_TIMEOUT:
        sched.schedule()
        return MAX_SCHEDULE_TIMEOUT
    if timeout < 0:
        _cpu.curr.state = TASK_RUNNING
        return 0
    me = _cpu.curr
    expire = jiffies() + timeout
    t = me.timeout_timer
    if t is None:
        t = me.timeout_timer = timer_list(_process_timeout, name="schedule_timeout")
        t.data = me
    mod_timer(t, expire)
    sched.schedule()
    del_timer(t)
    left = expire - jiffies()
    return left if left > 0 else 0


def schedule_timeout_interruptible(timeout: int) -> int:
    _cpu.curr.state = TASK_INTERRUPTIBLE
    return schedule_timeout(timeout)


def schedule_timeout_killable(timeout: int) -> int:
    _cpu.curr.state = TASK_KILLABLE
    return schedule_timeout(timeout)


def schedule_timeout_uninterruptible(timeout: int) -> int:
    _cpu.curr.state = TASK_UNINTERRUPTIBLE
    return schedule_timeout(timeout)


def schedule_timeout_idle(timeout: int) -> int:
    _cpu.curr.state = TASK_IDLE
    return schedule_timeout(timeout)


def msleep(msecs: int) -> None:
    """Sleep at least msecs milliseconds (uninterruptibly)."""
    sched.might_sleep()
    timeout = msecs_to_jiffies(msecs) + 1
    while timeout:
        timeout = schedule_timeout_uninterruptible(timeout)


def msleep_interruptible(msecs: int) -> int:
    """Sleep; return the milliseconds left if a signal cut it short, else 0."""
    sched.might_sleep()
    timeout = msecs_to_jiffies(msecs) + 1
    while timeout and not sched.signal_pending(_cpu.curr):
        timeout = schedule_timeout_interruptible(timeout)
    return jiffies_to_msecs(timeout)


def ssleep(secs: int) -> None:
    msleep(secs * 1000)


def usleep_range(min_us: int, max_us: int) -> None:
    """Sleep at least min_us microseconds (to the next jiffy: HZ is 1000)."""
    sched.might_sleep()
    timeout = usecs_to_jiffies(min_us) + 1
    while timeout:
        timeout = schedule_timeout_uninterruptible(timeout)


def fsleep(usecs: int) -> None:
    usleep_range(usecs, 2 * usecs)


def udelay(usecs: int) -> None:
    """A busy wait (see the module doc)."""
    ops.cpu_busy_ns(usecs * 1000)


def ndelay(nsecs: int) -> None:
    ops.cpu_busy_ns(nsecs)


def mdelay(msecs: int) -> None:
    ops.cpu_busy_ns(msecs * 1_000_000)


@attrs.frozen
class timer_stats:
    """Timer counters for statistics()."""

    armed: int
    fired: int
    pending: int
    heap_entries: int


def statistics() -> timer_stats:
    """Timers armed and fired (since the process started), pending now."""
    return timer_stats(_armed, _fired, _npending, len(_heap))
