"""kshim.kref: reference counts with a release function."""
from __future__ import annotations

import pytest

from kshim import bug, printk
from kshim.kref import kref, kref_get, kref_get_unless_zero, kref_put, kref_read


class session:
    def __init__(self) -> None:
        self.ref = kref(self)
        self.released = False


def release_session(k: kref) -> None:
    k.owner.released = True


@pytest.fixture(autouse=True)
def clean():
    level = printk.console_loglevel
    printk.set_console_loglevel(0)
    bug.reset_reports()
    yield
    bug.reset_reports()
    printk.console_loglevel = level


def test_the_last_put_releases_the_owner():
    s = session()
    kref_get(s.ref)
    assert kref_put(s.ref, release_session) == 0 and not s.released
    assert kref_put(s.ref, release_session) == 1 and s.released
    assert kref_read(s.ref) == 0 and not kref_get_unless_zero(s.ref)


def test_get_after_release_is_reported_naming_the_caller():
    s = session()
    kref_put(s.ref, release_session)
    kref_get(s.ref)
    rep = bug.reports[0]
    assert rep.title == "refcount_t: addition on 0; use-after-free."
    assert "test_kref.py" in rep.details["at"]
