"""Under the sim engine a fault pattern follows the run's seed: two runs of
the same seed fail the same calls, another seed fails others (issue 16:
"faults draw from the run's seed, so a failing run replays exactly")."""
from __future__ import annotations

import pytest

from kshim import fault_inject as fi
from kshim.engine_sim import Simulation
from kshim.failslab import failslab
from kshim.gfp import GFP_KERNEL
from kshim.slab import kfree, kmalloc


@pytest.fixture(autouse=True)
def clean_points():
    fi.fault_reset()
    yield
    fi.fault_reset()


def _pattern(sim_seed: int) -> tuple[list[bool], int]:
    fi.apply_fault_specs(["failslab:probability=30,times=-1,verbose=0"])
    sim = Simulation(sim_seed)
    got: list[bool] = []

    def init() -> int:
        for _ in range(200):
            buf = kmalloc(64, GFP_KERNEL)
            got.append(buf is None)
            kfree(buf)
        return 0
    assert sim.boot(init) == 0
    sim.shutdown(None)
    return got, failslab.seed


def test_same_sim_seed_fails_the_same_allocations_seed_1601() -> None:
    first, seed1 = _pattern(1601)
    again, seed2 = _pattern(1601)
    assert seed1 == seed2 and first == again
    assert 20 < sum(first) < 100, sum(first)
    other, seed3 = _pattern(1602)
    assert seed3 != seed1 and other != first


def test_a_seed_the_user_sets_survives_the_boot_seed_1603() -> None:
    fi.apply_fault_specs(["failslab:seed=1603"])
    _got, seed = _pattern(7)
    assert seed == 1603
