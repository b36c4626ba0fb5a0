"""Tracepoints, their probes, and the bounded ring the recorder keeps.

Twin of include/linux/tracepoint.h (TRACE_EVENT, the static key tested at
the call site), kernel/tracepoint.c (probe registration),
kernel/trace/ring_buffer.c (a bounded, overwriting ring) and the field
filter of kernel/trace/trace_events_filter.c. The tracefs files that drive
it live in kshim.trace.

Contexts: an event may fire from any context (task, softirq, engine); a
record names the context it fired in: the task's pid, or SOFTIRQ_CTX when a
softirq handler runs (the engine's own code is pid 0, the idle task).
register/unregister and the control calls from task context (sysfs store).

Call sites test the event's `enabled` slot inline, the way the kernel's
static key costs one patched jump:

    if trace_scst_cmd_state.enabled:
        trace_scst_cmd_state(sess, lun, tag, op, state, dur)

`enabled` is true only while a probe is attached: the recorder (tracing on
and the event selected) or an in-kernel consumer such as SCST's
measure_latency. With nothing attached the cost is one attribute test.
`nr_enabled` counts the enabled events: a path that would skip some
tracepoints (scst_core.fastpath) runs only while it is 0, so whatever
is traced sees every event.

Differs from the kernel: one CPU, so one ring; a record is a tuple
(ts_ns, event id, context, args, comm) kept by reference, not a binary entry, so
the ring is bounded by a record count derived from buffer_size_kb and an
estimated record size (RECORD_BYTES). A record also keeps the current
task's comm (a reference), so a trace names threads that have exited. An entry/exit pair the kernel traces
as two events (softirq_entry/exit, a state handler's start and end) is one
"span" record here: its timestamp is the entry and its last field the
duration, which is what the Perfetto export draws as a slice. Timestamps are
kshim's ktime (ns since boot), so a simulated clock makes them virtual.

Filter: `field=value` terms joined by spaces, all of which must match;
fields sess, lun and op are understood (an event without the field passes,
so kthread and softirq context stays in a filtered trace); `event=a,b`
keeps only the named events.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from kshim.err import EINVAL
from kshim.jiffies import ktime_get_ns
from kshim.printk import pr_err

# XXX: #11 the record size is an estimate (a 4-tuple plus an args tuple of
# about eight small fields, shared strings): enough to keep memory bounded
# and roughly proportional to buffer_size_kb.
RECORD_BYTES = 256
SOFTIRQ_CTX = -1
DEFAULT_BUFFER_KB = 4096
MAX_BUFFER_KB = 1 << 20

Probe = Callable[[tuple], None]

# Set by kshim.sched at import (sched imports this module, so not the
# reverse): the CPU whose current task and softirq depth name a context.
cpu: Any = None


class trace_event:
    """One TRACE_EVENT: a name, its field names, and the probes attached."""

    __slots__ = ("enabled", "name", "id", "fields", "span", "probes", "selected",
                 "sess_i", "lun_i", "op_i")

    def __init__(self, name: str, fields: tuple[str, ...], span: bool) -> None:
        self.enabled = False
        self.name = name
        self.id = len(events)
        self.fields = fields + (("dur",) if span else ())
        self.span = span
        self.probes: tuple[Probe, ...] = ()
        self.selected = False            # in set_event: recorded while tracing_on
        self.sess_i = _index(fields, "sess")
        self.lun_i = _index(fields, "lun")
        self.op_i = _index(fields, "op")

    def __call__(self, *args: Any) -> None:
        """Fire an instant event now (call only when self.enabled)."""
        c = cpu
        t = c.curr
        rec = (ktime_get_ns(), self.id, SOFTIRQ_CTX if c.softirq_serving else t.pid, args, t.comm)
        for p in self.probes:
            p(rec)

    def span_end(self, t0: int, *args: Any) -> None:
        """Fire a span that began at t0 (from now()); its duration is
        appended as the last field."""
        c = cpu
        t = c.curr
        rec = (t0, self.id, SOFTIRQ_CTX if c.softirq_serving else t.pid,
               args + (ktime_get_ns() - t0,), t.comm)
        for p in self.probes:
            p(rec)

    def __repr__(self) -> str:
        return f"<trace_event {self.name}{' on' if self.enabled else ''}>"


def _index(fields: tuple[str, ...], name: str) -> int:
    return fields.index(name) if name in fields else -1


events: list[trace_event] = []
# events with a probe attached: 0 means nothing watches any event, which a
# fast path that skips tracepoints tests (scst_core.fastpath)
nr_enabled = 0
events_by_name: dict[str, trace_event] = {}
now = ktime_get_ns


def TRACE_EVENT(name: str, fields: tuple[str, ...], span: bool = False) -> trace_event:
    """Declare an event (at module import). A span event's records carry
    their duration as a last field, "dur"."""
    if name in events_by_name:
        raise ValueError(f"trace event {name} declared twice")
    ev = trace_event(name, fields, span)
    events.append(ev)
    events_by_name[name] = ev
    return ev


def _update(ev: trace_event) -> None:
    global nr_enabled
    on = bool(ev.probes)
    if on != ev.enabled:
        nr_enabled += 1 if on else -1
    ev.enabled = on


def register_trace(ev: trace_event, probe: Probe) -> None:
    """Attach probe(record) to ev (tracepoint_probe_register)."""
    if probe not in ev.probes:
        ev.probes = ev.probes + (probe,)
    _update(ev)


def unregister_trace(ev: trace_event, probe: Probe) -> None:
    ev.probes = tuple(p for p in ev.probes if p != probe)     # bound methods are equal, not identical
    _update(ev)


# -- the recorder: ring buffer, selection, filter -----------------------------

class trace_ring:
    """The ring and its controls (guarded by running on the one CPU)."""

    __slots__ = ("ring", "buffer_kb", "tracing_on", "written", "filter_text", "filter_fn")

    def __init__(self) -> None:
        self.buffer_kb = DEFAULT_BUFFER_KB
        self.ring: deque[tuple] = deque(maxlen=self.capacity())
        self.tracing_on = False
        self.written = 0                  # records accepted since the last clear
        self.filter_text = ""
        self.filter_fn: Callable[[tuple], bool] | None = None

    def capacity(self) -> int:
        return max(16, self.buffer_kb * 1024 // RECORD_BYTES)


tr = trace_ring()


def _ring_probe(rec: tuple) -> None:
    f = tr.filter_fn
    if f is None or f(rec):
        tr.written += 1
        tr.ring.append(rec)


def _attach(ev: trace_event) -> None:
    if tr.tracing_on and ev.selected:
        register_trace(ev, _ring_probe)
    else:
        unregister_trace(ev, _ring_probe)


def tracing_on() -> None:
    tr.tracing_on = True
    for ev in events:
        _attach(ev)


def tracing_off() -> None:
    tr.tracing_on = False
    for ev in events:
        _attach(ev)


def set_event(names: "list[str] | None") -> int:
    """Select the events the recorder keeps: names (or "*" for all, or
    "subsys:*"-style prefixes ending in '*'); None selects none. 0 or -EINVAL
    naming nothing changed."""
    chosen = set()
    for n in names or []:
        if n.endswith("*"):
            match = [e for e in events if e.name.startswith(n[:-1])]
            if not match:
                pr_err(f"tracing: no event matches {n!r}")
                return -EINVAL
            chosen.update(match)
        elif n in events_by_name:
            chosen.add(events_by_name[n])
        else:
            pr_err(f"tracing: unknown event {n!r} (see available_events)")
            return -EINVAL
    for ev in events:
        ev.selected = ev in chosen
        _attach(ev)
    return 0


def selected_events() -> list[str]:
    return [e.name for e in events if e.selected]


def set_buffer_size_kb(kb: int) -> int:
    """Resize the ring (keeps the newest records); 0 or -EINVAL."""
    if kb < 1 or kb > MAX_BUFFER_KB:
        return -EINVAL
    tr.buffer_kb = kb
    tr.ring = deque(tr.ring, maxlen=tr.capacity())
    return 0


def trace_clear() -> None:
    tr.ring.clear()
    tr.written = 0


def parse_filter(text: str) -> "Callable[[tuple], bool] | None | int":
    """Compile a filter (see the module docstring): a predicate on records,
    None for the empty filter, or -EINVAL."""
    terms = text.split()
    if not terms:
        return None
    want: dict[str, Any] = {}
    for t in terms:
        key, sep, val = t.partition("=")
        if not sep or not val or key not in ("sess", "lun", "op", "event") or key in want:
            pr_err(f"tracing: bad filter term {t!r}: use sess=, lun=, op= or event=, once each")
            return -EINVAL
        if key == "sess":
            want[key] = val
        elif key == "event":
            ids = set()
            for n in val.split(","):
                ev = events_by_name.get(n)
                if ev is None:
                    pr_err(f"tracing: filter names unknown event {n!r}")
                    return -EINVAL
                ids.add(ev.id)
            want[key] = ids
        else:
            try:
                want[key] = int(val, 0)
            except ValueError:
                pr_err(f"tracing: filter term {t!r}: {key} must be a number")
                return -EINVAL
    sess, lun, op, ids = want.get("sess"), want.get("lun"), want.get("op"), want.get("event")

    def match(rec: tuple) -> bool:
        ev = events[rec[1]]
        if ids is not None and ev.id not in ids:
            return False
        args = rec[3]
        if sess is not None and ev.sess_i >= 0 and args[ev.sess_i] != sess:
            return False
        if lun is not None and ev.lun_i >= 0 and args[ev.lun_i] != lun:
            return False
        return op is None or ev.op_i < 0 or args[ev.op_i] == op
    return match


def set_filter(text: str) -> int:
    f = parse_filter(text)
    if isinstance(f, int):
        return f
    tr.filter_fn = f
    tr.filter_text = " ".join(text.split())
    return 0


def records() -> list[tuple]:
    """A snapshot of the ring, oldest first."""
    return list(tr.ring)


def overrun() -> int:
    """Records lost to the ring's overwriting since the last clear."""
    return tr.written - len(tr.ring)


def record_dict(rec: tuple) -> dict:
    """One record as {"ts", "event", "ctx", field: value ...} (for export)."""
    ev = events[rec[1]]
    d = {"ts": rec[0], "event": ev.name, "ctx": rec[2]}
    d.update(zip(ev.fields, rec[3], strict=False))
    return d


def format_record(rec: tuple) -> str:
    """One ftrace-like text line: `comm-pid [000] ts: event: field=value ...`."""
    ev = events[rec[1]]
    ctx = rec[2]
    who = "<softirq>" if ctx == SOFTIRQ_CTX else f"{rec[4]}-{ctx}"
    fields = " ".join(f"{k}={_fmt(v)}" for k, v in zip(ev.fields, rec[3], strict=False))
    return f"{who:>20} [000] {rec[0] / 1e9:13.6f}: {ev.name}: {fields}"


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v) if (" " in v or not v) else v
    return str(v)
