"""Kernel threads.

Twin of kernel/kthread.c and include/linux/kthread.h.

Contexts: kthread_create/kthread_run from any context (the thread starts at
its first wake-up); kthread_stop and kthread_park from a task only (they
wait); kthread_should_stop, kthread_should_park and kthread_parkme from the
thread itself.

Differs from the kernel: a kthread is a greenlet run by kshim.sched; it is
never preempted, so a long loop must call cond_resched() or sleep.
kthread_stop() wakes the thread, waits on a completion for it to return,
and returns the thread function's result; there is no polling. CPU binding
(kthread_bind, kthread_create_on_node/cpu) is accepted and ignored: there is
one CPU. The name is namefmt % args when args are given.

Debug aids: a kthread that returns holding a lock, or dies of an oops, is
reported by kshim.sched; kthread_stop() of the calling thread itself and of
a thread that already exited after a stop are reported.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import sched
from kshim.bug import report_bug
from kshim.completion import complete_all, completion, wait_for_completion
from kshim.err import EINTR, ENOSYS
from kshim.sched import PF_KTHREAD, TASK_PARKED, task_struct


class kthread:
    """struct kthread: the per-thread record behind task.kthread."""

    __slots__ = ("should_stop", "should_park", "exited", "parked", "threadfn", "data",
                 "started", "stopped")

    def __init__(self, threadfn: Callable[[Any], Any], data: Any) -> None:
        self.should_stop = False
        self.should_park = False
        self.exited = completion("kthread exit")
        self.parked = completion("kthread parked")
        self.threadfn = threadfn
        self.data = data
        self.started = False
        self.stopped = False


def _kthread_exit_hook(t: task_struct) -> None:
    complete_all(t.kthread.exited)


def kthread_create(threadfn: Callable[[Any], Any], data: Any, namefmt: str,
                   *args: Any) -> task_struct:
    """Create a stopped kthread; wake_up_process() starts it."""
    name = namefmt % args if args else namefmt
    t = sched.alloc_task(name[:63])
    t.flags |= PF_KTHREAD
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


def kthread_create_on_node(threadfn: Callable[[Any], Any], data: Any, node: int,
                           namefmt: str, *args: Any) -> task_struct:
    return kthread_create(threadfn, data, namefmt, *args)


def kthread_create_on_cpu(threadfn: Callable[[Any], Any], data: Any, cpu: int,
                          namefmt: str) -> task_struct:
    return kthread_create(threadfn, data, namefmt.replace("%u", str(cpu)))


def kthread_run(threadfn: Callable[[Any], Any], data: Any, namefmt: str,
                *args: Any) -> task_struct:
    """kthread_create + wake_up_process."""
    t = kthread_create(threadfn, data, namefmt, *args)
    sched.wake_up_process(t)
    return t


def kthread_bind(t: task_struct, cpu: int) -> None:
    """Accepted: there is one CPU."""


def to_kthread(t: task_struct) -> kthread:
    return t.kthread


def kthread_should_stop() -> bool:
    kt = sched.cpu.curr.kthread
    return kt is not None and kt.should_stop


def kthread_should_park() -> bool:
    kt = sched.cpu.curr.kthread
    return kt is not None and kt.should_park


def kthread_should_stop_or_park() -> bool:
    kt = sched.cpu.curr.kthread
    return kt is not None and (kt.should_stop or kt.should_park)


def kthread_parkme() -> None:
    """Called by the thread: sleep parked while kthread_park() asks it to."""
    me = sched.cpu.curr
    kt = me.kthread
    while kt.should_park:
        me.state = TASK_PARKED
        complete_all(kt.parked)
        sched.schedule()
    me.state = sched.TASK_RUNNING


def kthread_park(t: task_struct) -> int:
    """Ask t to park and wait until it does; 0, or -ENOSYS if it exited."""
    kt = t.kthread
    if t.state == sched.TASK_DEAD:
        return -ENOSYS
    kt.should_park = True
    if t is not sched.cpu.curr:
        sched.wake_up_process(t)
        wait_for_completion(kt.parked)
    return 0


def kthread_unpark(t: task_struct) -> None:
    kt = t.kthread
    kt.should_park = False
    kt.parked.done = 0
    if t.state == TASK_PARKED:
        sched.wake_up_process(t)


def kthread_stop(t: task_struct) -> Any:
    """Ask t to stop, wake it, wait for it to exit; return its result
    (-EINTR if it never ran)."""
    kt = t.kthread
    if t is sched.cpu.curr:
        report_bug("kthread_stop() of the calling thread", task=t.comm)
        return -EINTR
    if kt.stopped:
        report_bug("kthread_stop() of a thread already stopped", task=t.comm)
    kt.stopped = True
    kt.should_stop = True
    kt.should_park = False
    if t.state != sched.TASK_DEAD:
        sched.wake_up_process(t)
        wait_for_completion(kt.exited)
    return t.result if kt.started else -EINTR


def kthread_data(t: task_struct) -> Any:
    return t.kthread.data


def kthread_func(t: task_struct) -> Callable[[Any], Any] | None:
    return t.kthread.threadfn if t.kthread is not None else None


def set_freezable() -> None:
    """No freezer: accepted."""


def try_to_freeze() -> bool:
    return False


def freezing(t: task_struct) -> bool:
    return False
