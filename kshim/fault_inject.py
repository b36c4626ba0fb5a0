"""Fault injection: the framework that makes emulated primitives fail on
purpose, reproducibly.

Twin of lib/fault-inject.c and include/linux/fault-inject.h (struct
fault_attr, should_fail, setup_fault_attr), with the per-task make-it-fail
and fail-nth files of fs/proc/base.c. The points live beside the kernel's
own: kshim/failslab.py (mm/failslab.c), kshim/fail_page_alloc.py
(mm/fail_page_alloc.c), kshim/fail_function.py (kernel/fail_function.c),
and ours: kshim/fail_mempool.py, kshim/fault_sock.py, kshim/fault_file.py,
kshim/fault_sched.py; the debugfs tree is kshim/fault_inject_debugfs.py.

A point is a fault_attr made by DECLARE_FAULT_ATTR; a primitive tests it
at its top:

    if failslab.armed and should_failslab(c, gfp):
        return None

`armed` is one attribute load when the point is off. should_fail(attr,
size) applies the kernel's rules in the kernel's order: the task's fail-nth
countdown first (it ignores every other rule), then task-filter, space,
times, interval, probability, the stack filters; then it counts, prints
(verbose) and says yes.

Contexts: should_fail from any context (softirq included). The attribute
setters (fault_attr_set, apply_fault_specs) from task context or before
boot.

Differs from the kernel:
- randomness comes from a per-point prandom generator seeded from `seed`
  (drawn through kshim.random32 at boot, shown and settable in debugfs), so a
  run with the same seeds and the same order of calls fails the same calls;
- require-start/end and reject-start/end hold module or function names, not
  addresses: a stack frame is in the range if its module ("iscsi_scst",
  "iscsi_scst.nthread") or its function ("scst_rx_cmd") is named by either
  end, so the usual ranges (one module, one function) are start=end;
- every point has `injected` (faults injected so far; write 0 to reset);
- a point's own attributes ("knobs": failslab's cache-filter, a socket
  point's error) are declared with it, name -> (type, default, choices);
- seeds: a point whose seed the user did not set draws a new one through
  the engine's randomness when first armed after each boot (a sched boot
  hook), so a run with no fault armed draws nothing;
- make-it-fail and fail-nth are per kthread, set here or through
  debug/fault-inject/; a COMM pattern also marks kthreads started later;
- enumerate mode: "record" notes every injection site a scenario reaches
  (a site is a point plus the first caller outside kshim); targeting a
  site's number then fails that site the first time it is reached, once,
  and nothing else. A driver runs the scenario once per site and checks
  how it ended (tools/fault_campaign.py);
- setup_fault_attr's boot parameter is `uscstd --fault POINT:attr=value,...`
  and USCST_FAULTS (apply_fault_specs), all or nothing.

Debug aids: verbose=1 prints one line per injected fault, verbose=2 also
the stack (through printk, at most 10 messages per 5 seconds per point).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

import attrs

from kshim import sched
from kshim.bug import dump_stack, getframe
from kshim.err import EAGAIN, ECONNRESET, EDQUOT, EINVAL, EIO, ENOMEM, ENOSPC, EPIPE, ETIMEDOUT
from kshim.jiffies import HZ, jiffies, msecs_to_jiffies
from kshim.printk import KERN_WARNING, printk
from kshim.random32 import (get_random_u64, prandom_seed_state, prandom_u32_state,
                            reciprocal_scale, rnd_state)

_KSHIM_DIR = __file__.rpartition("/")[0] + "/"
_TREE_DIR = _KSHIM_DIR[:-1].rpartition("/")[0] + "/"      # the tree kshim is part of
_TOOLS_DIR = _TREE_DIR + "tools/"     # host tools: they run the engine, they call no point
_RATELIMIT_BURST = 10
_RATELIMIT_JIFFIES = 5 * HZ
ENUMERATE_MAX_SITES = 4096           # sites one enumeration records, at most
# The points enumerate mode walks unless told otherwise: those whose fault
# is a failure the code must handle (not a delay).
ENUMERATE_POINTS = ("failslab", "fail_page_alloc", "fail_mempool", "fail_function",
                    "fail_sock_recv", "fail_sock_send", "fail_file_read", "fail_file_write",
                    "fail_file_fsync", "fail_file_fallocate")


@attrs.define(slots=True, eq=False)
class fault_attr:
    """struct fault_attr: one injection point and its rules."""
    name: str
    # set from debugfs, the command line or a test (task context); read anywhere
    probability: int = 0            # percent of eligible calls that fail
    interval: int = 1               # only every interval-th eligible call may fail
    times: int = 1                  # failures left; -1: no limit
    space: int = 0                  # bytes (size) that pass before failures start
    verbose: int = 2
    task_filter: bool = False       # only tasks with make-it-fail
    require_start: str = ""
    require_end: str = ""
    reject_start: str = ""
    reject_end: str = ""
    stacktrace_depth: int = 32
    seed: int = 0
    seed_fixed: bool = False        # seed written by the user: kept across boots
    seed_pending: bool = False      # draw a seed when the point is next armed
    params: dict = attrs.field(factory=dict)    # the point's own knobs (POINTS)
    # counters, one CPU: no lock
    count: int = 0                  # eligible calls seen (interval)
    injected: int = 0
    armed: bool = False             # should the primitive call should_fail at all?
    rnd: rnd_state = attrs.field(factory=rnd_state)
    rl_begin: int = 0               # verbose ratelimit window start (jiffies)
    rl_printed: int = 0
    # what the point adds besides its knobs (fail_function's inject file):
    # set_extra(name, value) -> True if it took the attribute (ValueError if
    # the value is wrong); reset() when every point goes back to defaults;
    # debugfs(kobj) adds its own files to its debugfs directory
    set_extra: Callable[[str, str], bool] | None = None
    reset: Callable[[], None] | None = None
    debugfs: Callable[[Any], None] | None = None


# name -> knobs, and name -> point, in the order the points were declared
POINTS: dict[str, dict[str, tuple]] = {}
fault_points: dict[str, fault_attr] = {}
# called with a point's name when it is declared (the debugfs tree adds its directory)
point_added_hooks: list[Callable[[str], None]] = []


def _new_point(name: str) -> fault_attr:
    a = fault_attr(name, params={k: d for k, (_t, d, _c) in POINTS[name].items()})
    a.seed = get_random_u64() & 0xFFFFFFFFFFFF
    prandom_seed_state(a.rnd, a.seed)
    return a


def DECLARE_FAULT_ATTR(name: str, knobs: dict[str, tuple], *,
                       set_extra: Callable[[str, str], bool] | None = None,
                       reset: Callable[[], None] | None = None,
                       debugfs: Callable[[Any], None] | None = None) -> fault_attr:
    """Declare a point (the kernel's DECLARE_FAULT_ATTR plus
    fault_create_debugfs_attr): its knobs are name -> (type, default,
    choices or None); its debugfs directory appears with the others (at
    once if debugfs is already up)."""
    POINTS[name] = knobs
    a = fault_points[name] = _new_point(name)
    a.set_extra = set_extra
    a.reset = reset
    a.debugfs = debugfs
    for hook in point_added_hooks:
        hook(name)
    return a


# what a point's `error` knob may name
_ERRNOS = {"EIO": EIO, "ENOSPC": ENOSPC, "EDQUOT": EDQUOT, "ECONNRESET": ECONNRESET,
           "EPIPE": EPIPE, "ETIMEDOUT": ETIMEDOUT, "EAGAIN": EAGAIN, "ENOMEM": ENOMEM,
           "EINVAL": EINVAL}


def fault_errno(name: str) -> int:
    """The errno a point's `error` knob names (EIO, ECONNRESET, ...)."""
    return _ERRNOS[name]


