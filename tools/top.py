"""uscstadmin top: a live view of a running uscstd, in the spirit of top(1)
and the SAN/iQ Task Monitor.

Host tool. Every interval it reads two views over the control socket:
`proc kstats` (kthreads, softirqs, slab caches, workqueues, lock classes as
JSON) and `proc metrics` (the Prometheus text of the SCST core's and the
iSCSI driver's counters, parsed with prometheus-client's parser), and
turns the differences into rates: per kthread CPU share, wake-ups and
switches per second; per session and LUN IOPS, MB/s, outstanding commands,
latency percentiles (p50/p99 from measure_latency's log2 histograms, when
it is on) and an IOPS sparkline.

Keys (live view): s cycles the kthread sort (cpu, wakeups, switches,
name), d drills into the next session (only its LUNs and figures), a shows
all sessions again, q quits. `--once` prints one plain snapshot (two reads
an interval apart) and exits: for scripts.

Run time per kthread needs debug_sched (uscstd --debug); without it the
CPU column shows "-".
"""
from __future__ import annotations

import json
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .uscstadmin import Failed

SPARK = " ▁▂▃▄▅▆▇█"
HISTORY = 40
SORTS = ("cpu", "wakeups", "switches", "name")


class Snapshot:
    """One read of kstats and metrics."""

    def __init__(self, kstats: dict, metrics_text: str, t: float) -> None:
        self.t = t
        self.k = kstats
        self.samples: dict[str, list] = {}
        for fam in text_string_to_metric_families(metrics_text):
            for s in fam.samples:
                self.samples.setdefault(s.name, []).append(s)

    def by(self, name: str, *keys: str) -> dict[tuple, float]:
        out: dict[tuple, float] = {}
        for s in self.samples.get(name, []):
            k = tuple(s.labels.get(x, "") for x in keys)
            out[k] = out.get(k, 0.0) + s.value
        return out


def read_snapshot(ctl: Any) -> Snapshot:
    kstats = json.loads(ctl.call("proc", name="kstats")["value"])
    try:
        metrics = ctl.call("proc", name="metrics")["value"]
    except Failed:               # a uscstd without the view: kthreads only
        metrics = ""
    return Snapshot(kstats, metrics, time.monotonic())


def _rate(new: dict, old: dict, dt: float) -> dict:
    return {k: max(0.0, (v - old.get(k, 0.0)) / dt) for k, v in new.items()} if dt > 0 else {}


def percentile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """The upper bound (seconds) of the log2 bucket holding the q-quantile."""
    if count <= 0:
        return None
    want = q * count
    for le, n in sorted(buckets):
        if n >= want:
            return le
    return None


def sparkline(values: list[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))]
                   for v in values)


