"""Workqueues and delayed work.

Twin of kernel/workqueue.c and include/linux/workqueue.h.

Contexts: queue_work, queue_delayed_work, mod_delayed_work, schedule_work,
cancel_work and cancel_delayed_work from any context; flush_*,
cancel_*_sync, drain and destroy_workqueue sleep, so task context only.
Work functions run in task context on the workqueue's worker kthreads and may
sleep.

Differs from the kernel: each workqueue has its own pool of min(max_active,
4) worker kthreads ("kworker/<wq>:<n>") rather than shared per-CPU pools,
and an idle worker is woken per queued item (exclusive wait), which is what
the kernel's concurrency management amounts to on one CPU. A work item
never runs on two workers at once (the kernel's non-reentrancy): queued
again while running, it runs again after the current run. WQ_* flags are
accepted and recorded; ordered/singlethread queues get one worker. The
system_long_wq, system_unbound_wq, system_highpri_wq and friends are
system_wq. The _on variants ignore the CPU.

Debug aids (debug_objects): queueing a work item whose function is unset,
queueing on a dying workqueue, INIT_WORK on a pending or running item and
freeing an object that holds a pending or running work item (through
kshim.slab) are reported, naming the work function. Idle workers sleep in
TASK_IDLE, so the hung-task check ignores them. statistics() and
workqueues() give per-queue counters.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, cast

import attrs

from kshim import debugobjects, sched
from kshim.bug import report_bug
from kshim.fault_sched import fail_queue_work, work_fault
from kshim.jiffies import jiffies
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.printk import KERN_WARNING, printk
from kshim.sched import PF_WQ_WORKER
from kshim.timer import del_timer, mod_timer, timer_list
from kshim.wait import wait_event, wait_event_idle_exclusive, wait_queue_head, wake_up, wake_up_all

WQ_UNBOUND = 1 << 1
WQ_FREEZABLE = 1 << 2
WQ_MEM_RECLAIM = 1 << 3
WQ_HIGHPRI = 1 << 4
WQ_CPU_INTENSIVE = 1 << 5
WQ_SYSFS = 1 << 6
WQ_POWER_EFFICIENT = 1 << 7
__WQ_ORDERED = 1 << 17
WQ_MAX_ACTIVE = 512
WQ_DFL_ACTIVE = WQ_MAX_ACTIVE // 2
WORK_CPU_UNBOUND = -1

_cpu = sched.cpu


class work_struct:
    __slots__ = ("func", "pending", "running", "wq", "data")

    def __init__(self, func: "Callable[[work_struct], None] | None" = None) -> None:
        self.func = func
        self.pending = False
        self.running = False
        self.wq: workqueue_struct | None = None
        self.data: Any = None      # the owner, for container_of-like access

    def __repr__(self) -> str:
        return f"<work {_fname(self.func)} pending={self.pending} running={self.running}>"


class delayed_work(work_struct):
    __slots__ = ("timer",)

    def __init__(self, func: "Callable[[work_struct], None] | None" = None) -> None:
        super().__init__(func)
        self.timer = timer_list(_delayed_work_timer_fn, name="delayed_work_timer_fn")
        self.timer.data = self


def _fname(fn: object) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def INIT_WORK(work: work_struct, func: Callable[[work_struct], None]) -> None:
    if (work.pending or work.running) and debugobjects.debug_objects:
        debugobjects.debug_object_init(work, "INIT_WORK")
    work.func = func
    work.pending = False


INIT_WORK_ONSTACK = INIT_WORK


def INIT_DELAYED_WORK(dwork: delayed_work, func: Callable[[work_struct], None]) -> None:
    INIT_WORK(dwork, func)


def DECLARE_WORK(func: Callable[[work_struct], None]) -> work_struct:
    return work_struct(func)


def DECLARE_DELAYED_WORK(func: Callable[[work_struct], None]) -> delayed_work:
    return delayed_work(func)


def to_delayed_work(work: work_struct) -> delayed_work:
    return cast(delayed_work, work)    # a delayed_work is its own work_struct


def destroy_work_on_stack(work: work_struct) -> None:
    if debugobjects.debug_objects:
        debugobjects.debug_check_no_obj_freed(work, "destroy_work_on_stack")


def work_pending(work: work_struct) -> bool:
    return work.pending


def delayed_work_pending(dwork: delayed_work) -> bool:
    return dwork.pending


def work_busy(work: work_struct) -> int:
    """WORK_BUSY_PENDING (1) | WORK_BUSY_RUNNING (2)."""
    return (1 if work.pending else 0) | (2 if work.running else 0)


class workqueue_struct:
    __slots__ = ("name", "flags", "max_active", "worklist", "waitq", "done_waitq",
                 "workers", "dying", "nr_running", "executed", "queued")

    def __init__(self, name: str, flags: int, max_active: int) -> None:
        self.name = name
        self.flags = flags
        self.max_active = max_active
        self.worklist: deque[work_struct] = deque()
        self.waitq = wait_queue_head(f"wq {name}")
        self.done_waitq = wait_queue_head(f"wq {name} done")
        self.workers: list[sched.task_struct] = []
        self.dying = False
        self.nr_running = 0
        self.executed = 0
        self.queued = 0

    def __repr__(self) -> str:
        return f"<workqueue {self.name} queued={len(self.worklist)} running={self.nr_running}>"


_workqueues: list[workqueue_struct] = []


def _has_takeable(wq: workqueue_struct) -> bool:
    for w in wq.worklist:
        if not w.running:
            return True
    return False


def _worker_thread(wq: workqueue_struct) -> int:
    me = _cpu.curr
    me.flags |= PF_WQ_WORKER
    worklist = wq.worklist

    def cond() -> bool:
        return (bool(worklist) and _has_takeable(wq)) or kthread_should_stop()
    while True:
        wait_event_idle_exclusive(wq.waitq, cond)
        work = _take_work(wq)
        if work is None:
            if kthread_should_stop():
                return 0
            continue
        work.pending = False
        work.running = True
        wq.nr_running += 1
        me.current_work = work
        try:
            work.func(work)
        finally:
            me.current_work = None
            work.running = False
            wq.nr_running -= 1
            wq.executed += 1
            if wq.done_waitq.head:
                wake_up_all(wq.done_waitq)
            if worklist and wq.waitq.head:
                wake_up(wq.waitq)


def _take_work(wq: workqueue_struct) -> work_struct | None:
    wl = wq.worklist
    if wl and not wl[0].running:
        return wl.popleft()
    # A work item already running elsewhere waits (non-reentrancy).
    for i, w in enumerate(wl):
        if not w.running:
            del wl[i]
            return w
    return None


def alloc_workqueue(fmt: str, flags: int = 0, max_active: int = 0,
                    *args: Any) -> workqueue_struct:
    """A workqueue named fmt % args with up to min(max_active, 4) workers."""
    name = fmt % args if args else fmt
    if max_active <= 0:
        max_active = WQ_DFL_ACTIVE
    wq = workqueue_struct(name, flags, max_active)
    nworkers = 1 if flags & __WQ_ORDERED else min(max_active, 4)
    for i in range(nworkers):
        wq.workers.append(kthread_run(_worker_thread, wq, f"kworker/{name}:{i}"))
    _workqueues.append(wq)
    return wq


def alloc_ordered_workqueue(fmt: str, flags: int = 0, *args: Any) -> workqueue_struct:
    return alloc_workqueue(fmt, flags | WQ_UNBOUND | __WQ_ORDERED, 1, *args)


def create_workqueue(name: str) -> workqueue_struct:
    return alloc_workqueue(name, WQ_MEM_RECLAIM, 1)


def create_singlethread_workqueue(name: str) -> workqueue_struct:
    return alloc_ordered_workqueue(name, WQ_MEM_RECLAIM)


def workqueue_set_max_active(wq: workqueue_struct, max_active: int) -> None:
    wq.max_active = max_active


def queue_work(wq: workqueue_struct, work: work_struct) -> bool:
    """Queue work unless already pending; return True if queued."""
    if work.pending:
        return False
    if fail_queue_work.armed and work_fault(wq, work, queue_work):
        return True
    if work.func is None:
        report_bug("queue_work() of a work item without a function", wq=wq.name)
        return False
    if wq.dying:
        report_bug("queue_work() on a dying workqueue", wq=wq.name, work=_fname(work.func))
        return False
    work.pending = True
    work.wq = wq
    wq.worklist.append(work)
    wq.queued += 1
    if wq.waitq.head:
        wake_up(wq.waitq)
    return True


def queue_work_on(cpu: int, wq: workqueue_struct, work: work_struct) -> bool:
    return queue_work(wq, work)


def _delayed_work_timer_fn(timer: timer_list) -> None:
    dwork = timer.data
    dwork.pending = False
    queue_work(dwork.wq, dwork)


def queue_delayed_work(wq: workqueue_struct, dwork: delayed_work, delay: int) -> bool:
    """Queue dwork after `delay` jiffies unless already pending; True if queued."""
    if dwork.pending:
        return False
    if delay <= 0:
        return queue_work(wq, dwork)
    dwork.pending = True
    dwork.wq = wq
    mod_timer(dwork.timer, jiffies() + delay)
    return True


def queue_delayed_work_on(cpu: int, wq: workqueue_struct, dwork: delayed_work,
                          delay: int) -> bool:
    return queue_delayed_work(wq, dwork, delay)


def mod_delayed_work(wq: workqueue_struct, dwork: delayed_work, delay: int) -> bool:
    """(Re)arm dwork for `delay`; return True if it was pending before."""
    was = _cancel(dwork)
    queue_delayed_work(wq, dwork, delay)
    return was


def mod_delayed_work_on(cpu: int, wq: workqueue_struct, dwork: delayed_work,
                        delay: int) -> bool:
    return mod_delayed_work(wq, dwork, delay)


def _cancel(work: work_struct) -> bool:
    was = work.pending
    if isinstance(work, delayed_work):
        del_timer(work.timer)
    if work.pending and work.wq is not None:
        try:
            work.wq.worklist.remove(work)
        except ValueError:
            pass
    work.pending = False
    return was


def cancel_work(work: work_struct) -> bool:
    """Dequeue work if pending (it may still be running); True if it was."""
    return _cancel(work)


def cancel_delayed_work(dwork: delayed_work) -> bool:
    return _cancel(dwork)


def current_work() -> work_struct | None:
    """The work item the current worker is running, or None."""
    return _cpu.curr.current_work


def flush_work(work: work_struct) -> bool:
    """Wait until work has finished its last queued run; True if it waited."""
    wq = work.wq
    if wq is None or not (work.pending or work.running):
        return False
    if _cpu.curr.current_work is work:
        report_bug("flush_work() of the work item running it (deadlock)", work=_fname(work.func))
        return False
    wait_event(wq.done_waitq, lambda: not (work.pending or work.running))
    return True


def cancel_work_sync(work: work_struct) -> bool:
    """Dequeue work and wait for a running instance; True if it was pending."""
    was = _cancel(work)
    if work.running and work.wq is not None and _cpu.curr.current_work is not work:
        wait_event(work.wq.done_waitq, lambda: not work.running)
    return was


def cancel_delayed_work_sync(dwork: delayed_work) -> bool:
    return cancel_work_sync(dwork)


def flush_delayed_work(dwork: delayed_work) -> bool:
    """Run a pending delayed work now and wait for it."""
    if del_timer(dwork.timer):
        dwork.pending = False
        queue_work(dwork.wq, dwork)
    return flush_work(dwork)


def flush_workqueue(wq: workqueue_struct) -> None:
    """Wait until every item queued so far has run."""
    if _cpu.curr.current_work is not None and _cpu.curr.current_work.wq is wq:
        report_bug("flush_workqueue() from a work item of the same queue (deadlock)",
                   wq=wq.name)
        return
    wait_event(wq.done_waitq, lambda: not wq.worklist and not wq.nr_running)


def drain_workqueue(wq: workqueue_struct) -> None:
    """Flush until the queue stays empty (work may requeue itself meanwhile)."""
    flush_workqueue(wq)


def destroy_workqueue(wq: workqueue_struct) -> None:
    """Drain wq, then stop its workers."""
    if wq.worklist:
        printk(KERN_WARNING + f"destroy_workqueue: {wq.name} still has "
               f"{len(wq.worklist)} queued items: draining")
    drain_workqueue(wq)
    wq.dying = True
    for t in wq.workers:
        kthread_stop(t)
    wq.workers.clear()
    try:
        _workqueues.remove(wq)
    except ValueError:
        pass


def _work_hint(w: work_struct) -> str | None:
    return _fname(w.func) if (w.pending or w.running) else None


def _work_fixup(w: work_struct) -> None:
    _cancel(w)


debugobjects.debug_object_register(work_struct, "work_struct", _work_hint, _work_fixup)
debugobjects.debug_object_register(delayed_work, "work_struct", _work_hint, _work_fixup)

system_wq: workqueue_struct | None = None
system_highpri_wq: workqueue_struct | None = None
system_long_wq: workqueue_struct | None = None
system_unbound_wq: workqueue_struct | None = None
system_freezable_wq: workqueue_struct | None = None
system_power_efficient_wq: workqueue_struct | None = None


def workqueue_init() -> None:
    """Create system_wq (engine start-up, from the init task)."""
    global system_wq, system_highpri_wq, system_long_wq, system_unbound_wq
    global system_freezable_wq, system_power_efficient_wq
    _workqueues.clear()
    system_wq = alloc_workqueue("events", 0, 4)
    system_highpri_wq = system_long_wq = system_unbound_wq = system_wq
    system_freezable_wq = system_power_efficient_wq = system_wq


def schedule_work(work: work_struct) -> bool:
    return queue_work(system_wq, work)


def schedule_work_on(cpu: int, work: work_struct) -> bool:
    return queue_work(system_wq, work)


def schedule_delayed_work(dwork: delayed_work, delay: int) -> bool:
    return queue_delayed_work(system_wq, dwork, delay)


def schedule_delayed_work_on(cpu: int, dwork: delayed_work, delay: int) -> bool:
    return queue_delayed_work(system_wq, dwork, delay)


def flush_scheduled_work() -> None:
    flush_workqueue(system_wq)


@attrs.frozen
class workqueue_stats:
    """One workqueue in statistics()."""

    name: str
    workers: int
    max_active: int
    pending: int
    running: int
    queued: int
    executed: int


def statistics() -> list[workqueue_stats]:
    """Per workqueue: workers, queued and running items, totals."""
    return [workqueue_stats(wq.name, len(wq.workers), wq.max_active, len(wq.worklist),
                            wq.nr_running, wq.queued, wq.executed) for wq in _workqueues]


def workqueues() -> str:
    """Per-workqueue text, like the kernel's wq_dump.py."""
    lines = [f"{'workqueue':<24} {'workers':>7} {'pending':>8} {'running':>8} {'queued':>10} "
             f"{'executed':>10}"]
    for s in statistics():
        lines.append(f"{s.name[:24]:<24} {s.workers:>7} {s.pending:>8} {s.running:>8} "
                     f"{s.queued:>10} {s.executed:>10}")
    return "\n".join(lines) + "\n"
