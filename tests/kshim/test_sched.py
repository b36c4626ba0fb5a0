"""kshim.sched: contexts, schedule(), signals, statistics and the boot."""
from __future__ import annotations

from kshim_support import report, run_kernel, titles

from kshim import sched
from kshim.kthread import kthread_run, kthread_stop
from kshim.sched import (SIGINT, SIGTERM, allow_signal, cond_resched, flush_signals,
                         force_sig, kernel_dequeue_signal, send_sig, set_user_nice,
                         signal_pending)
from kshim.softirq import local_bh_disable, local_bh_enable, raise_softirq
from kshim.timer import msleep
from kshim.wait import wait_event, wait_queue_head


def test_context_queries_in_a_task_and_in_a_softirq(kernel):
    seen = {}

    def body():
        seen["task"] = (sched.in_task(), sched.in_softirq(), sched.in_interrupt(),
                        sched.in_atomic(), sched.current().comm)
        raise_softirq(lambda _: seen.__setitem__(
            "softirq", (sched.in_task(), sched.in_serving_softirq(), sched.in_interrupt(),
                        sched.in_atomic())))
        local_bh_disable()
        seen["bh"] = (sched.in_softirq(), sched.in_serving_softirq(), sched.in_atomic())
        local_bh_enable()
    kernel(body)
    assert seen["task"] == (True, False, False, False, "insmod")
    assert seen["bh"] == (True, False, True)
    assert seen["softirq"] == (False, True, True, True)


def test_cond_resched_yields_only_when_someone_else_can_run(kernel):
    log = []

    def body():
        alone = cond_resched()
        t = kthread_run(lambda _: log.append("other ran"), None, "other")
        log.append("before")
        crowded = cond_resched()
        log.append("after")
        kthread_stop(t)
        return alone, crowded
    assert kernel(body) == (0, 1)
    assert log == ["before", "other ran", "after"]


def test_schedule_from_a_softirq_is_reported_and_refused(kernel):
    def body():
        raise_softirq(lambda _: sched.schedule())
        sched.yield_()
    kernel(body)
    assert report("scheduling while atomic").details["callback"].endswith("<lambda>")
    assert "schedule() called outside a task" in report("oops in softirq").details["error"]


def test_blocking_call_while_not_task_running_is_reported(kernel):
    def body():
        sched.set_current_state(sched.TASK_INTERRUPTIBLE)
        msleep(1)
    kernel(body)
    assert report("do not call blocking ops when !TASK_RUNNING").details["state"] == "S"


def test_kthreads_ignore_signals_they_did_not_allow(kernel):
    def body():
        me = sched.current()
        send_sig(SIGTERM, me)
        ignored = signal_pending(me)
        allow_signal(SIGTERM)
        send_sig(SIGTERM, me)
        send_sig(SIGINT, me)            # still not allowed
        pending = signal_pending(me)
        first = kernel_dequeue_signal()
        rest = kernel_dequeue_signal()
        force_sig(SIGINT, me)
        forced = signal_pending(me)
        flush_signals(me)
        return ignored, pending, first, rest, forced, signal_pending(me)
    assert kernel(body) == (False, True, SIGTERM, 0, True, False)


def test_set_user_nice_clamps_to_the_kernel_range(kernel):
    def body():
        me = sched.current()
        set_user_nice(me, -100)
        low = me.nice
        set_user_nice(me, 100)
        return low, me.nice
    assert kernel(body) == (-20, 19)


def test_statistics_and_top_show_tasks_switches_and_wakeups(kernel):
    def sleeper(wq):
        wait_event(wq, lambda: False)

    def body():
        wq = wait_queue_head("t.stats")
        t = kthread_run(sleeper, wq, "sleepy")
        sched.yield_()
        st = {s.comm: s for s in sched.statistics()}
        text = sched.top()
        sched.wake_up_process(t)        # it re-checks, sleeps again
        sched.yield_()
        t.kthread.should_stop = True
        return st, text, t.wakeups
    st, text, wakeups = kernel(body)
    assert st["sleepy"].state == "D" and st["sleepy"].nvcsw == 1
    assert st["insmod"].state == "R"
    assert "sleepy" in text and "SWITCH" in text
    assert wakeups == 2


def test_a_new_boot_leaves_the_tasks_of_the_last_one_behind(kernel):
    def body():
        wq = wait_queue_head("t.boot")
        t = kthread_run(lambda _: wait_event(wq, lambda: False), None, "stuck")
        sched.yield_()
        return t
    stuck = kernel(body)
    assert stuck.state == sched.TASK_UNINTERRUPTIBLE
    pids = run_kernel(lambda: sorted(t.comm for t in sched.all_tasks.values()))
    assert "stuck" not in pids
    assert stuck.state == sched.TASK_DEAD and not sched.wake_up_process(stuck)
    assert titles() == []
