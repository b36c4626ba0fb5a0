"""RCU basics: read-side sections, publishing pointers, grace periods, callbacks.

Twin of include/linux/rcupdate.h, kernel/rcu/update.c and the
CONFIG_TINY_RCU flavour of kernel/rcu/tiny.c (one CPU, no preemption).

Contexts: rcu_read_lock/unlock, rcu_dereference, rcu_assign_pointer and
call_rcu from any context; synchronize_rcu and rcu_barrier sleep, so task
context only and never inside a read-side section.

Differs from the kernel: as on a !PREEMPT uniprocessor, rcu_read_lock() is
preempt_disable() (so sleeping inside is reported by might_sleep), and a
grace period has passed as soon as no read-side section is open: a reader
cannot be suspended halfway. synchronize_rcu() therefore returns at once
when called legally. call_rcu() callbacks run in softirq context at the
next chance with no read-side section open (the RCU softirq), in order.
Pointers are attributes: rcu_assign_pointer(obj, "field", value) is
rcu_assign_pointer(obj->field, value); rcu_dereference(p) returns p.
kfree_rcu(buf) frees a kmalloc buffer after a grace period.

Debug aids: synchronize_rcu() inside a read-side section and an unbalanced
rcu_read_unlock() are reported; sleeping inside a read-side section is
"sleeping function called from invalid context". statistics() counts
callbacks queued and run since boot.
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim import sched
from kshim.bug import caller_site, report_bug
from kshim.slab import kfree
from kshim.softirq import local_bh_disable, local_bh_enable, raise_softirq, softirq_run

_cpu = sched.cpu
_cbs: list[tuple["rcu_head", Callable[["rcu_head"], None]]] = []
_raised = False
_stats = {"queued": 0, "invoked": 0, "grace_periods": 0}


class rcu_head:
    """The callback anchor embedded in an RCU-freed object; `owner` is that object."""

    __slots__ = ("func", "owner")

    def __init__(self, owner: Any = None) -> None:
        self.func: Callable[[rcu_head], None] | None = None
        self.owner = owner


def rcu_read_lock() -> None:
    c = _cpu
    c.preempt_count += 1
    c.rcu_read_nesting += 1


def rcu_read_unlock() -> None:
    c = _cpu
    c.rcu_read_nesting -= 1
    c.preempt_count -= 1
    if c.rcu_read_nesting <= 0:
        if c.rcu_read_nesting < 0:
            c.rcu_read_nesting = 0
            c.preempt_count += 1
            report_bug("rcu_read_unlock() without rcu_read_lock()", at=caller_site())
        if _cbs and not _raised:
            _raise()


def rcu_read_lock_bh() -> None:
    local_bh_disable()
    _cpu.rcu_read_nesting += 1


def rcu_read_unlock_bh() -> None:
    _cpu.rcu_read_nesting -= 1
    if not _cpu.rcu_read_nesting and _cbs and not _raised:
        _raise()
    local_bh_enable()


def rcu_read_lock_sched() -> None:
    rcu_read_lock()


def rcu_read_unlock_sched() -> None:
    rcu_read_unlock()


def rcu_read_lock_held() -> bool:
    return _cpu.rcu_read_nesting > 0


rcu_read_lock_bh_held = rcu_read_lock_held
rcu_read_lock_sched_held = rcu_read_lock_held


def rcu_is_watching() -> bool:
    return True


def RCU_LOCKDEP_WARN(cond: object, msg: str) -> None:
    if cond:
        report_bug(f"suspicious RCU usage: {msg}", at=caller_site())


def rcu_dereference(p: Any) -> Any:
    return p


rcu_dereference_bh = rcu_dereference_sched = rcu_dereference_raw = rcu_dereference
rcu_access_pointer = rcu_dereference


def rcu_dereference_check(p: Any, c: object) -> Any:
    return p


def rcu_dereference_protected(p: Any, c: object) -> Any:
    return p


def rcu_assign_pointer(obj: Any, field: str, value: Any) -> None:
    """Publish value in obj.field (readers see it fully initialised)."""
    setattr(obj, field, value)


RCU_INIT_POINTER = rcu_assign_pointer


def rcu_replace_pointer(obj: Any, field: str, new: Any, c: object = True) -> Any:
    old = getattr(obj, field)
    setattr(obj, field, new)
    return old


def _raise() -> None:
    global _raised
    _raised = True
    raise_softirq(rcu_process_callbacks, None)


def call_rcu(head: rcu_head, func: Callable[[rcu_head], None]) -> None:
    """Run func(head) after a grace period, in softirq context."""
    head.func = func
    _cbs.append((head, func))
    _stats["queued"] += 1
    if not _raised and not _cpu.rcu_read_nesting:
        _raise()


def rcu_process_callbacks(_: Any = None) -> None:
    """The RCU softirq: invoke the callbacks whose grace period is over."""
    global _raised
    _raised = False
    if _cpu.rcu_read_nesting:
        return              # a reader is open under us: rcu_read_unlock raises us again
    batch = _cbs[:]
    del _cbs[:]
    _stats["grace_periods"] += 1
    for head, func in batch:
        _stats["invoked"] += 1
        func(head)


def synchronize_rcu() -> None:
    """Wait for a grace period: every reader open now has finished."""
    sched.might_sleep()
    if _cpu.rcu_read_nesting:
        report_bug("synchronize_rcu() in an RCU read-side critical section",
                   at=caller_site(), task=_cpu.curr.comm)
    _stats["grace_periods"] += 1


synchronize_rcu_expedited = synchronize_rcu
synchronize_net = synchronize_rcu


def rcu_barrier() -> None:
    """Wait until every call_rcu() callback queued so far has run."""
    sched.might_sleep()
    if _cbs and not _cpu.rcu_read_nesting:
        softirq_run(rcu_process_callbacks, None)


def _kfree_cb(head: rcu_head) -> None:
    kfree(head.owner)


def kfree_rcu(buf: Any) -> None:
    """kfree(buf) after a grace period."""
    call_rcu(rcu_head(buf), _kfree_cb)


def _boot() -> None:
    global _raised
    _cbs.clear()
    _raised = False
    for k in _stats:
        _stats[k] = 0


sched.boot_hooks.append(_boot)


@attrs.frozen
class rcu_stats:
    """RCU counters since boot."""

    queued: int
    invoked: int
    pending: int
    grace_periods: int


def statistics() -> rcu_stats:
    """Callbacks queued, invoked and pending, grace periods seen."""
    return rcu_stats(_stats["queued"], _stats["invoked"], len(_cbs), _stats["grace_periods"])
