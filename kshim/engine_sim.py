"""The sim engine: a deterministic machine under kshim, replayable from one seed.

Twin of nothing in the kernel: the second filler of the host-ops table
(kshim.host), beside kshim.engine_trio. In the spirit of FoundationDB's
simulation and TigerBeetle's VOPR, for kernel-idiom code: the emulated CPU,
its kthreads and softirqs run unmodified; the "hardware" below them is
simulated:

- Virtual time. ops.monotonic_ns is the simulation's clock; it moves only
  when the next event is later than now, so idle time costs nothing (a 30 s
  NOP-In timeout is one event).
- One event heap, ordered by (virtual time, a seeded tie-break key): socket
  segments, readiness, timer expiries, I/O completions, actor wake-ups.
  After each event the engine runs pending softirqs and the run queue, as
  the trio engine does after each host event.
- ONE seeded PRNG (Simulation.rng, random.Random(seed)) draws every choice:
  the order of events due at the same time, the next runnable kthread
  (sched.pick_next), timer slack, I/O latency and so completion order,
  socket segmentation and latency, send windows, page-cache hits, and the
  kernel's own get_random_bytes/prandom_u32.
- An event trace: one line per processed event ("<ns> <what>"), hashed in
  batches as it grows (blake2b, 8 bytes: trace_hash() is 16 hex digits). Same seed,
  same trace, byte for byte.
- Sockets (kshim.engine_sim_net): in-memory TCP pairs. A kernel socket
  listening on a sim address accepts connections that outside hosts open
  with Simulation.connect(); the outside end is a SimPeer.
- Files (kshim.engine_sim_fs): in-memory disks (Simulation.disks, path ->
  bytearray) or real files; pool jobs run and complete in virtual time.
- Actors: outside programs (an initiator) as greenlets the simulation runs
  between events, NOT kthreads; they block in SimPeer.recv() or
  Simulation.sleep() and never touch kernel state directly.

Contexts: a Simulation is driven from one host greenlet (the one that made
it): boot(), run(), connect(), shutdown(). Actors call SimPeer methods and
sleep(). Kernel code sees only kshim; the operations this engine fills are
callable from any context on the CPU and never sleep.

Differs from the trio engine (docs/kshim.md, "deliberate differences"): no
virtual time passes while a task or softirq runs (soft-lockup checks and CPU
time statistics read 0); the run queue is a seeded choice, not FIFO; the TCP
model has no loss or retransmission, a send window per connection, FIN on
close (never RST); no host signals; kernel_connect (outgoing) answers
-ENETUNREACH; no Ceph cluster (rbd_probe says so, rbd_open answers
-ENODEV), so vdisk_rbd devices are refused.
"""
from __future__ import annotations

import errno
import hashlib
import heapq
import random
from typing import Any, Callable

import greenlet

from kshim import bug, engine_posix, host, jiffies, sched, slab, softirq, timer, workqueue
from kshim.engine_sim_fs import sim_files
from kshim.engine_sim_net import SimPeer, sim_net
from kshim.kthread import kthread_run

__all__ = ["SimPeer", "SimStall", "Simulation", "check_determinism", "teardown_problems"]

# 2026-01-01T00:00:00Z: the wall clock at virtual time 0 (ktime_get_real)
SIM_EPOCH_NS = 1_767_225_600 * 1_000_000_000
NS = 1_000_000_000
# So many events in a row at one virtual instant means nothing progresses.
LIVELOCK_EVENTS = 1_000_000
HASH_BATCH = 512        # trace lines per update of the running hash
SIM_NO_RBD = "the sim engine has no Ceph cluster (vdisk_rbd runs on the trio engine)"


_booted: "Simulation | None" = None      # one machine per process at a time


class SimStall(Exception):
    """Nothing can progress while actors (or a boot) still wait, or the
    virtual-time limit of run() was reached."""


class _actor:
    __slots__ = ("name", "gr", "done", "wake_pending")

    def __init__(self, name: str, gr: greenlet.greenlet) -> None:
        self.name = name
        self.gr = gr
        self.done = False
        self.wake_pending = False


