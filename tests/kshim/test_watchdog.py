"""kshim.watchdog: a kthread or softirq running too long without schedule() is reported.

The hogs spin with mdelay() on the sim engine, where a busy wait moves
virtual time and nothing else: the verdicts do not depend on how much of
the host's CPU the test got."""
from __future__ import annotations

import pytest
from kshim_support import report, titles

from kshim import sched
from kshim.completion import complete, completion, wait_for_completion
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.softirq import raise_softirq
from kshim.timer import mdelay, schedule_timeout_interruptible
from kshim.watchdog import get_softlockup_thresh, set_watchdog_thresh


@pytest.fixture
def short_watchdog():
    old = get_softlockup_thresh() / 2
    set_watchdog_thresh(0.01)              # a soft lockup after 20 ms
    yield
    set_watchdog_thresh(old)


def spin_for_ms(ms: int, resched: bool = False) -> None:
    for _ in range(ms):                  # the bug under test: a busy loop
        mdelay(1)
        if resched:
            sched.cond_resched()


def run_hog(name: str, resched: bool) -> None:
    """Start a kthread that spins 40 ms and wait until it has (a kthread_stop
    before it first ran would end it unrun)."""
    done = completion()

    def hog(_):
        spin_for_ms(40, resched)
        complete(done)
        while not kthread_should_stop():
            schedule_timeout_interruptible(1)
        return 0
    t = kthread_run(hog, None, name)
    wait_for_completion(done)
    kthread_stop(t)


def test_a_kthread_running_too_long_without_schedule_is_reported(sim_kernel, short_watchdog):
    def body():
        run_hog("cpu_hog", False)
    sim_kernel(body)
    rep = report("soft lockup")
    assert rep.details["task"] == "cpu_hog" and rep.details["ran_ms"] >= 20
    assert "cpu_hog" in rep.title


def test_cond_resched_in_the_loop_keeps_the_watchdog_quiet(sim_kernel, short_watchdog):
    def body():
        run_hog("polite", True)
    sim_kernel(body)
    assert [x for x in titles() if "soft lockup" in x] == []


def test_a_softirq_running_too_long_is_reported(sim_kernel, short_watchdog):
    def slow_softirq(_):
        spin_for_ms(40)

    def body():
        raise_softirq(slow_softirq)
        sched.yield_()
    sim_kernel(body)
    rep = report("soft lockup")
    assert rep.details["callback"].endswith("slow_softirq")
