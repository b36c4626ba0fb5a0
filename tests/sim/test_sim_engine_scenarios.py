"""The sim scenarios under the sim engine, through the sim_target fixture.

The target boots in-process on kshim.engine_sim (tools/sim_target.py),
the sim initiator drives it over SimPeer connections, the invariant
checkers and the engine's teardown checks judge the run. Each test names
its seed (USCST_SEED=N replays another). Also: the same seed gives the
same trace hash, another seed another; a scenario body a test writes
itself runs the same way; the uscst-sim CLI prints the replayable line.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from uscstd_support import REPO_ROOT

from tools.sim import cli
from tools.sim.channel import Channel
from tools.sim.initiator import InitiatorSession
from tools.sim.runner import Outcome
from tools.sim.scenarios import Context, cdb_rw, clear_unit_attentions


@pytest.mark.sim_seed(7)
def test_login_io_seed_7_keeps_every_invariant_under_the_sim(sim_target):
    out = sim_target.run("login-io")
    assert out.stats["reads"] + out.stats["writes"] == 1000
    assert re.fullmatch(r"[0-9a-f]{16}", out.trace)
    # a small MaxRecvDataSegmentLength: READs answered by several Data-In
    # PDUs, the path where a command freed early shows (docs/simulation.md)
    assert out.stats["multi-pdu-reads"] > 0


@pytest.mark.sim_seed(4)
def test_mcs_reinstate_seed_4_reinstates_a_session_of_several_connections(sim_target):
    out = sim_target.run("mcs-reinstate")
    assert out.stats["reinstated"] == 1 and out.stats["dropped"] == 1


@pytest.mark.sim_seed(3)
def test_tmf_storm_seed_3_answers_every_command_once_under_the_sim(sim_target):
    out = sim_target.run("tmf-storm")
    assert out.stats["abort-task"] > 0


@pytest.mark.sim_seed(5)
def test_config_churn_seed_5_unmaps_and_maps_a_lun_under_io(sim_target):
    out = sim_target.run("config-churn")
    assert out.stats["unmapped"] >= 1


@pytest.mark.sim_seed(4)
def test_nop_timeout_seed_4_drops_the_silent_initiator_at_30_virtual_seconds(sim_target):
    out = sim_target.run("nop-timeout")
    # NopInInterval 30 + NopInTimeout 30 of virtual time, in far less wall time.
    assert 30_000 <= out.stats["silent-ms"] <= 61_000
    assert out.virtual_s >= 60.0


@pytest.mark.sim_seed(7)
def test_same_seed_replays_the_same_trace_and_another_seed_differs_seed_7(sim_target):
    a = sim_target.run("tmf-storm")
    b = sim_target.run("tmf-storm")
    assert (a.trace, a.events) == (b.trace, b.events)
    other = type(sim_target)(8, sim_target.nodeid).run("tmf-storm")
    assert other.trace != a.trace


@pytest.mark.sim_seed(11)
def test_a_test_written_scenario_body_runs_under_the_fixture_seed_11(sim_target):
    """Its actor reports back through ctx.count (the run is in a child process)."""
    def body(ctx: Context) -> None:
        def actor() -> None:
            sess = InitiatorSession(ctx.target.iqn, isid=bytes([0x80, 1, 1, 1, 1, 1]),
                                    observer=ctx.inv)
            ch = Channel(sess.connection(0), ctx.world.connect(ctx.target.addr))
            ch.login()
            clear_unit_attentions(ch)
            w = ch.submit(cdb_rw(True, 5, 1, True), data_out=b"\x5a" * 512)
            ch.wait([w])
            r = ch.submit(cdb_rw(False, 5, 1, False), read_len=512)
            ch.wait([r])
            ctx.count("matched", int(bytes(r.data) == b"\x5a" * 512))
            ch.logout()
        ctx.world.spawn(actor, "test-actor")
    out = sim_target.run("write-read", body)
    assert out.stats["matched"] == 1


def test_cli_run_prints_the_same_last_line_for_the_same_seed_and_writes_the_trace(tmp_path):
    def run(seed: int, *extra: str) -> str:
        p = subprocess.run([sys.executable, "-m", "tools.sim", "run", "tmf-storm", "--seed",
                            str(seed), *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout.strip().splitlines()[-1]
    trace = tmp_path / "trace.txt"
    first = run(3, "--trace", str(trace))
    m = re.fullmatch(r"seed=3 events=(\d+) virtual_s=\d+\.\d{3} trace=([0-9a-f]{16}) "
                     r"verdict=ok", first)
    assert m, first
    assert run(3) == first
    assert len(trace.read_text().splitlines()) == int(m.group(1))
    assert f"trace={m.group(2)}" not in run(4)


def test_cli_check_determinism_runs_the_seed_twice_and_compares_seed_5():
    p = subprocess.run([sys.executable, "-m", "tools.sim", "run", "config-churn", "--seed", "5",
                        "--check-determinism"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"determinism: first trace=(\w+) events=(\d+), second trace=(\w+) "
                  r"events=(\d+)", p.stdout)
    assert m and m.group(1) == m.group(3) and m.group(2) == m.group(4), p.stdout
    assert p.stdout.strip().splitlines()[-1].endswith("verdict=ok")


def test_cli_explore_reports_every_seed_and_the_rate():
    p = subprocess.run([sys.executable, "-m", "tools.sim", "explore", "nop-timeout", "--seeds",
                        "4", "--jobs", "2"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.fullmatch(r"explored 4 seeds: 0 failed, \d+\.\d seeds/s",
                        p.stdout.strip().splitlines()[-1])


def test_cli_explore_check_determinism_runs_every_seed_twice_and_passes_seeds_1_to_3():
    p = subprocess.run([sys.executable, "-m", "tools.sim", "explore", "nop-timeout", "--seeds",
                        "3", "--check-determinism"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.fullmatch(r"explored 3 seeds: 0 failed, \d+\.\d seeds/s",
                        p.stdout.strip().splitlines()[-1])


def test_replay_check_fails_a_seed_whose_second_run_differs_seed_9():
    first = Outcome("login-io", 9, events=10, trace="00000000000000aa")
    cli.replay_check(first, Outcome("login-io", 9, events=10, trace="00000000000000aa"))
    assert first.ok
    cli.replay_check(first, Outcome("login-io", 9, events=11, trace="00000000000000bb"))
    assert first.verdict == ("FAIL: determinism: seed 9 gave traces 00000000000000aa "
                             "(10 events) and 00000000000000bb (11 events)")


@pytest.mark.sim_seed(3)
def test_mcs_reinstate_seed_3_frees_the_old_session_and_its_commands(sim_target):
    """Regression seed found by explore: a READ's response sat in the
    connection's partly sent tx batch (conn.tx_items) when the reinstatement
    closed the connection; iscsi_conn_abort_cmnds finished only write_list
    items, so the command stayed in XMIT_WAIT and the old session was never
    freed. Fails with that part of iscsi_conn_abort_cmnds removed."""
    sim_target.run("mcs-reinstate", timeout_s=300)


@pytest.mark.sim_seed(5)
def test_mcs_reinstate_seed_5_ends_when_the_initiator_closes_on_a_full_send_window(sim_target):
    """Regression seed for the engine: the initiator closed its end while
    the target's send window was full; sim_net said writable yet answered
    -EAGAIN, and the wr thread spun at one virtual instant forever."""
    sim_target.run("mcs-reinstate", timeout_s=300)


HANGING = '''
import sys
from tools.sim import cli, scenarios

def hang(ctx):
    def actor():
        while True:                # virtual time never moves: a livelock
            ctx.world.sleep(0)
    ctx.world.spawn(actor, "hang")

scenarios.SCENARIOS["hang"] = hang
outs, _ = cli.explore("hang", [1, 2], 1, seed_timeout=2)
print([o.verdict for o in outs])
'''


def test_explore_fails_a_livelocked_seed_as_a_stall_after_its_seed_timeout():
    """A planted scenario whose actor keeps virtual time from advancing:
    the engine's virtual-time limit never comes; the engine's livelock
    detector (a million events at one instant) or the wall-clock seed
    timeout, whichever comes first on this host, ends the seed as a stall,
    and the next seed still runs (in a fresh process)."""
    p = subprocess.run([sys.executable, "-c", HANGING], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    verdicts = ast.literal_eval(p.stdout.strip().splitlines()[-1])
    assert len(verdicts) == 2
    assert all(v.startswith(("FAIL: stall: SeedTimeout", "FAIL: stall: SimStall"))
               for v in verdicts), verdicts


@pytest.mark.sim_seed(77)
def test_mcs_reinstate_seed_77_login_responses_of_a_joining_connection_keep_expcmdsn(sim_target):
    """Regression seed found by explore: the login responses of a connection
    joining a session echoed the login's CmdSN as ExpCmdSN (16) while the
    session still expected 9 (commands in flight on the other connection),
    so ExpCmdSN went back at the final response (sn-monotonic)."""
    sim_target.run("mcs-reinstate", timeout_s=300)


@pytest.mark.sim_seed(331)
def test_mcs_reinstate_seed_331_a_join_to_a_session_that_ended_meanwhile_is_refused(sim_target):
    """Regression seed found by explore: CID 1's login had found session
    0x1; before its last login PDU, CID 0 was reset and the session ended
    (ERL 0) with its other connections. The login still joined the freed
    session, whose SCST session was gone, and the first SCSI command
    oopsed the rd thread (scst_rx_cmd on None) and the run stalled. The
    join is now refused with 02/0A, "session does not exist"."""
    out = sim_target.run("mcs-reinstate", timeout_s=300)
    assert out.stats.get("join-refused") == 1