def fault_call_later(ms: int, fn: Callable[[Any], None], arg: Any) -> None:
    """Call fn(arg) in softirq context after ms milliseconds (a timer that
    fail_timer leaves alone)."""
    from kshim.timer import mod_timer, timer_list   # timer's fault point imports this module
    t = timer_list(lambda _t: fn(arg), name=f"fault delay {getattr(fn, '__name__', fn)}")
    fail_timer = fault_points["fail_timer"]
    armed, fail_timer.armed = fail_timer.armed, False
    try:
        mod_timer(t, jiffies() + msecs_to_jiffies(ms))
    finally:
        fail_timer.armed = armed


def _boot() -> None:
    """A boot (sched_init): points whose seed the user did not set draw a
    new one through the engine's randomness when they are next armed, so
    under the sim engine they follow the run's seed (and a run with no
    fault armed draws nothing); tasks of the earlier boot are forgotten."""
    for a in fault_points.values():
        a.seed_pending = not a.seed_fixed
        a.count = 0
    fault_state.make_it_fail = set()
    fault_state.fail_nth = {}
    fault_rearm()


sched.boot_hooks.append(_boot)



# -- per task: make-it-fail and fail-nth ---------------------------------------

@attrs.define(slots=True, eq=False)
class _enum_site:
    index: int
    point: str
    where: str
    hits: int = 0
    injected: int = 0


