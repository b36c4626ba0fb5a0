"""kshim.softirq: softirq context, bottom-half disabling, tasklets, oopses, statistics."""
from __future__ import annotations

import pytest
from kshim_support import report, titles

from kshim import debug, engine_posix, sched, softirq
from kshim.host import io_job
from kshim.softirq import (local_bh_disable, local_bh_enable, local_irq_restore,
                           local_irq_save, raise_softirq, tasklet_disable, tasklet_enable,
                           tasklet_init, tasklet_kill, tasklet_schedule, tasklet_setup,
                           tasklet_struct)
from kshim.spinlock import spin_lock, spinlock_t


def test_softirqs_raised_by_a_task_run_when_it_sleeps(kernel):
    log = []

    def body():
        raise_softirq(lambda a: log.append(f"softirq {a}"), 1)
        log.append("task goes on")
        sched.yield_()
        log.append("task back")
    kernel(body)
    assert log == ["task goes on", "softirq 1", "task back"]


def test_local_bh_disable_defers_softirqs_until_the_outermost_enable(kernel):
    log = []

    def body():
        local_bh_disable()
        local_bh_disable()
        raise_softirq(lambda _: log.append("softirq"))
        local_bh_enable()
        log.append("inner enable")
        local_bh_enable()
        log.append("outer enable")
    kernel(body)
    assert log == ["inner enable", "softirq", "outer enable"]


def test_interrupts_off_keep_softirqs_off_too(kernel):
    log = []

    def body():
        flags = local_irq_save()
        local_bh_disable()
        raise_softirq(lambda _: log.append("softirq"))
        local_bh_enable()
        log.append("bh enabled, irqs still off")
        local_irq_restore(flags)
        sched.yield_()
    kernel(body)
    assert log == ["bh enabled, irqs still off", "softirq"]


def test_a_tasklet_scheduled_twice_before_it_runs_runs_once(kernel):
    log = []

    def body():
        t = tasklet_struct()
        tasklet_init(t, lambda d: log.append(f"tasklet {d}"), "data")
        tasklet_schedule(t)
        tasklet_schedule(t)
        sched.yield_()
        tasklet_schedule(t)
        sched.yield_()
    kernel(body)
    assert log == ["tasklet data", "tasklet data"]


def test_a_disabled_tasklet_runs_when_enabled_again(kernel):
    log = []

    def body():
        t = tasklet_struct()
        tasklet_setup(t, lambda tt: log.append(f"callback gets the tasklet: {tt is t}"))
        tasklet_disable(t)
        tasklet_schedule(t)
        sched.yield_()
        log.append("still disabled")
        tasklet_enable(t)
        sched.yield_()
    kernel(body)
    assert log == ["still disabled", "callback gets the tasklet: True"]


def test_tasklet_kill_drops_a_queued_run(kernel):
    log = []

    def body():
        t = tasklet_struct()
        tasklet_init(t, lambda d: log.append("ran"), None)
        tasklet_schedule(t)
        tasklet_kill(t)
        sched.yield_()
        log.append("killed")
    kernel(body)
    assert log == ["killed"]


def test_an_exception_in_a_softirq_is_an_oops_naming_it_and_the_cpu_recovers(kernel):
    def exploding(_):
        spin_lock(spinlock_t("t.dropped"))
        raise ValueError("boom")

    def body():
        raise_softirq(exploding)
        sched.yield_()
        return sched.preempt_count(), sched.in_softirq()
    assert kernel(body) == (0, False)
    rep = report("oops in softirq")
    assert rep.details["callback"].endswith("exploding") and "boom" in rep.details["error"]


def test_a_softirq_returning_with_a_lock_held_is_reported(kernel):
    lk = spinlock_t("t.leak")

    def leaky(_):
        spin_lock(lk)

    def body():
        raise_softirq(leaky)
        sched.yield_()
        return sched.preempt_count()
    assert kernel(body) == 0
    rep = report("softirq returned with a changed preempt count")
    assert rep.details["callback"].endswith("leaky") and rep.details["preempt_count_after"] == 1


def test_softirq_statistics_count_runs_per_kind(kernel):
    def counted(_):
        pass

    def body():
        for _ in range(3):
            raise_softirq(counted)
        sched.yield_()
        return {s.kind: s for s in softirq.statistics()}
    st = kernel(body)
    kind = next(k for k in st if k.endswith("counted"))
    assert st[kind].runs == 3 and st[kind].total_ns > 0
    assert "counted" in softirq.softirqs()
    assert titles() == []


@pytest.mark.parametrize("aids", [True, False], ids=["debug-aids-on", "debug-aids-off"])
def test_a_batch_of_io_completions_runs_in_order_and_one_oops_loses_no_other(kernel, aids):
    """softirq_run_jobs (the engine's reaped io_uring batch): every job's
    completion runs, in order, in softirq context; the one that raises is
    an oops naming it, and the CPU's context is as before."""
    ran: list[tuple[int, bool]] = []

    def done(job: io_job) -> None:
        ran.append((job.private, sched.in_softirq()))

    def exploding(job: io_job) -> None:
        spin_lock(spinlock_t("t.batch"))
        raise ValueError("boom in the batch")

    jobs = [io_job(engine_posix.file_fsync, (), done, 0),
            io_job(engine_posix.file_fsync, (), exploding, 1),
            io_job(engine_posix.file_fsync, (), done, 2)]

    def body():
        debug.set_debug(aids)
        softirq.softirq_run_jobs(jobs)
        return sched.preempt_count(), sched.in_softirq()
    assert kernel(body) == (0, False)
    assert ran == [(0, True), (2, True)]
    rep = report("oops in softirq")
    assert rep.details["callback"].endswith("exploding") and "boom" in rep.details["error"]
