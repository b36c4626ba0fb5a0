"""tracefs: the files that drive the tracepoint recorder, under /sys/kernel/tracing.

Twin of kernel/trace/trace.c and trace_events.c (the tracefs files
tracing_on, buffer_size_kb, trace, set_event, available_events) for the
recorder of kshim.tracepoint.

Files (all under /kernel/tracing in our sysfs tree):
  tracing_on        0/1: record the selected events
  set_event         selected event names, one per line; a write replaces
                    the selection ("*" selects all, "sched_*" a prefix;
                    an empty write selects none)
  available_events  every declared event, with its fields
  filter            `sess=NAME lun=N op=0xNN event=a,b` (all must match);
                    an empty write clears it
  buffer_size_kb    the ring's size (bounded memory, oldest overwritten)
  trace             the ring as text, ftrace-like; a write clears it
  trace_raw         the ring as JSON for tools (tools/trace_export.py):
                    {"events": {name: [fields]}, "tasks": {pid: comm},
                     "records": [[ts_ns, name, ctx, [args]], ...]}
  trace_stat        entries, overrun and written counts

Contexts: the show/store callbacks run in task context (sysfs).

Differs from the kernel: no per-event directories (set_event covers
them); one filter for all events instead of one per event.
"""
from __future__ import annotations

import json

from kshim import sched, tracepoint
from kshim.err import EINVAL
from kshim.kobject import kobject, kobject_create_and_add
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, __ATTR_RO, kernel_kobj, kobj_attribute, sysfs_create_file

def task_comms() -> dict[int, str]:
    """pid -> comm for every task the ring names (live tasks, and those
    that exited since: each record keeps its task's comm)."""
    out = {r[2]: r[4] for r in tracepoint.records()}
    out.update({t.pid: t.comm for t in sched.all_tasks.values()})
    out[0] = sched.idle_task.comm
    out.pop(tracepoint.SOFTIRQ_CTX, None)
    return out


def trace_start(names: "list[str] | None" = None) -> int:
    """Select names (all events if None) and turn recording on."""
    ret = tracepoint.set_event(names if names is not None else ["*"])
    if ret == 0:
        tracepoint.tracing_on()
    return ret


def trace_text() -> str:
    recs = sorted(tracepoint.records(), key=lambda r: r[0])      # spans are kept at their end
    return "".join(tracepoint.format_record(r) + "\n" for r in recs)


def trace_raw() -> str:
    names = tracepoint.events
    return json.dumps({
        "events": {e.name: list(e.fields) for e in names},
        "tasks": {str(p): c for p, c in task_comms().items()},
        "overrun": tracepoint.overrun(),
        "records": [[r[0], names[r[1]].name, r[2], list(r[3])] for r in tracepoint.records()],
    })


# -- the files ---------------------------------------------------------------

def _tracing_on_show(_k: kobject, _a: kobj_attribute) -> str:
    return "1\n" if tracepoint.tr.tracing_on else "0\n"


def _tracing_on_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    v = buf.strip()
    if v == "1":
        tracepoint.tracing_on()
    elif v == "0":
        tracepoint.tracing_off()
    else:
        return -EINVAL
    return len(buf)


def _set_event_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    ret = tracepoint.set_event(buf.split())
    return ret if ret < 0 else len(buf)


def _filter_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    ret = tracepoint.set_filter(buf)
    return ret if ret < 0 else len(buf)


def _buffer_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    try:
        kb = int(buf.strip(), 0)
    except ValueError:
        return -EINVAL
    ret = tracepoint.set_buffer_size_kb(kb)
    return ret if ret < 0 else len(buf)


def _trace_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    tracepoint.trace_clear()
    return len(buf)


def _stat_show(_k: kobject, _a: kobj_attribute) -> str:
    t = tracepoint.tr
    return (f"entries: {len(t.ring)}\noverrun: {tracepoint.overrun()}\n"
            f"written: {t.written}\ncapacity: {t.ring.maxlen}\n")


RW = S_IRUGO | S_IWUSR
tracing_kobj = kobject_create_and_add("tracing", kernel_kobj)
for _a in (
        __ATTR("tracing_on", RW, _tracing_on_show, _tracing_on_store),
        __ATTR("set_event", RW, lambda k, a: "".join(n + "\n" for n in tracepoint.selected_events()),
               _set_event_store),
        __ATTR_RO("available_events", lambda k, a: "".join(
            f"{e.name}: {' '.join(e.fields)}\n" for e in tracepoint.events)),
        __ATTR("filter", RW, lambda k, a: tracepoint.tr.filter_text + "\n", _filter_store),
        __ATTR("buffer_size_kb", RW, lambda k, a: f"{tracepoint.tr.buffer_kb}\n", _buffer_store),
        __ATTR("trace", RW, lambda k, a: trace_text(), _trace_store),
        __ATTR_RO("trace_raw", lambda k, a: trace_raw()),
        __ATTR_RO("trace_stat", _stat_show)):
    sysfs_create_file(tracing_kobj, _a)