@attrs.define(slots=True, eq=False)
class _fault_state:
    """Task and enumerate state, all touched on the one CPU: no lock."""
    # tasks leave both when they exit (_forget, a task exit hook)
    make_it_fail: set = attrs.field(factory=set)
    make_it_fail_comms: list = attrs.field(factory=list)     # fnmatch patterns
    fail_nth: dict = attrs.field(factory=dict)    # task -> countdown
    enum_mode: str = "off"                # off | record | target
    enum_points: tuple = ENUMERATE_POINTS
    enum_sites: dict = attrs.field(factory=dict)   # key -> _enum_site
    enum_target: str | None = None
    enum_done: bool = False


fault_state = _fault_state()


def fault_rearm() -> None:
    """Recompute every point's `armed` after a rule changed (or after a
    point's helper disarmed it for a moment, to call its primitive again)."""
    nth = any(n > 0 for n in fault_state.fail_nth.values())
    for a in fault_points.values():
        a.armed = (nth or (a.probability > 0 and a.times != 0)
                   or (fault_state.enum_mode != "off" and a.name in fault_state.enum_points))
        if a.armed and a.seed_pending:
            a.seed_pending = False
            a.seed = get_random_u64() & 0xFFFFFFFFFFFF
            prandom_seed_state(a.rnd, a.seed)


def fault_overridden() -> bool:
    """Are fail-nth or enumerate mode on? They ignore a point's own rules,
    so a point's helper with rules of its own (space on sockets) steps aside."""
    return bool(fault_state.fail_nth) or fault_state.enum_mode != "off"


def _forget(task: sched.task_struct) -> None:
    """A task exits: it leaves make-it-fail and fail-nth."""
    fault_state.make_it_fail.discard(task)
    if fault_state.fail_nth.pop(task, None) is not None:
        fault_rearm()


def _track(task: sched.task_struct) -> None:
    if _forget not in task.exit_hooks:
        task.exit_hooks.append(_forget)


def set_make_it_fail(task: sched.task_struct, on: bool) -> None:
    """/proc/PID/make-it-fail: mark a task for the points with task-filter."""
    if on:
        _track(task)
        fault_state.make_it_fail.add(task)
    else:
        fault_state.make_it_fail.discard(task)


def set_fail_nth(task: sched.task_struct, nth: int) -> None:
    """/proc/PID/task/TID/fail-nth: the task's nth call (1-based) of any
    point fails; 0 cancels."""
    if nth > 0:
        _track(task)
        fault_state.fail_nth[task] = nth
    else:
        fault_state.fail_nth.pop(task, None)
    fault_rearm()


def get_fail_nth(task: sched.task_struct) -> int:
    """What is left of the countdown (0: none pending, or it fired)."""
    return fault_state.fail_nth.get(task, 0)


def _task_marked(t: sched.task_struct) -> bool:
    if t in fault_state.make_it_fail:
        return True
    comm = t.comm
    if any(fnmatch.fnmatchcase(comm, p) for p in fault_state.make_it_fail_comms):
        set_make_it_fail(t, True)
        return True
    return False


