"""kshim.hung_task: a kthread blocked uninterruptibly too long is reported with its stack."""
from __future__ import annotations

import pytest
from kshim_support import report, titles

from kshim import bug, host, hung_task, sched
from kshim.hung_task import check_hung_uninterruptible_tasks, set_hung_task_timeout
from kshim.kthread import kthread_run
from kshim.timer import msleep
from kshim.wait import (wait_event, wait_event_idle, wait_event_interruptible,
                        wait_event_killable, wait_queue_head)


@pytest.fixture
def short_hung_timeout():
    yield
    set_hung_task_timeout(120.0)


def stuck_forever_in_io(wq):
    wait_event(wq, lambda: False)


def test_a_kthread_blocked_past_the_limit_is_reported_with_its_stack(kernel):
    def body():
        wq = wait_queue_head("t.hung")
        t = kthread_run(stuck_forever_in_io, wq, "stuck")
        sched.yield_()
        now = host.ops.monotonic()
        first = check_hung_uninterruptible_tasks(10.0, now)          # notes its switch count
        early = check_hung_uninterruptible_tasks(10.0, now + 5)      # not yet
        late = check_hung_uninterruptible_tasks(10.0, now + 11)
        again = check_hung_uninterruptible_tasks(10.0, now + 30)     # reported once
        t.kthread.should_stop = True
        return [x.comm for x in first + early], [x.comm for x in late], again
    before, late, again = kernel(body)
    assert before == [] and late == ["stuck"] and again == []
    rep = report("task stuck:")
    assert "blocked for more than 11 seconds" in rep.title
    assert rep.details["state"] == "D"
    assert "stuck_forever_in_io" in rep.details["stack"] and "wait_event" in rep.details["stack"]


def test_interruptible_idle_and_killable_sleepers_are_not_hung(kernel):
    def body():
        wq = wait_queue_head("t.nothung")
        ts = [kthread_run(lambda _: wait_event_interruptible(wq, lambda: False), None, "intr"),
              kthread_run(lambda _: wait_event_idle(wq, lambda: False), None, "idle"),
              kthread_run(lambda _: wait_event_killable(wq, lambda: False), None, "killable")]
        sched.yield_()
        now = host.ops.monotonic()
        check_hung_uninterruptible_tasks(1.0, now)
        found = check_hung_uninterruptible_tasks(1.0, now + 100)
        for t in ts:
            t.kthread.should_stop = True
        return [t.comm for t in found]
    assert kernel(body) == []
    assert titles() == []


def test_a_task_that_keeps_running_is_not_hung(kernel):
    def body():
        wq = wait_queue_head("t.busy")
        t = kthread_run(stuck_forever_in_io, wq, "sleeper")
        sched.yield_()
        now = host.ops.monotonic()
        check_hung_uninterruptible_tasks(1.0, now)
        sched.wake_up_process(t)        # it runs (and sleeps again): a new switch
        sched.yield_()
        found = check_hung_uninterruptible_tasks(1.0, now + 2)
        t.kthread.should_stop = True
        return found
    assert kernel(body) == []


def test_the_periodic_detector_fires_on_its_own(kernel, short_hung_timeout):
    def body():
        set_hung_task_timeout(0.05, check_interval=0.02)
        wq = wait_queue_head("t.periodic")
        t = kthread_run(stuck_forever_in_io, wq, "periodic_stuck")
        for _ in range(200):            # bounded: 200 x 10 ms of kernel sleep at most
            if bug.find_reports("periodic_stuck"):
                break
            msleep(10)
        t.kthread.should_stop = True
        return hung_task.checks
    assert kernel(body) > 1
    assert report("task periodic_stuck:").details["task"] == "periodic_stuck"
