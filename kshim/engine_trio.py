"""The trio engine: the emulated machine's hardware and its event loop on trio.

Twin of nothing in the kernel: this is what the kernel runs on. It turns
host events into softirqs and runs the kthread scheduler between them, all
on ONE host thread (../docs/architecture.md, "one CPU").

- Socket readiness: every attached socket is registered once, edge-
  triggered (EPOLLET), in the engine's own epoll; one trio task waits for
  that epoll's fd and, per wake-up, takes its batch of events (up to
  EPOLL_BATCH) and calls sk_data_ready / sk_write_space in softirq context
  for each socket whose receive / transmit side is armed (a receive found
  it drained, a send came back short, or it was just attached), disarming
  it; then the CPU runs once for the whole batch (docs/decisions/0059).
  Arming is a flag, no system call. /sys/kernel/engine/readiness counts
  the passes and the callbacks.
- Busy-poll (net.core.busy_poll's idea, docs/decisions/0060): after a
  pass the task polls its epoll without sleeping for up to
  /sys/kernel/engine/busy_poll microseconds (USCST_BUSY_POLL_US at start;
  0 turns it off), so a QD1 initiator's next request is served without a
  trip through trio's loop and a sleep of the host thread. Bounded: a run
  of passes gives trio its turn after BUSY_POLL_RUN_US, when a timer is
  due, or while io_uring or the I/O pool has work in flight; the readiness file
  counts polls, hits, spins, time spent and yields.
- Timers: one task sleeps until kshim.timer's earliest expiry and runs
  run_timers() in softirq context.
- Blocking file I/O: reads, writes and fsyncs go to io_uring
  (kshim/engine_uring.py), submitted once per pass (reads also N at a
  time as they are queued with USCST_IO_URING_SUBMIT_BATCH=N, decision
  0063) and reaped through an
  eventfd; everything else, and all of it when io_uring is refused (chosen
  at start and logged), to a small pool of host threads whose finished jobs
  come back through the trio token. Either way the completion runs in
  softirq context, like a bio's end_io (a reaped batch in one softirq
  entry, softirq_run_jobs). /sys/kernel/io/stats shows which,
  with the ring's statistics (docs/decisions/0028).
- Ceph RBD images (kshim/engine_rbd.py, decision 0051): one trio task per
  attached image waits on the eventfd librbd signals and runs each
  finished request's completion in softirq context, as for io_uring.
- After every event (a readiness batch counts as one): pending softirqs,
  then sched.run_queue() until every kthread sleeps again.
- SIGINT/SIGTERM start an orderly shutdown; SIGHUP calls the registered
  reload hook.

At boot it fills kshim.host.ops: the real host's operations
(kshim.engine_posix) plus its own sock_attach/sock_arm_rx/sock_arm_tx/
sock_detach, io_submit, timer_kick and request_shutdown. sk.engine_priv
holds the socket's fd (its key in the engine's table of attached sockets);
kshim never sees a trio object. Start it through kshim.engine.run().

Contexts: the operations it fills are safe from any context on the CPU
thread; they never sleep.

Differs from the kernel: readiness is edge-triggered per arming, as epoll's
EPOLLET: sk_data_ready fires once per "was empty, now has data", not per
segment, and an arrival while the socket is not armed calls nothing (its
reader is awake and will receive it). Kernel code that reads until -EAGAIN
(as iscsi-scst does) cannot tell the difference. An edge queued before the
receive that armed the socket can fire it once with nothing new to read:
the reader's next receive returns -EAGAIN and arms it again.
"""
from __future__ import annotations

import gc
import math
import os
import select
import signal
from typing import Any, Callable

import trio

from kshim import (engine_posix, engine_rbd, engine_uring, host, jiffies, printk, sched, softirq,
                   timer)
from kshim.err import EINVAL
from kshim.host import io_job, rbd_request
from kshim.kobject import kobject_create_and_add
from kshim.kthread import kthread_run
from kshim.sysfs import __ATTR_RO, __ATTR_RW, kernel_kobj, sysfs_create_file
from kshim.workqueue import workqueue_init

io_threads = 4
_token: trio.lowlevel.TrioToken | None = None
_pool: engine_posix.worker_pool | None = None
_nursery: trio.Nursery | None = None     # for the per-image RBD completion tasks
_ring: engine_uring.uring | None = None
_pool_busy = 0                # jobs in the pool (their completions come through trio)
_rbd_busy = 0                 # RBD requests in flight (their completions come through trio)
io_backend = ""               # what file I/O runs on, and why (set at start)
_timer_cs: trio.CancelScope | None = None
_NEVER = 1 << 62
_TIMER_SLACK_NS = 50_000      # the timer task wakes this long after an expiry
_timer_due_ns = _NEVER        # host monotonic ns of the earliest timer (busy-poll ends there)
_shutdown: trio.Event | None = None
running = False
# rx_events/tx_events: callbacks delivered; ready_passes: epoll batches
stats = {"rx_events": 0, "tx_events": 0, "ready_passes": 0, "io_done": 0, "timer_runs": 0}


