"""Spinlocks and rwlocks on one non-preemptive CPU.

Twin of include/linux/spinlock.h, rwlock.h and kernel/locking/spinlock.c.

Contexts: any. The _bh variants disable softirqs while held; the _irq and
_irqsave variants disable (emulated) interrupts.

Differs from the kernel: with one CPU and no preemption a spinlock never
spins. Taking it raises preempt_count (so in_atomic() is true and sleeping is
reported) and marks it owned; finding it already owned can only be a bug
(recursion, or a lock held across schedule() by another task), which is
reported and raised instead of hanging forever. rwlock_t is the same marker
allowing nested readers.

Debug aids: when kshim.lockdep is enabled, every acquire and release is
checked by it (order, context, recursion); spin_unlock by a task that does
not hold the lock is reported.
"""
from __future__ import annotations

from kshim import sched
from kshim.bug import KernelBug, report_bug
from kshim.softirq import local_bh_disable, local_bh_enable

debug_spinlock = True
lockdep_hook = None         # set by kshim.lockdep: (lock, acquire: bool, kind) -> None


class spinlock_t:
    __slots__ = ("name", "owner", "lock_class", "acquisitions")

    def __init__(self, name: str = "spinlock") -> None:
        self.name = name
        self.owner: sched.task_struct | None = None
        self.lock_class = None
        self.acquisitions = 0

    def __repr__(self) -> str:
        return f"<spinlock {self.name} owner={self.owner}>"


def spin_lock_init(lock: spinlock_t, name: str | None = None) -> None:
    lock.owner = None
    if name:
        lock.name = name


def _acquire(lock: spinlock_t) -> None:
    sched.preempt_count += 1
    if debug_spinlock:
        if lock.owner is not None:
            report_bug("spinlock recursion or lock held across schedule()",
                       lock=lock.name, owner=lock.owner.comm, task=sched._current.comm)
            raise KernelBug(f"spinlock {lock.name} already held by {lock.owner.comm}")
        lock.owner = sched._current
        lock.acquisitions += 1
        if lockdep_hook is not None:
            lockdep_hook(lock, True)


def _release(lock: spinlock_t) -> None:
    if debug_spinlock:
        if lock.owner is None:
            report_bug("spin_unlock of an unlocked lock", lock=lock.name, task=sched._current.comm)
        lock.owner = None
        if lockdep_hook is not None:
            lockdep_hook(lock, False)
    sched.preempt_count -= 1


def spin_lock(lock: spinlock_t) -> None:
    _acquire(lock)


def spin_unlock(lock: spinlock_t) -> None:
    _release(lock)


def spin_lock_nested(lock: spinlock_t, subclass: int) -> None:
    _acquire(lock)


def spin_trylock(lock: spinlock_t) -> bool:
    if debug_spinlock and lock.owner is not None:
        return False
    _acquire(lock)
    return True


def spin_is_locked(lock: spinlock_t) -> bool:
    return lock.owner is not None


def spin_lock_bh(lock: spinlock_t) -> None:
    local_bh_disable()
    _acquire(lock)


def spin_unlock_bh(lock: spinlock_t) -> None:
    _release(lock)
    local_bh_enable()


def spin_lock_irq(lock: spinlock_t) -> None:
    sched.irqs_off += 1
    _acquire(lock)


def spin_unlock_irq(lock: spinlock_t) -> None:
    _release(lock)
    sched.irqs_off -= 1


def spin_lock_irqsave(lock: spinlock_t) -> int:
    flags = sched.irqs_off
    sched.irqs_off += 1
    _acquire(lock)
    return flags


def spin_unlock_irqrestore(lock: spinlock_t, flags: int) -> None:
    _release(lock)
    sched.irqs_off = flags


def assert_spin_locked(lock: spinlock_t) -> None:
    if debug_spinlock and lock.owner is None:
        report_bug("assert_spin_locked failed", lock=lock.name)


def lockdep_assert_held(lock: spinlock_t) -> None:
    assert_spin_locked(lock)


class rwlock_t:
    __slots__ = ("name", "readers", "writer")

    def __init__(self, name: str = "rwlock") -> None:
        self.name = name
        self.readers = 0
        self.writer: sched.task_struct | None = None


def read_lock(lock: rwlock_t) -> None:
    if debug_spinlock and lock.writer is not None:
        report_bug("read_lock while write-locked", lock=lock.name, owner=lock.writer.comm)
        raise KernelBug(f"rwlock {lock.name} write-held")
    sched.preempt_count += 1
    lock.readers += 1


def read_unlock(lock: rwlock_t) -> None:
    lock.readers -= 1
    sched.preempt_count -= 1


def write_lock(lock: rwlock_t) -> None:
    if debug_spinlock and (lock.writer is not None or lock.readers):
        report_bug("write_lock while held", lock=lock.name)
        raise KernelBug(f"rwlock {lock.name} held")
    sched.preempt_count += 1
    lock.writer = sched._current


def write_unlock(lock: rwlock_t) -> None:
    lock.writer = None
    sched.preempt_count -= 1


def read_lock_bh(lock: rwlock_t) -> None:
    local_bh_disable()
    read_lock(lock)


def read_unlock_bh(lock: rwlock_t) -> None:
    read_unlock(lock)
    local_bh_enable()


def write_lock_bh(lock: rwlock_t) -> None:
    local_bh_disable()
    write_lock(lock)


def write_unlock_bh(lock: rwlock_t) -> None:
    write_unlock(lock)
    local_bh_enable()