class TopModel:
    """The figures the view shows, from two consecutive snapshots."""

    def __init__(self) -> None:
        self.prev: Snapshot | None = None
        self.cur: Snapshot | None = None
        self.history: dict[tuple, deque] = {}
        self.sort = "cpu"
        self.session: str | None = None

    def update(self, snap: Snapshot) -> None:
        self.prev, self.cur = self.cur, snap
        for key, iops in self.session_rates().items():
            self.history.setdefault(key, deque(maxlen=HISTORY)).append(iops["iops"])

    def dt(self) -> float:
        return self.cur.t - self.prev.t if self.prev and self.cur else 0.0

    def kthreads(self) -> list[dict]:
        cur = self.cur.k["tasks"]
        old = {t["pid"]: t for t in (self.prev.k["tasks"] if self.prev else [])}
        dt = self.dt() or 1.0
        span_ns = ((self.cur.k["now_ns"] - self.prev.k["now_ns"]) if self.prev else 0) or 1
        rows = []
        for t in cur:
            o = old.get(t["pid"], {})
            ran = t["run_ns"] - o.get("run_ns", t["run_ns"])
            rows.append({"pid": t["pid"], "comm": t["comm"], "state": t["state"],
                         "cpu": 100.0 * ran / span_ns if t["run_ns"] else None,
                         "wakeups": (t["wakeups"] - o.get("wakeups", t["wakeups"])) / dt,
                         "switches": (t["nvcsw"] + t["nivcsw"] - o.get("nvcsw", t["nvcsw"])
                                      - o.get("nivcsw", t["nivcsw"])) / dt})
        key = {"cpu": lambda r: -(r["cpu"] or 0.0), "wakeups": lambda r: -r["wakeups"],
               "switches": lambda r: -r["switches"], "name": lambda r: r["comm"]}[self.sort]
        return sorted(rows, key=key)

    def session_rates(self) -> dict[tuple, dict]:
        """(session, instance) -> iops, MB/s, outstanding."""
        cur = self.cur
        keys = ("session", "instance")
        cmds = cur.by("uscst_session_commands_total", *keys)
        byts = cur.by("uscst_session_bytes_total", *keys)
        out_ = cur.by("uscst_session_commands_outstanding", *keys)
        if self.prev is not None:
            r_cmds = _rate(cmds, self.prev.by("uscst_session_commands_total", *keys), self.dt())
            r_byts = _rate(byts, self.prev.by("uscst_session_bytes_total", *keys), self.dt())
        else:
            r_cmds, r_byts = {}, {}
        return {k: {"iops": r_cmds.get(k, 0.0), "mbs": r_byts.get(k, 0.0) / 1e6,
                    "outstanding": out_.get(k, 0.0), "total": v} for k, v in cmds.items()}

    def lun_rates(self) -> dict[tuple, dict]:
        keys = ("session", "instance", "lun")
        cmds = self.cur.by("uscst_lun_commands_total", *keys)
        byts = self.cur.by("uscst_lun_bytes_total", *keys)
        if self.prev is None:
            return {k: {"iops": 0.0, "mbs": 0.0} for k in cmds}
        r_c = _rate(cmds, self.prev.by("uscst_lun_commands_total", *keys), self.dt())
        r_b = _rate(byts, self.prev.by("uscst_lun_bytes_total", *keys), self.dt())
        return {k: {"iops": r_c.get(k, 0.0), "mbs": r_b.get(k, 0.0) / 1e6} for k in cmds}

    def latency(self, session: str, lun: str) -> tuple[float | None, float | None]:
        """(p50, p99) of the total stage, in us, if measured."""
        buckets = [(float(s.labels["le"]) if s.labels["le"] != "+Inf" else float("inf"), s.value)
                   for s in self.cur.samples.get("uscst_latency_seconds_bucket", [])
                   if s.labels.get("session") == session and s.labels.get("lun") == lun
                   and s.labels.get("stage") == "total"]
        count = max((n for _le, n in buckets), default=0.0)
        p50, p99 = percentile(buckets, count, 0.5), percentile(buckets, count, 0.99)
        return (None if p50 is None else p50 * 1e6, None if p99 is None else p99 * 1e6)


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None or v == float("inf") else fmt.format(v)


