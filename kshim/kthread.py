"""Kernel threads.

Twin of kernel/kthread.c and include/linux/kthread.h.

Contexts: kthread_create/kthread_run from any context (the thread starts at
its first wake-up); kthread_stop from a task only (it waits for the exit);
kthread_should_stop from the thread itself.

Differs from the kernel: a kthread is a greenlet run by kshim.sched; it is
never preempted, so a long loop must call cond_resched() or sleep.
kthread_stop() wakes the thread, waits on a completion for it to return,
and returns the thread function's result; there is no polling.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import sched
from kshim.completion import complete_all, completion, wait_for_completion
from kshim.err import EINTR
from kshim.sched import task_struct


class kthread:
    __slots__ = ("should_stop", "exited", "threadfn", "data", "started")

    def __init__(self, threadfn: Callable[[Any], Any], data: Any) -> None:
        self.should_stop = False
        self.exited = completion("kthread exit")
        self.threadfn = threadfn
        self.data = data
        self.started = False


def _kthread_exit_hook(t: task_struct) -> None:
    complete_all(t.kthread.exited)


def kthread_create(threadfn: Callable[[Any], Any], data: Any, namefmt: str) -> task_struct:
    """Create a stopped kthread; wake_up_process() starts it."""
    t = sched.alloc_task(namefmt[:63])
    kt = kthread(threadfn, data)
    t.kthread = kt

    def body() -> Any:
        kt.started = True
        if kt.should_stop:
            return -EINTR
        return threadfn(data)
    sched.task_start(t, body)
    t.exit_hooks.append(_kthread_exit_hook)
    return t


def kthread_run(threadfn: Callable[[Any], Any], data: Any, namefmt: str) -> task_struct:
    t = kthread_create(threadfn, data, namefmt)
    sched.wake_up_process(t)
    return t


def kthread_should_stop() -> bool:
    kt = sched.current().kthread
    return kt is not None and kt.should_stop


def kthread_stop(t: task_struct) -> Any:
    """Ask t to stop, wake it, wait for it to exit; return its result."""
    kt = t.kthread
    kt.should_stop = True
    if t.state != sched.TASK_DEAD:
        sched.wake_up_process(t)
        wait_for_completion(kt.exited)
    return t.result if kt.started else -EINTR


def kthread_data(t: task_struct) -> Any:
    return t.kthread.data
