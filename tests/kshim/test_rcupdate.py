"""kshim.rcupdate: read-side sections, publishing, call_rcu after a grace period."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import rcupdate, sched
from kshim.rcupdate import (call_rcu, rcu_assign_pointer, rcu_barrier, rcu_dereference,
                            rcu_head, rcu_read_lock, rcu_read_lock_held, rcu_read_unlock,
                            synchronize_rcu)
from kshim.spinlock import spin_lock_bh, spin_unlock_bh, spinlock_t
from kshim.timer import msleep


class cfg:
    def __init__(self, v: int) -> None:
        self.v = v
        self.rcu = rcu_head(self)


class holder:
    cur: cfg | None = None


def test_readers_see_the_published_pointer_and_are_atomic(kernel):
    def body():
        h = holder()
        rcu_assign_pointer(h, "cur", cfg(1))
        rcu_read_lock()
        seen = rcu_dereference(h.cur).v, rcu_read_lock_held(), sched.in_atomic()
        rcu_read_unlock()
        return seen, rcu_read_lock_held()
    assert kernel(body) == ((1, True, True), False)


def test_call_rcu_runs_after_the_read_side_section_closes(kernel):
    log = []

    def body():
        old = cfg(1)
        lk = spinlock_t("t.rcu")
        rcu_read_lock()
        call_rcu(old.rcu, lambda head: log.append(f"freed {head.owner.v}"))
        spin_lock_bh(lk)
        spin_unlock_bh(lk)              # softirqs may run here: the reader is still open
        log.append("reader done")
        rcu_read_unlock()
        sched.yield_()
        log.append("after")
    kernel(body)
    assert log == ["reader done", "freed 1", "after"]


def test_rcu_barrier_waits_for_every_callback(kernel):
    log = []

    def body():
        for n in range(3):
            c = cfg(n)
            call_rcu(c.rcu, lambda head: log.append(head.owner.v))
        rcu_barrier()
        log.append("barrier")
        return rcupdate.statistics().invoked
    assert kernel(body) == 3
    assert log == [0, 1, 2, "barrier"]


def test_sleeping_or_synchronize_rcu_inside_a_reader_is_reported(kernel):
    def body():
        rcu_read_lock()
        synchronize_rcu()
        msleep(1)
        rcu_read_unlock()
        synchronize_rcu()                # fine here
    kernel(body)
    assert report("synchronize_rcu() in an RCU read-side critical section")
    assert "sleeping function called from invalid context" in titles()


def test_unbalanced_rcu_read_unlock_is_reported(kernel):
    def body():
        rcu_read_unlock()
        return sched.preempt_count()
    assert kernel(body) == 0
    assert report("rcu_read_unlock() without rcu_read_lock()")
