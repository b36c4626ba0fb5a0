"""Turn a recorded trace (the tracefs trace_raw JSON) into the Chrome /
Perfetto trace-event JSON format, and check such a file against the format.

Tracks (pid 1, "uscstd"): tid 0 is the CPU (one slice per kthread run,
from sched_stat_runtime); one track per kthread (its pid is the tid) holds
what ran in it; one track holds softirq context. A span record becomes an
`X` slice (a state of a command, a handler's exec, a received PDU's
handling, a softirq); a command's instant steps (init_done, R2T, response
sent, block I/O issue and completion, ...) become short `X` slices so a
flow can bind to them; other instants become `i` events.

Flows: one per command, keyed by (session, ITT), from the SCSI Command
PDU's arrival (`s`) through every step on any track (`t`) to
scst_tgt_cmd_done (`f`). Each flow event carries the cat, pid, tid and ts
of the slice it belongs to, and "bp": "e" (bind to the enclosing slice), so
both Chrome's binding (same cat/pid/tid/ts) and Perfetto's (enclosing
slice) find it. A block_rq_complete (softirq) joins the flow of the
command whose exec issued the request (matched by fd, position and op).

Counters (`C`): commands outstanding per session (queue depth) and R2Ts
outstanding per session.

Used by `uscstadmin trace dump` and `trace html`, and by the tests, which
validate every trace they record with check_trace().
"""
from __future__ import annotations

from typing import Any

PID = 1
CPU_TID = 0
SOFTIRQ_TID = 1_000_000
SOFTIRQ_CTX = -1
CAT = "uscst"
FLOW_NAME = "cmd"
INSTANT_NS = 100             # the width of a step drawn as a slice
ISCSI_OP_SCSI_CMD = 0x01
ISCSI_OP_SCSI_DATA_OUT = 0x05
ISCSI_FLG_FINAL = 0x80
RESERVED_TAG = 0xFFFFFFFF

ISCSI_OPCODES = {
    0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Mgmt", 0x03: "Login", 0x04: "Text",
    0x05: "Data-Out", 0x06: "Logout", 0x10: "SNACK", 0x20: "NOP-In", 0x21: "SCSI Response",
    0x22: "Task Mgmt Response", 0x23: "Login Response", 0x24: "Text Response",
    0x25: "Data-In", 0x26: "Logout Response", 0x31: "R2T", 0x32: "Async Message",
    0x3F: "Reject",
}
# SCST's state values (scst.h SCST_CMD_STATE_*): a command runs them in
# this order (REAL_EXEC may run twice: a non-sleeping try, then a thread)
SCST_STATE_ORDER = {"INIT": 1, "PARSE": 2, "PREPARE_SPACE": 3, "PREPROCESSING_DONE": 4,
                    "RDY_TO_XFER": 5, "TGT_PRE_EXEC": 6, "EXEC_CHECK_SN": 7, "LOCAL_EXEC": 8,
                    "REAL_EXEC": 9, "EXEC_WAIT": 10, "DEV_DONE": 11, "PRE_XMIT_RESP": 12,
                    "XMIT_RESP": 13, "XMIT_WAIT": 14, "FINISHED": 15}
# command steps: event -> the flow role they may play
_CMD_STEP_EVENTS = frozenset(("scst_cmd_init_done", "scst_cmd_state", "scst_handler_exec",
                              "scst_exec_done", "scst_rx_data", "scst_tgt_cmd_done",
                              "iscsi_pdu_tx", "iscsi_r2t", "block_rq_issue",
                              "block_rq_complete"))


def _us(ns: int) -> float:
    return ns / 1000.0


def _step_name(e: dict) -> str:
    ev = e["event"]
    if ev == "scst_cmd_state":
        return e["state"]
    if ev == "scst_handler_exec":
        return f"exec {e['handler']}"
    if ev in ("iscsi_pdu_rx", "iscsi_pdu_tx"):
        op = ISCSI_OPCODES.get(e["opcode"], hex(e["opcode"]))
        return f"{'rx' if ev == 'iscsi_pdu_rx' else 'tx'} {op}"
    if ev == "iscsi_r2t":
        return "R2T queued"
    if ev == "softirq":
        return e["name"]
    if ev == "sched_stat_runtime":
        return e["comm"]
    if ev.startswith("block_rq"):
        return f"{ev[6:]} {e['op']}"
    return ev