class Simulation:
    """One simulated machine and its outside world, driven by one seed.

    Knobs (virtual ns ranges, drawn per use from rng) may be changed before
    boot(): net_latency_ns, io_latency_ns, timer_slack_ns, page_cache_hit.
    """

    # A zero-copy READ (decision 0067, off by default) reads its file when
    # its bytes enter the socket, and a send the window cuts short goes on
    # later: a WRITE in flight with it may land between the two, so a block
    # can come back as a byte mix of its possible values, as on real files.
    # A run that opens the zero-copy band sets this (tools/sim/invariants.py,
    # read-data); copied READs are never torn here.
    torn_blocks = False

    def __init__(self, seed: int, *, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.events = 0
        self.net_latency_ns = (5_000, 200_000)
        self.io_latency_ns = (5_000, 300_000)
        self.timer_slack_ns = (0, 100_000)
        self.page_cache_hit = 0.8
        self.shutdown_requested = False
        self._now = 0
        self._same_time = 0             # events in a row at the same virtual time
        self._heap: list[tuple[int, int, int, Callable[[Any], None], Any, str]] = []
        self._seq = 0
        self._trace = trace
        self._lines: list[str] = []     # every line, with trace=True
        self._unhashed: list[str] = []  # lines ("...\n") not yet fed to the hash
        self._hash = hashlib.blake2b(digest_size=8)
        self._loop_gr = greenlet.getcurrent()
        self._actors: list[_actor] = []
        self._live_actors = 0
        self._current: _actor | None = None
        self._timer_at: int | None = None
        self._booted = False
        self._saved_ops: host.host_operations | None = None
        self._baseline_tasks: set[int] = set()
        self._baseline_timers: set[int] = set()
        self._baseline_slab: dict[int, int] = {}
        self.net = sim_net(self)
        self.files = sim_files(self)
        self.disks = self.files.disks

    # -- clock and events ---------------------------------------------------

    @property
    def now_ns(self) -> int:
        return self._now

    def _clock_ns(self) -> int:
        return self._now

    def _clock_s(self) -> float:
        return self._now / NS

    def _cpu_busy(self, ns: int) -> None:
        """udelay/mdelay: the CPU spins, so virtual time passes with no event
        run meanwhile (the soft-lockup detector sees it)."""
        if ns > 0:
            self._now += ns

    def _wall_ns(self) -> int:
        return SIM_EPOCH_NS + self._now

    def draw(self, bounds: tuple[int, int]) -> int:
        """A seeded integer in [lo, hi]."""
        return self.rng.randint(bounds[0], bounds[1])

    def schedule(self, delay_ns: int, fn: Callable[[Any], None], arg: Any, what: str) -> int:
        """Queue fn(arg) at now + delay_ns; events due at the same time run
        in a seeded order. Return the event's time."""
        t = self._now + delay_ns
        self._seq += 1
        heapq.heappush(self._heap, (t, self.rng.getrandbits(32), self._seq, fn, arg, what))
        return t

    def schedule_at(self, t: int, fn: Callable[[Any], None], arg: Any, what: str) -> None:
        self.schedule(max(t - self._now, 0), fn, arg, what)

    def _step(self) -> None:
        t, _key, _seq, fn, arg, what = heapq.heappop(self._heap)
        if t > self._now:
            self._now = t
            self._same_time = 0
        else:
            self._same_time += 1
            if self._same_time > LIVELOCK_EVENTS:
                raise SimStall(f"seed {self.seed}: livelock: {LIVELOCK_EVENTS} events at "
                               f"{self._now / NS:.6f}s without time passing (last: {what})")
        self.events += 1
        # Hashed in batches: one update per HASH_BATCH lines hashes the same
        # bytes as one per line, for a fraction of the calls.
        unhashed = self._unhashed
        unhashed.append(f"{t} {what}\n")
        if len(unhashed) >= HASH_BATCH:
            self._hash_lines()
        fn(arg)
        softirq.do_softirq()
        sched.run_queue()

    def _hash_lines(self) -> None:
        text = "".join(self._unhashed)
        self._unhashed.clear()
        self._hash.update(text.encode())
        if self._trace:
            self._lines.extend(text.splitlines())

    def trace_hash(self) -> str:
        self._hash_lines()
        return self._hash.hexdigest()

    def trace_lines(self) -> list[str]:
        """Every trace line so far (empty unless made with trace=True)."""
        self._hash_lines()
        return list(self._lines)

    # -- the run loop -----------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None, *,
            max_virtual_s: float = 3600.0) -> None:
        """Process events until every actor has ended (or until() is true).
        Raise SimStall when no event is left while something still waits, or
        when the next event lies beyond max_virtual_s from now."""
        if greenlet.getcurrent() is not self._loop_gr:
            raise RuntimeError("Simulation.run() from the simulation's own greenlet only")
        deadline = self._now + int(max_virtual_s * NS)
        heap = self._heap
        step = self._step
        while True:
            if until is not None:
                if until():
                    return
            elif not self._live_actors:
                return
            if not heap:
                raise SimStall(f"seed {self.seed}: nothing left to run at "
                               f"{self._now / NS:.6f}s; waiting: {self._waiting()}")
            if heap[0][0] > deadline:
                raise SimStall(f"seed {self.seed}: virtual time limit ({max_virtual_s}s) "
                               f"reached at {self._now / NS:.6f}s; waiting: {self._waiting()}")
            step()

    def _waiting(self) -> str:
        names = [a.name for a in self._actors if not a.done]
        return ", ".join(names) or "a kthread (boot or shutdown)"

    # -- actors -------------------------------------------------------------------

    def spawn(self, fn: Callable[[], None], name: str) -> None:
        """Start an outside actor (a greenlet run by the simulation, not a
        kthread) at the current virtual time."""
        a = _actor(name, greenlet.greenlet(run=fn, parent=self._loop_gr))
        self._actors.append(a)
        self._live_actors += 1
        a.wake_pending = True
        self.schedule(0, self._resume, a, f"start {name}")

    def _resume(self, a: _actor) -> None:
        a.wake_pending = False
        if a.done:
            return
        self._current = a
        try:
            a.gr.switch()
        except BaseException:
            a.done = True
            self._live_actors -= 1
            raise
        finally:
            self._current = None
        if a.gr.dead and not a.done:
            a.done = True
            self._live_actors -= 1

    def block(self) -> None:
        """Suspend the current actor until wake() (actors only)."""
        if self._current is None or greenlet.getcurrent() is not self._current.gr:
            raise RuntimeError("only a Simulation actor can block")
        self._loop_gr.switch()

    def wake(self, a: _actor, what: str) -> None:
        if not a.wake_pending and not a.done:
            a.wake_pending = True
            self.schedule(0, self._resume, a, f"wake {a.name} {what}")

    def wait_for(self, cond: Callable[[], bool], register: Callable[[_actor], None]) -> None:
        """Block the caller until cond(): an actor sleeps until woken (after
        register(actor) lets the waker find it); the driving greenlet runs
        the simulation instead."""
        while not cond():
            a = self._current
            if a is None:
                self.run(until=cond)
                return
            register(a)
            self.block()

    def sleep(self, seconds: float) -> None:
        """Let virtual time pass for the caller (an actor; from the driving
        greenlet, run the simulation for that long)."""
        a = self._current
        if a is None:
            end = self._now + int(seconds * NS)
            self.schedule_at(end, _noop, None, "sleep-end")
            self.run(until=lambda: self._now >= end, max_virtual_s=seconds + 1)
            return
        a.wake_pending = True
        self.schedule(int(seconds * NS), self._resume, a, f"sleep-end {a.name}")
        self.block()

    # -- sockets, outward ---------------------------------------------------------

    def connect(self, addr: tuple[str, int]) -> SimPeer:
        """An outside host's TCP connection to a listening kernel socket;
        ConnectionRefusedError when nothing listens at addr."""
        return self.net.connect(addr)

    def add_real_file(self, path: str) -> None:
        """Let the simulated machine open path on the host (a real file
        instead of an in-memory disk; its I/O still completes in virtual
        time)."""
        self.files.add_real_file(path)

    # -- timers ---------------------------------------------------------------------

    def _timer_kick(self, expires: int) -> None:
        t = jiffies.jiffies_to_clock_ns(expires) + self.draw(self.timer_slack_ns)
        if self._timer_at is not None and self._timer_at <= t:
            return
        self._timer_at = t
        self.schedule_at(t, self._timer_event, t, "timer")

    def _timer_event(self, t: int) -> None:
        if self._timer_at == t:
            self._timer_at = None
        nxt = timer.next_expiry()
        if nxt is not None and nxt <= jiffies.jiffies():
            timer.run_timers()
            nxt = timer.next_expiry()
        if nxt is not None:
            self._timer_kick(nxt)

    # -- boot and stop ----------------------------------------------------------

    def _ops(self) -> host.host_operations:
        t = engine_posix.posix_ops()
        t.monotonic_ns = self._clock_ns
        t.monotonic = self._clock_s
        t.time_ns = self._wall_ns
        t.thread_time_ns = self._clock_ns
        t.cpu_busy_ns = self._cpu_busy
        t.random_bytes = self.rng.randbytes
        t.prandom_u32 = lambda: self.rng.getrandbits(32)
        t.timer_kick = self._timer_kick
        t.request_shutdown = self._request_shutdown
        t.rbd_probe = lambda: SIM_NO_RBD
        t.rbd_open = lambda *_args: (-errno.ENODEV, SIM_NO_RBD)
        self.files.fill_ops(t)
        self.net.fill_ops(t)
        return t

    def _request_shutdown(self) -> None:
        self.shutdown_requested = True

    def _pick(self, n: int) -> int:
        return self.rng.randrange(n)

    def _run_task_to_end(self, fn: Callable[[], Any], name: str) -> Any:
        box: list[Any] = []
        done: list[bool] = []

        def body(_: Any) -> int:
            box.append(fn())
            return 0
        t = kthread_run(body, None, name)
        t.exit_hooks.append(lambda _t: done.append(True))
        softirq.do_softirq()
        sched.run_queue()
        self.run(until=lambda: bool(done))
        return box[0] if box else None

    def boot(self, init: Callable[[], int]) -> int:
        """Boot kshim on this engine and run init() in a kthread to its end
        (under virtual time); return its result. SimStall if it never ends."""
        global _booted
        if self._booted:
            raise RuntimeError("Simulation.boot() twice")
        if greenlet.getcurrent() is not self._loop_gr:
            raise RuntimeError("Simulation.boot() from the greenlet that made the simulation")
        if _booted is not None:
            raise RuntimeError(f"seed {self.seed}: a Simulation (seed {_booted.seed}) is "
                               f"already booted in this process; shut it down first")
        _booted = self
        self._saved_ops = host.current_ops()
        host.set_ops(self._ops())
        sched.sched_init()
        sched.pick_next = self._pick
        self._booted = True
        self._run_task_to_end(workqueue.workqueue_init, "kworker-init")
        self._baseline_tasks = set(sched.all_tasks)
        self._baseline_timers = {id(x) for x in pending_timers()}
        self._baseline_slab = {id(c): c.active for c in slab.slab_caches}
        return self._run_task_to_end(init, "insmod")

    def shutdown(self, exit_fn: Callable[[], object] | None) -> None:
        """Run exit_fn in a kthread (if given), stop the engine, release
        every actor, socket and event, and give the host-ops table back."""
        global _booted
        if not self._booted:
            return
        try:
            if exit_fn is not None:
                self._run_task_to_end(exit_fn, "rmmod")
        finally:
            for a in self._actors:
                if not a.done:
                    a.done = True
                    self._live_actors -= 1
                    if a.gr and not a.gr.dead:
                        a.gr.throw(greenlet.GreenletExit)
            self.net.release()
            self.files.release()
            self._heap.clear()
            self._timer_at = None
            sched.pick_next = None
            if self._saved_ops is not None:
                host.set_ops(self._saved_ops, rebase=False)
            self._booted = False
            _booted = None


