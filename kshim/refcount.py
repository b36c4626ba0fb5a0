"""refcount_t: reference counts that refuse to wrap or resurrect.

Twin of include/linux/refcount.h and lib/refcount.c.

Contexts: any.

Differs from the kernel: the count is a Python int, so "saturation" is
emulated: an increment from 0 or a decrement below 0 is reported once and
the counter is pinned at REFCOUNT_SATURATED, as the kernel does, instead of
wrapping. There are no memory-ordering variants to tell apart on one CPU.

Debug aids: always on, as in the kernel: "refcount_t: addition on 0;
use-after-free.", "refcount_t: underflow; use-after-free." and
"refcount_t: decrement hit 0; leaking memory." reports name the caller.
"""
from __future__ import annotations

from kshim.bug import caller_outside, report_bug

REFCOUNT_SATURATED = -(1 << 30)


class refcount_t:
    __slots__ = ("refs",)

    def __init__(self, n: int = 0) -> None:
        self.refs = n

    def __repr__(self) -> str:
        return f"refcount_t({self.refs})"


def REFCOUNT_INIT(n: int) -> refcount_t:
    return refcount_t(n)


def _saturate(r: refcount_t, what: str) -> None:
    r.refs = REFCOUNT_SATURATED
    report_bug(f"refcount_t: {what}", at=caller_outside(__file__, *_helper_files))


_helper_files: list[str] = []     # kref.py adds itself: blame its caller


def refcount_set(r: refcount_t, n: int) -> None:
    r.refs = n


def refcount_read(r: refcount_t) -> int:
    return r.refs


def refcount_inc(r: refcount_t) -> None:
    n = r.refs
    if n <= 0:
        if n != REFCOUNT_SATURATED:
            _saturate(r, "addition on 0; use-after-free.")
        return
    r.refs = n + 1


def refcount_add(i: int, r: refcount_t) -> None:
    n = r.refs
    if n <= 0:
        if n != REFCOUNT_SATURATED:
            _saturate(r, "addition on 0; use-after-free.")
        return
    r.refs = n + i


def refcount_inc_not_zero(r: refcount_t) -> bool:
    n = r.refs
    if n == 0:
        return False
    if n != REFCOUNT_SATURATED:
        r.refs = n + 1
    return True


def refcount_add_not_zero(i: int, r: refcount_t) -> bool:
    n = r.refs
    if n == 0:
        return False
    if n != REFCOUNT_SATURATED:
        r.refs = n + i
    return True


def refcount_sub_and_test(i: int, r: refcount_t) -> bool:
    """Subtract; True if the count reached 0 (the caller frees)."""
    n = r.refs
    if n == REFCOUNT_SATURATED:
        return False
    n -= i
    if n < 0:
        _saturate(r, "underflow; use-after-free.")
        return False
    r.refs = n
    return n == 0


def refcount_dec_and_test(r: refcount_t) -> bool:
    return refcount_sub_and_test(1, r)


def refcount_dec(r: refcount_t) -> None:
    if refcount_sub_and_test(1, r):
        _saturate(r, "decrement hit 0; leaking memory.")


def refcount_dec_if_one(r: refcount_t) -> bool:
    if r.refs == 1:
        r.refs = 0
        return True
    return False


def refcount_dec_not_one(r: refcount_t) -> bool:
    """Decrement unless the count is 1; True if decremented."""
    n = r.refs
    if n == REFCOUNT_SATURATED:
        return True
    if n == 1:
        return False
    if n <= 0:
        _saturate(r, "underflow; use-after-free.")
        return False
    r.refs = n - 1
    return True