def decode(raw: dict) -> list[dict]:
    """The records of a trace_raw document as dicts, in time order
    (ts, event, ctx and the event's fields)."""
    fields = raw["events"]
    out = []
    for ts, name, ctx, args in raw["records"]:
        d = {"ts": ts, "event": name, "ctx": ctx}
        d.update(zip(fields.get(name, []), args, strict=False))
        out.append(d)
    out.sort(key=lambda d: (d["ts"], -d.get("dur", 0)))
    return out


def _track(e: dict) -> int:
    if e["event"] == "sched_stat_runtime":
        return CPU_TID
    return SOFTIRQ_TID if e["ctx"] == SOFTIRQ_CTX else e["ctx"]


def _cmd_key(e: dict) -> tuple | None:
    ev = e["event"]
    if ev.startswith("scst_") and "tag" in e:
        return (e["sess"], e["tag"])
    if ev in ("iscsi_pdu_rx", "iscsi_pdu_tx", "iscsi_r2t"):
        return (e["sess"], e["itt"])
    return None


def _layout(recs: list[dict]) -> list[dict]:
    """Slices per track, properly nested: spans as recorded, command steps
    as INSTANT_NS-wide slices clamped to end within their parent."""
    by_track: dict[int, list[dict]] = {}
    for e in recs:
        span = "dur" in e
        if span or e["event"] in _CMD_STEP_EVENTS:
            by_track.setdefault(_track(e), []).append(
                {"rec": e, "ts": e["ts"], "dur": e["dur"] if span else INSTANT_NS, "span": span})
    out = []
    for tid, sl in by_track.items():
        sl.sort(key=lambda s: (s["ts"], -s["dur"] if s["span"] else 0))
        stack: list[dict] = []
        for s in sl:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= s["ts"]:
                stack.pop()
            if stack:
                parent_end = stack[-1]["ts"] + stack[-1]["dur"]
                if s["ts"] + s["dur"] > parent_end:
                    if s["span"] and s["ts"] < parent_end:
                        # A span overlapping its parent's end (clock
                        # granularity): close it with the parent.
                        s["dur"] = parent_end - s["ts"]
                    elif not s["span"]:
                        s["dur"] = max(0, parent_end - s["ts"])
            s["tid"] = tid
            stack.append(s)
            out.append(s)
    return out


def to_perfetto(raw: dict) -> dict:
    """The Chrome/Perfetto trace-event JSON object for a trace_raw document."""
    recs = decode(raw)
    tasks = {int(p): c for p, c in raw.get("tasks", {}).items()}
    slices = _layout(recs)
    ev_out: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": "uscstd"}},
        {"ph": "M", "name": "thread_name", "pid": PID, "tid": CPU_TID, "args": {"name": "CPU 0"}},
        {"ph": "M", "name": "thread_name", "pid": PID, "tid": SOFTIRQ_TID,
         "args": {"name": "softirq"}},
        {"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": CPU_TID,
         "args": {"sort_index": -2}},
        {"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": SOFTIRQ_TID,
         "args": {"sort_index": -1}},
    ]
    tids = {s["tid"] for s in slices} | {_track(e) for e in recs}
    for tid in sorted(tids - {CPU_TID, SOFTIRQ_TID}):
        name = f"{tasks.get(tid, 'task')}/{tid}" if tid else "engine"
        ev_out.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": tid,
                       "args": {"name": name}})
    for s in slices:
        e = s["rec"]
        args = {k: v for k, v in e.items() if k not in ("ts", "ctx", "dur")}
        ev_out.append({"ph": "X", "cat": CAT, "name": _step_name(e), "pid": PID,
                       "tid": s["tid"], "ts": _us(s["ts"]), "dur": _us(s["dur"]), "args": args})
    in_slices = {id(s["rec"]) for s in slices}
    for e in recs:
        if id(e) not in in_slices:
            args = {k: v for k, v in e.items() if k not in ("ts", "ctx")}
            ev_out.append({"ph": "i", "s": "t", "cat": CAT, "name": e["event"], "pid": PID,
                           "tid": _track(e), "ts": _us(e["ts"]), "args": args})
    ev_out += _flows(slices)
    ev_out += _counters(recs)
    return {"traceEvents": ev_out, "displayTimeUnit": "ns",
            "otherData": {"source": "uscstd tracefs", "overrun": raw.get("overrun", 0)}}