def run_cpu() -> None:
    """Run pending softirqs and the run queue (after a non-softirq event),
    then submit the pass's file I/O."""
    softirq.do_softirq()
    sched.run_queue()
    if _ring is not None and _ring.queued:
        _ring.flush()


# -- sockets ----------------------------------------------------------------

# Every attached socket is registered once, edge-triggered, in the engine's
# own epoll; one trio task waits on that epoll's fd and delivers every ready
# socket's callbacks in one pass (docs/decisions/0059).
_EP_FLAGS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_EV_RX = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_EV_TX = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
EPOLL_BATCH = 256             # events taken per pass; more wait for the next
# Busy-poll (docs/decisions/0060): microseconds a pass polls for the next
# events before the task sleeps in trio; /sys/kernel/engine/busy_poll.
BUSY_POLL_DEFAULT_US = 50
BUSY_POLL_MAX_US = 10000
BUSY_POLL_RUN_US = 2000       # longest run of passes before trio has a turn
busy_poll_us = BUSY_POLL_DEFAULT_US
_busy_poll_ns = busy_poll_us * 1000
# polls: spins after a pass; hits: found events; spins: epoll polls; ns:
# time spent polling; yields: runs ended for trio (run budget, timer, ring)
busy_poll_stats = {"polls": 0, "hits": 0, "spins": 0, "ns": 0, "yields": 0}
_ep: select.epoll | None = None
_socks: dict[int, Any] = {}   # fd -> the attached sock (CPU thread only)


async def _ready_task(ep: select.epoll) -> None:
    """Wait for the engine's epoll; per wake-up take one batch of events and
    call the callbacks of every armed socket in it in softirq context,
    disarming it, then run the CPU once for all. An edge that finds its
    socket unarmed is dropped: the socket's reader is not asleep on it and
    will see the data (or the close) when it receives.

    Busy-poll (net.core.busy_poll's idea): after a pass, poll the epoll
    without sleeping for up to busy_poll_us; events found are the next pass,
    without returning to trio. A run of passes returns to trio when a poll
    finds nothing within the budget, after BUSY_POLL_RUN_US, when a timer is
    due, or while io_uring or the I/O pool has work in flight (their
    completions come through trio), so timers, signals and the other tasks
    wait at most that long."""
    efd = ep.fileno()
    poll = ep.poll
    socks = _socks
    now = host.ops.monotonic_ns
    bp = busy_poll_stats
    while True:
        await trio.lowlevel.wait_readable(efd)
        events = poll(0, EPOLL_BATCH)
        run_end = 0
        for _ in range(1 << 20):          # bounded; ends by the budgets below
            nrx = ntx = 0
            for fd, ev in events:
                sk = socks.get(fd)
                if sk is None:
                    continue      # detached after this batch was taken
                if ev & _EV_RX and sk.rx_armed:
                    sk.rx_armed = False
                    nrx += 1
                    softirq.softirq_run(sk.sk_data_ready, sk)
                if ev & _EV_TX and sk.tx_armed:
                    sk.tx_armed = False
                    ntx += 1
                    softirq.softirq_run(sk.sk_write_space, sk)
            stats["rx_events"] += nrx
            stats["tx_events"] += ntx
            stats["ready_passes"] += 1
            run_cpu()
            budget = _busy_poll_ns
            if not budget:
                break
            t = now()
            if not run_end:
                run_end = t + BUSY_POLL_RUN_US * 1000
            if (t >= run_end or t >= _timer_due_ns or _pool_busy or _rbd_busy
                    or (_ring is not None and _ring.ops)):
                bp["yields"] += 1
                break
            start = t
            end = t + budget
            events = poll(0, EPOLL_BATCH)
            spins = 1
            while not events and t < end:
                t = now()
                events = poll(0, EPOLL_BATCH)
                spins += 1
            bp["polls"] += 1
            bp["spins"] += spins
            bp["ns"] += t - start
            if not events:
                break
            bp["hits"] += 1


def _busy_poll_show(_k: Any, _a: Any) -> str:
    return f"{busy_poll_us}\n"


def _busy_poll_store(_k: Any, _a: Any, buf: str) -> int:
    """Set the busy-poll budget in microseconds (0 turns it off)."""
    global busy_poll_us, _busy_poll_ns
    try:
        us = int(buf.strip())
    except ValueError:
        return -EINVAL
    if not 0 <= us <= BUSY_POLL_MAX_US:
        return -EINVAL
    busy_poll_us = us
    _busy_poll_ns = us * 1000
    return len(buf)


