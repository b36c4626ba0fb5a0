"""Wait queues: sleep until a condition holds, wake sleepers.

Twin of kernel/sched/wait.c, wait_bit.c (wait_var_event) and
include/linux/wait.h.

Contexts: the wait_event family sleeps, so task context only (a kthread or a
workqueue worker). wake_up and its variants are safe from any context,
softirq included.

Differs from the kernel: the condition is a zero-argument callable, since
Python has no statement macros. The _locked and _lock_irq variants take the
spinlock to drop around the sleep (default: the queue's own `lock`, as the
kernel's _locked calls use wq->lock); wake_up does not take wq.lock (one
CPU: nothing to exclude), so wake_up_locked is wake_up. Exclusive waiters are
queued at the tail and wake_up() wakes every non-exclusive waiter and one
exclusive waiter, as in the kernel; an exclusive waiter that leaves on a
signal after being woken passes the wake-up on. Entries default to
autoremove_wake_function: a woken waiter leaves the queue at once, so later
wake-ups do not scan it, and on waking the condition is tested before the
entry is queued again. The wait_event family reuses one entry per task
(a task sleeps in one place at a time), where the kernel puts one on the
stack. The wake-up "key" of wake_up_poll is accepted and ignored.

Debug aids (debug_wait): might_sleep() on entry (which also catches a
wait_event called from inside another wait's condition); sleepers in
TASK_UNINTERRUPTIBLE are watched by kshim.hung_task, TASK_IDLE sleepers
(idle kworkers, wait_event_idle) are not. Each queue counts its wake-ups.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import sched
from kshim.err import ERESTARTSYS
from kshim.fault_sched import fail_wakeup, wakeup_fault
from kshim.sched import (MAX_SCHEDULE_TIMEOUT, TASK_IDLE, TASK_INTERRUPTIBLE, TASK_KILLABLE,
                         TASK_NORMAL, TASK_RUNNING, TASK_UNINTERRUPTIBLE, TASK_WAKEKILL)
from kshim.spinlock import spin_lock, spin_lock_irq, spin_unlock, spin_unlock_irq, spinlock_t
from kshim.timer import schedule_timeout

WQ_FLAG_EXCLUSIVE = 0x01
WQ_FLAG_WOKEN = 0x02

debug_wait = True
_cpu = sched.cpu
_might_sleep = sched.__dict__["__might_sleep"]
_wake_up_process = sched.wake_up_process
_schedule = sched.schedule
_SIGNAL_STATES = TASK_INTERRUPTIBLE | TASK_WAKEKILL


class wait_queue_entry:
    __slots__ = ("task", "flags", "func", "private", "queued")

    def __init__(self, task: sched.task_struct | None = None, flags: int = 0,
                 func: "Callable[[wait_queue_entry, int], int] | None" = None) -> None:
        self.task = task
        self.flags = flags
        self.func = func or autoremove_wake_function
        self.private: Any = None
        self.queued = False


wait_queue_entry_t = wait_queue_entry


class wait_queue_head:
    __slots__ = ("name", "head", "wakeups", "lock")

    def __init__(self, name: str = "waitq") -> None:
        self.name = name
        self.head: list[wait_queue_entry] = []
        self.wakeups = 0
        self.lock = spinlock_t(f"{name}.lock")

    def __repr__(self) -> str:
        return f"<wait_queue_head {self.name} waiters={len(self.head)}>"


wait_queue_head_t = wait_queue_head


def init_waitqueue_head(wq: wait_queue_head) -> None:
    for e in wq.head:
        e.queued = False
    wq.head.clear()


def DECLARE_WAIT_QUEUE_HEAD(name: str) -> wait_queue_head:
    return wait_queue_head(name)


def init_wait(entry: wait_queue_entry) -> None:
    """Make entry a wait entry of the current task (DEFINE_WAIT's job)."""
    entry.task = _cpu.curr
    entry.func = autoremove_wake_function
    entry.flags = 0
    entry.queued = False


def DEFINE_WAIT() -> wait_queue_entry:
    return wait_queue_entry(_cpu.curr)


def init_waitqueue_entry(entry: wait_queue_entry, task: sched.task_struct) -> None:
    entry.task = task
    entry.func = default_wake_function
    entry.flags = 0


def init_waitqueue_func_entry(entry: wait_queue_entry,
                              func: Callable[[wait_queue_entry, int], int]) -> None:
    entry.task = None
    entry.func = func
    entry.flags = 0


def default_wake_function(entry: wait_queue_entry, mode: int) -> int:
    return 1 if sched.wake_up_state(entry.task, mode) else 0


def autoremove_wake_function(entry: wait_queue_entry, mode: int) -> int:
    """Wake the task and, if that worked, drop the entry from its queue (the
    waiter re-queues itself in prepare_to_wait if it sleeps again)."""
    t = entry.task
    if t.state & mode:
        return 2 if _wake_up_process(t) else 0
    return 0


def woken_wake_function(entry: wait_queue_entry, mode: int) -> int:
    """For wait_woken(): mark the entry woken, then wake the task."""
    entry.flags |= WQ_FLAG_WOKEN
    return default_wake_function(entry, mode)


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


def wq_has_sleeper(wq: wait_queue_head) -> bool:
    """waitqueue_active() with the barrier the kernel needs (none on one CPU)."""
    return bool(wq.head)


def wq_has_single_sleeper(wq: wait_queue_head) -> bool:
    return len(wq.head) == 1


def __wake_up(wq: wait_queue_head, mode: int, nr_exclusive: int, key: Any = None) -> int:
    """Wake non-exclusive waiters and up to nr_exclusive exclusive ones
    (0: all). A wake function returns 0 (not woken), 1 (woken) or 2 (woken,
    remove the entry). Return how many were woken."""
    head = wq.head
    if not head:
        return 0
    wq.wakeups += 1
    i = 0
    woken = 0
    while i < len(head):
        entry = head[i]
        ret = entry.func(entry, mode)
        if ret == 2:
            del head[i]
            entry.queued = False
        else:
            i += 1
        if ret:
            woken += 1
            if entry.flags & WQ_FLAG_EXCLUSIVE:
                nr_exclusive -= 1
                if nr_exclusive == 0:
                    break
    return woken


def wake_up(wq: wait_queue_head) -> None:
    head = wq.head
    if not head:
        return
    if len(head) == 1:           # the common case: one sleeper, no loop
        entry = head[0]
        wq.wakeups += 1
        ret = entry.func(entry, TASK_NORMAL)
        if ret == 2:
            head.clear()
            entry.queued = False
        return
    __wake_up(wq, TASK_NORMAL, 1)


def wake_up_nr(wq: wait_queue_head, nr: int) -> None:
    __wake_up(wq, TASK_NORMAL, nr)


def wake_up_all(wq: wait_queue_head) -> None:
    if wq.head:
        __wake_up(wq, TASK_NORMAL, 0)


def wake_up_interruptible(wq: wait_queue_head) -> None:
    if wq.head:
        __wake_up(wq, TASK_INTERRUPTIBLE, 1)


def wake_up_interruptible_nr(wq: wait_queue_head, nr: int) -> None:
    __wake_up(wq, TASK_INTERRUPTIBLE, nr)


def wake_up_interruptible_all(wq: wait_queue_head) -> None:
    if wq.head:
        __wake_up(wq, TASK_INTERRUPTIBLE, 0)


def wake_up_poll(wq: wait_queue_head, key: Any = None) -> None:
    __wake_up(wq, TASK_NORMAL, 1, key)


def wake_up_interruptible_poll(wq: wait_queue_head, key: Any = None) -> None:
    __wake_up(wq, TASK_INTERRUPTIBLE, 1, key)


wake_up_locked = wake_up
wake_up_all_locked = wake_up_all
wake_up_sync = wake_up
wake_up_interruptible_sync = wake_up_interruptible
wake_up_interruptible_sync_poll = wake_up_interruptible_poll


def prepare_to_wait(wq: wait_queue_head, entry: wait_queue_entry, state: int) -> None:
    entry.flags &= ~WQ_FLAG_EXCLUSIVE
    if not entry.queued:
        entry.queued = True
        wq.head.insert(0, entry)
    _cpu.curr.state = state


def prepare_to_wait_exclusive(wq: wait_queue_head, entry: wait_queue_entry, state: int) -> bool:
    """Queue entry exclusively (at the tail); True if the queue was empty."""
    entry.flags |= WQ_FLAG_EXCLUSIVE
    was_empty = not wq.head
    if not entry.queued:
        entry.queued = True
        wq.head.append(entry)
    _cpu.curr.state = state
    return was_empty


def prepare_to_wait_event(wq: wait_queue_head, entry: wait_queue_entry, state: int) -> int:
    """Queue entry unless a signal is pending for this state: then dequeue
    it and return -ERESTARTSYS; else 0."""
    me = _cpu.curr
    if sched.signal_pending_state(state, me):
        if entry.queued:
            entry.queued = False
            wq.head.remove(entry)
        return -ERESTARTSYS
    if entry.flags & WQ_FLAG_EXCLUSIVE:
        if not entry.queued:
            entry.queued = True
            wq.head.append(entry)
    elif not entry.queued:
        entry.queued = True
        wq.head.insert(0, entry)
    me.state = state
    return 0


def finish_wait(wq: wait_queue_head, entry: wait_queue_entry) -> None:
    _cpu.curr.state = TASK_RUNNING
    if entry.queued:
        entry.queued = False
        wq.head.remove(entry)


def wait_woken(entry: wait_queue_entry, mode: int, timeout: int) -> int:
    """Sleep until woken_wake_function marks entry, or timeout; return the
    jiffies left. The entry stays queued (add_wait_queue beforehand)."""
    me = _cpu.curr
    me.state = mode
    if not (entry.flags & WQ_FLAG_WOKEN) and not sched.signal_pending_state(mode, me):
        timeout = schedule_timeout(timeout)
    me.state = TASK_RUNNING
    entry.flags &= ~WQ_FLAG_WOKEN
    return timeout


def _wait_event_common(wq: wait_queue_head, condition: Callable[[], bool], state: int,
                       timeout: int, exclusive: bool = False,
                       unlock: Callable[[], None] | None = None,
                       relock: Callable[[], None] | None = None) -> int:
    """Return remaining jiffies (>= 1) if condition() became true, 0 on
    timeout with the condition still false (1 if it became true just as the
    time ran out), -ERESTARTSYS if a signal broke the sleep. timeout is
    MAX_SCHEDULE_TIMEOUT for "forever"."""
    if condition():
        return timeout if timeout > 0 else 1
    return ___wait_event(wq, condition, state, timeout, exclusive, unlock, relock)


def ___wait_event(wq: wait_queue_head, condition: Callable[[], bool], state: int,
                  timeout: int, exclusive: bool = False,
                  unlock: Callable[[], None] | None = None,
                  relock: Callable[[], None] | None = None) -> int:
    """The sleeping part of _wait_event_common, entered with the condition
    just found false."""
    me = _cpu.curr
    if debug_wait and unlock is None:     # the _locked variants are entered holding a lock
        _might_sleep()
    entry = me.wait_entry
    if entry is None or entry.queued:     # (queued: a bug's leftover; use a fresh one)
        entry = me.wait_entry = wait_queue_entry(me)
    entry.func = autoremove_wake_function
    head = wq.head
    ret = 1
    try:
        while True:
            if not entry.queued:
                entry.queued = True
                if exclusive:
                    entry.flags = WQ_FLAG_EXCLUSIVE
                    head.append(entry)
                else:
                    entry.flags = 0
                    head.insert(0, entry)
            me.state = state
            if condition():
                break
            if state & _SIGNAL_STATES and me.sigpending and sched.signal_pending_state(state, me):
                ret = -ERESTARTSYS
                break
            if fail_wakeup.armed:
                wakeup_fault(me)
            if unlock is not None:
                unlock()
            if timeout == MAX_SCHEDULE_TIMEOUT:
                _schedule()
            else:
                timeout = schedule_timeout(timeout)
            if relock is not None:
                relock()
            if timeout == 0:
                me.state = TASK_RUNNING
                ret = 1 if condition() else 0
                break
            me.state = TASK_RUNNING
            if condition():             # woken: test before queueing again
                break
    finally:
        me.state = TASK_RUNNING
        if entry.queued:
            entry.queued = False
            head.remove(entry)
        elif ret < 0 and exclusive:
            __wake_up(wq, TASK_NORMAL, 1)    # woken but leaving: pass it on
    if ret == 1 and timeout != 0:
        return timeout if timeout > 0 else 1
    return ret


def wait_event(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    if condition():
        return
    ___wait_event(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


def io_wait_event(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    wait_event(wq, condition)


def wait_event_timeout(wq: wait_queue_head, condition: Callable[[], bool], timeout: int) -> int:
    """Remaining jiffies (>= 1) if condition() became true, else 0."""
    return _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, timeout)


def wait_event_interruptible(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    """0, or -ERESTARTSYS if a signal arrived."""
    # The condition tested here, as the kernel's macro does, not in
    # _wait_event_common: one call less per sleep of every kthread's loop.
    if condition():
        return 0
    ret = ___wait_event(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_event_interruptible_timeout(wq: wait_queue_head, condition: Callable[[], bool],
                                     timeout: int) -> int:
    """Remaining jiffies (>= 1), 0 on timeout, -ERESTARTSYS on a signal."""
    return _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, timeout)


def wait_event_interruptible_exclusive(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             exclusive=True)
    return ret if ret < 0 else 0


def wait_event_exclusive(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT, exclusive=True)


def wait_event_killable(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    """0, or -ERESTARTSYS if SIGKILL arrived."""
    ret = _wait_event_common(wq, condition, TASK_KILLABLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_event_killable_timeout(wq: wait_queue_head, condition: Callable[[], bool],
                                timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_KILLABLE, timeout)


def wait_event_killable_exclusive(wq: wait_queue_head, condition: Callable[[], bool]) -> int:
    ret = _wait_event_common(wq, condition, TASK_KILLABLE, MAX_SCHEDULE_TIMEOUT, exclusive=True)
    return ret if ret < 0 else 0


def wait_event_idle(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    """wait_event in TASK_IDLE: not counted as load, not a hung task."""
    _wait_event_common(wq, condition, TASK_IDLE, MAX_SCHEDULE_TIMEOUT)


def wait_event_idle_exclusive(wq: wait_queue_head, condition: Callable[[], bool]) -> None:
    _wait_event_common(wq, condition, TASK_IDLE, MAX_SCHEDULE_TIMEOUT, exclusive=True)


def wait_event_idle_timeout(wq: wait_queue_head, condition: Callable[[], bool],
                            timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_IDLE, timeout)


def wait_event_cmd(wq: wait_queue_head, condition: Callable[[], bool],
                   cmd1: Callable[[], None], cmd2: Callable[[], None]) -> None:
    """Sleep running cmd1() before and cmd2() after each sleep."""
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                       unlock=cmd1, relock=cmd2)


def wait_event_locked(wq: wait_queue_head, condition: Callable[[], bool],
                      lock: spinlock_t | None = None) -> None:
    """Sleep with `lock` (default wq.lock, taken with spin_lock) dropped
    meanwhile; it is held again on return."""
    lk = lock if lock is not None else wq.lock
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                       unlock=lambda: spin_unlock(lk), relock=lambda: spin_lock(lk))


def wait_event_interruptible_locked(wq: wait_queue_head, condition: Callable[[], bool],
                                    lock: spinlock_t | None = None) -> int:
    lk = lock if lock is not None else wq.lock
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             unlock=lambda: spin_unlock(lk), relock=lambda: spin_lock(lk))
    return ret if ret < 0 else 0


def wait_event_interruptible_exclusive_locked(wq: wait_queue_head,
                                              condition: Callable[[], bool],
                                              lock: spinlock_t | None = None) -> int:
    lk = lock if lock is not None else wq.lock
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             exclusive=True, unlock=lambda: spin_unlock(lk),
                             relock=lambda: spin_lock(lk))
    return ret if ret < 0 else 0


def wait_event_interruptible_locked_irq(wq: wait_queue_head, condition: Callable[[], bool],
                                        lock: spinlock_t | None = None) -> int:
    lk = lock if lock is not None else wq.lock
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             unlock=lambda: spin_unlock_irq(lk), relock=lambda: spin_lock_irq(lk))
    return ret if ret < 0 else 0


def wait_event_lock_irq(wq: wait_queue_head, condition: Callable[[], bool],
                        lock: spinlock_t) -> None:
    """Sleep with `lock` (taken with spin_lock_irq) dropped meanwhile."""
    _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                       unlock=lambda: spin_unlock_irq(lock), relock=lambda: spin_lock_irq(lock))


def wait_event_lock_irq_timeout(wq: wait_queue_head, condition: Callable[[], bool],
                                lock: spinlock_t, timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_UNINTERRUPTIBLE, timeout,
                              unlock=lambda: spin_unlock_irq(lock),
                              relock=lambda: spin_lock_irq(lock))


def wait_event_interruptible_lock_irq(wq: wait_queue_head, condition: Callable[[], bool],
                                      lock: spinlock_t) -> int:
    ret = _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT,
                             unlock=lambda: spin_unlock_irq(lock),
                             relock=lambda: spin_lock_irq(lock))
    return ret if ret < 0 else 0


