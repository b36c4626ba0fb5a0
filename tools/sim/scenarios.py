"""Sim scenarios: workloads that drive the target through the sim initiator.

Each scenario is a function of a Context: it spawns the actors (outside
hosts) that log in, run commands and log out, drawing EVERY random choice
from ctx.rng (the world's one seeded random.Random), and returns; the
runner (tools/sim/runner.py) then runs the world and checks the
invariants. The world is the sim engine's Simulation (replayable from the
seed) or tools/sim/tcp.py's TcpWorld against a running uscstd; scenario
bodies cannot tell which.

  login-io       one session; ~1,000 READ/WRITE 10/16 at queue depths 1-32,
                 small and large, with and without immediate data (writes
                 over FirstBurstLength take R2Ts; reads over the offered
                 MaxRecvDataSegmentLength take several Data-In), then logout.
  mcs-reinstate  one session of 2-4 connections (MC/S) running I/O on each;
                 one connection is dropped mid-I/O; then a new session with
                 the same ISID reinstates it (RFC 7143 6.3.5), verifies the
                 data and logs out.
  tmf-storm      I/O at queue depth up to 32 with ABORT TASK on random
                 outstanding commands and LUN RESETs racing with it.
  config-churn   I/O to LUN 0 and LUN 1 while LUN 1 is unmapped and mapped
                 again live.
  nop-timeout    an initiator that stops answering the target's NOP-Ins;
                 the target must drop the connection at its NopInTimeout.

Where it may be called from: the runner, before world.run(); the actors
run inside it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .channel import Channel, ChannelError, LoginRefused
from .initiator import Command, InitiatorSession, TargetPing
from .invariants import Invariants, InvariantViolation
from .pdu import (
    LOGOUT_CLOSE_SESSION,
    SAM_STAT_CHECK_CONDITION,
    SAM_STAT_GOOD,
    TMF_ABORT_TASK,
    TMF_LUN_RESET,
    parse_sense,
)

UNIT_ATTENTION = 6
TUR_TRIES = 8                 # TEST UNIT READYs to clear pending unit attentions


class TargetControl(Protocol):
    """Live configuration changes, called from an actor."""

    def map_lun(self, lun: int) -> None: ...

    def unmap_lun(self, lun: int) -> None: ...


@dataclass
class TargetSpec:
    """Where the target listens and what it serves."""
    addr: tuple[str, int]
    iqn: str
    block_size: int = 512
    span: int = 256                     # LBAs the scenarios touch on each LUN
    max_connections: int = 1            # the target's MaxConnections
    nop_in_interval: float = 0.0        # 0: the target sends no NOP-Ins
    nop_in_timeout: float = 0.0
    virtual_time: bool = False          # the world's clock is the sim's
    fresh: bool = True                  # disks hold zeros (else read a baseline first)
    control: TargetControl | None = None
    churn_lun: int = 1                  # the LUN config-churn maps and unmaps


@dataclass
class Context:
    world: Any                          # Simulation or TcpWorld
    target: TargetSpec
    inv: Invariants
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def rng(self) -> Any:
        return self.world.rng

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


# --- SCSI helpers ---------------------------------------------------------------

def cdb_rw(write: bool, lba: int, blocks: int, sixteen: bool) -> bytes:
    if sixteen:
        return struct.pack(">BBQIBB", 0x8A if write else 0x88, 0, lba, blocks, 0, 0)
    return struct.pack(">BBIBHB", 0x2A if write else 0x28, 0, lba, 0, blocks, 0)


def new_session(ctx: Context, *, isid: bytes | None = None,
                keys: dict[str, str] | None = None) -> InitiatorSession:
    isid = isid if isid is not None else bytes([0x80]) + ctx.rng.randbytes(5)
    return InitiatorSession(ctx.target.iqn, isid=isid, observer=ctx.inv, session_keys=keys)


def open_channel(ctx: Context, sess: InitiatorSession, cid: int = 0,
                 keys: dict[str, str] | None = None) -> Channel:
    ch = Channel(sess.connection(cid), ctx.world.connect(ctx.target.addr))
    ch.login(keys)
    return ch


def clear_unit_attentions(ch: Channel, lun: int = 0) -> None:
    """TEST UNIT READY until GOOD: a new nexus first sees the target's
    pending unit attentions (power on, LUN inventory changed)."""
    for _ in range(TUR_TRIES):
        cmd = ch.submit(bytes(6), lun=lun)
        ch.wait([cmd])
        if cmd.good:
            return
    raise InvariantViolation(f"command-status: TEST UNIT READY on LUN {lun} not GOOD "
                             f"after {TUR_TRIES} tries")


def read_baseline(ctx: Context, ch: Channel, luns: tuple[int, ...] = (0,)) -> None:
    """On a disk that is not new, read what the span holds now, so the
    shadow disk starts from it."""
    t = ctx.target
    if t.fresh:
        return
    step = 64
    for lun in luns:
        for lba in range(0, t.span, step):
            n = min(step, t.span - lba)
            cmd = ch.submit(cdb_rw(False, lba, n, False), lun=lun, read_len=n * t.block_size)
            ctx.inv.unchecked.add((id(ch.conn.session), cmd.itt))
            ch.wait([cmd])
            expect_good([cmd], "baseline read")
            ctx.inv.baseline(lun, lba, bytes(cmd.data))


def random_io(ctx: Context, lun: int = 0, *, lo: int = 0,
              hi: int | None = None) -> Callable[[Channel], Command]:
    """One random READ/WRITE command (as a submit function): mostly small,
    one in eight up to 256 blocks (R2T and multi-PDU Data-In), 10 or 16
    byte CDBs, immediate data or not."""
    rng = ctx.rng
    t = ctx.target
    hi = t.span if hi is None else hi
    big = rng.random() < 0.125
    blocks = rng.randint(1, min(256 if big else 16, hi - lo))
    lba = rng.randrange(lo, hi - blocks + 1)
    write = rng.random() < 0.5
    sixteen = rng.random() < 0.5
    use_imm = rng.random() < 0.75
    data = rng.randbytes(blocks * t.block_size) if write else None
    ctx.count("writes" if write else "reads")

    def submit(ch: Channel) -> Command:
        cdb = cdb_rw(write, lba, blocks, sixteen)
        if write:
            return ch.submit(cdb, lun=lun, data_out=data, use_immediate=use_imm)
        if blocks * t.block_size > ch.conn.our_mrdsl:
            ctx.count("multi-pdu-reads")
        return ch.submit(cdb, lun=lun, read_len=blocks * t.block_size)
    return submit


def expect_good(cmds: list[Command], what: str) -> None:
    for c in cmds:
        if c.aborted or not c.good:
            key = parse_sense(c.sense)[0] if c.sense else None
            raise InvariantViolation(f"command-status: {what}: ITT 0x{c.itt:08x} "
                                     f"status {c.status} response {c.response} sense key "
                                     f"{key} aborted {c.aborted!r}")


def random_session_keys(ctx: Context) -> dict[str, str]:
    rng = ctx.rng
    return {"InitialR2T": rng.choice(["Yes", "No"]),
            "ImmediateData": rng.choice(["Yes", "No"]),
            "FirstBurstLength": str(rng.choice([8192, 16384, 65536])),
            "MaxBurstLength": str(rng.choice([65536, 262144])),
            # below the largest READ (128 KiB), so the target's multi-PDU
            # Data-In path runs too, not only its one-PDU fast path
            "MaxRecvDataSegmentLength": str(rng.choice([8192, 65536, 262144]))}


def batches(ctx: Context, total: int) -> list[tuple[int, int]]:
    """Split total commands into (count, queue depth) batches, depth 1-32."""
    out = []
    left = total
    while left > 0:
        n = min(left, ctx.rng.randint(10, 200))
        out.append((n, ctx.rng.randint(1, 32)))
        left -= n
    return out


# --- Scenarios ----------------------------------------------------------------------

def login_io(ctx: Context, commands: int = 1000) -> None:
    """Login, ~1,000 mixed READ/WRITE with R2T and immediate data at QD 1-32, logout."""
    def actor() -> None:
        sess = new_session(ctx, keys=random_session_keys(ctx))
        ch = open_channel(ctx, sess)
        clear_unit_attentions(ch)
        read_baseline(ctx, ch)
        for n, depth in batches(ctx, commands):
            expect_good(ch.run((random_io(ctx) for _ in range(n)), depth), "login-io")
        if ch.logout(LOGOUT_CLOSE_SESSION) != 0:
            raise InvariantViolation("command-status: logout refused")
        ctx.count("sessions")
    ctx.world.spawn(actor, "login-io")


def mcs_reinstate(ctx: Context, commands: int = 200) -> None:
    """MC/S session, a connection dropped mid-I/O, session reinstatement."""
    rng = ctx.rng
    t = ctx.target
    nconn = min(rng.randint(2, 4), t.max_connections)
    isid = bytes([0x80]) + rng.randbytes(5)
    victim = rng.randrange(nconn)
    drop_after = rng.randint(1, commands // 2)
    state = {"ended": 0}

    def conn_actor(sess: InitiatorSession, cid: int) -> None:
        if cid == 0:
            keys = {"MaxConnections": str(t.max_connections)}
            ch = Channel(sess.connection(cid), ctx.world.connect(t.addr))
            ch.login(keys)
            clear_unit_attentions(ch)
            read_baseline(ctx, ch)
            for c in range(1, nconn):
                ctx.world.spawn(lambda c=c: conn_actor(sess, c), f"mcs-cid{c}")
        else:
            ch = Channel(sess.connection(cid), ctx.world.connect(t.addr))
            try:
                ch.login()
            except LoginRefused as e:
                # The session ended (a dropped connection ends it at ERL 0)
                # while this connection was logging in to join it: "session
                # does not exist" (RFC 7143 11.13.5) is the right answer.
                if (e.status_class, e.status_detail) != (0x02, 0x0A):
                    raise
                ch.peer.close()
                ctx.count("join-refused")
                state["ended"] += 1
                return
        works = [random_io(ctx) for _ in range(commands)]
        try:
            if cid == victim:
                ch.run(works[:drop_after], rng.randint(1, 8))
                for w in works[drop_after:drop_after + rng.randint(1, 8)]:
                    w(ch)
                if rng.random() < 0.5:
                    ch.peer.reset()
                else:
                    ch.peer.close()
                ch.conn.connection_lost("dropped by the initiator")
                ctx.count("dropped")
            else:
                ch.run(works, rng.randint(1, 16))
                ch.logout(LOGOUT_CLOSE_SESSION if cid == 0 else 1)
        except ChannelError:
            ctx.count("closed-by-target")
        finally:
            state["ended"] += 1

    def reinstater() -> None:
        # Wait (bounded) until the first session's connections ended.
        for _ in range(10_000):
            if state["ended"] >= nconn:
                break
            ctx.world.sleep(0.05)
        sess = new_session(ctx, isid=isid)
        ch = open_channel(ctx, sess, keys={"MaxConnections": str(t.max_connections)})
        ctx.inv.settle_lost()
        ctx.count("reinstated")
        clear_unit_attentions(ch)
        span = t.span
        reads = [lambda ch, lba=lba: ch.submit(cdb_rw(False, lba, min(64, span - lba), False),
                                               read_len=min(64, span - lba) * t.block_size)
                 for lba in range(0, span, 64)]
        expect_good(ch.run(reads, 4), "mcs-reinstate read-back")
        expect_good(ch.run((random_io(ctx) for _ in range(commands)), 8), "mcs-reinstate")
        ch.logout()

    lead_sess = new_session(ctx, isid=isid)
    ctx.world.spawn(lambda: conn_actor(lead_sess, 0), "mcs-cid0")
    ctx.world.spawn(reinstater, "mcs-reinstate")


def tmf_storm(ctx: Context, commands: int = 600) -> None:
    """ABORT TASK and LUN RESET racing with I/O at queue depth up to 32."""
    rng = ctx.rng

    def actor() -> None:
        sess = new_session(ctx)
        ch = open_channel(ctx, sess)
        clear_unit_attentions(ch)
        read_baseline(ctx, ch)
        works = [random_io(ctx) for _ in range(commands)]
        live: list[Command] = []
        depth = rng.randint(4, 32)
        # Bounded: each round receives once, and Channel.pump gives up on a
        # target that keeps completing nothing.
        while True:
            live = [c for c in live if not c.finished]
            while works and len(live) < depth:
                live.append(works.pop()(ch))
            if not works and not live:
                break
            roll = rng.random()
            if live and roll < 0.08:
                victim = rng.choice(live)
                ch.conn.task_mgmt(TMF_ABORT_TASK, ref_itt=victim.itt, lun=victim.lun)
                ctx.count("abort-task")
            elif roll < 0.085:
                ch.conn.task_mgmt(TMF_LUN_RESET, lun=0)
                ctx.count("lun-reset")
            ch.pump()
        for c in ch.completed():
            if c.status not in (SAM_STAT_GOOD, SAM_STAT_CHECK_CONDITION) or c.response:
                raise InvariantViolation(f"command-status: tmf-storm ITT 0x{c.itt:08x} status "
                                         f"{c.status} response {c.response}")
        ctx.count("aborted", len(ch.aborted()))
        ch.logout()
    ctx.world.spawn(actor, "tmf-storm")


def config_churn(ctx: Context, commands: int = 400) -> None:
    """A LUN unmapped and mapped again live while I/O runs to it and LUN 0."""
    rng = ctx.rng
    t = ctx.target
    control = t.control
    if control is None:
        raise ValueError("config-churn needs a target with live configuration control")
    lun = t.churn_lun
    running = {"io": True, "started": False}

    def io_actor() -> None:
        sess = new_session(ctx)
        ch = open_channel(ctx, sess)
        clear_unit_attentions(ch)
        clear_unit_attentions(ch, lun)
        read_baseline(ctx, ch, (0, lun))
        works = [random_io(ctx, lun=rng.choice([0, lun])) for _ in range(commands)]
        running["started"] = True
        for i in range(0, len(works), 50):
            for c in ch.run(works[i:i + 50], rng.randint(1, 16)):
                cc = c.status == SAM_STAT_CHECK_CONDITION
                # Unmapping raises a LUN inventory unit attention on every
                # LUN; a command to the unmapped LUN fails with any sense.
                ua = cc and parse_sense(c.sense)[0] == UNIT_ATTENTION
                if not (c.good or ua or (cc and c.lun == lun)):
                    raise InvariantViolation(f"command-status: config-churn ITT "
                                             f"0x{c.itt:08x} LUN {c.lun} status {c.status}")
                if c.status == SAM_STAT_CHECK_CONDITION:
                    ctx.count("check-condition")
        running["io"] = False
        ch.logout()

    def churn_actor() -> None:
        # The baseline is read before the churn begins (bounded wait).
        for _ in range(10_000):
            if running["started"]:
                break
            ctx.world.sleep(0.01)
        for _ in range(1000):
            if not running["io"]:
                break
            ctx.world.sleep(rng.uniform(0.001, 0.05))
            control.unmap_lun(lun)
            ctx.count("unmapped")
            ctx.world.sleep(rng.uniform(0.001, 0.05))
            control.map_lun(lun)
            ctx.count("mapped")

    ctx.world.spawn(io_actor, "churn-io")
    ctx.world.spawn(churn_actor, "churn-config")


def nop_timeout(ctx: Context) -> None:
    """An initiator goes silent; the target drops it at its NopInTimeout."""
    t = ctx.target
    if t.nop_in_interval <= 0:
        raise ValueError("nop-timeout needs a target that sends NOP-Ins (NopInInterval > 0)")

    def actor() -> None:
        sess = new_session(ctx)
        ch = open_channel(ctx, sess)
        clear_unit_attentions(ch)
        read_baseline(ctx, ch)
        expect_good(ch.run((random_io(ctx) for _ in range(ctx.rng.randint(1, 20))), 4),
                    "nop-timeout")
        ch.conn.answer_nop_in = False
        silent_ns = ctx.world.now_ns
        ch.wait_closed()
        pings = [e for e in ch.events if isinstance(e, TargetPing)]
        if not pings:
            raise InvariantViolation("nop-timeout: the target closed without a NOP-In")
        took = (ctx.world.now_ns - silent_ns) / 1e9
        limit = t.nop_in_interval + t.nop_in_timeout + 1.0
        if t.virtual_time and not t.nop_in_timeout <= took <= limit:
            raise InvariantViolation(f"nop-timeout: connection dropped {took:.3f} s after "
                                     f"going silent; expected within [{t.nop_in_timeout}, "
                                     f"{limit}] (NopInInterval {t.nop_in_interval}, "
                                     f"NopInTimeout {t.nop_in_timeout})")
        ctx.count("silent-ms", int(took * 1000))
    ctx.world.spawn(actor, "nop-timeout")


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "login-io": login_io,
    "mcs-reinstate": mcs_reinstate,
    "tmf-storm": tmf_storm,
    "config-churn": config_churn,
    "nop-timeout": nop_timeout,
}