def _flows(slices: list[dict]) -> list[dict]:
    """Flow events tying each command's steps, in time order."""
    steps: dict[tuple, list[dict]] = {}
    open_key: dict[tuple, int] = {}          # (sess, itt) -> flow number
    issued: dict[tuple, int] = {}            # (fd, pos) -> flow number of the issuing command
    exec_span: dict[int, tuple[int, int, int]] = {}   # tid -> (end, flow) of the exec running
    n = 0
    for s in sorted(slices, key=lambda s: (s["ts"], -s["dur"])):
        e = s["rec"]
        ev = e["event"]
        flow = None
        if ev == "iscsi_pdu_rx" and e["opcode"] == ISCSI_OP_SCSI_CMD:
            n += 1
            flow = open_key[(e["sess"], e["itt"])] = n
        elif ev == "block_rq_issue":
            cur = exec_span.get(s["tid"])
            if cur is not None and cur[0] >= s["ts"]:
                flow = cur[1]
                issued[(e["fd"], e["pos"], e["op"])] = flow
        elif ev == "block_rq_complete":
            flow = issued.pop((e["fd"], e["pos"], e["op"]), None)
        else:
            key = _cmd_key(e)
            if key is not None:
                flow = open_key.get(key)
                if ev == "scst_tgt_cmd_done":
                    open_key.pop(key, None)
            if flow is not None and ev == "scst_handler_exec":
                exec_span[s["tid"]] = (s["ts"] + s["dur"], flow)
        if flow is not None:
            steps.setdefault((flow,), []).append(s)
    out = []
    for (flow,), sl in steps.items():
        if len(sl) < 2 or sl[-1]["rec"]["event"] != "scst_tgt_cmd_done":
            continue                 # its start or end fell outside the ring
        for i, s in enumerate(sl):
            ph = "s" if i == 0 else "f" if i == len(sl) - 1 else "t"
            out.append({"ph": ph, "cat": CAT, "name": FLOW_NAME, "id": flow, "pid": PID,
                        "tid": s["tid"], "ts": _us(s["ts"]), "bp": "e"})
    return out


def _counters(recs: list[dict]) -> list[dict]:
    out = []
    depth: dict[str, int] = {}
    r2ts: dict[str, int] = {}
    cmd_r2t: dict[tuple, int] = {}
    live: set[tuple] = set()
    for e in recs:
        ev = e["event"]
        sess = e.get("sess")
        if ev == "iscsi_pdu_rx" and e["opcode"] == ISCSI_OP_SCSI_CMD:
            live.add((sess, e["itt"]))
            depth[sess] = depth.get(sess, 0) + 1
        elif ev == "scst_tgt_cmd_done" and (sess, e["tag"]) in live:
            live.discard((sess, e["tag"]))
            depth[sess] -= 1
            r2ts[sess] = r2ts.get(sess, 0) - cmd_r2t.pop((sess, e["tag"]), 0)
        elif ev == "iscsi_r2t":
            cmd_r2t[(sess, e["itt"])] = cmd_r2t.get((sess, e["itt"]), 0) + 1
            r2ts[sess] = r2ts.get(sess, 0) + 1
        elif (ev == "iscsi_pdu_rx" and e["opcode"] == ISCSI_OP_SCSI_DATA_OUT
              and e["flags"] & ISCSI_FLG_FINAL and e["ttt"] != RESERVED_TAG
              and cmd_r2t.get((sess, e["itt"]), 0) > 0):
            cmd_r2t[(sess, e["itt"])] -= 1
            r2ts[sess] -= 1
        else:
            continue
        ts = _us(e["ts"])
        out.append({"ph": "C", "name": f"queue depth {sess}", "pid": PID, "ts": ts,
                    "args": {"commands": depth.get(sess, 0)}})
        out.append({"ph": "C", "name": f"R2T outstanding {sess}", "pid": PID, "ts": ts,
                    "args": {"r2t": r2ts.get(sess, 0)}})
    return out


