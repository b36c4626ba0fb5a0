"""Wait queues: sleep until a condition holds, wake sleepers.

Twin of kernel/sched/wait.c and include/linux/wait.h.

Contexts: the wait_event family sleeps, so task context only (a kthread or a
workqueue worker). wake_up and its variants are safe from any context,
softirq included.

Differs from the kernel: the condition is a zero-argument callable, since
Python has no statement macros. The _lock_irq and _locked variants take the
spinlock to drop around the sleep. Exclusive waiters are queued at the tail
and a wake_up() wakes every non-exclusive waiter and one exclusive waiter,
as in the kernel. Entries default to autoremove_wake_function: a woken
waiter leaves the queue at once, so later wake-ups do not scan it.

Debug aids: might_sleep() on entry; sleepers in TASK_UNINTERRUPTIBLE are
visible to the hung-task check through their task's sleep_start.
"""
from __future__ import annotations

from typing import Callable

from kshim import sched
from kshim.sched import (MAX_SCHEDULE_TIMEOUT, TASK_INTERRUPTIBLE, TASK_NORMAL,
                         TASK_UNINTERRUPTIBLE, might_sleep)
from kshim.err import ERESTARTSYS
from kshim.spinlock import spin_lock, spin_lock_irq, spin_unlock, spin_unlock_irq, spinlock_t
from kshim.timer import schedule_timeout

WQ_FLAG_EXCLUSIVE = 0x01


class wait_queue_entry:
    __slots__ = ("task", "flags", "func", "private", "queued")

    def __init__(self, task: sched.task_struct | None = None, flags: int = 0,
                 func: "Callable[[wait_queue_entry, int], int] | None" = None) -> None:
        self.task = task
        self.flags = flags
        self.func = func or autoremove_wake_function
        self.private = None
        self.queued = False


class wait_queue_head:
    __slots__ = ("name", "head", "wakeups")

    def __init__(self, name: str = "waitq") -> None:
        self.name = name
        self.head: list[wait_queue_entry] = []
        self.wakeups = 0


wait_queue_head_t = wait_queue_head


def init_waitqueue_head(wq: wait_queue_head) -> None:
    for e in wq.head:
        e.queued = False
    wq.head.clear()


def default_wake_function(entry: wait_queue_entry, mode: int) -> int:
    return 1 if sched.wake_up_state(entry.task, mode) else 0


def autoremove_wake_function(entry: wait_queue_entry, mode: int) -> int:
    """Wake the task and, if that worked, drop the entry from its queue (the
    waiter re-queues itself in prepare_to_wait if it sleeps again)."""
    return 2 if sched.wake_up_state(entry.task, mode) else 0


def add_wait_queue(wq: wait_queue_head, entry: wait_queue_entry) -> None:
    entry.flags &= ~WQ_FLAG_EXCLUSIVE
    if not entry.queued:
        entry.queued = True
        wq.head.insert(0, entry)


def add_wait_queue_exclusive(wq: wait_queue_head, entry: wait_queue_entry) -> None:
    entry.flags |= WQ_FLAG_EXCLUSIVE
    if not entry.queued:
        entry.queued = True
        wq.head.append(entry)


def remove_wait_queue(wq: wait_queue_head, entry: wait_queue_entry) -> None:
    if entry.queued:
        entry.queued = False
        wq.head.remove(entry)


def waitqueue_active(wq: wait_queue_head) -> bool:
    return bool(wq.head)


def __wake_up(wq: wait_queue_head, mode: int, nr_exclusive: int) -> None:
    """Wake non-exclusive waiters and up to nr_exclusive exclusive ones
    (0: all). A wake function returns 0 (not woken), 1 (woken) or 2 (woken,
    remove the entry)."""
    head = wq.head
    if not head:
        return
    wq.wakeups += 1
    i = 0
    while i < len(head):
        entry = head[i]
        ret = entry.func(entry, mode)
        if ret == 2:
            del head[i]
            entry.queued = False
        else:
            i += 1
        if ret and entry.flags & WQ_FLAG_EXCLUSIVE:
            nr_exclusive -= 1
            if nr_exclusive == 0:
                break


