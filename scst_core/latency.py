"""Per-stage command latency, as SCST's measure_latency keeps it.

Twin of the CONFIG_SCST_MEASURE_LATENCY parts of scst/src/scst_lib.c and
scst_sysfs.c: the measure_latency switch under /sys/kernel/scst_tgt, a
`latency` file in each session's directory, and /sys/kernel/scst_tgt/latency
for all sessions.

Stages of one command (ns, from the scst_* tracepoints of scst_core.targ):
  parse        the PARSE state
  alloc_buf    PREPARE_SPACE (the data buffer)
  rdy_to_xfer  RDY_TO_XFER until scst_rx_data (the initiator's WRITE data)
  pre_exec     REAL_EXEC first entered until the handler's exec starts (a
               refused non-sleeping try and the hop to a device thread)
  exec         the handler's exec until scst_exec_done (the disk)
  dev_done     DEV_DONE
  xmit         XMIT_RESP until scst_tgt_cmd_done (the response on the wire)
  total        scst_cmd_init_done until scst_tgt_cmd_done
Each stage keeps count, sum, min, max and a log2 histogram (bucket b holds
times t with 2**(b-1) <= t < 2**b ns), per session and per (session, LUN).

Contexts: the probes run wherever the tracepoints fire (any context; they
touch only this module's dicts, on the one CPU); the sysfs callbacks in
task context.

Differs from SCST: SCST builds the timing into its command struct at compile
time; here it is a set of tracepoint probes attached only while
measure_latency is 1, so it costs nothing when off. Sessions are keyed by
the initiator's name (two sessions of one initiator share their figures).
A command whose start was not seen (measure_latency turned on mid-flight)
is not counted.
"""
from __future__ import annotations


from kshim import tracepoint
from kshim.err import EINVAL
from kshim.kobject import kobject
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, __ATTR_RO, kobj_attribute, sysfs_create_file
from scst_core import targ
from scst_core.scst import scst_session

STAGES = ("parse", "alloc_buf", "rdy_to_xfer", "pre_exec", "exec", "dev_done", "xmit", "total")
HIST_BUCKETS = 48            # 2**47 ns is a day and a half
MAX_INFLIGHT = 65536         # commands tracked at once (bounded memory)
MAX_KEYS = 4096              # sessions and LUNs with figures


class lat_stat:
    """One stage's figures."""

    __slots__ = ("count", "sum", "min", "max", "hist")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.min = 0
        self.max = 0
        self.hist = [0] * HIST_BUCKETS

    def add(self, ns: int) -> None:
        if ns < 0:
            ns = 0
        if not self.count or ns < self.min:
            self.min = ns
        if ns > self.max:
            self.max = ns
        self.count += 1
        self.sum += ns
        self.hist[min(ns.bit_length(), HIST_BUCKETS - 1)] += 1

    def as_dict(self) -> dict:
        return {"count": self.count, "sum_ns": self.sum, "min_ns": self.min,
                "avg_ns": self.sum // self.count if self.count else 0, "max_ns": self.max,
                "hist_log2_ns": {str(b): n for b, n in enumerate(self.hist) if n}}


class _cmd_times:
    """What the probes remember of one command in flight."""

    __slots__ = ("lun", "start", "parts", "rdy", "rx", "exec_first", "exec_start", "exec_end",
                 "exec_done", "xmit")

    # Timestamps, combined at scst_tgt_cmd_done: a span's record arrives at
    # its end, after the events that fired inside it.
    def __init__(self, lun: int, start: int) -> None:
        self.lun = lun
        self.start = start
        self.parts: dict[str, int] = {}
        self.rdy = 0                 # RDY_TO_XFER began
        self.rx = 0                  # scst_rx_data
        self.exec_first = 0          # REAL_EXEC first began
        self.exec_start = 0          # the handler's last exec span
        self.exec_end = 0
        self.exec_done = 0           # scst_exec_done
        self.xmit = 0                # XMIT_RESP began


# guarded by the one CPU: probes and sysfs never interleave mid-update
measure_latency = False
stats: dict[tuple, dict[str, lat_stat]] = {}     # (sess,) or (sess, lun) -> stage -> stat
_inflight: dict[tuple, _cmd_times] = {}


def _stats_for(key: tuple) -> dict[str, lat_stat] | None:
    st = stats.get(key)
    if st is None:
        if len(stats) >= MAX_KEYS:
            return None
        st = stats[key] = {s: lat_stat() for s in STAGES}
    return st


def _on_init_done(rec: tuple) -> None:
    sess, lun, tag = rec[3][0], rec[3][1], rec[3][2]
    if len(_inflight) < MAX_INFLIGHT:
        _inflight[(sess, tag)] = _cmd_times(lun, rec[0])


def _on_state(rec: tuple) -> None:
    a = rec[3]
    c = _inflight.get((a[0], a[2]))
    if c is None:
        return
    state, dur = a[4], a[5]
    if state == "PARSE":
        c.parts["parse"] = c.parts.get("parse", 0) + dur
    elif state == "PREPARE_SPACE":
        c.parts["alloc_buf"] = c.parts.get("alloc_buf", 0) + dur
    elif state == "RDY_TO_XFER":
        c.rdy = rec[0]
    elif state == "REAL_EXEC":
        if not c.exec_first or rec[0] < c.exec_first:
            c.exec_first = rec[0]
    elif state == "DEV_DONE":
        c.parts["dev_done"] = c.parts.get("dev_done", 0) + dur
    elif state == "XMIT_RESP" and not c.xmit:
        c.xmit = rec[0]


