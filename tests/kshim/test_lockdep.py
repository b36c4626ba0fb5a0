"""kshim.lockdep: lock order, context and recursion checks, caught before any deadlock."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import lockdep, sched
from kshim.completion import complete, completion, wait_for_completion
from kshim.jiffies import jiffies
from kshim.kthread import kthread_run, kthread_stop
from kshim.lockdep import SINGLE_DEPTH_NESTING, lock_stat, lockdep_assert_held, statistics
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.softirq import raise_softirq
from kshim.spinlock import (spin_lock, spin_lock_bh, spin_lock_nested, spin_unlock,
                            spin_unlock_bh, spinlock_t)
from kshim.timer import mod_timer, timer_list


def test_abba_in_one_task_is_reported_the_first_time_both_orders_are_seen(kernel):
    log = []

    def body():
        a, b = spinlock_t("t.A"), spinlock_t("t.B")
        spin_lock(a)
        spin_lock(b)
        spin_unlock(b)
        spin_unlock(a)
        log.append(f"after AB: {titles()}")
        spin_lock(b)
        spin_lock(a)                    # the other order: no deadlock yet, but it could
        spin_unlock(a)
        spin_unlock(b)
        log.append(f"after BA: {len(titles())}")
        spin_lock(b)                    # seen before: not reported again
        spin_lock(a)
        spin_unlock(a)
        spin_unlock(b)
    kernel(body)
    assert log == ["after AB: []", "after BA: 1"]
    rep = report("possible circular locking dependency detected")
    assert rep.details["acquiring"] == "t.A" and rep.details["holding"] == "t.B"
    assert rep.details["chain"] == "t.A -> t.B -> t.A"
    # both stacks: where A->B was first seen, and this B->A
    assert "test_lockdep.py" in rep.details["existing_dependency"]
    assert "t.B taken while holding t.A" in rep.details["existing_dependency"]
    assert "test_lockdep.py" in rep.details["this_dependency"]


def test_abba_between_two_kthreads_with_mutexes_is_reported_before_they_deadlock(kernel):
    log = []

    def ab(arg):
        a, b = arg
        mutex_lock(a)
        mutex_lock(b)
        log.append("ab done")
        mutex_unlock(b)
        mutex_unlock(a)

    def ba(arg):
        a, b = arg
        mutex_lock(b)
        mutex_lock(a)
        log.append("ba done")
        mutex_unlock(a)
        mutex_unlock(b)

    def body():
        locks = (mutex("t.mA"), mutex("t.mB"))
        t1 = kthread_run(ab, locks, "ab")
        sched.yield_()
        t2 = kthread_run(ba, locks, "ba")
        sched.yield_()
        kthread_stop(t1)
        kthread_stop(t2)
    kernel(body)
    assert log == ["ab done", "ba done"]       # this interleaving did not deadlock...
    rep = report("possible circular locking dependency detected")   # ...but could have
    assert rep.details["task"] == "ba"
    assert rep.details["chain"] == "t.mA -> t.mB -> t.mA"


def test_a_three_lock_cycle_is_reported(kernel):
    def body():
        a, b, c = spinlock_t("t.c1"), spinlock_t("t.c2"), spinlock_t("t.c3")
        for x, y in ((a, b), (b, c), (c, a)):
            spin_lock(x)
            spin_lock(y)
            spin_unlock(y)
            spin_unlock(x)
    kernel(body)
    assert report("circular").details["chain"] == "t.c1 -> t.c2 -> t.c3 -> t.c1"


def test_two_locks_of_one_class_nested_are_recursive_unless_annotated(kernel):
    def body():
        p, q = spinlock_t("t.node"), spinlock_t("t.node")     # one struct field, two objects
        spin_lock(p)
        spin_lock_nested(q, SINGLE_DEPTH_NESTING)              # annotated: fine
        spin_unlock(q)
        spin_unlock(p)
        ok = titles()
        spin_lock(p)
        spin_lock(q)                                           # not annotated
        spin_unlock(q)
        spin_unlock(p)
        return ok
    assert kernel(body) == []
    rep = report("possible recursive locking detected")
    assert rep.details["lock"] == "t.node" and "test_lockdep.py" in rep.details["held_at"]


def test_default_named_locks_are_classed_by_the_line_that_made_them(kernel):
    def body():
        outer = spinlock_t()
        inner = spinlock_t()
        same = [spinlock_t() for _ in range(2)]
        spin_lock(outer)
        spin_lock(inner)              # different lines: different classes
        spin_unlock(inner)
        spin_unlock(outer)
        before = titles()
        spin_lock(same[0])
        spin_lock(same[1])            # one line: one class
        spin_unlock(same[1])
        spin_unlock(same[0])
        return before
    assert kernel(body) == []
    assert "spinlock@" in report("possible recursive locking detected").details["lock"]


def test_lock_taken_in_softirq_and_in_process_context_without_bh_is_reported(kernel):
    def body():
        lk = spinlock_t("t.sirq")
        done = completion()

        def timer_fn(t):
            spin_lock(lk)             # in softirq
            spin_unlock(lk)
            complete(done)
        mod_timer(timer_list(timer_fn), jiffies() + 1)
        wait_for_completion(done)
        spin_lock(lk)                 # process context, softirqs on: a softirq could deadlock on it
        spin_unlock(lk)
    kernel(body)
    rep = report("inconsistent lock state")
    assert rep.details["lock"] == "t.sirq"
    assert rep.details["usage"] == "{IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W}"
    assert "timer_fn" in rep.details["first_usage_stack"]
    assert "body" in rep.details["this_usage_stack"]


def test_the_same_lock_taken_with_spin_lock_bh_in_process_context_is_fine(kernel):
    def body():
        lk = spinlock_t("t.sirq_ok")
        done = completion()

        def timer_fn(t):
            spin_lock(lk)
            spin_unlock(lk)
            complete(done)
        mod_timer(timer_list(timer_fn), jiffies() + 1)
        wait_for_completion(done)
        spin_lock_bh(lk)
        spin_unlock_bh(lk)
    kernel(body)
    assert titles() == []


def test_softirq_safe_lock_held_while_taking_a_softirq_unsafe_one_is_reported(kernel):
    def body():
        safe, unsafe = spinlock_t("t.safe"), spinlock_t("t.unsafe")

        def in_softirq(_):
            spin_lock(safe)
            spin_unlock(safe)
        raise_softirq(in_softirq)
        spin_lock_bh(safe)            # runs it at unlock: safe is IN-SOFTIRQ
        spin_unlock_bh(safe)
        spin_lock(unsafe)             # unsafe is SOFTIRQ-ON
        spin_unlock(unsafe)
        spin_lock_bh(safe)
        spin_lock(unsafe)             # safe -> unsafe
        spin_unlock(unsafe)
        spin_unlock_bh(safe)
    kernel(body)
    rep = report("SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected")
    assert rep.details["safe"] == "t.safe" and rep.details["unsafe"] == "t.unsafe"


def test_lockdep_assert_held_reports_a_lock_not_held(kernel):
    def body():
        lk, m = spinlock_t("t.held"), mutex("t.mheld")
        spin_lock(lk)
        lockdep_assert_held(lk)
        spin_unlock(lk)
        mutex_lock(m)
        lockdep_assert_held(m)
        mutex_unlock(m)
        ok = titles()
        lockdep_assert_held(lk)
        return ok
    assert kernel(body) == []
    assert report("lockdep_assert_held() failed").details["lock"] == "t.held"


def test_a_lock_held_when_a_kthread_returns_is_reported(kernel):
    def leaker(m):
        mutex_lock(m)
        return 0

    def body():
        m = mutex("t.leaked")
        t = kthread_run(leaker, m, "leaker")
        sched.yield_()
        kthread_stop(t)
    kernel(body)
    rep = report("lock held when returning")
    assert rep.details["task"] == "leaker" and rep.details["locks"] == ["t.leaked"]


def test_lock_stat_counts_acquisitions_contentions_and_holds_across_schedule(kernel):
    def holder(arg):
        m, go = arg
        mutex_lock(m)
        wait_for_completion(go)       # holds the mutex across schedule()
        mutex_unlock(m)

    def body():
        m, go = mutex("t.stat"), completion()
        t = kthread_run(holder, (m, go), "holder")
        sched.yield_()
        complete(go)
        mutex_lock(m)                 # contended: holder still has it
        mutex_unlock(m)
        kthread_stop(t)
        lk = spinlock_t("t.statspin")
        for _ in range(3):
            spin_lock(lk)
            spin_unlock(lk)
        return {s.name: s for s in statistics()}
    st = kernel(body)
    assert st["t.stat"].acquisitions == 2
    assert st["t.stat"].contentions == 1
    assert st["t.stat"].sched_holds >= 1
    assert st["t.stat"].wait_ns > 0
    assert st["t.statspin"].acquisitions == 3 and st["t.statspin"].contentions == 0
    assert titles() == []
    text = lock_stat()
    assert "t.stat " in text and "acquisitions" in text


def test_the_graph_starts_empty_at_each_boot(kernel):
    def ab():
        a, b = spinlock_t("t.boot_a"), spinlock_t("t.boot_b")
        spin_lock(a)
        spin_lock(b)
        spin_unlock(b)
        spin_unlock(a)
        return lockdep.lockdep_stats()["direct dependencies"]

    def ba():
        a, b = spinlock_t("t.boot_a"), spinlock_t("t.boot_b")
        spin_lock(b)
        spin_lock(a)
        spin_unlock(a)
        spin_unlock(b)
    assert kernel(ab) == 1
    kernel(ba)            # a reboot in between: B->A alone is no cycle
    assert titles() == []
