"""The scheduler: one CPU, greenlet tasks, switches only in schedule().

Twin of kernel/sched/core.c (schedule, wake_up_process, current, set_user_nice),
the context bookkeeping of include/linux/preempt.h and the task-side signal
calls of kernel/signal.c, for a uniprocessor kernel built with
CONFIG_PREEMPT_NONE.

Contexts: schedule() only from a task (a kthread or a workqueue worker) that
holds no spinlock and is not in softirq context; wake_up_process() and the
context queries from any context. run_queue() is called by the engine only,
from the host thread's main greenlet: it runs every runnable task until each
one sleeps again. sched_init() is the engine's "boot".

Differs from the kernel: there is no preemption and no other CPU, so a task
runs until it calls schedule() (directly or through wait_event, mutex_lock,
wait_for_completion, msleep, cond_resched). The run queue is FIFO under
the trio engine; under the sim engine `pick_next` makes a seeded choice
among the runnable tasks at each switch. Nice values are recorded but do
not change the order. Code running on the engine
(softirq callbacks) has the idle task as current(), as the kernel's softirq
would have whatever task it interrupted. The CPU's context counters live in
one slotted object, `cpu` (what the kernel keeps per CPU and in
preempt_count), because a slot is cheaper to bump than a module global.
Kthreads ignore signals unless they call allow_signal(), as in the kernel;
force_sig() bypasses that. sched_init() also reboots the machine state: tasks
left over from an earlier engine run become zombies that are never woken,
and every module that registered in `boot_hooks` resets its per-boot state.

Debug aids (debug_atomic_sleep): schedule() while atomic or in softirq is
reported as "scheduling while atomic"; might_sleep() reports sleeping calls
from invalid contexts and blocking calls made while the task is already
!TASK_RUNNING. With debug_sched on, each switch is timed: a task that ran
longer than softlockup_thresh_ns without scheduling (cond_resched() counts
as a touch) is reported as a soft lockup, naming it and where it stopped.
Per-task counters (switches, wakeups, run time; CPU time with
sched_clock_stats) feed statistics(), top() and kshim.hung_task.
Tracepoints: sched_wakeup, and sched_stat_runtime as one span per run of a
task (the kernel's sched_switch in and out); a traced run takes the timed
path, so the untimed fast path pays one slot test per switch.
"""
from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Callable

import attrs
import greenlet

from kshim import tracepoint
from kshim.bug import KernelBug, frame_stack, report_bug
from kshim.host import ops
from kshim.printk import KERN_EMERG, printk
from kshim.tracepoint import TRACE_EVENT

# The context counters live on one slotted object (cpu.preempt_count, ...),
# not as module globals: a STORE_ATTR on a slotted object is about 25 ns
# cheaper than on a module, which is most of a spin_lock (tools/kbench).

TASK_RUNNING = 0x0000
TASK_INTERRUPTIBLE = 0x0001
TASK_UNINTERRUPTIBLE = 0x0002
__TASK_STOPPED = 0x0004
TASK_PARKED = 0x0040
TASK_DEAD = 0x0080
TASK_WAKEKILL = 0x0100
TASK_NOLOAD = 0x0400
TASK_NEW = 0x0800
TASK_KILLABLE = TASK_WAKEKILL | TASK_UNINTERRUPTIBLE
TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_NORMAL = TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE
MAX_SCHEDULE_TIMEOUT = (1 << 63) - 1

PF_KTHREAD = 0x00200000
PF_WQ_WORKER = 0x00000020
PF_EXITING = 0x00000004

SIGHUP = 1
SIGINT = 2
SIGQUIT = 3
SIGKILL = 9
SIGUSR1 = 10
SIGUSR2 = 12
SIGPIPE = 13
SIGTERM = 15
SIGSTOP = 19

# Debug switches (kshim.debug flips them all at once).
debug_atomic_sleep = True      # CONFIG_DEBUG_ATOMIC_SLEEP
debug_sched = True             # soft-lockup check and run-time accounting at each switch
sched_clock_stats = False      # per-task/softirq CPU time (host thread time)
softlockup_thresh_ns = 2 * 1_000_000_000    # kernel: 2 * watchdog_thresh


