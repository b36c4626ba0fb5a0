"""Timers, schedule_timeout and msleep.

Twin of kernel/time/timer.c and include/linux/timer.h.

Contexts: timer callbacks run in softirq context and must not sleep.
mod_timer, add_timer, del_timer from any context; del_timer_sync,
schedule_timeout and msleep from a task only.

Differs from the kernel: pending timers sit in a heap ordered by expiry
instead of a wheel; the engine is told the earliest expiry and calls
run_timers() when it passes. Removal is lazy (stale heap entries are skipped),
so del_timer and mod_timer stay O(log n). With one CPU a callback is never
running while a task calls del_timer_sync, so that call only deletes.

Debug aids: a timer freed while pending is reported by debug_timer_free()
(used by kshim.slab when an object holding one is freed).
"""
from __future__ import annotations

import heapq
from typing import Callable

from kshim import sched
from kshim.bug import report_bug
from kshim.jiffies import jiffies, msecs_to_jiffies
from kshim.sched import MAX_SCHEDULE_TIMEOUT, TASK_INTERRUPTIBLE, TASK_UNINTERRUPTIBLE
from kshim.softirq import softirq_run

TIMER_DEFERRABLE = 0x1
TIMER_PINNED = 0x2
TIMER_IRQSAFE = 0x4


class timer_list:
    __slots__ = ("function", "expires", "flags", "_seq", "_pending", "name", "data")

    def __init__(self, function: Callable[["timer_list"], None] | None = None,
                 flags: int = 0, name: str = "") -> None:
        self.function = function
        self.expires = 0
        self.flags = flags
        self._seq = 0
        self._pending = False
        self.name = name or getattr(function, "__qualname__", "timer")
        self.data = None        # the owner, as the old timer_list.data (from_timer's job)


_heap: list[tuple[int, int, timer_list]] = []
_seq = 0
_npending = 0
engine_kick: Callable[[int], None] | None = None   # set by the engine: earliest expiry changed
timer_stats = {"fired": 0, "armed": 0}


def timer_setup(timer: timer_list, function: Callable[[timer_list], None], flags: int = 0) -> None:
    if timer._pending:
        report_bug("timer_setup() on a pending timer (ODEBUG: init active)", timer=timer.name)
    timer.function = function
    timer.flags = flags
    timer.name = getattr(function, "__qualname__", "timer")


def timer_pending(timer: timer_list) -> bool:
    return timer._pending


def mod_timer(timer: timer_list, expires: int) -> int:
    """(Re)arm timer for `expires` jiffies. Return 1 if it was pending."""
    global _seq, _npending
    was = timer._pending
    if was and timer.expires == expires:
        return 1
    _seq += 1
    timer._seq = _seq
    timer.expires = expires
    if not was:
        _npending += 1
    timer._pending = True
    timer_stats["armed"] += 1
    first = not _heap or expires < _heap[0][0]
    heapq.heappush(_heap, (expires, _seq, timer))
    if len(_heap) > 64 and len(_heap) > 4 * _npending:
        _compact()
    if first and engine_kick is not None:
        engine_kick(expires)
    return 1 if was else 0


def add_timer(timer: timer_list) -> None:
    if timer._pending:
        report_bug("add_timer() on a pending timer", timer=timer.name)
    mod_timer(timer, timer.expires)


def del_timer(timer: timer_list) -> int:
    """Deactivate; return 1 if it was pending."""
    global _npending
    if not timer._pending:
        return 0
    timer._pending = False
    _npending -= 1
    return 1


def del_timer_sync(timer: timer_list) -> int:
    return del_timer(timer)


timer_delete = del_timer
timer_delete_sync = del_timer_sync


def _compact() -> None:
    global _heap
    _heap = [e for e in _heap if e[2]._pending and e[2]._seq == e[1]]
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
    global _npending
    now = jiffies()
    h = _heap
    while h and h[0][0] <= now:
        exp, seq, t = heapq.heappop(h)
        if not t._pending or t._seq != seq:
            continue
        t._pending = False
        _npending -= 1
        timer_stats["fired"] += 1
        softirq_run(t.function, t)


def debug_timer_free(timer: timer_list) -> None:
    if timer._pending:
        report_bug("ODEBUG: free active timer", timer=timer.name)
        del_timer(timer)


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
        sched.set_current_state(sched.TASK_RUNNING)
        return 0
    expire = jiffies() + timeout
    t = timer_list(_process_timeout, name="schedule_timeout")
    t.data = sched.current()
    mod_timer(t, expire)
    sched.schedule()
    del_timer(t)
    left = expire - jiffies()
    return left if left > 0 else 0


def schedule_timeout_interruptible(timeout: int) -> int:
    sched.set_current_state(TASK_INTERRUPTIBLE)
    return schedule_timeout(timeout)


def schedule_timeout_uninterruptible(timeout: int) -> int:
    sched.set_current_state(TASK_UNINTERRUPTIBLE)
    return schedule_timeout(timeout)


def msleep(msecs: int) -> None:
    sched.might_sleep()
    timeout = msecs_to_jiffies(msecs) + 1
    while timeout:
        timeout = schedule_timeout_uninterruptible(timeout)


def msleep_interruptible(msecs: int) -> int:
    timeout = msecs_to_jiffies(msecs) + 1
    while timeout and not sched.signal_pending(sched.current()):
        timeout = schedule_timeout_interruptible(timeout)
    return timeout


def ssleep(secs: int) -> None:
    msleep(secs * 1000)

