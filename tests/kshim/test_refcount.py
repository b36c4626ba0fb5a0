"""kshim.refcount: refcount_t saturates and reports instead of wrapping."""
from __future__ import annotations

import pytest

from kshim import bug, printk
from kshim.refcount import (REFCOUNT_SATURATED, refcount_dec_and_test, refcount_inc,
                            refcount_inc_not_zero, refcount_read, refcount_t)


@pytest.fixture(autouse=True)
def clean():
    level = printk.console_loglevel
    printk.set_console_loglevel(0)
    bug.reset_reports()
    yield
    bug.reset_reports()
    printk.console_loglevel = level


def test_counting_and_the_last_put():
    r = refcount_t(1)
    refcount_inc(r)
    assert not refcount_dec_and_test(r) and refcount_dec_and_test(r)
    assert not refcount_inc_not_zero(r) and refcount_read(r) == 0
    assert bug.reports == []


def test_increment_from_zero_is_a_use_after_free_and_saturates():
    r = refcount_t(0)
    refcount_inc(r)
    assert refcount_read(r) == REFCOUNT_SATURATED
    rep = bug.reports[0]
    assert rep.title == "refcount_t: addition on 0; use-after-free."
    assert "test_refcount.py" in rep.details["at"]


def test_underflow_is_reported_and_never_frees_twice():
    r = refcount_t(1)
    assert refcount_dec_and_test(r)
    assert not refcount_dec_and_test(r)
    assert bug.reports[0].title == "refcount_t: underflow; use-after-free."
