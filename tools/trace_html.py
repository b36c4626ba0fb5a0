"""Draw a recorded trace as one self-contained HTML page: an SVG timeline
of the CPU, softirq context and every kthread, and a sequence diagram of
one command (chosen by ITT) or of one login.

Input is the Perfetto JSON of tools/trace_export (what `uscstadmin trace
dump` writes). The page fetches nothing: styles are inline, pictures are
inline SVG, there is no script.

Sequence-diagram lanes: Initiator -> iSCSI rd thread / iSCSI wr thread ->
SCST core -> dev handler -> disk, and back. Each arrow is one traced step
(a PDU, a state, a call), labelled with what it is, the thread it ran on,
and its time since the command's first PDU.

Used by `uscstadmin trace html` and by the guide's generator.
"""
from __future__ import annotations

import html
from typing import Any

from .trace_export import CPU_TID, SOFTIRQ_TID

# scst_const.h SCST_ABORT_TASK ... (the fn of scst_tmf events)
TMF_NAMES = {0: "ABORT TASK", 1: "ABORT TASK SET", 2: "CLEAR ACA", 3: "CLEAR TASK SET",
             4: "LUN RESET", 5: "TARGET RESET", 6: "NEXUS LOSS SESS",
             7: "ABORT ALL TASKS SESS", 8: "NEXUS LOSS", 9: "ABORT ALL TASKS"}
LANES = ("Initiator", "iSCSI rd thread", "iSCSI wr thread", "SCST core", "dev handler", "disk")
INI, RD, WR, CORE, HANDLER, DISK = range(len(LANES))
MAX_RECTS = 20000
ROW_H = 14
MAX_DEPTH = 4
COLORS = {
    "scst_cmd_state": "#4a7fd4", "scst_handler_exec": "#e8892b", "iscsi_pdu_rx": "#3aa35b",
    "iscsi_pdu_tx": "#9b59b6", "iscsi_r2t": "#c0399b", "softirq": "#d64545",
    "sched_stat_runtime": "#9aa3ad", "block_rq_issue": "#8d6e4a", "block_rq_complete": "#8d6e4a",
}
DEFAULT_COLOR = "#6c8ebf"


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


class Trace:
    """The parts of a Perfetto JSON trace the drawings need."""

    def __init__(self, doc: dict) -> None:
        evs = doc["traceEvents"]
        self.names = {e["tid"]: e["args"]["name"] for e in evs
                      if e.get("ph") == "M" and e.get("name") == "thread_name"}
        self.slices = [e for e in evs if e.get("ph") == "X"]
        self.instants = [e for e in evs if e.get("ph") == "i"]
        self.at = {(e["tid"], e["ts"]): e for e in self.slices}
        self.flows: dict[Any, list[dict]] = {}
        for e in evs:
            if e.get("ph") in ("s", "t", "f"):
                x = self.at.get((e["tid"], e["ts"]))
                if x is not None:
                    self.flows.setdefault(e["id"], []).append(x)
        for fl in self.flows.values():
            fl.sort(key=lambda x: x["ts"])

    def command(self, itt: int | None) -> list[dict]:
        """The steps of the command with this ITT (its last flow), or, with
        itt None, of the command with the most kinds of steps (a WRITE that
        solicited data, if the trace has one)."""
        if itt is not None:
            found = [fl for fl in self.flows.values() if fl[0]["args"].get("itt") == itt]
            return self._with_tmfs(found[-1]) if found else []
        if not self.flows:
            return []
        return self._with_tmfs(max(self.flows.values(),
                                   key=lambda fl: (len({x["name"] for x in fl}), -fl[0]["ts"])))

    def _with_tmfs(self, steps: list[dict]) -> list[dict]:
        """steps plus the task management that overlapped them: TMF PDUs,
        scst_tmf/scst_tmf_done and unit attentions queued meanwhile."""
        t0, t1 = steps[0]["ts"], steps[-1]["ts"] + steps[-1].get("dur", 0)
        # A TMF received meanwhile: follow it to its response.
        tmf_rx = [x for x in self.slices if t0 <= x["ts"] <= t1
                  and x["args"].get("event") == "iscsi_pdu_rx" and x["args"].get("opcode") == 0x02]
        if tmf_rx:
            rsp = [x["ts"] for x in self.slices if x["ts"] >= tmf_rx[0]["ts"]
                   and x["args"].get("event") == "iscsi_pdu_tx" and x["args"].get("opcode") == 0x22]
            t1 = max(t1, min(rsp, default=t1))
        extra = [x for x in self.slices if t0 <= x["ts"] <= t1
                 and x["args"].get("event") in ("iscsi_pdu_rx", "iscsi_pdu_tx")
                 and x["args"].get("opcode") in (0x02, 0x22)]
        extra += [i for i in self.instants if t0 <= i["ts"] <= t1
                  and i["name"] in ("scst_tmf", "scst_tmf_done", "scst_ua")]
        return sorted(steps + extra, key=lambda x: x["ts"])

    def login(self, n: int) -> list[dict]:
        """The PDUs and key exchanges of the n-th login (0-based) in the trace."""
        rx = sorted((x for x in self.slices if x["args"].get("event") == "iscsi_pdu_rx"
                     and x["args"].get("opcode") == 0x03), key=lambda x: x["ts"])
        if not rx:
            return []
        # A login is the run of Login PDUs of one rd thread (its connection).
        by_tid: dict[int, list[dict]] = {}
        for x in rx:
            by_tid.setdefault(x["tid"], []).append(x)
        logins = sorted(by_tid.values(), key=lambda v: v[0]["ts"])
        if n >= len(logins):
            return []
        tid = logins[n][0]["tid"]
        t0, t1 = logins[n][0]["ts"], logins[n][-1]["ts"] + 10_000
        steps = [x for x in self.slices if x["tid"] == tid and t0 <= x["ts"] <= t1
                 and x["args"].get("event") in ("iscsi_pdu_rx", "iscsi_pdu_tx")
                 and x["args"].get("opcode") in (0x03, 0x23)]
        steps += [i for i in self.instants if i["tid"] == tid and t0 <= i["ts"] <= t1
                  and i["name"] == "iscsi_login"]
        return sorted(steps, key=lambda x: x["ts"])