class task_struct:
    """A schedulable task; a kthread's greenlet lives in `gr`."""

    __slots__ = ("comm", "pid", "state", "flags", "gr", "on_rq", "sigpending", "pending",
                 "sig_allowed", "nice", "kthread", "nvcsw", "nivcsw", "wakeups", "cpu_ns",
                 "run_ns", "sleep_start", "start_time", "last_switch_count",
                 "last_switch_time", "hung_reported", "held_locks", "result", "exit_hooks",
                 "worker_sleeping", "wait_entry", "timeout_timer", "current_work",
                 "__weakref__")

    def __init__(self, comm: str, pid: int) -> None:
        self.comm = comm
        self.pid = pid
        self.state = TASK_NEW
        self.flags = 0
        self.gr: greenlet.greenlet | None = None
        self.on_rq = False
        self.sigpending = False           # any signal pending (TIF_SIGPENDING)
        self.pending = 0                  # bitmask of pending signal numbers
        self.sig_allowed = 0              # bitmask: allow_signal() for kthreads
        self.nice = 0
        self.kthread: Any = None          # kshim.kthread's per-thread record
        self.nvcsw = 0                    # voluntary context switches (slept)
        self.nivcsw = 0                   # involuntary ones (yielded while runnable)
        self.wakeups = 0
        self.cpu_ns = 0                   # host thread time (sched_clock_stats)
        self.run_ns = 0                   # wall time on the CPU (debug_sched)
        self.sleep_start = 0.0            # host time it last went to sleep (debug_sched)
        self.start_time = ops.monotonic()
        self.last_switch_count = 0        # kshim.hung_task bookkeeping
        self.last_switch_time = 0.0
        self.hung_reported = -1
        self.held_locks: list = []        # lockdep: held_lock records, in order
        self.result: Any = None
        self.exit_hooks: list[Callable[["task_struct"], None]] = []
        # called when the task blocks, as wq_worker_sleeping() for kworkers
        self.worker_sleeping: Callable[["task_struct"], None] | None = None
        self.wait_entry: Any = None       # kshim.wait's reusable entry for wait_event
        self.timeout_timer: Any = None    # kshim.timer's reusable schedule_timeout timer
        self.current_work: Any = None     # kshim.workqueue: the work item running

    def __repr__(self) -> str:
        return f"<task {self.comm}/{self.pid} state={task_state_to_char(self)}>"


class cpu_state:
    """The one CPU: who runs, and the counts behind in_atomic() and friends."""

    __slots__ = ("curr", "preempt_count", "softirq_serving", "bh_disable_count",
                 "hardirq_count", "irqs_off", "softirq_fn", "run_start", "rcu_read_nesting")

    def __init__(self, idle: task_struct) -> None:
        self.curr = idle
        self.preempt_count = 0        # spinlocks, preempt_disable, rcu_read_lock
        self.softirq_serving = 0      # nesting of softirq handlers running now
        self.bh_disable_count = 0     # local_bh_disable nesting
        self.hardirq_count = 0
        self.irqs_off = 0             # local_irq_disable / spin_lock_irq nesting
        self.softirq_fn: Callable | None = None   # the softirq handler running now
        self.run_start = 0            # monotonic ns the current run began (debug_sched)
        self.rcu_read_nesting = 0     # kshim.rcupdate


idle_task = task_struct("swapper/0", 0)
idle_task.state = TASK_RUNNING
cpu = cpu_state(idle_task)
tracepoint.cpu = cpu

# include/trace/events/sched.h; a run (switch in to switch out) is one span
trace_sched_wakeup = TRACE_EVENT("sched_wakeup", ("pid", "comm"))
trace_sched_stat_runtime = TRACE_EVENT("sched_stat_runtime", ("pid", "comm", "prev_state"),
                                       span=True)