def wake_up(wq: wait_queue_head) -> None:
    __wake_up(wq, TASK_NORMAL, 1)


def wake_up_nr(wq: wait_queue_head, nr: int) -> None:
    __wake_up(wq, TASK_NORMAL, nr)


def wake_up_all(wq: wait_queue_head) -> None:
    __wake_up(wq, TASK_NORMAL, 0)


def wake_up_interruptible(wq: wait_queue_head) -> None:
    __wake_up(wq, TASK_INTERRUPTIBLE, 1)


def wake_up_interruptible_all(wq: wait_queue_head) -> None:
    __wake_up(wq, TASK_INTERRUPTIBLE, 0)


def prepare_to_wait(wq: wait_queue_head, entry: wait_queue_entry, state: int) -> None:
    entry.flags &= ~WQ_FLAG_EXCLUSIVE
    if not entry.queued:
        entry.queued = True
        wq.head.insert(0, entry)
    sched.set_current_state(state)


def prepare_to_wait_exclusive(wq: wait_queue_head, entry: wait_queue_entry, state: int) -> None:
    entry.flags |= WQ_FLAG_EXCLUSIVE
    if not entry.queued:
        entry.queued = True
        wq.head.append(entry)
    sched.set_current_state(state)


def finish_wait(wq: wait_queue_head, entry: wait_queue_entry) -> None:
    sched.set_current_state(sched.TASK_RUNNING)
    if entry.queued:
        entry.queued = False
        wq.head.remove(entry)


def _wait_event_common(wq: wait_queue_head, condition: Callable[[], bool], state: int,
                       timeout: int, exclusive: bool = False,
                       unlock: Callable[[], None] | None = None,
                       relock: Callable[[], None] | None = None) -> int:
    """Return remaining jiffies (>= 1) if condition() became true, 0 on
    timeout, -ERESTARTSYS if interrupted by a signal. timeout is
    MAX_SCHEDULE_TIMEOUT for "forever"."""
    if condition():
        return max(timeout, 1)
    if unlock is None:          # the _locked variants are entered holding a lock
        might_sleep()
    entry = wait_queue_entry(task=sched.current())
    prepare = prepare_to_wait_exclusive if exclusive else prepare_to_wait
    try:
        while True:
            prepare(wq, entry, state)
            if condition():
                break
            if state & TASK_INTERRUPTIBLE and sched.current().sigpending:
                return -ERESTARTSYS
            if unlock is not None:
                unlock()
            timeout = schedule_timeout(timeout)
            if relock is not None:
                relock()
            if timeout == 0:
                return 1 if condition() else 0
    finally:
        finish_wait(wq, entry)
    return max(timeout, 1)


def wait_event(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


def wait_event_timeout(wq: wait_queue_head, condition: Callable[[], bool], timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, timeout)


def wait_event_interruptible(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_event_interruptible_timeout(wq: wait_queue_head, condition: Callable[[], bool],
                                     timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, timeout)


def wait_event_interruptible_exclusive(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             exclusive=True)
    return ret if ret < 0 else 0


def wait_event_locked(wq: wait_queue_head, condition: Callable[[], bool], lock: spinlock_t) -> None:
    """Sleep with `lock` (a spinlock taken with spin_lock) dropped meanwhile."""
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                       unlock=lambda: spin_unlock(lock), relock=lambda: spin_lock(lock))


def wait_event_lock_irq(wq: wait_queue_head, condition: Callable[[], bool], lock: spinlock_t) -> None:
    """Sleep with `lock` (taken with spin_lock_irq) dropped meanwhile."""
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                       unlock=lambda: spin_unlock_irq(lock), relock=lambda: spin_lock_irq(lock))
