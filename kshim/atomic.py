"""atomic_t, atomic64_t, atomic_long_t, cmpxchg and xchg.

Twin of include/linux/atomic.h, include/linux/atomic/atomic-instrumented.h
and the cmpxchg/xchg of arch/x86/include/asm/cmpxchg.h.

Contexts: any.

Differs from the kernel: one CPU and no preemption make every Python
statement sequence between schedule() calls atomic, so these are plain
integer operations on a slotted object with a `counter` field; they keep the
kernel's names and return conventions so the code reads the same. Python
integers do not overflow: atomic_t does not wrap at 2**31 (documented, not
emulated). cmpxchg/xchg act on an attribute of an object, since Python has
no pointers: cmpxchg(obj, "field", old, new) is cmpxchg(&obj->field, old,
new). try_cmpxchg returns (success, current value) instead of updating *old.

Debug aids: none needed (no races on one CPU); use refcount_t (kshim.refcount)
where the kernel would, to get its underflow and use-after-free warnings.
"""
from __future__ import annotations

from typing import Any


class atomic_t:
    __slots__ = ("counter",)

    def __init__(self, i: int = 0) -> None:
        self.counter = i

    def __repr__(self) -> str:
        return f"atomic_t({self.counter})"


atomic64_t = atomic_t
atomic_long_t = atomic_t


def ATOMIC_INIT(i: int) -> atomic_t:
    return atomic_t(i)


ATOMIC64_INIT = ATOMIC_INIT
ATOMIC_LONG_INIT = ATOMIC_INIT


def atomic_read(v: atomic_t) -> int:
    return v.counter


def atomic_set(v: atomic_t, i: int) -> None:
    v.counter = i


atomic_read_acquire = atomic_read
atomic_set_release = atomic_set


def atomic_inc(v: atomic_t) -> None:
    v.counter += 1


def atomic_dec(v: atomic_t) -> None:
    v.counter -= 1


def atomic_add(i: int, v: atomic_t) -> None:
    v.counter += i


def atomic_sub(i: int, v: atomic_t) -> None:
    v.counter -= i


def atomic_inc_return(v: atomic_t) -> int:
    v.counter += 1
    return v.counter


def atomic_dec_return(v: atomic_t) -> int:
    v.counter -= 1
    return v.counter


def atomic_add_return(i: int, v: atomic_t) -> int:
    v.counter += i
    return v.counter


def atomic_sub_return(i: int, v: atomic_t) -> int:
    v.counter -= i
    return v.counter


def atomic_fetch_add(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old + i
    return old


def atomic_fetch_sub(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old - i
    return old


def atomic_fetch_inc(v: atomic_t) -> int:
    return atomic_fetch_add(1, v)


def atomic_fetch_dec(v: atomic_t) -> int:
    return atomic_fetch_sub(1, v)


def atomic_fetch_or(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old | i
    return old


def atomic_fetch_and(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old & i
    return old


def atomic_fetch_andnot(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old & ~i
    return old


def atomic_fetch_xor(i: int, v: atomic_t) -> int:
    old = v.counter
    v.counter = old ^ i
    return old


def atomic_or(i: int, v: atomic_t) -> None:
    v.counter |= i


def atomic_and(i: int, v: atomic_t) -> None:
    v.counter &= i


def atomic_andnot(i: int, v: atomic_t) -> None:
    v.counter &= ~i


def atomic_xor(i: int, v: atomic_t) -> None:
    v.counter ^= i


def atomic_inc_and_test(v: atomic_t) -> bool:
    v.counter += 1
    return v.counter == 0


def atomic_dec_and_test(v: atomic_t) -> bool:
    """Decrement; True if the result is 0."""
    v.counter -= 1
    return v.counter == 0


def atomic_sub_and_test(i: int, v: atomic_t) -> bool:
    v.counter -= i
    return v.counter == 0


def atomic_add_negative(i: int, v: atomic_t) -> bool:
    v.counter += i
    return v.counter < 0


def atomic_xchg(v: atomic_t, new: int) -> int:
    old = v.counter
    v.counter = new
    return old


def atomic_cmpxchg(v: atomic_t, old: int, new: int) -> int:
    """Set to new if it was old; return the value it had."""
    cur = v.counter
    if cur == old:
        v.counter = new
    return cur


def atomic_try_cmpxchg(v: atomic_t, old: int, new: int) -> tuple[bool, int]:
    """(True, old) if swapped, else (False, current value)."""
    cur = v.counter
    if cur == old:
        v.counter = new
        return True, old
    return False, cur


def atomic_fetch_add_unless(v: atomic_t, a: int, u: int) -> int:
    """Add a unless the value is u; return the old value."""
    old = v.counter
    if old != u:
        v.counter = old + a
    return old


def atomic_add_unless(v: atomic_t, a: int, u: int) -> bool:
    """Add a unless the value is u; True if added."""
    return atomic_fetch_add_unless(v, a, u) != u


def atomic_inc_not_zero(v: atomic_t) -> bool:
    return atomic_add_unless(v, 1, 0)


def atomic_inc_unless_negative(v: atomic_t) -> bool:
    if v.counter < 0:
        return False
    v.counter += 1
    return True


def atomic_dec_unless_positive(v: atomic_t) -> bool:
    if v.counter > 0:
        return False
    v.counter -= 1
    return True


def atomic_dec_if_positive(v: atomic_t) -> int:
    """Decrement if the result stays >= 0; return the result either way."""
    n = v.counter - 1
    if n >= 0:
        v.counter = n
    return n


# atomic64_* and atomic_long_* are the same operations.
_g = globals()
for _name in list(_g):
    if _name.startswith("atomic_") and type(_g[_name]).__name__ == "function":
        _g["atomic64_" + _name[7:]] = _g[_name]
        _g["atomic_long_" + _name[7:]] = _g[_name]
del _g, _name


def cmpxchg(obj: Any, field: str, old: Any, new: Any) -> Any:
    """cmpxchg(&obj->field, old, new): set to new if it is old; return what it was."""
    cur = getattr(obj, field)
    if cur == old:
        setattr(obj, field, new)
    return cur


def xchg(obj: Any, field: str, new: Any) -> Any:
    """xchg(&obj->field, new): set to new; return what it was."""
    cur = getattr(obj, field)
    setattr(obj, field, new)
    return cur


def try_cmpxchg(obj: Any, field: str, old: Any, new: Any) -> tuple[bool, Any]:
    cur = getattr(obj, field)
    if cur == old:
        setattr(obj, field, new)
        return True, old
    return False, cur


cmpxchg_relaxed = cmpxchg_acquire = cmpxchg_release = cmpxchg64 = cmpxchg
xchg_relaxed = xchg_acquire = xchg_release = xchg
