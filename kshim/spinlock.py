"""Spinlocks and rwlocks on one non-preemptive CPU.

Twin of include/linux/spinlock.h, rwlock.h, kernel/locking/spinlock.c and
the owner checks of kernel/locking/spinlock_debug.c.

Contexts: any. The _bh variants disable softirqs while held; the _irq and
_irqsave variants disable (emulated) interrupts, which also keeps softirqs
off.

Differs from the kernel: with one CPU and no preemption a spinlock never
spins. Taking it raises the preempt count (so in_atomic() is true and
sleeping is reported) and, with debug_spinlock on, marks it owned; finding
it already owned can only be a bug (recursion, or a lock held across
schedule() by another task), which is reported and raised as KernelBug
instead of hanging forever. With debug_spinlock off a spinlock is only the
preempt count, as on a !CONFIG_SMP kernel: no owner, no trylock failure.
rwlock_t is the same marker allowing nested readers. raw_spinlock_t is
spinlock_t.

Debug aids (debug_spinlock, CONFIG_DEBUG_SPINLOCK + CONFIG_PROVE_LOCKING):
recursion ("spinlock recursion"), unlock of an unlocked lock and unlock by
another task than the owner ("spinlock wrong owner") are reported; every
acquire and release goes through kshim.lockdep (order, softirq-safety,
recursion classes, lock_stat). A lock made with its default name gets the
creating file:line as its lockdep class.
"""
from __future__ import annotations

from kshim import debugobjects, lockdep, sched
from kshim.atomic import atomic_t
from kshim.bug import KernelBug, caller_site, report_bug
from kshim.fault_sched import fail_trylock, trylock_fault
from kshim.lockdep import lock_acquire, lock_release, lock_site, site_str
from kshim.softirq import _pending, do_softirq

debug_spinlock = True
_cpu = sched.cpu
lockdep.register_lock_file(__file__)


class spinlock_t:
    __slots__ = ("name", "owner", "key", "dep_map", "owner_site")

    def __init__(self, name: str = "spinlock") -> None:
        self.name = name
        self.owner: sched.task_struct | None = None
        self.key = None                   # lockdep class key (lockdep_set_class)
        self.dep_map = None               # lockdep's cached class
        self.owner_site: tuple | None = None
        if lockdep.debug_locks and name == "spinlock":
            self.key = f"spinlock@{caller_site(1)}"

    def __repr__(self) -> str:
        return f"<spinlock {self.name} owner={self.owner}>"


raw_spinlock_t = spinlock_t


def DEFINE_SPINLOCK(name: str) -> spinlock_t:
    return spinlock_t(name)


def spin_lock_init(lock: spinlock_t, name: str | None = None) -> None:
    if debug_spinlock and lock.owner is not None:
        report_bug("spin_lock_init() on a held lock", lock=lock.name, owner=lock.owner.comm)
    lock.owner = None
    if name:
        lock.name = name
        lock.dep_map = None


raw_spin_lock_init = spin_lock_init


# -- the debug half (CONFIG_DEBUG_SPINLOCK): only with debug_spinlock on ---------

def _debug_lock(lock: spinlock_t, subclass: int = 0, trylock: bool = False) -> None:
    me = _cpu.curr
    if lock.owner is not None:
        _cpu.preempt_count -= 1
        owner = lock.owner
        report_bug("spinlock recursion" if owner is me else
                   "spinlock held by another task (held across schedule()?)",
                   lock=lock.name, owner=owner.comm,
                   owner_site=site_str(lock.owner_site) if lock.owner_site else "?",
                   task=me.comm, at=lock_site())
        raise KernelBug(f"spinlock {lock.name} already held by {owner.comm}")
    lock.owner = me
    lock.owner_site = lock_acquire(lock, subclass, trylock, 0)


def _debug_unlock(lock: spinlock_t) -> None:
    owner = lock.owner
    if owner is not _cpu.curr:
        if owner is None:
            report_bug("spin_unlock of an unlocked lock (spinlock already unlocked)",
                       lock=lock.name, task=_cpu.curr.comm, at=lock_site())
        else:
            report_bug("spinlock wrong owner", lock=lock.name, owner=owner.comm,
                       task=_cpu.curr.comm, at=lock_site())
    lock.owner = None
    lock_release(lock)


# -- spinlock_t ------------------------------------------------------------------

def spin_lock(lock: spinlock_t) -> None:
    _cpu.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock)


def spin_unlock(lock: spinlock_t) -> None:
    if debug_spinlock:
        _debug_unlock(lock)
    _cpu.preempt_count -= 1


def spin_lock_nested(lock: spinlock_t, subclass: int) -> None:
    """spin_lock for a lock of a class already held, one level down."""
    _cpu.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock, subclass)


def spin_lock_bh_nested(lock: spinlock_t, subclass: int) -> None:
    c = _cpu
    c.bh_disable_count += 1
    c.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock, subclass)