def _busy_poll_from_env() -> None:
    """USCST_BUSY_POLL_US, when set, is the busy-poll budget at start (the
    live tree's busy_poll changes it later); a bad value is logged and the
    budget keeps its value."""
    env = os.environ.get("USCST_BUSY_POLL_US")
    if env is not None and _busy_poll_store(None, None, env) < 0:
        printk.pr_warn(f"kshim: USCST_BUSY_POLL_US={env!r} is not 0..{BUSY_POLL_MAX_US}, "
                       f"busy_poll stays {busy_poll_us}")


def readiness_stats() -> str:
    """The readiness path's counters, for the live tree
    (/sys/kernel/engine/readiness)."""
    passes = stats["ready_passes"]
    per = stats["rx_events"] / passes if passes else 0.0
    bp = busy_poll_stats
    return (f"sockets {len(_socks)}\nready_passes {passes}\nrx_events {stats['rx_events']}\n"
            f"tx_events {stats['tx_events']}\nrx_events_per_pass {per:.2f}\n"
            f"busy_poll_us {busy_poll_us}\nbusy_polls {bp['polls']}\n"
            f"busy_poll_hits {bp['hits']}\nbusy_poll_spins {bp['spins']}\n"
            f"busy_poll_time_us {bp['ns'] // 1000}\nbusy_poll_yields {bp['yields']}\n")


def _ready_sysfs_init() -> None:
    k = kernel_kobj.entries.get("engine") or kobject_create_and_add("engine", kernel_kobj)
    if "readiness" not in k.entries:
        sysfs_create_file(k, __ATTR_RO("readiness", lambda _k, _a: readiness_stats()))
    if "busy_poll" not in k.entries:
        sysfs_create_file(k, __ATTR_RW("busy_poll", _busy_poll_show, _busy_poll_store))


def sock_attach(sk: Any) -> None:
    """Start delivering sk's readiness callbacks (rx armed, tx not): its fd
    joins the engine's epoll, edge-triggered, until sock_detach."""
    ep = _ep
    if sk.engine_priv is not None or ep is None or sk.host is None:
        return
    fd = sk.host.fileno()
    sk.engine_priv = fd
    _socks[fd] = sk
    sk.rx_armed = True
    try:
        ep.register(fd, _EP_FLAGS)
    except FileExistsError:       # a closed fd's number, still registered through a dup
        ep.modify(fd, _EP_FLAGS)


def sock_arm_rx(sk: Any) -> None:
    # A flag, no system call: an arrival after the receive that armed it
    # queues a new edge in the epoll (EPOLLET), whatever came before.
    sk.rx_armed = True


def sock_arm_tx(sk: Any) -> None:
    sk.tx_armed = True


def sock_detach(sk: Any) -> None:
    """Stop watching sk and close its host socket."""
    if sk.host is None:
        return
    fd = sk.engine_priv
    if fd is not None:
        if _socks.get(fd) is sk:
            del _socks[fd]
            if _ep is not None:
                try:
                    _ep.unregister(fd)
                except OSError:
                    pass
        sk.engine_priv = None
    engine_posix.sock_close(sk.host)
    sk.host = None


# -- timers -----------------------------------------------------------------

def _trio_deadline(expires: int | None) -> float:
    if expires is None:
        return math.inf
    delta = jiffies.jiffies_to_host_seconds(expires) - host.ops.monotonic()
    return trio.current_time() + max(delta, 0.0) + _TIMER_SLACK_NS / 1e9


def _timer_kick(expires: int) -> None:
    global _timer_due_ns
    cs = _timer_cs
    if cs is not None:
        d = _trio_deadline(expires)
        if d < cs.deadline:
            cs.deadline = d
            _timer_due_ns = jiffies.jiffies_to_clock_ns(expires) + _TIMER_SLACK_NS


async def _timer_task() -> None:
    global _timer_cs, _timer_due_ns
    while True:
        nxt = timer.next_expiry()
        _timer_due_ns = _NEVER if nxt is None else jiffies.jiffies_to_clock_ns(nxt) + _TIMER_SLACK_NS
        with trio.CancelScope(deadline=_trio_deadline(nxt)) as cs:
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
    global _pool_busy
    _pool_busy -= 1
    stats["io_done"] += 1
    softirq.softirq_run(job.complete, job)
    run_cpu()


def io_submit(job: io_job) -> None:
    global _pool_busy
    ring = _ring
    if ring is not None:
        op = _URING_OPS.get(job.fn)
        if op is not None:
            if op == _OP_FSYNC:
                a = job.args
                ring.submit(job, op, a[0], [], 0, 1 if a[1] else 0)
            else:
                ring.submit(job, op, *job.args)         # (fd, iov, pos)
            return
    if _pool is None:
        raise RuntimeError("trio engine not running")
    _pool_busy += 1
    _pool.submit(job)