def _noop(_: Any) -> None:
    return None


# -- checks the CLI and the fixtures call -----------------------------------------

def pending_timers() -> list[timer.timer_list]:
    """Every timer pending now (stale heap entries skipped)."""
    return [e[2] for e in timer._heap if e[2]._pending and e[2]._seq == e[1]]


def teardown_problems(sim: Simulation) -> list[str]:
    """After shutdown(): what this run left behind. More slab objects
    allocated in a live cache than at boot, kthreads alive that boot did not
    start, timers pending that boot did not arm, work items queued or
    running, and every report the debugging aids (lockdep, debugobjects,
    might_sleep, oops) made (reset bug.reports before the run)."""
    out: list[str] = []
    for c in slab.slab_caches:
        extra = c.active - sim._baseline_slab.get(id(c), 0)
        if extra > 0:
            out.append(f"slab: {extra} object(s) of cache {c.name} still allocated")
    for pid, t in sorted(sched.all_tasks.items()):
        if pid not in sim._baseline_tasks:
            out.append(f"kthread: {t.comm}/{pid} still alive ({sched.task_state_to_char(t)})")
    for tm in pending_timers():
        if id(tm) not in sim._baseline_timers:
            out.append(f"timer: {tm.name} still pending")
    for wq in workqueue.statistics():
        if wq.pending or wq.running:
            out.append(f"workqueue {wq.name}: {wq.pending} work item(s) pending, "
                       f"{wq.running} running")
    for r in bug.reports:
        out.append(f"report: {r.title}")
    return out


def check_determinism(scenario: Callable[[Simulation], Any], seed: int,
                      runs: int = 2) -> list[str]:
    """Run scenario(sim) on `runs` fresh simulations with the same seed and
    return their trace hashes (all equal when the run is deterministic).
    scenario boots, drives and shuts down the simulation it is given."""
    hashes = []
    for _ in range(runs):
        sim = Simulation(seed)
        try:
            scenario(sim)
        finally:
            sim.shutdown(None)
        hashes.append(sim.trace_hash())
    return hashes
