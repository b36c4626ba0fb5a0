"""The trio engine: the emulated machine's hardware and its event loop on trio.

Twin of nothing in the kernel: this is what the kernel runs on. It turns
host events into softirqs and runs the kthread scheduler between them, all
on ONE host thread (../docs/architecture.md, "one CPU").

- Socket readiness: each attached socket has a receive and a transmit trio
  task. The receive task awaits readability while the socket is armed (a
  receive returned -EAGAIN, or it was just attached), then calls
  sk_data_ready in softirq context; the transmit task does the same with
  writability and sk_write_space after a send came back short.
- Timers: one task sleeps until kshim.timer's earliest expiry and runs
  run_timers() in softirq context.
- Blocking file I/O: reads, writes and fsyncs go to io_uring
  (kshim/engine_uring.py), submitted once per pass and reaped through an
  eventfd; everything else, and all of it when io_uring is refused (chosen
  at start and logged), to a small pool of host threads whose finished jobs
  come back through the trio token. Either way the completion runs in
  softirq context, like a bio's end_io (a reaped batch in one softirq
  entry, softirq_run_jobs). /sys/kernel/io/stats shows which,
  with the ring's statistics (docs/decisions/0028).
- After every event: pending softirqs, then sched.run_queue() until every
  kthread sleeps again.
- SIGINT/SIGTERM start an orderly shutdown; SIGHUP calls the registered
  reload hook.

At boot it fills kshim.host.ops: the real host's operations
(kshim.engine_posix) plus its own sock_attach/sock_arm_rx/sock_arm_tx/
sock_detach, io_submit, timer_kick and request_shutdown. Per-socket trio
state (the cancel scope and the two parking lots) hangs off sk.engine_priv;
kshim never sees a trio object. Start it through kshim.engine.run().

Contexts: the operations it fills are safe from any context on the CPU
thread; they never sleep.

Differs from the kernel: readiness is edge-triggered per arming, as epoll's
EPOLLET: sk_data_ready fires once per "was empty, now has data", not per
segment. Kernel code that reads until -EAGAIN (as iscsi-scst does) cannot
tell the difference.
"""
from __future__ import annotations

import gc
import math
import signal
from typing import Any, Callable

import trio

from kshim import engine_posix, engine_uring, host, jiffies, printk, sched, softirq, timer
from kshim.host import io_job
from kshim.kobject import kobject_create_and_add
from kshim.kthread import kthread_run
from kshim.sysfs import __ATTR_RO, kernel_kobj, sysfs_create_file
from kshim.workqueue import workqueue_init

io_threads = 4
_token: trio.lowlevel.TrioToken | None = None
_nursery: trio.Nursery | None = None
_pool: engine_posix.worker_pool | None = None
_ring: engine_uring.uring | None = None
io_backend = ""               # what file I/O runs on, and why (set at start)
_timer_cs: trio.CancelScope | None = None
_shutdown: trio.Event | None = None
running = False
stats = {"rx_events": 0, "tx_events": 0, "io_done": 0, "timer_runs": 0}


def _deliver(fn: Callable[[Any], None], arg: Any) -> None:
    """Run fn(arg) in softirq context, then everything it made runnable."""
    softirq.softirq_run(fn, arg)
    softirq.do_softirq()
    sched.run_queue()
    if _ring is not None and _ring.queued:
        _ring.flush()


def run_cpu() -> None:
    """Run pending softirqs and the run queue (after a non-softirq event),
    then submit the pass's file I/O."""
    softirq.do_softirq()
    sched.run_queue()
    if _ring is not None and _ring.queued:
        _ring.flush()


# -- sockets ----------------------------------------------------------------

class _sock_priv:
    """The engine's per-socket state, at sk.engine_priv."""

    __slots__ = ("cs", "rx_lot", "tx_lot", "rx_parked")

    def __init__(self) -> None:
        self.cs: trio.CancelScope | None = None
        self.rx_lot = trio.lowlevel.ParkingLot()
        self.tx_lot = trio.lowlevel.ParkingLot()
        # The rx task waits in rx_lot (not armed), so arming must unpark
        # it; usually the reader re-arms while the task is still running
        # its delivery, and the unpark (four trio calls) is skipped.
        self.rx_parked = False


async def _rx_task(sk: Any, priv: _sock_priv) -> None:
    hs = sk.host
    lot = priv.rx_lot
    while sk.host is not None:
        if not sk.rx_armed:
            priv.rx_parked = True
            await lot.park()
            priv.rx_parked = False
            continue
        try:
            await trio.lowlevel.wait_readable(hs)
        except (trio.ClosedResourceError, OSError, ValueError):
            return        # released (sock_detach) while waiting
        sk.rx_armed = False
        stats["rx_events"] += 1
        _deliver(sk.sk_data_ready, sk)