def spin_trylock(lock: spinlock_t) -> bool:
    """Take the lock if free; True if taken. (Never fails with debug off:
    without owner tracking a free lock is the only kind there is.)"""
    if lock.owner is not None or (fail_trylock.armed and trylock_fault()):
        return False
    _cpu.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock, 0, True)
    return True


def spin_is_locked(lock: spinlock_t) -> bool:
    return lock.owner is not None


def spin_lock_bh(lock: spinlock_t) -> None:
    c = _cpu
    c.bh_disable_count += 1
    c.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock)


def spin_unlock_bh(lock: spinlock_t) -> None:
    if debug_spinlock:
        _debug_unlock(lock)
    c = _cpu
    c.preempt_count -= 1
    n = c.bh_disable_count - 1
    c.bh_disable_count = n
    if not n:
        if _pending:
            do_softirq()
    elif n < 0:
        _bh_underflow()


def spin_trylock_bh(lock: spinlock_t) -> bool:
    if lock.owner is not None:
        return False
    spin_lock_bh(lock)
    return True


def spin_lock_irq(lock: spinlock_t) -> None:
    c = _cpu
    c.irqs_off += 1
    c.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock)


def spin_unlock_irq(lock: spinlock_t) -> None:
    if debug_spinlock:
        _debug_unlock(lock)
    c = _cpu
    c.preempt_count -= 1
    c.irqs_off = 0
    if _pending and not c.bh_disable_count:
        do_softirq()


def spin_lock_irqsave(lock: spinlock_t) -> int:
    """Take the lock with interrupts off; return the flags to restore."""
    c = _cpu
    flags = c.irqs_off
    c.irqs_off = flags + 1
    c.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock)
    return flags


def spin_lock_irqsave_nested(lock: spinlock_t, subclass: int) -> int:
    c = _cpu
    flags = c.irqs_off
    c.irqs_off = flags + 1
    c.preempt_count += 1
    if debug_spinlock:
        _debug_lock(lock, subclass)
    return flags


def spin_unlock_irqrestore(lock: spinlock_t, flags: int) -> None:
    if debug_spinlock:
        _debug_unlock(lock)
    c = _cpu
    c.preempt_count -= 1
    c.irqs_off = flags
    if _pending and not flags and not c.bh_disable_count:
        do_softirq()


def spin_trylock_irqsave(lock: spinlock_t) -> tuple[bool, int]:
    """(taken, flags): flags only mean something when taken."""
    if lock.owner is not None:
        return False, _cpu.irqs_off
    return True, spin_lock_irqsave(lock)


raw_spin_lock = spin_lock
raw_spin_unlock = spin_unlock
raw_spin_lock_irqsave = spin_lock_irqsave
raw_spin_unlock_irqrestore = spin_unlock_irqrestore
raw_spin_lock_irq = spin_lock_irq
raw_spin_unlock_irq = spin_unlock_irq
raw_spin_lock_bh = spin_lock_bh
raw_spin_unlock_bh = spin_unlock_bh


def assert_spin_locked(lock: spinlock_t) -> None:
    if debug_spinlock and lock.owner is None:
        report_bug("assert_spin_locked failed", lock=lock.name, at=caller_site())


def lockdep_assert_held(lock: object) -> None:
    """Report if the current context does not hold `lock` (any lock type)."""
    lockdep.lockdep_assert_held(lock)


def cond_resched_lock(lock: spinlock_t) -> int:
    """Drop lock, yield if anything else is runnable, retake it; 1 if we did."""
    if not sched._runqueue:
        return 0
    spin_unlock(lock)
    sched.cond_resched()
    spin_lock(lock)
    return 1


def atomic_dec_and_lock(atomic: atomic_t, lock: spinlock_t) -> bool:
    """Decrement; if it reached 0 return True holding lock."""
    atomic.counter -= 1
    if atomic.counter == 0:
        spin_lock(lock)
        return True
    return False


# -- rwlock_t ---------------------------------------------------------------------

class rwlock_t:
    __slots__ = ("name", "readers", "writer", "key", "dep_map")

    def __init__(self, name: str = "rwlock") -> None:
        self.name = name
        self.readers = 0
        self.writer: sched.task_struct | None = None
        self.key = None
        self.dep_map = None
        if lockdep.debug_locks and name == "rwlock":
            self.key = f"rwlock@{caller_site(1)}"

    def __repr__(self) -> str:
        return f"<rwlock {self.name} readers={self.readers} writer={self.writer}>"


def rwlock_init(lock: rwlock_t) -> None:
    lock.readers = 0
    lock.writer = None


def DEFINE_RWLOCK(name: str) -> rwlock_t:
    return rwlock_t(name)