# -- should_fail -----------------------------------------------------------------

def _frame_names(f: Any) -> tuple[str, str]:
    return f.f_globals.get("__name__", "?"), f.f_code.co_name


def _in_range(mod: str, fn: str, start: str, end: str) -> bool:
    for name in (start, end):
        if name and (fn == name or mod == name or mod.startswith(name + ".")):
            return True
    return False


def _fail_stacktrace(attr: fault_attr) -> bool:
    """The kernel's fail_stacktrace: no frame in the reject range, and (if
    a require range is set) some frame in it, within stacktrace-depth."""
    found = not (attr.require_start or attr.require_end)
    f = getframe(2)            # should_fail's caller, upwards
    depth = attr.stacktrace_depth
    while f is not None and depth > 0:
        mod, fn = _frame_names(f)
        if _in_range(mod, fn, attr.reject_start, attr.reject_end):
            return False
        if not found and _in_range(mod, fn, attr.require_start, attr.require_end):
            found = True
        f = f.f_back
        depth -= 1
    return found


def _caller_site() -> str:
    """'module:line function' of the first caller outside kshim. A call the
    engine made (an I/O completion in softirq) has none but the host tool
    that runs the engine (tools/): then the caller of the point's helper,
    inside kshim, names it."""
    helper = getframe(3)            # the point's helper (should_failslab, ...)
    f = helper
    while f is not None and f.f_code.co_filename.startswith(_KSHIM_DIR):
        f = f.f_back
    if f is None or not f.f_code.co_filename.startswith(_TREE_DIR) \
            or f.f_code.co_filename.startswith(_TOOLS_DIR):
        f = helper.f_back if helper is not None and helper.f_back is not None else helper
    if f is None:
        return "?"
    mod, fn = _frame_names(f)
    return f"{mod}:{f.f_lineno} {fn}"


def _enumerate(attr: fault_attr, label: str) -> bool:
    st = fault_state
    if attr.name not in st.enum_points:
        return False
    key = f"{label} {_caller_site()}"
    site = st.enum_sites.get(key)
    if site is None:
        if len(st.enum_sites) >= ENUMERATE_MAX_SITES:
            return False
        site = st.enum_sites[key] = _enum_site(len(st.enum_sites), label, key.split(" ", 1)[1])
    site.hits += 1
    if st.enum_mode == "target" and key == st.enum_target and not st.enum_done:
        st.enum_done = True
        site.injected += 1
        return True
    return False


def _report(attr: fault_attr, why: str) -> None:
    if not attr.verbose:
        return
    now = jiffies()
    if now - attr.rl_begin > _RATELIMIT_JIFFIES:
        attr.rl_begin = now
        attr.rl_printed = 0
    if attr.rl_printed >= _RATELIMIT_BURST:
        return
    attr.rl_printed += 1
    printk(KERN_WARNING + f"FAULT_INJECTION: forcing a failure. name {attr.name}{why}, "
           f"interval {attr.interval}, probability {attr.probability}, space {attr.space}, "
           f"times {attr.times}, task {sched.current().comm}")
    if attr.verbose > 1:
        dump_stack(3)


def should_fail(attr: fault_attr, size: int, label: str = "") -> bool:
    """Should this call of the point fail? Counts and reports a yes.
    `label` names the site for enumerate mode (default: the point)."""
    if not attr.armed:
        return False
    cur = sched.current()
    nth = fault_state.fail_nth.get(cur) if fault_state.fail_nth else None
    if nth:
        nth -= 1
        fault_state.fail_nth[cur] = nth
        if nth:
            return False
        fault_rearm()
        attr.injected += 1
        _report(attr, " (fail-nth)")
        return True
    if fault_state.enum_mode != "off":
        if _enumerate(attr, label or attr.name):
            attr.injected += 1
            _report(attr, " (enumerate)")
            return True
        return False
    if attr.task_filter and (not sched.in_task() or not _task_marked(cur)):
        return False
    if attr.space > size:
        attr.space -= size
        return False
    if attr.times == 0:
        return False
    if attr.interval > 1:
        attr.count += 1
        if attr.count % attr.interval:
            return False
    if attr.probability <= reciprocal_scale(prandom_u32_state(attr.rnd), 100):
        return False
    if (attr.require_start or attr.require_end or attr.reject_start or attr.reject_end) \
            and not _fail_stacktrace(attr):
        return False
    if attr.times > 0:
        attr.times -= 1
        if attr.times == 0:
            fault_rearm()
    attr.injected += 1
    _report(attr, "")
    return True


