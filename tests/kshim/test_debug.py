"""kshim.debug: one switch for every aid, or one aid at a time."""
from __future__ import annotations

import pytest

from kshim import debug, lockdep, sched, slab
from kshim.debug import AIDS, debug_state, set_debug, set_debug_aid


@pytest.fixture(autouse=True)
def restore():
    yield
    set_debug(True, clock_stats=False)


def test_set_debug_flips_every_aid():
    set_debug(False)
    assert not any(debug_state().values())
    set_debug(True, clock_stats=False)
    st = debug_state()
    assert st.pop("clock_stats") is False and all(st.values())


def test_one_aid_at_a_time():
    set_debug_aid("lockdep", False)
    assert lockdep.debug_locks is False and slab.debug_slab is True
    assert sched.debug_atomic_sleep is True
    with pytest.raises(ValueError):
        set_debug_aid("nonsense", True)
    assert set(AIDS) <= set(debug_state())
    assert debug.debug_enabled()
