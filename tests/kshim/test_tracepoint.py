"""kshim.tracepoint and kshim.trace: the enabled slot, probes, the bounded
ring, the filter, spans and the tracefs files."""
from __future__ import annotations

import json

import pytest

from kshim import sched, softirq, trace, tracepoint
from kshim.err import EINVAL
from kshim.sysfs import sysfs_read, sysfs_write
from kshim.tracepoint import SOFTIRQ_CTX, TRACE_EVENT

# Declared once for the module (events are global, like the kernel's).
trace_test_cmd = TRACE_EVENT("test_cmd", ("sess", "lun", "op", "what"))
trace_test_span = TRACE_EVENT("test_span", ("what",), span=True)


@pytest.fixture(autouse=True)
def recorder():
    """A stopped, empty recorder with nothing selected, before and after."""
    def reset():
        tracepoint.tracing_off()
        tracepoint.set_event(None)
        tracepoint.set_filter("")
        tracepoint.set_buffer_size_kb(tracepoint.DEFAULT_BUFFER_KB)
        tracepoint.trace_clear()
    reset()
    yield
    reset()


def _mine() -> list[dict]:
    return [tracepoint.record_dict(r) for r in tracepoint.records()
            if tracepoint.events[r[1]].name.startswith("test_")]


def test_event_is_disabled_until_a_probe_is_attached():
    seen = []
    assert not trace_test_cmd.enabled
    tracepoint.register_trace(trace_test_cmd, seen.append)
    assert trace_test_cmd.enabled
    trace_test_cmd("s", 0, 0x28, "x")
    tracepoint.unregister_trace(trace_test_cmd, seen.append)
    assert not trace_test_cmd.enabled
    assert [r[3] for r in seen] == [("s", 0, 0x28, "x")]


def test_recorder_keeps_only_selected_events_while_tracing_is_on():
    tracepoint.set_event(["test_cmd"])
    assert not trace_test_cmd.enabled            # selected, but tracing is off
    tracepoint.tracing_on()
    assert trace_test_cmd.enabled and not trace_test_span.enabled
    trace_test_cmd("s", 1, 0x2A, "on")
    tracepoint.tracing_off()
    assert not trace_test_cmd.enabled
    assert [(d["event"], d["what"]) for d in _mine()] == [("test_cmd", "on")]


def test_records_name_the_task_or_softirq_context_and_use_ktime(kernel):
    tracepoint.set_event(["test_*"])
    tracepoint.tracing_on()

    def body():
        trace_test_cmd("s", 0, 0, "task")
        softirq.raise_softirq(lambda _: trace_test_cmd("s", 0, 0, "softirq"))
        sched.yield_()
        return sched.current().pid
    pid = kernel(body)
    got = _mine()
    assert [(d["what"], d["ctx"]) for d in got] == [("task", pid), ("softirq", SOFTIRQ_CTX)]
    assert got[0]["ts"] <= got[1]["ts"]


def test_span_records_its_start_and_duration():
    tracepoint.set_event(["test_span"])
    tracepoint.tracing_on()
    t0 = tracepoint.now()
    trace_test_span.span_end(t0, "work")
    (d,) = _mine()
    assert d["ts"] == t0 and d["dur"] >= 0 and d["what"] == "work"


def test_ring_is_bounded_and_counts_what_it_overwrote():
    assert tracepoint.set_buffer_size_kb(1) == 0
    cap = tracepoint.tr.ring.maxlen
    tracepoint.set_event(["test_cmd"])
    tracepoint.tracing_on()
    for i in range(cap + 10):
        trace_test_cmd("s", 0, 0, i)
    got = _mine()
    assert len(got) == cap
    assert got[0]["what"] == 10 and got[-1]["what"] == cap + 9    # the newest kept
    assert tracepoint.overrun() == 10
    assert tracepoint.set_buffer_size_kb(0) == -EINVAL


def test_filter_keeps_matching_records_and_events_without_the_field():
    tracepoint.set_event(["test_*"])
    assert tracepoint.set_filter("sess=a lun=1 op=0x28") == 0
    tracepoint.tracing_on()
    trace_test_cmd("a", 1, 0x28, "match")
    trace_test_cmd("b", 1, 0x28, "other session")
    trace_test_cmd("a", 2, 0x28, "other lun")
    trace_test_cmd("a", 1, 0x2A, "other op")
    trace_test_span.span_end(tracepoint.now(), "no such fields")
    assert [d["what"] for d in _mine()] == ["match", "no such fields"]


@pytest.mark.parametrize("bad", ["lun=x", "sess", "color=red", "event=nope", "lun=1 lun=2"])
def test_bad_filter_is_refused_and_leaves_the_old_one(bad):
    assert tracepoint.set_filter("lun=3") == 0
    assert tracepoint.set_filter(bad) == -EINVAL
    assert tracepoint.tr.filter_text == "lun=3"


def test_set_event_refuses_unknown_names_and_changes_nothing():
    tracepoint.set_event(["test_cmd"])
    assert tracepoint.set_event(["test_cmd", "no_such_event"]) == -EINVAL
    assert tracepoint.selected_events() == ["test_cmd"]


def test_sched_and_softirq_spans_are_recorded_on_their_tracks(kernel):
    tracepoint.set_event(["sched_stat_runtime", "softirq"])
    tracepoint.tracing_on()

    def body():
        softirq.raise_softirq(lambda _: None)
        sched.yield_()
        return sched.current().pid
    pid = kernel(body)
    recs = [tracepoint.record_dict(r) for r in tracepoint.records()]
    runs = [d for d in recs if d["event"] == "sched_stat_runtime" and d["pid"] == pid]
    sirqs = [d for d in recs if d["event"] == "softirq"]
    assert len(runs) >= 2 and all(d["dur"] >= 0 for d in runs)
    assert sirqs and all(d["ctx"] == SOFTIRQ_CTX for d in sirqs)


def test_tracefs_files_drive_the_recorder():
    assert sysfs_write("/kernel/tracing/set_event", "test_cmd\n") > 0
    assert sysfs_read("/kernel/tracing/set_event") == "test_cmd\n"
    assert sysfs_write("/kernel/tracing/tracing_on", "1") > 0
    trace_test_cmd("s", 0, 0x12, "via tracefs")
    assert sysfs_write("/kernel/tracing/tracing_on", "0") > 0
    assert "test_cmd: sess=s lun=0 op=18 what='via tracefs'" in sysfs_read("/kernel/tracing/trace")
    raw = json.loads(sysfs_read("/kernel/tracing/trace_raw"))
    assert raw["events"]["test_cmd"] == ["sess", "lun", "op", "what"]
    assert [r[1] for r in raw["records"]] == ["test_cmd"]
    assert "entries: 1\n" in sysfs_read("/kernel/tracing/trace_stat")
    assert sysfs_write("/kernel/tracing/trace", "") == 0 or not tracepoint.records()
    assert sysfs_write("/kernel/tracing/tracing_on", "2") == -EINVAL
    assert sysfs_write("/kernel/tracing/buffer_size_kb", "lots") == -EINVAL
    assert "test_span: what dur" in sysfs_read("/kernel/tracing/available_events")
    assert trace.task_comms()[0] == "swapper/0"