# -- setting attributes by name (debugfs, --fault, USCST_FAULTS) -------------------

# the attributes every point has, as their debugfs files are named
COMMON_ATTRS = {"probability": int, "interval": int, "times": int, "space": int,
                "verbose": int, "task-filter": bool, "require-start": str, "require-end": str,
                "reject-start": str, "reject-end": str, "stacktrace-depth": int, "seed": int,
                "injected": int}


def parse_attr_value(kind: type, text: str) -> Any:
    text = text.strip()
    if kind is bool:
        if text not in ("Y", "N", "y", "n", "1", "0"):
            raise ValueError(f"expected Y or N, got {text!r}")
        return text in ("Y", "y", "1")
    if kind is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    return text


def fault_attr_set(point: str, name: str, value: str) -> None:
    """Set one attribute of a point by its debugfs name; ValueError with a
    one-line reason if the point, the name or the value is wrong."""
    attr = fault_points.get(point)
    if attr is None:
        raise ValueError(f"unknown fault point {point!r} (known: {', '.join(fault_points)})")
    name = name.strip().replace("_", "-")
    if name in COMMON_ATTRS:
        v = parse_attr_value(COMMON_ATTRS[name], value)
        if name == "probability" and not 0 <= v <= 100:
            raise ValueError(f"{point}: probability must be 0..100, got {v}")
        if name in ("interval", "stacktrace-depth") and v < 1:
            raise ValueError(f"{point}: {name} must be at least 1, got {v}")
        if name == "times" and v < -1:
            raise ValueError(f"{point}: times must be -1 or more, got {v}")
        if name in ("space", "injected") and v < 0:
            raise ValueError(f"{point}: {name} must not be negative, got {v}")
        if name == "verbose" and v not in (0, 1, 2):
            raise ValueError(f"{point}: verbose must be 0, 1 or 2, got {v}")
        setattr(attr, name.replace("-", "_"), v)
        if name == "seed":
            prandom_seed_state(attr.rnd, v)
            attr.seed_fixed = True
            attr.seed_pending = False
        if name in ("seed", "interval"):
            attr.count = 0              # the interval counts from now
        fault_rearm()
        return
    if attr.set_extra is not None and attr.set_extra(name, value):
        return
    knob = POINTS[point].get(name)
    if knob is None:
        known = ", ".join(list(COMMON_ATTRS) + list(POINTS[point]))
        raise ValueError(f"{point} has no attribute {name!r} (known: {known})")
    kind, _default, choices = knob
    v = parse_attr_value(kind, value)
    if choices is not None and v not in choices:
        raise ValueError(f"{point}: {name} must be one of {', '.join(choices)}, got {v!r}")
    if kind is int and name != "end" and v < 0:
        raise ValueError(f"{point}: {name} must not be negative, got {v}")
    attr.params[name] = v


def fault_attr_get(point: str, name: str) -> str:
    """The text of one attribute, as its debugfs file shows it."""
    attr = fault_points[point]
    v = (getattr(attr, name.replace("-", "_")) if name in COMMON_ATTRS else attr.params[name])
    return ("Y" if v else "N") if isinstance(v, bool) else str(v)