_runqueue: deque[task_struct] = deque()
_sched_gr: greenlet.greenlet | None = None
_next_pid = 1
all_tasks: dict[int, task_struct] = {}
_zombies: list[task_struct] = []            # tasks of earlier boots, kept from the GC
softirq_hook: Callable[[], None] | None = None   # set by kshim.softirq: run pending softirqs
softirq_pending: Any = None                      # kshim.softirq's pending deque
lockdep_schedule_hook: Callable[[task_struct], None] | None = None   # kshim.lockdep
boot_hooks: list[Callable[[], None]] = []   # per-boot resets, run by sched_init()
# The sim engine's choice point: given n runnable tasks, the index of the
# next to run (seeded); None keeps the run queue FIFO (the trio engine).
pick_next: Callable[[int], int] | None = None


def current() -> task_struct:
    return cpu.curr


get_current = current


def preempt_count() -> int:
    return cpu.preempt_count


def in_softirq() -> bool:
    c = cpu
    return bool(c.softirq_serving or c.bh_disable_count)


def in_serving_softirq() -> bool:
    return bool(cpu.softirq_serving)


def in_interrupt() -> bool:
    c = cpu
    return bool(c.softirq_serving or c.bh_disable_count or c.hardirq_count)


def in_irq() -> bool:
    return bool(cpu.hardirq_count)


in_hardirq = in_irq


def in_task() -> bool:
    c = cpu
    return not (c.softirq_serving or c.hardirq_count)


def in_atomic() -> bool:
    c = cpu
    return bool(c.preempt_count or c.softirq_serving or c.bh_disable_count or c.hardirq_count
                or c.irqs_off)


def irqs_disabled() -> bool:
    return bool(cpu.irqs_off)


def preemptible() -> bool:
    """Always False: CONFIG_PREEMPT_NONE never preempts."""
    return False


def preempt_disable() -> None:
    cpu.preempt_count += 1


def preempt_enable() -> None:
    c = cpu
    c.preempt_count -= 1
    if c.preempt_count < 0:
        c.preempt_count = 0
        report_bug("preempt_enable() without preempt_disable()", task=c.curr.comm)


preempt_enable_no_resched = preempt_enable


def _softirq_name() -> str | None:
    c = cpu
    fn = c.softirq_fn
    return getattr(fn, "__qualname__", repr(fn)) if c.softirq_serving and fn is not None else None


def _held_lock_names(t: task_struct) -> list[str]:
    return [getattr(getattr(h, "lock", h), "name", repr(h)) for h in t.held_locks]


def might_sleep() -> None:
    """Report, as CONFIG_DEBUG_ATOMIC_SLEEP would, a sleep where none may be."""
    if debug_atomic_sleep:
        __might_sleep()


def might_sleep_if(cond: object) -> None:
    if cond and debug_atomic_sleep:
        __might_sleep()


def __might_sleep() -> None:
    c = cpu
    t = c.curr
    if t is not idle_task and t.state != TASK_RUNNING:
        report_bug("do not call blocking ops when !TASK_RUNNING", task=t.comm,
                   state=task_state_to_char(t))
    if c.preempt_count or c.softirq_serving or c.bh_disable_count or c.hardirq_count \
            or c.irqs_off or t is idle_task:
        report_bug("sleeping function called from invalid context",
                   in_atomic=c.preempt_count, in_softirq=c.softirq_serving + c.bh_disable_count,
                   irqs_disabled=c.irqs_off, task=t.comm, callback=_softirq_name(),
                   held_locks=_held_lock_names(t))


def cant_sleep() -> None:
    """Report if we are in a context that may sleep (the caller assumes not)."""
    if debug_atomic_sleep and not in_atomic() and cpu.curr is not idle_task:
        report_bug("cant_sleep() in a context that may sleep", task=cpu.curr.comm)


def alloc_task(comm: str) -> task_struct:
    """A new task_struct with the next pid, in all_tasks (not started)."""
    global _next_pid
    t = task_struct(comm, _next_pid)
    _next_pid += 1
    all_tasks[t.pid] = t
    return t


def task_start(t: task_struct, fn: Callable[[], Any]) -> None:
    """Give a new task its greenlet; it runs fn() once woken."""
    if _sched_gr is None:
        raise KernelBug("scheduler not initialised (kshim engine not running)")
    t.gr = greenlet.greenlet(run=lambda: _task_body(t, fn), parent=_sched_gr)
    t.state = TASK_UNINTERRUPTIBLE