# -- the timeline -----------------------------------------------------------------

def _track_order(tr: Trace, tids: set) -> list[int]:
    rest = sorted((t for t in tids if t not in (CPU_TID, SOFTIRQ_TID)),
                  key=lambda t: tr.names.get(t, str(t)))
    return [t for t in (CPU_TID, SOFTIRQ_TID) if t in tids] + rest


def timeline_svg(tr: Trace, t0: float, t1: float, mark: list[dict], width: int = 1200) -> str:
    """An SVG of every track between t0 and t1 (us); the slices of `mark`
    are outlined."""
    span = max(t1 - t0, 1e-3)
    inwin = [x for x in tr.slices if x["ts"] < t1 and x["ts"] + x["dur"] > t0]
    if len(inwin) > MAX_RECTS:
        inwin = sorted(inwin, key=lambda x: -x["dur"])[:MAX_RECTS]
    tids = {x["tid"] for x in inwin} | {CPU_TID, SOFTIRQ_TID}
    order = _track_order(tr, tids)
    label_w = 170
    plot_w = width - label_w - 10
    row_h = ROW_H * MAX_DEPTH + 6
    height = 30 + row_h * len(order) + 10
    y_of = {tid: 30 + i * row_h for i, tid in enumerate(order)}
    marked = {id(x) for x in mark}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for i in range(6):
        x = label_w + plot_w * i / 5
        out.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{height - 8}" stroke="#dddddd"/>')
        out.append(f'<text x="{x:.1f}" y="16" font-size="11" text-anchor="middle" '
                   f'fill="#333">+{span * i / 5:.1f} us</text>')
    for tid in order:
        y = y_of[tid]
        out.append(f'<rect x="0" y="{y}" width="{width}" height="{row_h - 2}" '
                   f'fill="{"#f4f6f8" if order.index(tid) % 2 else "#fbfbfc"}"/>')
        out.append(f'<text x="6" y="{y + 16}" font-size="12" fill="#222">'
                   f'{_esc(tr.names.get(tid, tid))}</text>')
    depth_end: dict[int, list[float]] = {}
    for x in sorted(inwin, key=lambda x: (x["tid"], x["ts"], -x["dur"])):
        stack = depth_end.setdefault(x["tid"], [])
        while stack and stack[-1] <= x["ts"]:
            stack.pop()
        d = min(len(stack), MAX_DEPTH - 1)
        stack.append(x["ts"] + x["dur"])
        a = max(x["ts"], t0)
        b = min(x["ts"] + x["dur"], t1)
        px = label_w + (a - t0) / span * plot_w
        pw = max((b - a) / span * plot_w, 1.0)
        py = y_of[x["tid"]] + 2 + d * ROW_H
        color = COLORS.get(x["args"].get("event"), DEFAULT_COLOR)
        stroke = ' stroke="#000" stroke-width="1.5"' if id(x) in marked else ""
        out.append(f'<rect x="{px:.1f}" y="{py}" width="{pw:.1f}" height="{ROW_H - 2}" '
                   f'fill="{color}"{stroke}><title>{_esc(x["name"])} {x["dur"]:.1f} us'
                   f'</title></rect>')
        if pw > 40:
            out.append(f'<text x="{px + 2:.1f}" y="{py + 10}" font-size="9" fill="#fff">'
                       f'{_esc(x["name"][: int(pw / 6)])}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- the sequence diagram ----------------------------------------------------------

def _lane_of_thread(name: str) -> int:
    return WR if name.startswith("iscsiwr") else RD


def _arrow(tr: Trace, x: dict) -> tuple[int, int, str] | None:
    """(from lane, to lane, label) of one step."""
    a = x["args"]
    ev = a.get("event") if x.get("ph") == "X" else x["name"]
    thread = tr.names.get(x["tid"], str(x["tid"]))
    if ev == "iscsi_pdu_rx":
        return INI, RD, f"{x['name'][3:]} (ITT {a.get('itt', 0):#x}, {a.get('dsl', 0)} B)"
    if ev == "iscsi_pdu_tx":
        if a.get("opcode") == 0x31:
            return None                    # drawn from iscsi_r2t, which says what it asks for
        return _lane_of_thread(thread), INI, f"{x['name'][3:]} ({a.get('dlen', 0)} B, " \
            f"StatSN {a.get('stat_sn')})"
    if ev == "iscsi_r2t":
        return (_lane_of_thread(thread), INI,
                f"R2T TTT {a.get('ttt', 0):#x}: {a.get('len', 0)} B at {a.get('offset', 0)}")
    if ev == "scst_cmd_init_done":
        return RD, CORE, "scst_cmd_init_done"
    if ev == "scst_rx_data":
        return RD, CORE, f"scst_rx_data, status {a.get('status')}"
    if ev == "scst_cmd_state":
        return CORE, CORE, f"state {x['name']} ({x['dur']:.1f} us)"
    if ev == "scst_handler_exec":
        return CORE, HANDLER, f"exec {a.get('handler', '')} ({x['dur']:.1f} us)"
    if ev == "block_rq_issue":
        return HANDLER, DISK, f"{a.get('op')} {a.get('len', 0)} B @ {a.get('pos', 0)}"
    if ev == "block_rq_complete":
        return DISK, HANDLER, f"{a.get('op')} done: {a.get('result')}"
    if ev == "scst_exec_done":
        return HANDLER, CORE, "scst_exec_done"
    if ev == "scst_tgt_cmd_done":
        return _lane_of_thread(thread), CORE, "scst_tgt_cmd_done"
    if ev == "scst_tmf":
        fn = TMF_NAMES.get(a.get("fn"), a.get("fn"))
        return RD, CORE, f"scst_rx_mgmt_fn {fn}: {a.get('aborted')} task(s) to abort"
    if ev == "scst_tmf_done":
        return CORE, RD, f"task_mgmt_fn_done, status {a.get('status')}"
    if ev == "scst_ua":
        return CORE, CORE, f"unit attention {a.get('what')} ({a.get('sense')}) LUN {a.get('lun')}"
    if ev == "iscsi_login":
        return RD, RD, (f"login CSG {a.get('csg')} -> NSG {a.get('nsg')}"
                        f"{' T' if a.get('transit') else ''}, status {a.get('status')}")
    return None


def sequence_svg(tr: Trace, steps: list[dict], title: str, width: int = 1200) -> str:
    """One arrow per step, top to bottom in time order."""
    lane_w = (width - 40) / len(LANES)
    xs = [20 + lane_w * (i + 0.5) for i in range(len(LANES))]
    rows = [(x, _arrow(tr, x)) for x in steps]
    rows = [(x, a) for x, a in rows if a is not None]
    row_h = 34
    height = 70 + row_h * max(len(rows), 1) + 20
    t0 = steps[0]["ts"] if steps else 0.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sequence" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           '<defs><marker id="ah" markerWidth="8" markerHeight="8" refX="7" refY="4" '
           'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#222"/></marker></defs>',
           f'<text x="20" y="18" font-size="13" font-weight="bold" fill="#111">{_esc(title)}'
           f'</text>']
    for i, name in enumerate(LANES):
        out.append(f'<rect x="{xs[i] - 70:.1f}" y="28" width="140" height="24" rx="4" '
                   f'fill="#2f4f6f"/>')
        out.append(f'<text x="{xs[i]:.1f}" y="44" font-size="12" text-anchor="middle" '
                   f'fill="#fff">{name}</text>')
        out.append(f'<line x1="{xs[i]:.1f}" y1="52" x2="{xs[i]:.1f}" y2="{height - 10}" '
                   f'stroke="#8899aa" stroke-dasharray="4 3"/>')
    for n, (x, (a, b, label)) in enumerate(rows):
        y = 70 + n * row_h + 14
        thread = tr.names.get(x["tid"], str(x["tid"]))
        text = f"+{x['ts'] - t0:.1f} us  {label}  [{thread}]"
        color = COLORS.get(x["args"].get("event") if x.get("ph") == "X" else "", "#222")
        if a == b:
            out.append(f'<path d="M{xs[a]:.1f},{y - 6} h28 v12 h-26" fill="none" stroke="{color}" '
                       f'stroke-width="1.6" marker-end="url(#ah)"/>')
            out.append(f'<text x="{xs[a] + 34:.1f}" y="{y + 4}" font-size="11" fill="#111">'
                       f'{_esc(text)}</text>')
        else:
            out.append(f'<line x1="{xs[a]:.1f}" y1="{y}" x2="{xs[b]:.1f}" y2="{y}" '
                       f'stroke="{color}" stroke-width="1.6" marker-end="url(#ah)"/>')
            lx = min(xs[a], xs[b]) + 6
            out.append(f'<text x="{lx:.1f}" y="{y - 4}" font-size="11" fill="#111">'
                       f'{_esc(text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- the page ------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;margin:16px;background:#fff;color:#111}
h1{font-size:20px}h2{font-size:16px;margin-top:24px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;font-size:12px}td{padding:2px 8px;border-bottom:1px solid #eee}"""


def render_html(doc: dict, itt: int | None = None, login: int | None = None,
                margin_us: float = 50.0) -> str:
    """The page for one command (by ITT; the richest if None) or one login."""
    tr = Trace(doc)
    if login is not None:
        steps = tr.login(login)
        what = f"Login #{login}"
    else:
        steps = tr.command(itt)
        what = (f"Command ITT {steps[0]['args'].get('itt', 0):#x}" if steps else "No command")
        if steps:
            ops = [x["args"].get("op") for x in steps if "op" in x["args"]]
            if ops:
                what += f", SCSI opcode {ops[0]:#04x}"
    if steps:
        t0 = steps[0]["ts"] - margin_us
        t1 = max(x["ts"] + x.get("dur", 0) for x in steps) + margin_us
    else:
        t0 = min((x["ts"] for x in tr.slices), default=0.0)
        t1 = min(t0 + 1000.0, max((x["ts"] + x["dur"] for x in tr.slices), default=t0 + 1.0))
    legend = "".join(f'<span><i style="background:{c}"></i>{_esc(k)}</span>'
                     for k, c in COLORS.items())
    rows = "".join(f"<tr><td>+{x['ts'] - steps[0]['ts']:.1f} us</td>"
                   f"<td>{_esc(tr.names.get(x['tid'], x['tid']))}</td><td>{_esc(x['name'])}</td>"
                   f"<td>{_esc(_keys_of(x))}</td></tr>" for x in steps)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>uscst trace: {_esc(what)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>uscst trace: {_esc(what)}</h1>\n"
        f"<p>{len(tr.flows)} commands traced; timeline from +0 to +{t1 - t0:.1f} us around "
        f"the chosen {'login' if login is not None else 'command'} (its slices outlined).</p>\n"
        f"<h2>Timeline: CPU, softirq and kthreads</h2>\n<div class=\"legend\">{legend}</div>\n"
        f"{timeline_svg(tr, t0, t1, steps)}\n"
        f"<h2>Sequence: {_esc(what)}</h2>\n{sequence_svg(tr, steps, what)}\n"
        f"<h2>Steps</h2>\n<table>{rows}</table>\n</body></html>\n")


def _keys_of(x: dict) -> str:
    a = x.get("args", {})
    if "keys" in a:
        return f"sent: {a['keys']} | answered: {a.get('rsp_keys', '')}"
    return ""