def _on_exec(rec: tuple) -> None:
    a = rec[3]
    c = _inflight.get((a[0], a[2]))
    if c is not None and rec[0] >= c.exec_start:
        c.exec_start = rec[0]                 # the last try is the one that ran
        c.exec_end = rec[0] + a[5]


def _on_exec_done(rec: tuple) -> None:
    a = rec[3]
    c = _inflight.get((a[0], a[2]))
    if c is not None:
        c.exec_done = rec[0]


def _on_rx_data(rec: tuple) -> None:
    a = rec[3]
    c = _inflight.get((a[0], a[2]))
    if c is not None:
        c.rx = rec[0]


def _on_done(rec: tuple) -> None:
    a = rec[3]
    sess = a[0]
    c = _inflight.pop((sess, a[2]), None)
    if c is None:
        return
    parts = c.parts
    if c.rdy and c.rx:
        parts["rdy_to_xfer"] = c.rx - c.rdy
    if c.exec_start:
        parts["pre_exec"] = c.exec_start - (c.exec_first or c.exec_start)
        parts["exec"] = max(c.exec_end, c.exec_done) - c.exec_start
    if c.xmit:
        parts["xmit"] = rec[0] - c.xmit
    parts["total"] = rec[0] - c.start
    for key in ((sess,), (sess, c.lun)):
        st = _stats_for(key)
        if st is not None:
            for stage, ns in parts.items():
                st[stage].add(ns)


_PROBES = ((targ.trace_scst_cmd_init_done, _on_init_done),
           (targ.trace_scst_cmd_state, _on_state),
           (targ.trace_scst_handler_exec, _on_exec),
           (targ.trace_scst_exec_done, _on_exec_done),
           (targ.trace_scst_rx_data, _on_rx_data),
           (targ.trace_scst_tgt_cmd_done, _on_done))


def scst_set_measure_latency(on: bool) -> None:
    """Attach (and reset the figures) or detach the probes."""
    global measure_latency
    for ev, probe in _PROBES:
        if on:
            tracepoint.register_trace(ev, probe)
        else:
            tracepoint.unregister_trace(ev, probe)
    if on and not measure_latency:
        stats.clear()
    _inflight.clear()
    measure_latency = on


def latency_stats(sess: str | None = None) -> dict:
    """{"sess": {stage: figures}, "sess/lun": ...} for one session or all."""
    return {"/".join(str(k) for k in key): {s: v.as_dict() for s, v in st.items()}
            for key, st in stats.items() if sess is None or key[0] == sess}


def format_latency_raw() -> str:
    """One line per session or LUN and stage, for tools:
    `SESS LUN|- STAGE COUNT SUM_NS MIN_NS MAX_NS BUCKET:N,...` (buckets log2 ns)."""
    lines = []
    for key, st in stats.items():
        lun = str(key[1]) if len(key) > 1 else "-"
        for stage, v in st.items():
            if v.count:
                hist = ",".join(f"{b}:{n}" for b, n in enumerate(v.hist) if n)
                lines.append(f"{key[0]} {lun} {stage} {v.count} {v.sum} {v.min} {v.max} {hist}")
    return "".join(line + "\n" for line in lines)


def _us(ns: int) -> str:
    return f"{ns / 1000:.1f}"


def format_latency(sess: str | None = None) -> str:
    """A table per session and LUN: stage, count, min/avg/max in us."""
    if not measure_latency and not stats:
        return "measure_latency is off (echo 1 >/sys/kernel/scst_tgt/measure_latency)\n"
    lines = []
    for key in sorted(stats, key=lambda k: (k[0], len(k), k[1:])):
        if sess is not None and key[0] != sess:
            continue
        st = stats[key]
        lines.append(f"{key[0]}" + (f" LUN {key[1]}" if len(key) > 1 else " (all LUNs)"))
        lines.append(f"  {'stage':<12}{'count':>10}{'min us':>11}{'avg us':>11}{'max us':>11}")
        for s in STAGES:
            v = st[s]
            if v.count:
                lines.append(f"  {s:<12}{v.count:>10}{_us(v.min):>11}"
                             f"{_us(v.sum // v.count):>11}{_us(v.max):>11}")
    return "\n".join(lines) + "\n" if lines else "no commands measured yet\n"


# -- sysfs ---------------------------------------------------------------------

def _measure_store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    v = buf.strip()
    if v not in ("0", "1"):
        return -EINVAL
    scst_set_measure_latency(v == "1")
    return len(buf)


def scst_latency_sysfs_init(root: kobject) -> int:
    """measure_latency and latency under root (/sys/kernel/scst_tgt)."""
    ret = sysfs_create_file(root, __ATTR("measure_latency", S_IRUGO | S_IWUSR,
                                         lambda k, a: f"{int(measure_latency)}\n",
                                         _measure_store))
    ret = ret or sysfs_create_file(root, __ATTR_RO("latency", lambda k, a: format_latency()))
    return ret or sysfs_create_file(root, __ATTR_RO("latency_raw",
                                                    lambda k, a: format_latency_raw()))


def scst_sess_latency_attr(sess: scst_session) -> kobj_attribute:
    """The `latency` file of one session's directory."""
    return __ATTR_RO("latency", lambda k, a: format_latency(sess.initiator_name))