def _task_body(t: task_struct, fn: Callable[[], Any]) -> None:
    try:
        t.result = fn()
    except KernelBug as e:
        _oops(t, f"kernel BUG: {e}")
    except greenlet.GreenletExit:
        raise
    except BaseException as e:   # an escaped exception is a kernel oops
        _oops(t, f"{type(e).__name__}: {e}")
    t.flags |= PF_EXITING
    for hook in t.exit_hooks:
        hook(t)
    # What the kernel keeps on the task's stack dies with it: the reusable
    # wait entry and schedule_timeout timer point back at t, and such a
    # cycle would keep t (and what its kthread served) until a full GC.
    if t.timeout_timer is not None:
        t.timeout_timer.data = None
    t.wait_entry = t.timeout_timer = None
    if t.held_locks and debug_atomic_sleep:
        report_bug("lock held when returning to user space / at task exit",
                   task=t.comm, locks=_held_lock_names(t))
    t.state = TASK_DEAD
    all_tasks.pop(t.pid, None)


def _oops(t: task_struct, what: str) -> None:
    c = cpu
    printk(KERN_EMERG + f"Oops: {what} in task {t.comm}/{t.pid}\n" + traceback.format_exc())
    report_bug("oops", task=t.comm, pid=t.pid, error=what)
    # The dying task's atomic sections end with it, as do_exit() would.
    c.preempt_count = 0
    c.irqs_off = 0
    c.bh_disable_count = 0
    c.rcu_read_nesting = 0


def wake_up_process(t: task_struct) -> bool:
    """Make t runnable. Return False if it already was."""
    if t.state == TASK_RUNNING or t.state == TASK_DEAD or t is idle_task:
        return False
    t.state = TASK_RUNNING
    t.wakeups += 1
    if trace_sched_wakeup.enabled:
        trace_sched_wakeup(t.pid, t.comm)
    if not t.on_rq:
        t.on_rq = True
        _runqueue.append(t)
    return True


def wake_up_state(t: task_struct, state: int) -> bool:
    """Wake t only if it sleeps in one of the `state` bits."""
    if not (t.state & state):
        return False
    return wake_up_process(t)


def set_current_state(state: int) -> None:
    cpu.curr.state = state


def __set_current_state(state: int) -> None:
    cpu.curr.state = state


def _schedule_debug(prev: task_struct) -> None:
    c = cpu
    if c.preempt_count or c.softirq_serving or c.bh_disable_count or c.irqs_off:
        report_bug("scheduling while atomic", task=prev.comm, preempt_count=c.preempt_count,
                   in_softirq=c.softirq_serving + c.bh_disable_count, irqs_disabled=c.irqs_off,
                   callback=_softirq_name(), held_locks=_held_lock_names(prev))
    if prev.held_locks and lockdep_schedule_hook is not None:
        lockdep_schedule_hook(prev)
    if debug_sched and prev.state != TASK_RUNNING:
        prev.sleep_start = ops.monotonic()


def schedule() -> None:
    """Give up the CPU. The caller stays runnable only if its state is
    TASK_RUNNING (then this is a yield); otherwise it sleeps until woken."""
    prev = cpu.curr
    if debug_atomic_sleep:
        _schedule_debug(prev)
    if prev is idle_task:
        # Nothing to switch away from: abort the softirq instead of hanging it.
        prev.state = TASK_RUNNING
        raise KernelBug("schedule() called outside a task (softirq or engine context)")
    if prev.state == TASK_RUNNING:
        prev.nivcsw += 1
        if not prev.on_rq:
            prev.on_rq = True
            _runqueue.append(prev)
    else:
        prev.nvcsw += 1
        ws = prev.worker_sleeping
        if ws is not None:
            ws(prev)
    _sched_gr.switch()


io_schedule = schedule


def schedule_preempt_disabled() -> None:
    preempt_enable()
    schedule()
    preempt_disable()


def touch_softlockup_watchdog() -> None:
    """Tell the soft-lockup check the current run is making progress."""
    if debug_sched:
        cpu.run_start = ops.monotonic_ns()