async def _tx_task(sk: Any, lot: trio.lowlevel.ParkingLot) -> None:
    hs = sk.host
    while sk.host is not None:
        if not sk.tx_armed:
            await lot.park()
            continue
        try:
            await trio.lowlevel.wait_writable(hs)
        except (trio.ClosedResourceError, OSError, ValueError):
            return        # released (sock_detach) while waiting
        sk.tx_armed = False
        stats["tx_events"] += 1
        _deliver(sk.sk_write_space, sk)


async def _sock_tasks(sk: Any, priv: _sock_priv,
                      task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    if sk.host is None:
        return
    with trio.CancelScope() as cs:
        priv.cs = cs
        task_status.started()
        async with trio.open_nursery() as n:
            n.start_soon(_rx_task, sk, priv)
            n.start_soon(_tx_task, sk, priv.tx_lot)


def sock_attach(sk: Any) -> None:
    """Start delivering sk's readiness callbacks (rx armed, tx parked)."""
    if sk.engine_priv is not None or _nursery is None:
        return
    priv = sk.engine_priv = _sock_priv()
    sk.rx_armed = True
    _nursery.start_soon(_sock_tasks, sk, priv)


def sock_arm_rx(sk: Any) -> None:
    if not sk.rx_armed:
        sk.rx_armed = True
        priv = sk.engine_priv
        if priv is not None and priv.rx_parked:
            priv.rx_lot.unpark_all()


def sock_arm_tx(sk: Any) -> None:
    if not sk.tx_armed:
        sk.tx_armed = True
        priv = sk.engine_priv
        if priv is not None:
            priv.tx_lot.unpark_all()


def sock_detach(sk: Any) -> None:
    """Stop watching sk and close its host socket."""
    if sk.host is None:
        return
    try:
        trio.lowlevel.notify_closing(sk.host)
    except (RuntimeError, OSError):
        pass
    priv = sk.engine_priv
    if priv is not None and priv.cs is not None:
        priv.cs.cancel()
    sk.engine_priv = None
    engine_posix.sock_close(sk.host)
    sk.host = None


# -- timers -----------------------------------------------------------------

def _trio_deadline(expires: int | None) -> float:
    if expires is None:
        return math.inf
    delta = jiffies.jiffies_to_host_seconds(expires) - host.ops.monotonic()
    return trio.current_time() + max(delta, 0.0) + 50e-6


def _timer_kick(expires: int) -> None:
    cs = _timer_cs
    if cs is not None:
        d = _trio_deadline(expires)
        if d < cs.deadline:
            cs.deadline = d


async def _timer_task() -> None:
    global _timer_cs
    while True:
        with trio.CancelScope(deadline=_trio_deadline(timer.next_expiry())) as cs:
            _timer_cs = cs
            await trio.sleep_forever()
        _timer_cs = None
        nxt = timer.next_expiry()
        if nxt is not None and nxt <= jiffies.jiffies():
            stats["timer_runs"] += 1
            timer.run_timers()
            run_cpu()


# -- block I/O pool ---------------------------------------------------------

def call_in_task(fn: Callable[[], Any], name: str = "kworker/ctl") -> Any:
    """For engine-side services: run fn() in a kthread and return an
    awaitable of its result (await call_in_task(...))."""
    return _run_task_to_end(fn, name)


def _io_done(job: io_job) -> None:
    stats["io_done"] += 1
    _deliver(job.complete, job)


def io_submit(job: io_job) -> None:
    ring = _ring
    if ring is not None:
        op = _URING_OPS.get(job.fn)
        if op is not None:
            a = job.args
            if op == engine_uring.OP_FSYNC:
                ring.submit(job, op, a[0], [], 0, 1 if a[1] else 0)
            else:
                ring.submit(job, op, a[0], a[1], a[2])
            return
    if _pool is None:
        raise RuntimeError("trio engine not running")
    _pool.submit(job)


_URING_OPS = {engine_posix.file_preadv: engine_uring.OP_READ,
              engine_posix.file_pwritev: engine_uring.OP_WRITE,
              engine_posix.file_fsync: engine_uring.OP_FSYNC}


async def _uring_task(ring: engine_uring.uring) -> None:
    """Deliver the ring's completions: at most URING_REAP_MAX per pass, each
    job's completion in softirq context, then the CPU runs."""
    while True:
        await trio.lowlevel.wait_readable(ring.efd)
        ring.eventfd_clear()
        for _ in range(1 << 20):          # bounded; ends when the CQ is empty
            done = ring.reap()
            stats["io_done"] += len(done)
            softirq.softirq_run_jobs(done)
            run_cpu()
            if len(done) < engine_uring.URING_REAP_MAX:
                break
            await trio.lowlevel.checkpoint()     # let the sockets have a turn


def io_stats() -> str:
    """The file I/O backend and its statistics, for the live tree."""
    text = f"backend {io_backend}\n"
    return text + (_ring.show_stats() if _ring is not None else "")


def _io_sysfs_init() -> None:
    """/sys/kernel/io/stats: io_stats() in the live tree."""
    k = kernel_kobj.entries.get("io") or kobject_create_and_add("io", kernel_kobj)
    if "stats" not in k.entries:
        sysfs_create_file(k, __ATTR_RO("stats", lambda _k, _a: io_stats()))


# -- life cycle -------------------------------------------------------------

def _tune_gc() -> None:
    """After boot, the long-lived objects (modules, caches, buffers) move to
    the permanent generation, and young-generation collections become rare:
    the data path recycles its objects through kmem caches, so cyclic garbage
    is rare and scanning for it cost ~9% of 4K IOPS (docs/decisions)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50000, 20, 20)


def request_shutdown() -> None:
    """Begin an orderly stop (any context)."""
    if _shutdown is not None:
        _shutdown.set()


def request_shutdown_threadsafe() -> None:
    """request_shutdown() from another host thread (a test's client)."""
    token = _token
    if token is not None:
        try:
            token.run_sync_soon(request_shutdown)
        except trio.RunFinishedError:
            pass


async def _signal_task(on_reload: Callable[[], None] | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
        async for signum in sigs:
            if signum == signal.SIGHUP:
                if on_reload is not None:
                    softirq.softirq_run(lambda _: on_reload(), None)
                    run_cpu()
            else:
                request_shutdown()


async def _run_task_to_end(fn: Callable[[], Any], name: str) -> Any:
    """Run fn() in a kthread and await its exit while the loop keeps going."""
    done = trio.Event()
    box: list[Any] = []

    def body(_: Any) -> int:
        box.append(fn())
        return 0
    t = kthread_run(body, None, name)
    t.exit_hooks.append(lambda _t: done.set())
    run_cpu()
    await done.wait()
    return box[0] if box else None


def trio_ops() -> host.host_operations:
    """The table this engine runs on: the real host, plus its own readiness,
    I/O pool, timer and life-cycle operations."""
    t = engine_posix.posix_ops()
    t.io_submit = io_submit
    t.sock_attach = sock_attach
    t.sock_arm_rx = sock_arm_rx
    t.sock_arm_tx = sock_arm_tx
    t.sock_detach = sock_detach
    t.timer_kick = _timer_kick
    t.request_shutdown = request_shutdown
    return t


async def _main(init: Callable[[], Any], exit_fn: Callable[[], Any] | None,
                handle_signals: bool, services: list,
                on_reload: Callable[[], None] | None) -> Any:
    global _token, _nursery, _pool, _ring, _shutdown, running, io_backend
    host.set_ops(trio_ops())
    sched.sched_init()
    _token = trio.lowlevel.current_trio_token()
    _shutdown = trio.Event()
    _pool = engine_posix.worker_pool(io_threads,
                                     lambda job: _token.run_sync_soon(_io_done, job))
    ring = engine_uring.uring.open()
    if isinstance(ring, str):
        io_backend = f"worker_pool threads={io_threads} (io_uring: {ring})"
    else:
        _ring = ring
        io_backend = f"io_uring entries={engine_uring.URING_ENTRIES} setup={ring.setup}"
    printk.pr_info(f"kshim: file I/O on {io_backend}")
    running = True
    try:
        async with trio.open_nursery() as nursery:
            _nursery = nursery
            nursery.start_soon(_timer_task)
            if _ring is not None:
                nursery.start_soon(_uring_task, _ring)
            if handle_signals:
                nursery.start_soon(_signal_task, on_reload)
            await _run_task_to_end(workqueue_init, "kworker-init")
            await _run_task_to_end(_io_sysfs_init, "kworker-init")
            result = await _run_task_to_end(init, "insmod")
            if isinstance(result, int) and result < 0:
                request_shutdown()
            else:
                _tune_gc()
                for svc in services:
                    nursery.start_soon(svc)
            await _shutdown.wait()
            if exit_fn is not None and not (isinstance(result, int) and result < 0):
                await _run_task_to_end(exit_fn, "rmmod")
            nursery.cancel_scope.cancel()
    finally:
        running = False
        _pool.stop()
        _pool = None
        if _ring is not None:
            _ring.close()
            _ring = None
        _nursery = None
        _token = None
        host.set_ops(engine_posix.posix_ops(), rebase=False)
    return result


def run(init: Callable[[], Any], exit_fn: Callable[[], Any] | None = None, *,
        handle_signals: bool = True, services: list | None = None,
        on_reload: Callable[[], None] | None = None) -> Any:
    """Boot the emulated machine: run init() in a kthread, serve until
    request_shutdown() or a signal, run exit_fn() in a kthread, return init's
    result. Everything happens on the calling host thread. `services` are
    async functions (engine-side host services such as the control socket)
    started after a successful init and cancelled at shutdown. on_reload
    runs in softirq context on SIGHUP."""
    return trio.run(_main, init, exit_fn, handle_signals, services or [], on_reload)