# -- checking a trace-event file ------------------------------------------------

_REQUIRED = {
    "X": ("name", "ph", "ts", "dur", "pid", "tid"),
    "i": ("name", "ph", "ts", "pid", "tid"),
    "C": ("name", "ph", "ts", "pid", "args"),
    "M": ("name", "ph", "pid", "args"),
    "s": ("name", "cat", "ph", "ts", "pid", "tid", "id"),
    "t": ("name", "cat", "ph", "ts", "pid", "tid", "id"),
    "f": ("name", "cat", "ph", "ts", "pid", "tid", "id"),
}
_EPS = 1e-6


def check_trace(doc: Any) -> list[str]:
    """Problems with a trace-event JSON object ([] if none): required
    fields per phase, numeric times, X slices nested per track, counters
    numeric, and flows complete (one s, one f, ordered in time) with every
    flow event bound to an X slice of the same pid/tid/cat starting at its
    ts."""
    errs: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    tracks: dict[tuple, list[tuple[float, float]]] = {}
    starts: set[tuple] = set()
    flows: dict[Any, list[dict]] = {}
    for i, e in enumerate(doc["traceEvents"]):
        ph = e.get("ph") if isinstance(e, dict) else None
        if ph not in _REQUIRED:
            errs.append(f"event {i}: unknown or missing ph {ph!r}")
            continue
        missing = [k for k in _REQUIRED[ph] if k not in e]
        if missing:
            errs.append(f"event {i} ({ph}): missing {missing}")
            continue
        if ph != "M" and not isinstance(e["ts"], (int, float)):
            errs.append(f"event {i}: ts not a number")
            continue
        if ph == "X":
            if not isinstance(e["dur"], (int, float)) or e["dur"] < 0:
                errs.append(f"event {i}: bad dur {e['dur']!r}")
                continue
            tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
            starts.add((e["pid"], e["tid"], e.get("cat"), e["ts"]))
        elif ph == "C":
            if not e["args"] or not all(isinstance(v, (int, float)) for v in e["args"].values()):
                errs.append(f"event {i}: counter args must be numbers")
        elif ph in "stf":
            flows.setdefault((e["cat"], e["name"], e["id"]), []).append(e)
    for key, sl in tracks.items():
        sl.sort(key=lambda x: (x[0], -x[1]))
        stack: list[float] = []
        for b, end in sl:
            while stack and stack[-1] <= b + _EPS:
                stack.pop()
            if stack and end > stack[-1] + _EPS:
                errs.append(f"track {key}: slice [{b}, {end}] crosses its parent's end "
                            f"{stack[-1]}")
            stack.append(end)
    for key, fl in flows.items():
        phs = [f["ph"] for f in fl]
        if phs.count("s") != 1 or phs.count("f") != 1:
            errs.append(f"flow {key}: {phs.count('s')} starts and {phs.count('f')} ends")
            continue
        s = next(f for f in fl if f["ph"] == "s")
        fin = next(f for f in fl if f["ph"] == "f")
        if any(f["ts"] < s["ts"] - _EPS or f["ts"] > fin["ts"] + _EPS for f in fl):
            errs.append(f"flow {key}: steps outside its start..end")
        for f in fl:
            if (f["pid"], f["tid"], f["cat"], f["ts"]) not in starts:
                errs.append(f"flow {key}: {f['ph']} at {f['ts']} on tid {f['tid']} binds to no slice")
    return errs


def command_states(doc: dict) -> dict[int, list[str]]:
    """flow id -> the SCST states its command ran through, in time order
    (from the X slices each flow binds to)."""
    names = {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "X" and e.get("args", {}).get("event") == "scst_cmd_state":
            names[(e["pid"], e["tid"], e["ts"])] = e["name"]
    out: dict[int, list[tuple[float, str]]] = {}
    for e in doc["traceEvents"]:
        if e.get("ph") in ("s", "t", "f"):
            st = names.get((e["pid"], e["tid"], e["ts"]))
            if st is not None:
                out.setdefault(e["id"], []).append((e["ts"], st))
    return {k: [s for _t, s in sorted(v)] for k, v in out.items()}