def build_tables(m: TopModel) -> list[Table]:
    sess_t = Table(title="Sessions" + (f" (drilled into {m.session})" if m.session else ""),
                   expand=True)
    for col in ("session", "inst", "IOPS", "MB/s", "outstanding", "p50 us", "p99 us"):
        sess_t.add_column(col, justify="left" if col == "session" else "right", no_wrap=True,
                          min_width=min(len(col), 12) if col != "session" else 16)
    sess_t.add_column("IOPS history", no_wrap=True, overflow="crop")
    for (sess, inst), r in sorted(m.session_rates().items()):
        if m.session and sess != m.session:
            continue
        p50, p99 = m.latency(sess, "all")
        sess_t.add_row(sess, inst, f"{r['iops']:.0f}", f"{r['mbs']:.1f}",
                       f"{r['outstanding']:.0f}", _f(p50), _f(p99),
                       sparkline(list(m.history.get((sess, inst), []))))
    lun_t = Table(title="LUNs", expand=True)
    for col in ("session", "inst", "LUN", "IOPS", "MB/s", "p50 us", "p99 us"):
        lun_t.add_column(col, justify="left" if col == "session" else "right")
    for (sess, inst, lun), r in sorted(m.lun_rates().items()):
        if m.session and sess != m.session:
            continue
        p50, p99 = m.latency(sess, lun)
        lun_t.add_row(sess, inst, lun, f"{r['iops']:.0f}", f"{r['mbs']:.1f}", _f(p50), _f(p99))
    kt = Table(title=f"kthreads (sort: {m.sort})", expand=True)
    for col in ("PID", "COMM", "S", "CPU %", "wakeups/s", "switches/s"):
        kt.add_column(col, justify="left" if col == "COMM" else "right")
    for r in m.kthreads()[:20]:
        kt.add_row(str(r["pid"]), r["comm"], r["state"], _f(r["cpu"]), f"{r['wakeups']:.0f}",
                   f"{r['switches']:.0f}")
    sq = Table(title="softirqs", expand=True)
    for col in ("kind", "runs", "total ms", "max us"):
        sq.add_column(col, justify="left" if col == "kind" else "right")
    for s in sorted(m.cur.k["softirqs"], key=lambda s: -s["total_ns"])[:6]:
        sq.add_row(s["kind"][-40:], str(s["runs"]), f"{s['total_ns'] / 1e6:.1f}",
                   f"{s['max_ns'] / 1e3:.0f}")
    wq = Table(title="workqueues / slab caches / locks", expand=True)
    for col in ("name", "figures"):
        wq.add_column(col)
    for w in m.cur.k["workqueues"]:
        wq.add_row(f"wq {w['name']}", f"workers {w['workers']} pending {w['pending']} "
                   f"running {w['running']} executed {w['executed']}")
    for c in sorted(m.cur.k["slabs"], key=lambda c: -c["active_objs"])[:6]:
        wq.add_row(f"slab {c['name']}", f"active {c['active_objs']} allocs {c['allocs']} "
                   f"high water {c['high_water']}")
    for lk in sorted(m.cur.k["locks"], key=lambda x: -x["acquisitions"])[:5]:
        wq.add_row(f"lock {lk['name'][-40:]}", f"acq {lk['acquisitions']} contended "
                   f"{lk['contentions']} wait-max {lk['wait_max_ns'] / 1e3:.0f} us")
    return [sess_t, lun_t, kt, sq, wq]


def render_once(ctl: Any, interval: float, width: int = 160) -> str:
    """Two reads an interval apart, as plain text."""
    m = TopModel()
    m.update(read_snapshot(ctl))
    time.sleep(interval)
    m.update(read_snapshot(ctl))
    console = Console(width=width, record=True, file=open(os.devnull, "w"),
                      color_system=None, force_terminal=False)
    for t in build_tables(m):
        console.print(t)
    return console.export_text()


def _sessions(m: TopModel) -> list[str]:
    return sorted({k[0] for k in m.session_rates()})


def run_live(ctl: Any, interval: float, max_seconds: float) -> None:
    """The live view until q (or max_seconds, if > 0)."""
    m = TopModel()
    m.update(read_snapshot(ctl))
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = termios.tcgetattr(fd) if fd is not None else None
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    try:
        if fd is not None:
            tty.setcbreak(fd)
        with Live(Group(*build_tables(m)), refresh_per_second=4, screen=True) as live:
            help_line = Text("keys: s sort  d drill into next session  a all sessions  q quit")
            while deadline is None or time.monotonic() < deadline:
                key = _key(fd, interval)
                if key == "q":
                    return
                if key == "s":
                    m.sort = SORTS[(SORTS.index(m.sort) + 1) % len(SORTS)]
                elif key == "d":
                    names = _sessions(m)
                    if names:
                        i = names.index(m.session) + 1 if m.session in names else 0
                        m.session = names[i % len(names)]
                elif key == "a":
                    m.session = None
                else:
                    m.update(read_snapshot(ctl))
                live.update(Group(help_line, *build_tables(m)))
    finally:
        if fd is not None and old is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _key(fd: int | None, timeout: float) -> str | None:
    if fd is None:
        time.sleep(timeout)
        return None
    r, _w, _x = select.select([fd], [], [], timeout)
    return os.read(fd, 1).decode(errors="replace") if r else None