def wait_event_interruptible_lock_irq_timeout(wq: wait_queue_head,
                                              condition: Callable[[], bool],
                                              lock: spinlock_t, timeout: int) -> int:
    return _wait_event_common(wq, condition, TASK_INTERRUPTIBLE, timeout,
                              unlock=lambda: spin_unlock_irq(lock),
                              relock=lambda: spin_lock_irq(lock))


# -- wait_var_event (kernel/sched/wait_bit.c) -----------------------------------

_var_waitqs = [wait_queue_head(f"var_waitq{i}") for i in range(64)]


def _var_wake_function(entry: wait_queue_entry, mode: int) -> int:
    if entry.private is not _var_key_waking[0]:
        return 0
    return autoremove_wake_function(entry, mode)


_var_key_waking: list[Any] = [None]


def __var_waitqueue(var: object) -> wait_queue_head:
    return _var_waitqs[(id(var) >> 4) % len(_var_waitqs)]


def wait_var_event(var: object, condition: Callable[[], bool]) -> None:
    """Sleep until condition() holds; wake_up_var(var) re-tests it."""
    if condition():
        return
    wq = __var_waitqueue(var)
    entry = wait_queue_entry(_cpu.curr, 0, _var_wake_function)
    entry.private = var
    if debug_wait:
        _might_sleep()
    try:
        while True:
            prepare_to_wait(wq, entry, TASK_UNINTERRUPTIBLE)
            if condition():
                break
            _schedule()
    finally:
        finish_wait(wq, entry)


def wake_up_var(var: object) -> None:
    wq = __var_waitqueue(var)
    if wq.head:
        _var_key_waking[0] = var
        try:
            __wake_up(wq, TASK_NORMAL, 0)
        finally:
            _var_key_waking[0] = None