def _read_debug(lock: rwlock_t, trylock: bool = False) -> None:
    if lock.writer is not None:
        _cpu.preempt_count -= 1
        lock.readers -= 1
        report_bug("read_lock while write-locked", lock=lock.name, owner=lock.writer.comm,
                   task=_cpu.curr.comm, at=lock_site())
        raise KernelBug(f"rwlock {lock.name} write-held by {lock.writer.comm}")
    lock_acquire(lock, 0, trylock, 2)


def _write_debug(lock: rwlock_t, trylock: bool = False) -> None:
    if lock.writer is not None or lock.readers:
        _cpu.preempt_count -= 1
        report_bug("write_lock while held", lock=lock.name, readers=lock.readers,
                   writer=lock.writer.comm if lock.writer else None, task=_cpu.curr.comm,
                   at=lock_site())
        raise KernelBug(f"rwlock {lock.name} held")
    lock_acquire(lock, 0, trylock, 0)


def _read_unlock_debug(lock: rwlock_t) -> None:
    if lock.readers < 0:
        lock.readers = 0
        report_bug("read_unlock of a lock not read-held", lock=lock.name, at=lock_site())
    lock_release(lock)


def _write_unlock_debug(lock: rwlock_t) -> None:
    if lock.writer is not _cpu.curr:
        report_bug("write_unlock by a task that does not hold it", lock=lock.name,
                   task=_cpu.curr.comm, at=lock_site())
    lock_release(lock)


def read_lock(lock: rwlock_t) -> None:
    _cpu.preempt_count += 1
    lock.readers += 1
    if debug_spinlock:
        _read_debug(lock)


def read_unlock(lock: rwlock_t) -> None:
    lock.readers -= 1
    if debug_spinlock:
        _read_unlock_debug(lock)
    _cpu.preempt_count -= 1


def write_lock(lock: rwlock_t) -> None:
    _cpu.preempt_count += 1
    if debug_spinlock:
        _write_debug(lock)
    lock.writer = _cpu.curr


def write_unlock(lock: rwlock_t) -> None:
    if debug_spinlock:
        _write_unlock_debug(lock)
    lock.writer = None
    _cpu.preempt_count -= 1


def read_trylock(lock: rwlock_t) -> bool:
    if lock.writer is not None:
        return False
    read_lock(lock)
    return True


def write_trylock(lock: rwlock_t) -> bool:
    if lock.writer is not None or lock.readers:
        return False
    write_lock(lock)
    return True


def read_lock_bh(lock: rwlock_t) -> None:
    _cpu.bh_disable_count += 1
    read_lock(lock)


def read_unlock_bh(lock: rwlock_t) -> None:
    read_unlock(lock)
    _bh_enable()


def write_lock_bh(lock: rwlock_t) -> None:
    _cpu.bh_disable_count += 1
    write_lock(lock)


def write_unlock_bh(lock: rwlock_t) -> None:
    write_unlock(lock)
    _bh_enable()


def read_lock_irq(lock: rwlock_t) -> None:
    _cpu.irqs_off += 1
    read_lock(lock)


def read_unlock_irq(lock: rwlock_t) -> None:
    read_unlock(lock)
    _cpu.irqs_off = 0
    _bh_enable(0)


def write_lock_irq(lock: rwlock_t) -> None:
    _cpu.irqs_off += 1
    write_lock(lock)


def write_unlock_irq(lock: rwlock_t) -> None:
    write_unlock(lock)
    _cpu.irqs_off = 0
    _bh_enable(0)


def read_lock_irqsave(lock: rwlock_t) -> int:
    c = _cpu
    flags = c.irqs_off
    c.irqs_off = flags + 1
    read_lock(lock)
    return flags


def read_unlock_irqrestore(lock: rwlock_t, flags: int) -> None:
    read_unlock(lock)
    _cpu.irqs_off = flags
    _bh_enable(0)


def write_lock_irqsave(lock: rwlock_t) -> int:
    c = _cpu
    flags = c.irqs_off
    c.irqs_off = flags + 1
    write_lock(lock)
    return flags


def write_unlock_irqrestore(lock: rwlock_t, flags: int) -> None:
    write_unlock(lock)
    _cpu.irqs_off = flags
    _bh_enable(0)


def _bh_enable(dec: int = 1) -> None:
    c = _cpu
    c.bh_disable_count -= dec
    if c.bh_disable_count < 0:
        _bh_underflow()
    if _pending and not c.bh_disable_count and not c.irqs_off:
        do_softirq()


def _bh_underflow() -> None:
    _cpu.bh_disable_count = 0
    report_bug("local_bh_enable() without local_bh_disable() (unlock_bh of a lock taken "
               "without _bh?)", task=_cpu.curr.comm, at=lock_site())


def _held_hint(lock: spinlock_t) -> str | None:
    return f"{lock.name} held by {lock.owner.comm}" if lock.owner is not None else None


debugobjects.debug_object_register(spinlock_t, "spinlock_t", _held_hint)