def cond_resched() -> int:
    """Yield if anything else is runnable; return 1 if we did."""
    if debug_sched:
        cpu.run_start = ops.monotonic_ns()
    if _runqueue:
        cpu.curr.state = TASK_RUNNING
        schedule()
        return 1
    return 0


def yield_() -> None:
    cpu.curr.state = TASK_RUNNING
    schedule()


# -- signals (kernel/signal.c, the parts a kthread sees) ---------------------

def signal_pending(t: task_struct) -> bool:
    return t.sigpending


def fatal_signal_pending(t: task_struct) -> bool:
    return bool(t.pending & (1 << SIGKILL))


def signal_pending_state(state: int, t: task_struct) -> bool:
    """Would a sleep in `state` be broken by t's pending signals?"""
    if not (state & (TASK_INTERRUPTIBLE | TASK_WAKEKILL)) or not t.sigpending:
        return False
    return bool(state & TASK_INTERRUPTIBLE) or fatal_signal_pending(t)


def allow_signal(sig: int) -> None:
    """Let the current kthread receive sig (kthreads ignore signals otherwise)."""
    cpu.curr.sig_allowed |= 1 << sig


def disallow_signal(sig: int) -> None:
    cpu.curr.sig_allowed &= ~(1 << sig)


def _signal_wake_up(t: task_struct, sig: int) -> None:
    t.pending |= 1 << sig
    t.sigpending = True
    wake_up_state(t, TASK_INTERRUPTIBLE | (TASK_WAKEKILL if sig == SIGKILL else 0))


def send_sig(sig: int, t: task_struct, priv: int = 0) -> int:
    """Queue sig for t and wake an interruptible (or, for SIGKILL, killable)
    sleep. A kthread that did not allow_signal(sig) ignores it. Return 0."""
    if t.state == TASK_DEAD:
        return 0
    if (t.flags & PF_KTHREAD) and not (t.sig_allowed & (1 << sig)):
        return 0
    _signal_wake_up(t, sig)
    return 0


def force_sig(sig: int, t: task_struct) -> None:
    """Deliver sig even to a kthread that ignores it."""
    if t.state != TASK_DEAD:
        _signal_wake_up(t, sig)


def flush_signals(t: task_struct) -> None:
    t.pending = 0
    t.sigpending = False


def kernel_dequeue_signal() -> int:
    """Take the lowest pending signal of the current task; 0 if none."""
    t = cpu.curr
    if not t.pending:
        return 0
    sig = (t.pending & -t.pending).bit_length() - 1
    t.pending &= ~(1 << sig)
    t.sigpending = bool(t.pending)
    return sig


# -- task attributes ----------------------------------------------------------

def set_user_nice(t: task_struct, nice: int) -> None:
    t.nice = max(-20, min(19, nice))


def task_nice(t: task_struct) -> int:
    return t.nice


def task_pid_nr(t: task_struct) -> int:
    return t.pid


def get_task_comm(t: task_struct) -> str:
    return t.comm


def set_task_comm(t: task_struct, comm: str) -> None:
    t.comm = comm[:15]


def task_is_running(t: task_struct) -> bool:
    return t.state == TASK_RUNNING


def task_state_to_char(t: task_struct) -> str:
    s = t.state
    if s == TASK_RUNNING:
        return "R"
    if s & TASK_DEAD:
        return "X"
    if s & TASK_NEW:
        return "N"
    if s & TASK_PARKED:
        return "P"
    if (s & TASK_IDLE) == TASK_IDLE:
        return "I"
    if s & TASK_UNINTERRUPTIBLE:
        return "D"
    if s & TASK_INTERRUPTIBLE:
        return "S"
    return "?"


def nr_running() -> int:
    return len(_runqueue)


def find_task_by_pid(pid: int) -> task_struct | None:
    return all_tasks.get(pid)


# -- boot and the run loop (engine only) --------------------------------------

