"""Every sim scenario (tools/sim/scenarios.py) passes over real TCP.

The scenario bodies are the ones `uscst-sim` runs under the sim engine;
here tools/sim/tcp.py's TcpWorld drives them against a real uscstd
(tests/sim/tcp_target.py), with every invariant checker on. The seed
picks the workload (the target's own choices are the host's here), and
each test names its seed.
"""
from __future__ import annotations

import pytest

from tools.sim.runner import drive
from tools.sim.scenarios import SCENARIOS
from tools.sim.tcp import TcpWorld

LIMIT_S = 120.0


def run(spec, name: str, seed: int):
    world = TcpWorld(seed)
    try:
        out = drive(name, world, spec, seed, max_virtual_s=LIMIT_S)
    finally:
        world.shutdown()
    assert out.ok, f"{name} seed {seed} over TCP: {out.verdict} {out.stats}"
    return out


@pytest.mark.parametrize("seed", [7, 8])
def test_login_io_seed_passes_every_invariant_over_tcp(sim_server, seed):
    _, spec = sim_server
    out = run(spec, "login-io", seed)
    assert out.stats["reads"] + out.stats["writes"] == 1000
    assert out.stats["sessions"] == 1


@pytest.mark.parametrize("seed", [7, 8])
def test_mcs_reinstate_seed_drops_a_connection_and_reinstates_over_tcp(sim_server, seed):
    _, spec = sim_server
    out = run(spec, "mcs-reinstate", seed)
    assert out.stats["dropped"] == 1 and out.stats["reinstated"] == 1


@pytest.mark.parametrize("seed", [7, 8])
def test_tmf_storm_seed_answers_every_command_once_over_tcp(sim_server, seed):
    _, spec = sim_server
    out = run(spec, "tmf-storm", seed)
    assert out.stats.get("abort-task", 0) + out.stats.get("lun-reset", 0) > 0


def test_config_churn_seed_7_maps_and_unmaps_a_lun_under_io_over_tcp(sim_server):
    _, spec = sim_server
    out = run(spec, "config-churn", 7)
    assert out.stats["unmapped"] >= 1 and out.stats["mapped"] == out.stats["unmapped"]


def test_nop_timeout_seed_7_target_drops_the_silent_initiator_over_tcp(sim_server):
    _, spec = sim_server
    out = run(spec, "nop-timeout", 7)
    assert out.stats["silent-ms"] > 0


def test_every_listed_scenario_has_a_test_here():
    assert set(SCENARIOS) == {"login-io", "mcs-reinstate", "tmf-storm", "config-churn",
                              "nop-timeout"}
