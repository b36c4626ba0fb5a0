"""Memory barriers, READ_ONCE/WRITE_ONCE and friends: documented no-ops.

Twin of include/asm-generic/barrier.h, include/linux/compiler.h (barrier,
READ_ONCE, WRITE_ONCE) and arch/x86/include/asm/processor.h (cpu_relax).

Contexts: any.

Differs from the kernel: on one CPU running one host thread, with tasks
switching only in schedule(), every store is seen by every later load in
program order; there is no compiler to reorder and no other CPU to observe.
So every barrier is a no-op, kept so kernel-idiom code reads as written and
documents where the kernel needs ordering. READ_ONCE(x) returns x;
WRITE_ONCE, smp_store_release and smp_store_mb take (obj, "field", value),
smp_load_acquire takes (obj, "field"), since Python has no lvalues.
"""
from __future__ import annotations

from typing import Any


def barrier() -> None:
    pass


mb = rmb = wmb = barrier
smp_mb = smp_rmb = smp_wmb = barrier
dma_rmb = dma_wmb = barrier
smp_mb__before_atomic = smp_mb__after_atomic = barrier
smp_mb__after_spinlock = smp_mb__after_unlock_lock = barrier
smp_rmb__after_ctrl_dep = barrier
cpu_relax = barrier


def READ_ONCE(x: Any) -> Any:
    return x


def WRITE_ONCE(obj: Any, field: str, value: Any) -> None:
    setattr(obj, field, value)


def smp_load_acquire(obj: Any, field: str) -> Any:
    return getattr(obj, field)


def smp_store_release(obj: Any, field: str, value: Any) -> None:
    setattr(obj, field, value)


def smp_store_mb(obj: Any, field: str, value: Any) -> None:
    setattr(obj, field, value)


def data_race(x: Any) -> Any:
    return x


def likely(x: Any) -> Any:
    return x


def unlikely(x: Any) -> Any:
    return x
