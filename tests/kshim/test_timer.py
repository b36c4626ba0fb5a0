"""kshim.timer: timers in softirq context, schedule_timeout, msleep, lifetime checks.

On the sim engine (virtual time): sleeps are exact, so the tests check
exact durations, not wall-clock windows."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched
from kshim.completion import complete, completion, wait_for_completion
from kshim.jiffies import jiffies, msecs_to_jiffies
from kshim.kthread import kthread_run, kthread_stop
from kshim.sched import SIGINT, allow_signal, send_sig
from kshim.timer import (add_timer, del_timer, del_timer_sync, from_timer, mod_timer,
                         msleep, msleep_interruptible, schedule_timeout_uninterruptible,
                         setup_timer, timer_list, timer_pending, timer_reduce, timer_setup,
                         timer_shutdown)


def test_mod_timer_reports_whether_the_timer_was_pending(sim_kernel):
    def body():
        t = timer_list(lambda _: None)
        far = jiffies() + 100_000
        first = mod_timer(t, far)
        again = mod_timer(t, far + 1)
        pending = timer_pending(t)
        deleted = del_timer(t)
        return first, again, pending, deleted, del_timer(t), timer_pending(t)
    assert sim_kernel(body) == (0, 1, True, 1, 0, False)


def test_timers_fire_in_expiry_order_in_softirq_context(sim_kernel):
    log = []

    def body():
        done = completion()

        def fn(t):
            log.append((from_timer(t), sched.in_serving_softirq()))
            if from_timer(t) == "last":
                complete(done)
        now = jiffies()
        for name, delay in (("last", 6), ("first", 2), ("middle", 4)):
            t = timer_list()
            setup_timer(t, fn, name)
            mod_timer(t, now + delay)
        wait_for_completion(done)
    sim_kernel(body)
    assert log == [("first", True), ("middle", True), ("last", True)]


def test_a_deleted_timer_does_not_fire_and_timer_reduce_only_moves_earlier(sim_kernel):
    log = []

    def body():
        done = completion()
        gone = timer_list(lambda _: log.append("deleted one fired"))
        mod_timer(gone, jiffies() + 1)
        del_timer_sync(gone)
        t = timer_list(lambda _: (log.append("reduced fired"), complete(done)))
        mod_timer(t, jiffies() + 100_000)
        timer_reduce(t, jiffies() + 2)
        timer_reduce(t, jiffies() + 50_000)       # later: ignored
        wait_for_completion(done)
    sim_kernel(body)
    assert log == ["reduced fired"]


def test_sleeping_in_a_timer_callback_is_reported_naming_it(sim_kernel):
    def body():
        done = completion()

        def naughty_timer(t):
            complete(done)
            msleep(1)
        mod_timer(timer_list(naughty_timer), jiffies() + 1)
        wait_for_completion(done)
    sim_kernel(body)
    rep = report("sleeping function called from invalid context")
    assert rep.details["callback"].endswith("naughty_timer") and rep.details["in_softirq"] == 1
    assert "schedule() called outside a task" in report("oops in softirq").details["error"]


def test_timer_setup_or_add_timer_on_a_pending_timer_is_reported(sim_kernel):
    def body():
        t = timer_list(lambda _: None)
        mod_timer(t, jiffies() + 100_000)
        timer_setup(t, lambda _: None)
        add_timer(t)
        del_timer(t)
    sim_kernel(body)
    assert report("ODEBUG: init active").details["object_type"] == "timer_list"
    assert report("add_timer() on a pending timer")


def test_del_timer_sync_from_the_timers_own_callback_is_reported(sim_kernel):
    def body():
        done = completion()

        def self_killer(t):
            del_timer_sync(t)
            complete(done)
        mod_timer(timer_list(self_killer), jiffies() + 1)
        wait_for_completion(done)
    sim_kernel(body)
    assert report("del_timer_sync() from the timer's own callback")


def test_timer_shutdown_makes_later_arming_a_no_op(sim_kernel):
    def body():
        t = timer_list(lambda _: None)
        mod_timer(t, jiffies() + 100_000)
        timer_shutdown(t)
        return mod_timer(t, jiffies() + 10), timer_pending(t)
    assert sim_kernel(body) == (0, False)


def test_schedule_timeout_and_msleep_sleep_at_least_that_long(sim_kernel):
    def body():
        t0 = jiffies()
        left = schedule_timeout_uninterruptible(3)
        t1 = jiffies()
        msleep(5)
        t2 = jiffies()
        return left, t1 - t0, t2 - t1
    left, slept, msleept = sim_kernel(body)
    assert left == 0 and slept == 3                         # not one jiffy early or late
    assert msecs_to_jiffies(5) <= msleept <= msecs_to_jiffies(5) + 1


def test_msleep_interruptible_returns_the_time_left_on_a_signal(sim_kernel):
    log = []
    started = []

    def sleeper(_):
        allow_signal(SIGINT)
        started.append(jiffies())
        log.append(msleep_interruptible(60_000))

    def body():
        t = kthread_run(sleeper, None, "sleeper")
        while not started:                  # until the sleeper sleeps (any order of picks)
            sched.yield_()
        msleep(1500)
        send_sig(SIGINT, t)
        kthread_stop(t)
    sim_kernel(body)
    assert log[0] in (58_500, 58_501)       # virtual time: exactly 1.5 s of the 60 s passed
    assert titles() == []


def test_a_timer_left_pending_is_forgotten_at_the_next_boot(sim_kernel):
    fired = []

    def arm():
        t = timer_list(lambda _: fired.append(1))
        mod_timer(t, jiffies() + 100)       # well after this boot shuts down
        return t
    t = sim_kernel(arm)

    def wait_a_bit():
        msleep(150)                         # past its expiry, on the next boot
        return timer_pending(t)
    assert sim_kernel(wait_a_bit) is False
    assert fired == []