_OP_FSYNC = engine_uring.OP_FSYNC
_URING_OPS = {engine_posix.file_preadv: engine_uring.OP_READ,
              engine_posix.file_pwritev: engine_uring.OP_WRITE,
              engine_posix.file_fsync: engine_uring.OP_FSYNC,
              engine_posix.file_pwritev_sync: engine_uring.OP_WRITE_SYNC}


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


# -- Ceph RBD images --------------------------------------------------------

async def _rbd_task(img: engine_rbd.rbd_image, cs: trio.CancelScope) -> None:
    """Deliver an image's completions: librbd signals its eventfd; each
    finished request's complete() runs in softirq context, then the CPU."""
    global _rbd_busy
    with cs:
        while True:
            try:
                await trio.lowlevel.wait_readable(img.efd)
            except (trio.ClosedResourceError, OSError, ValueError):
                return        # detached while waiting
            engine_rbd.eventfd_clear(img)
            for _ in range(1 << 20):          # bounded; ends when librbd has no more
                done = engine_rbd.image_reap(img)
                _rbd_busy -= len(done)
                stats["io_done"] += len(done)
                softirq.softirq_run_jobs(done)
                run_cpu()
                if len(done) < engine_rbd.RBD_REAP_MAX:
                    break
                await trio.lowlevel.checkpoint()     # let the sockets have a turn


def rbd_attach(img: engine_rbd.rbd_image) -> None:
    """Start delivering img's completions."""
    if img.engine_priv is None and _nursery is not None:
        # made here, not in the task: a detach before the task first runs cancels it
        cs = img.engine_priv = trio.CancelScope()
        _nursery.start_soon(_rbd_task, img, cs)


def rbd_submit(img: engine_rbd.rbd_image, req: rbd_request) -> int:
    """Start req; counted so that busy-poll gives way while it is in flight."""
    global _rbd_busy
    ret = engine_rbd.image_submit(img, req)
    if ret == 0:
        _rbd_busy += 1
    return ret


def rbd_detach(img: engine_rbd.rbd_image) -> None:
    """Stop delivering img's completions and refuse new requests (before
    image_close, which runs on a pool thread: no submission may race it)."""
    global _rbd_busy
    _rbd_busy -= len(img.reqs)        # never delivered now (nothing is, normally)
    img.closed = True
    try:
        trio.lowlevel.notify_closing(img.efd)
    except (RuntimeError, OSError, ValueError):
        pass
    cs = img.engine_priv
    if cs is not None:
        cs.cancel()
    img.engine_priv = None


def _submit_batch_from_env(ring: engine_uring.uring) -> None:
    """USCST_IO_URING_SUBMIT_BATCH, when set, is the ring's submit_batch (0
    .. URING_ENTRIES; 0, the default: reads are submitted once per pass,
    decision 0063); a bad value is logged and the default kept."""
    env = os.environ.get("USCST_IO_URING_SUBMIT_BATCH")
    if env is None:
        return
    try:
        n = int(env)
    except ValueError:
        n = -1
    if not 0 <= n <= engine_uring.URING_ENTRIES:
        printk.pr_warn(f"kshim: USCST_IO_URING_SUBMIT_BATCH={env!r} is not "
                       f"0..{engine_uring.URING_ENTRIES}, submit_batch stays {ring.submit_batch}")
        return
    ring.submit_batch = n


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
    t.rbd_attach = rbd_attach
    t.rbd_submit = rbd_submit
    t.rbd_detach = rbd_detach
    t.timer_kick = _timer_kick
    t.request_shutdown = request_shutdown
    return t


async def _main(init: Callable[[], Any], exit_fn: Callable[[], Any] | None,
                handle_signals: bool, services: list,
                on_reload: Callable[[], None] | None) -> Any:
    global _token, _ep, _pool, _ring, _nursery, _shutdown, running, io_backend, _pool_busy
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
        _submit_batch_from_env(ring)
    printk.pr_info(f"kshim: file I/O on {io_backend}")
    _busy_poll_from_env()
    _ep = select.epoll()
    running = True
    try:
        async with trio.open_nursery() as nursery:
            _nursery = nursery
            nursery.start_soon(_ready_task, _ep)
            nursery.start_soon(_timer_task)
            if _ring is not None:
                nursery.start_soon(_uring_task, _ring)
            if handle_signals:
                nursery.start_soon(_signal_task, on_reload)
            await _run_task_to_end(workqueue_init, "kworker-init")
            await _run_task_to_end(_io_sysfs_init, "kworker-init")
            await _run_task_to_end(_ready_sysfs_init, "kworker-init")
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
        _pool_busy = 0
        if _ring is not None:
            _ring.close()
            _ring = None
        _nursery = None
        _socks.clear()
        _ep.close()
        _ep = None
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
