"""kref: a reference count with a release function.

Twin of include/linux/kref.h.

Contexts: any; the release function runs in the context of the last
kref_put(), so it must suit every context that may drop the last reference.

Differs from the kernel: release(kref) cannot use container_of: make the
kref with its owner (kref(owner), like list_head) and read kref.owner, or
pass a closure. Built on refcount_t, so it shares its use-after-free
reports (get after the count reached 0, put below 0).
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import refcount as _refcount
from kshim.mutex import mutex_lock, mutex_unlock
from kshim.refcount import (refcount_dec_and_test, refcount_inc, refcount_inc_not_zero,
                            refcount_sub_and_test, refcount_t)
from kshim.spinlock import spin_lock, spin_unlock

_refcount._helper_files.append(__file__)


class kref:
    __slots__ = ("refcount", "owner")

    def __init__(self, owner: Any = None) -> None:
        self.refcount = refcount_t(1)
        self.owner = owner

    def __repr__(self) -> str:
        return f"<kref {self.refcount.refs} of {type(self.owner).__name__}>"


def kref_init(k: kref) -> None:
    k.refcount.refs = 1


def kref_read(k: kref) -> int:
    return k.refcount.refs


def kref_get(k: kref) -> None:
    refcount_inc(k.refcount)


def kref_get_unless_zero(k: kref) -> bool:
    """Take a reference unless the count already reached 0."""
    return refcount_inc_not_zero(k.refcount)


def kref_put(k: kref, release: Callable[[kref], None]) -> int:
    """Drop a reference; call release(k) and return 1 if it was the last."""
    if refcount_dec_and_test(k.refcount):
        release(k)
        return 1
    return 0


def kref_sub(k: kref, count: int, release: Callable[[kref], None]) -> int:
    if refcount_sub_and_test(count, k.refcount):
        release(k)
        return 1
    return 0


def kref_put_lock(k: kref, release: Callable[[kref], None], lock: Any) -> int:
    """kref_put whose release runs holding `lock` (a spinlock); the release
    function must unlock it."""
    if k.refcount.refs != 1:
        if refcount_dec_and_test(k.refcount):
            spin_lock(lock)
            release(k)
            return 1
        return 0
    spin_lock(lock)
    if not refcount_dec_and_test(k.refcount):
        spin_unlock(lock)
        return 0
    release(k)
    return 1


def kref_put_mutex(k: kref, release: Callable[[kref], None], lock: Any) -> int:
    if k.refcount.refs != 1:
        def locked_release(kk: kref) -> None:
            mutex_lock(lock)
            release(kk)
        return kref_put(k, locked_release)
    mutex_lock(lock)
    if not refcount_dec_and_test(k.refcount):
        mutex_unlock(lock)
        return 0
    release(k)
    return 1
