"""kshim.atomic: atomic_t/atomic64_t operations, cmpxchg and xchg."""
from __future__ import annotations

from kshim.atomic import (atomic64_add_return, atomic64_t, atomic_add_unless, atomic_cmpxchg,
                          atomic_dec_and_test, atomic_dec_if_positive, atomic_fetch_add,
                          atomic_fetch_or, atomic_inc, atomic_inc_not_zero, atomic_inc_return,
                          atomic_read, atomic_set, atomic_sub_and_test, atomic_t,
                          atomic_try_cmpxchg, atomic_xchg, cmpxchg, try_cmpxchg, xchg)


def test_arithmetic_and_return_conventions():
    v = atomic_t(1)
    atomic_inc(v)
    assert atomic_inc_return(v) == 3
    assert atomic_fetch_add(2, v) == 3 and atomic_read(v) == 5
    assert not atomic_sub_and_test(4, v) and atomic_sub_and_test(1, v)
    atomic_set(v, 1)
    assert atomic_dec_and_test(v) and atomic_read(v) == 0
    assert atomic_fetch_or(0b100, v) == 0 and atomic_read(v) == 4


def test_conditional_operations():
    v = atomic_t(0)
    assert not atomic_inc_not_zero(v) and atomic_read(v) == 0
    assert not atomic_add_unless(v, 5, 0)
    atomic_set(v, 2)
    assert atomic_add_unless(v, 5, 0) and atomic_read(v) == 7
    assert atomic_dec_if_positive(atomic_t(0)) == -1
    w = atomic_t(1)
    assert atomic_dec_if_positive(w) == 0 and atomic_read(w) == 0


def test_cmpxchg_and_xchg_on_counters_and_fields():
    v = atomic_t(3)
    assert atomic_cmpxchg(v, 3, 9) == 3 and atomic_read(v) == 9
    assert atomic_cmpxchg(v, 3, 1) == 9 and atomic_read(v) == 9
    assert atomic_try_cmpxchg(v, 9, 2) == (True, 9)
    assert atomic_try_cmpxchg(v, 9, 2) == (False, 2)
    assert atomic_xchg(v, 5) == 2

    class conn:
        state = "open"
    c = conn()
    assert cmpxchg(c, "state", "open", "closing") == "open" and c.state == "closing"
    assert cmpxchg(c, "state", "open", "x") == "closing" and c.state == "closing"
    assert xchg(c, "state", "closed") == "closing"
    assert try_cmpxchg(c, "state", "closed", "gone") == (True, "closed")


def test_atomic64_is_the_same_operations():
    v = atomic64_t(1 << 40)
    assert atomic64_add_return(1, v) == (1 << 40) + 1