def sched_init() -> None:
    """Boot: called by the engine on the host thread that will run the CPU.

    Tasks left by an earlier boot are kept as zombies (never woken, never
    collected while suspended, so their cleanup never runs on this boot);
    the CPU's counters and the run queue start empty; then every boot hook
    (timers, softirqs, lockdep, hung-task detector, RCU) runs in the order
    the modules registered."""
    global _sched_gr
    _sched_gr = greenlet.getcurrent()
    for t in all_tasks.values():
        t.state = TASK_DEAD
        _zombies.append(t)
    all_tasks.clear()
    _runqueue.clear()
    c = cpu
    c.curr = idle_task
    c.preempt_count = c.softirq_serving = c.bh_disable_count = 0
    c.hardirq_count = c.irqs_off = c.rcu_read_nesting = 0
    c.softirq_fn = None
    idle_task.held_locks.clear()
    idle_task.state = TASK_RUNNING
    for hook in boot_hooks:
        hook()


def run_queue() -> None:
    """Run every runnable task until the run queue is empty (engine only)."""
    c = cpu
    if c.curr is not idle_task:
        raise KernelBug("run_queue() called from a task")
    rq = _runqueue
    pend = softirq_pending
    pick = pick_next
    while rq:
        if pick is not None and len(rq) > 1:
            rq.rotate(-pick(len(rq)))
        t = rq.popleft()
        t.on_rq = False
        if t.state != TASK_RUNNING:
            continue
        c.curr = t
        if debug_sched or sched_clock_stats or trace_sched_stat_runtime.enabled:
            _run_task_debug(c, t)           # tested per switch: switchable at run time
        else:
            t.gr.switch()
        c.curr = idle_task
        if pend:
            softirq_hook()


def _run_task_debug(c: cpu_state, t: task_struct) -> None:
    """Switch to t, timing the run: run time, CPU time, soft-lockup check."""
    mono = ops.monotonic_ns
    traced = trace_sched_stat_runtime.enabled
    ts = tracepoint.now() if traced else 0
    t0 = c.run_start = mono()
    if sched_clock_stats:
        clock = ops.thread_time_ns
        ct0 = clock()
        t.gr.switch()
        t.cpu_ns += clock() - ct0
    else:
        t.gr.switch()
    t1 = mono()
    t.run_ns += t1 - t0
    if traced:
        trace_sched_stat_runtime.span_end(ts, t.pid, t.comm, task_state_to_char(t))
    ran = t1 - c.run_start
    if ran > softlockup_thresh_ns and debug_sched:
        report_bug(f"soft lockup - CPU#0 stuck for {ran / 1e9:.1f}s! [{t.comm}:{t.pid}]",
                   task=t.comm, pid=t.pid, ran_ms=ran // 1_000_000,
                   stopped_at=frame_stack(t.gr.gr_frame if t.gr else None))


# -- statistics -----------------------------------------------------------------

@attrs.frozen
class task_stats:
    """One task in statistics()."""

    comm: str
    pid: int
    state: str
    nvcsw: int
    nivcsw: int
    wakeups: int
    cpu_ns: int
    run_ns: int


def statistics() -> list[task_stats]:
    """One record per live task (switches, wakeups, CPU and run time)."""
    return [task_stats(t.comm, t.pid, task_state_to_char(t), t.nvcsw, t.nivcsw, t.wakeups,
                       t.cpu_ns, t.run_ns) for t in all_tasks.values()]


def top() -> str:
    """A `top`-like table of the live tasks, busiest first."""
    now = ops.monotonic()
    rows = sorted(all_tasks.values(), key=lambda t: (t.cpu_ns or t.run_ns), reverse=True)
    lines = [f"{'PID':>6} {'COMM':<22} S {'CPU ms':>9} {'RUN ms':>9} {'SWITCH':>9} "
             f"{'YIELD':>7} {'WAKEUPS':>9} {'SLEEPING s':>10}"]
    for t in rows:
        slept = f"{now - t.sleep_start:10.1f}" if t.state != TASK_RUNNING and t.sleep_start \
            else f"{'-':>10}"
        lines.append(f"{t.pid:>6} {t.comm[:22]:<22} {task_state_to_char(t)} "
                     f"{t.cpu_ns / 1e6:>9.1f} {t.run_ns / 1e6:>9.1f} {t.nvcsw:>9} "
                     f"{t.nivcsw:>7} {t.wakeups:>9} {slept}")
    lines.append(f"tasks: {len(all_tasks)}, runnable: {len(_runqueue)}")
    return "\n".join(lines) + "\n"
