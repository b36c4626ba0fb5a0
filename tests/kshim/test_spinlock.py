"""kshim.spinlock: spinlocks and rwlocks as preempt-count markers with owner checks."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import bug, sched
from kshim.bug import KernelBug
from kshim.kthread import kthread_run, kthread_stop
from kshim.softirq import raise_softirq
from kshim.spinlock import (read_lock, read_unlock, rwlock_t, spin_is_locked, spin_lock,
                            spin_lock_bh, spin_lock_irq, spin_lock_irqsave, spin_trylock,
                            spin_unlock, spin_unlock_bh, spin_unlock_irq, spin_unlock_irqrestore,
                            spinlock_t, write_lock, write_trylock, write_unlock)
from kshim.timer import msleep


def test_spin_lock_makes_the_context_atomic_until_unlock(kernel):
    def body():
        lk = spinlock_t("t.lock")
        seen = [sched.in_atomic(), sched.preempt_count()]
        spin_lock(lk)
        seen += [sched.in_atomic(), sched.preempt_count(), spin_is_locked(lk)]
        spin_unlock(lk)
        seen += [sched.in_atomic(), sched.preempt_count(), spin_is_locked(lk)]
        return seen
    assert kernel(body) == [False, 0, True, 1, True, False, 0, False]
    assert titles() == []


def test_spin_lock_bh_defers_softirq_until_unlock(kernel):
    log = []

    def body():
        lk = spinlock_t("t.bh")
        spin_lock_bh(lk)
        raise_softirq(lambda _: log.append(f"softirq in_softirq={sched.in_serving_softirq()}"))
        log.append("raised under lock")
        spin_unlock_bh(lk)
        log.append("after unlock")
    kernel(body)
    assert log == ["raised under lock", "softirq in_softirq=True", "after unlock"]


def test_spin_lock_irqsave_returns_flags_and_restores_them(kernel):
    def body():
        a, b = spinlock_t("t.a"), spinlock_t("t.b")
        f1 = spin_lock_irqsave(a)
        f2 = spin_lock_irqsave(b)
        inner = sched.irqs_disabled()
        spin_unlock_irqrestore(b, f2)
        still = sched.irqs_disabled()
        spin_unlock_irqrestore(a, f1)
        return f1, f2, inner, still, sched.irqs_disabled()
    assert kernel(body) == (0, 1, True, True, False)


def test_spin_lock_irq_disables_and_enables_interrupts(kernel):
    def body():
        lk = spinlock_t("t.irq")
        spin_lock_irq(lk)
        during = sched.irqs_disabled(), sched.in_atomic()
        spin_unlock_irq(lk)
        return during, sched.irqs_disabled()
    assert kernel(body) == ((True, True), False)


def test_spin_trylock_fails_on_a_held_lock(kernel):
    def body():
        lk = spinlock_t("t.try")
        first = spin_trylock(lk)
        second = spin_trylock(lk)
        spin_unlock(lk)
        return first, second, sched.preempt_count()
    assert kernel(body) == (True, False, 0)


def test_spinlock_recursion_is_reported_and_kills_the_kthread_not_the_process(kernel):
    log = []

    def offender(lk):
        spin_lock(lk)
        spin_lock(lk)
        log.append("not reached")

    def body():
        lk = spinlock_t("t.rec")
        t = kthread_run(offender, lk, "offender")
        sched.yield_()                 # let it run (and die)
        kthread_stop(t)
        log.append(f"survived, preempt_count={sched.preempt_count()}")
    kernel(body)
    assert log == ["survived, preempt_count=0"]
    rep = report("spinlock recursion")
    assert rep.details["lock"] == "t.rec" and rep.details["task"] == "offender"
    oops = report("oops")
    assert oops.details["task"] == "offender"


def test_unlock_of_an_unlocked_spinlock_is_reported(kernel):
    def body():
        lk = spinlock_t("t.unl")
        spin_lock(lk)
        spin_unlock(lk)
        sched.preempt_disable()       # keep the count balanced for the bad unlock
        spin_unlock(lk)
    kernel(body)
    assert report("spin_unlock of an unlocked lock").details["lock"] == "t.unl"


def test_unlock_by_another_task_than_the_owner_is_reported(kernel):
    from kshim.completion import complete, completion, wait_for_completion

    def holder(arg):
        lk, done = arg
        spin_lock(lk)
        wait_for_completion(done)     # a bug of its own: sleeping with the lock

    def body():
        lk = spinlock_t("t.owner")
        done = completion()
        t = kthread_run(holder, (lk, done), "holder")
        sched.yield_()
        spin_unlock(lk)               # insmod releases holder's lock
        complete(done)
        kthread_stop(t)
    kernel(body)
    rep = report("spinlock wrong owner")
    assert rep.details["owner"] == "holder" and rep.details["task"] == "insmod"
    assert "scheduling while atomic" in titles()


def test_sleeping_while_holding_a_spinlock_is_reported(kernel):
    def body():
        lk = spinlock_t("t.sleepy")
        spin_lock(lk)
        msleep(1)
        spin_unlock(lk)
    kernel(body)
    rep = report("sleeping function called from invalid context")
    assert rep.details["in_atomic"] == 1 and "t.sleepy" in rep.details["held_locks"]
    assert report("scheduling while atomic").details["task"] == "insmod"


def test_rwlock_readers_nest_and_a_writer_is_refused_meanwhile(kernel):
    def body():
        lk = rwlock_t("t.rw")
        read_lock(lk)
        read_lock(lk)
        readers = lk.readers
        refused = write_trylock(lk)
        read_unlock(lk)
        read_unlock(lk)
        write_lock(lk)
        writer = lk.writer is sched.current()
        write_unlock(lk)
        return readers, refused, writer, sched.preempt_count()
    assert kernel(body) == (2, False, True, 0)
    assert titles() == []


def test_write_lock_on_a_read_held_rwlock_is_a_bug(kernel):
    caught = []

    def body():
        lk = rwlock_t("t.rw2")
        read_lock(lk)
        try:
            write_lock(lk)
        except KernelBug as e:
            caught.append(str(e))
        read_unlock(lk)
        return sched.preempt_count()
    assert kernel(body) == 0
    assert caught and "t.rw2" in caught[0]
    assert report("write_lock while held").details["readers"] == 1


def test_with_debug_off_a_spinlock_only_counts_preemption(kernel):
    from kshim.debug import set_debug

    def body():
        set_debug(False)
        lk = spinlock_t("t.off")
        spin_lock(lk)
        owner = lk.owner
        count = sched.preempt_count()
        spin_unlock(lk)
        set_debug(True)
        return owner, count, sched.preempt_count()
    assert kernel(body) == (None, 1, 0)
    assert bug.reports == []
