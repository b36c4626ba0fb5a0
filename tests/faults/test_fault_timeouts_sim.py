"""NOP-In and login timeouts fire on time under injected scheduling faults.

Issue 16, section 4: "Delays: no spurious failure; timeouts (NOP-In,
login) fire where they should." Each test boots the target under the sim
engine (virtual time: no wall-clock threshold), arms fail_timer (every
timer late, or the first EARLY_TIMES early), fail_queue_work and
fail_softirq (every work item and raised softirq delayed) from its actor
before it connects, then goes silent and measures, in virtual time, how
long the target takes to drop the connection: never before the configured
timeout, and no later than the timeout plus the sum of the injected delays
(plus network latency slack). The target's login and NOP-In paths queue no
work and raise no softirq of their own (socket readiness reaches them
through the engine), so those two points show only that delays elsewhere
do not end a connection early; the stats report what each injected.

The target's timeout callbacks check their deadline against jiffies and
re-arm when a timer fired early (as SCST's timer functions do): with that
check removed from _nop_in_timer or _login_timeout the early-timer tests
fail with a drop DELAY_MS early.
"""
from __future__ import annotations

import pytest

from kshim.fault_inject import apply_fault_specs, fault_reset, statistics
from tools.sim.channel import Channel
from tools.sim.initiator import TargetPing
from tools.sim.scenarios import Context, clear_unit_attentions, new_session

TIMER_MS = 5000                # each timer this much late (or early)
WORK_MS = 2000                 # each queue_work this much late
SOFTIRQ_MS = 1000              # each raise_softirq this much late
SLACK_MS = 1000                # network latency and the close path, as nop-timeout allows
NOP_TIMEOUT_S = 30             # the sim target's NopInTimeout (target default)
LOGIN_TIMEOUT_S = 30           # iscsi_scst.conn.iscsi_login_timeout
EARLY_TIMES = 4                # early timers injected, at most
EARLY_TOLERANCE_MS = 100       # the ping's and the FIN's latencies may differ by this


def _arm(timer_error: str) -> None:
    # Early timers a few times only: a re-armed timer is early again (it
    # fires at once), so with no limit a timeout would never be reached.
    times = -1 if timer_error == "late" else EARLY_TIMES
    apply_fault_specs([
        f"fail_timer:error={timer_error},delay-ms={TIMER_MS},probability=100,times={times},"
        "verbose=0",
        f"fail_queue_work:delay-ms={WORK_MS},probability=100,times=-1,verbose=0",
        f"fail_softirq:delay-ms={SOFTIRQ_MS},probability=100,times=-1,verbose=0"])


def _report(ctx: Context, took_ns: int) -> None:
    st = statistics()
    ctx.count("took-ms", took_ns // 1_000_000)
    for point in ("fail_timer", "fail_queue_work", "fail_softirq"):
        ctx.count(point, st[point])
    fault_reset()


def _nop_timeout_body(timer_error: str):
    def body(ctx: Context) -> None:
        def actor() -> None:
            world = ctx.world
            _arm(timer_error)
            ch = Channel(new_session(ctx).connection(0), world.connect(ctx.target.addr))
            ch.login()
            clear_unit_attentions(ch)
            ch.conn.answer_nop_in = False
            # The target arms NopInTimeout when it sends the ping we ignore.
            while not any(isinstance(e, TargetPing) for e in ch.pump()):
                pass
            pinged = world.now_ns
            ch.wait_closed()
            _report(ctx, world.now_ns - pinged)
        ctx.world.spawn(actor, "silent-initiator")
    return body


def _login_timeout_body(timer_error: str):
    def body(ctx: Context) -> None:
        def actor() -> None:
            world = ctx.world
            _arm(timer_error)
            peer = world.connect(ctx.target.addr)
            connected = world.now_ns
            # Never send a Login Request: the target's login timer ends it.
            try:
                while peer.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            _report(ctx, world.now_ns - connected)
            peer.close()
        ctx.world.spawn(actor, "mute-connection")
    return body


def _check(took_ms: int, timeout_s: int, out_stats: dict[str, int]) -> None:
    assert out_stats["fail_timer"] > 0, out_stats
    assert took_ms >= timeout_s * 1000 - EARLY_TOLERANCE_MS, \
        f"dropped {took_ms} ms after the deadline was set: earlier than {timeout_s} s"
    bound = timeout_s * 1000 + TIMER_MS + WORK_MS + SOFTIRQ_MS + SLACK_MS
    assert took_ms <= bound, f"dropped {took_ms} ms after; bound {bound} ms"


@pytest.mark.sim_seed(1601)
@pytest.mark.parametrize("timer_error", ["late", "early"])
def test_nop_in_timeout_fires_on_time_with_timers_work_and_softirqs_delayed_seed_1601(
        sim_target, timer_error):
    out = sim_target.run(f"nop-timeout-{timer_error}", _nop_timeout_body(timer_error))
    _check(out.stats["took-ms"], NOP_TIMEOUT_S, out.stats)


@pytest.mark.sim_seed(1602)
@pytest.mark.parametrize("timer_error", ["late", "early"])
def test_login_timeout_fires_on_time_with_timers_work_and_softirqs_delayed_seed_1602(
        sim_target, timer_error):
    out = sim_target.run(f"login-timeout-{timer_error}", _login_timeout_body(timer_error))
    _check(out.stats["took-ms"], LOGIN_TIMEOUT_S, out.stats)