def parse_fault_spec(spec: str) -> list[tuple[str, str, str]]:
    """'POINT:attr=value,attr=value' -> [(point, attr, value), ...], checked
    against the known points and attributes (values are checked on apply).
    ValueError with a one-line reason."""
    point, sep, rest = spec.strip().partition(":")
    if not sep or not point:
        raise ValueError(f"fault spec {spec!r}: expected POINT:attr=value[,attr=value...]")
    if point not in fault_points:
        raise ValueError(f"fault spec {spec!r}: unknown point {point!r} "
                         f"(known: {', '.join(fault_points)})")
    out = []
    for item in rest.split(","):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"fault spec {spec!r}: {item!r} is not attr=value")
        out.append((point, name.strip(), value.strip()))
    return out


def apply_fault_specs(specs: list[str], dry_run: bool = False) -> None:
    """Apply --fault / USCST_FAULTS specs in order, all or nothing:
    ValueError (one line) and nothing changed if one is wrong. dry_run:
    only check them."""
    items = [it for s in specs for it in parse_fault_spec(s)]
    saved = {n: attrs.evolve(a, params=dict(a.params)) for n, a in fault_points.items()}
    try:
        for point, name, value in items:
            fault_attr_set(point, name, value)
        if dry_run:
            raise ValueError("")
    except ValueError as e:
        for n, a in saved.items():
            p = fault_points[n]
            for f in ("probability", "interval", "times", "space", "verbose", "task_filter",
                      "require_start", "require_end", "reject_start", "reject_end",
                      "stacktrace_depth", "seed", "seed_fixed", "seed_pending", "params"):
                setattr(p, f, getattr(a, f))
            prandom_seed_state(p.rnd, p.seed)
        fault_rearm()
        if str(e):
            raise


def split_env_specs(text: str) -> list[str]:
    """USCST_FAULTS: specs separated by ';' or whitespace."""
    return [s for part in text.split(";") for s in part.split() if s]


def fault_reset() -> None:
    """Every point back to its defaults (off); tasks and enumerate cleared."""
    for name, a in fault_points.items():
        fresh = _new_point(name)
        fresh.seed = a.seed
        prandom_seed_state(fresh.rnd, fresh.seed)
        for f in attrs.fields(fault_attr):
            if f.name not in ("set_extra", "reset", "debugfs"):
                setattr(a, f.name, getattr(fresh, f.name))
    fault_state.make_it_fail = set()
    fault_state.make_it_fail_comms.clear()
    fault_state.fail_nth = {}
    enumerate_stop()
    for a in fault_points.values():
        if a.reset is not None:
            a.reset()


# -- enumerate mode ---------------------------------------------------------------

def enumerate_record(points: tuple = ENUMERATE_POINTS) -> None:
    """Start recording the sites a scenario reaches (nothing fails)."""
    fault_state.enum_mode = "record"
    fault_state.enum_points = points
    fault_state.enum_sites = {}
    fault_state.enum_target = None
    fault_state.enum_done = False
    fault_rearm()


def enumerate_target(index: int) -> int:
    """Fail site number `index` the next time it is reached, once: 0 or
    -EINVAL. Sites found meanwhile are added to the list."""
    for key, s in fault_state.enum_sites.items():
        if s.index == index:
            fault_state.enum_mode = "target"
            fault_state.enum_target = key
            fault_state.enum_done = False
            fault_rearm()
            return 0
    return -EINVAL


def enumerate_stop() -> None:
    fault_state.enum_mode = "off"
    fault_state.enum_target = None
    fault_rearm()


def enumerate_sites() -> list[_enum_site]:
    return sorted(fault_state.enum_sites.values(), key=lambda s: s.index)


def statistics() -> dict[str, int]:
    """Faults injected per point."""
    return {n: a.injected for n, a in fault_points.items()}


# Every built-in point declares itself when imported; importing them here
# makes all of them known wherever the framework is (--fault, debugfs).
# They import this module, so this comes after everything they use.
from kshim import failslab  # noqa: E402,F401
from kshim import fail_page_alloc  # noqa: E402,F401
from kshim import fail_mempool  # noqa: E402,F401
from kshim import fail_function  # noqa: E402,F401
from kshim import fault_sock  # noqa: E402,F401
from kshim import fault_file  # noqa: E402,F401
from kshim import fault_sched  # noqa: E402,F401
