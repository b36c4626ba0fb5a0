"""Generate the tables and diagrams of docs/architecture.md from the code's
own tables, so the document cannot drift from the code unnoticed.

Host tool, not kernel idiom: it imports the modules it describes (no engine
is started, nothing is served) and reads their source with ast.

What it generates (each block sits in docs/architecture.md between the lines
`<!-- gen_docs:begin NAME -->` and `<!-- gen_docs:end NAME -->`):

  scst-states     scst_core.targ._state_fns: every SCST_CMD_STATE_* value,
                  the handler the table holds for it, the states that
                  handler may set, what it returns and what it calls.
  scst-entries    the core's entry points that move a command from outside
                  the table (scst_cmd_init_done, scst_rx_data,
                  scst_cmd_done_local, scst_tgt_cmd_done).
  scst-diagram    a Mermaid state diagram of the two above.
  login-table     iscsi_scst.usr.iscsid.login_transitions.
  login-diagram   a Mermaid state diagram of login_transitions.

With --trace it also records real traces (blocks trace-read-miss,
trace-read-hit, trace-write): it boots the emulated kernel in this process
with a vdisk_fileio LUN on a temporary 8 MiB file, listens on a free
127.0.0.1 port, drives it with the test-suite's independent initiator
(tests/initiator.py) from a second host thread, and logs which task or
softirq runs each step. The steps are module functions wrapped in place
before boot; every wait is bounded. Trace blocks change only with --trace,
and --check does not look at them (they name threads chosen at run time).

Usage (from the repository root):
  python tools/gen_docs.py [--trace]                 print the blocks
  python tools/gen_docs.py --write [--trace] [FILE]  rewrite them in FILE
  python tools/gen_docs.py --check [FILE]            exit 1 if FILE is stale
FILE defaults to docs/architecture.md.

Where the code has no table (which wait state an entry point ends), this
tool holds a small map, ENTRY_FROM, and checks it against the code: each
wait state named there must be one a table handler sets.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import socket
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The code this tool describes; imported once the repo root is on sys.path.
import iscsi_scst.conn as conn_mod  # noqa: E402
import iscsi_scst.iscsi as iscsi  # noqa: E402
import iscsi_scst.nthread as nthread  # noqa: E402
import kshim.fs as fs  # noqa: E402
import scst_core.fastpath as fastpath  # noqa: E402
import scst_core.targ as targ  # noqa: E402
import vdisk.fileio as fileio  # noqa: E402
from iscsi_scst.iscsi import iscsi_exit, iscsi_init, iscsi_template  # noqa: E402
from iscsi_scst.target import iscsi_add_portal, iscsi_target_add  # noqa: E402
from iscsi_scst.usr import iscsid  # noqa: E402
from kshim import engine, sched  # noqa: E402
from kshim.debug import set_debug  # noqa: E402
from kshim.err import errname  # noqa: E402
from scst_core.main import scst_acg_add_lun, scst_find_device  # noqa: E402
from scst_core.scst import SCST_CMD_STATE_NAMES  # noqa: E402
from vdisk.vdisk import vdisk_add_device, vdisk_exit, vdisk_init  # noqa: E402

DEFAULT_DOC = REPO_ROOT / "docs" / "architecture.md"
_PREFIX = "SCST_CMD_STATE_"

# What each result of a state handler means (scst_core.targ's _RES_*).
RESULTS = {
    "_RES_CONT_NEXT": "go on with the new state",
    "_RES_CONT_DONE": "stop: another context continues the command",
    "_RES_NEED_THREAD": "queue to the device's command threads",
}

# The core's entry points from outside the table, and the state the command
# is in when each is called ("[*]": a new command). Checked in _check_entries.
ENTRY_FROM = {
    "scst_cmd_init_done": "[*]",
    "scst_rx_data": "DATA_WAIT",
    "scst_cmd_done_local": "EXEC_WAIT",
    "scst_tgt_cmd_done": "XMIT_WAIT",
}

# Callbacks of scst_dev_type / scst_tgt_template a handler may reach.
_CALLBACKS = {"parse", "exec", "exec_nowait", "dev_done", "rdy_to_xfer", "xmit_response",
              "on_free_cmd"}
# Calls not worth a column entry.
_IGNORED_CALLS = {"pr_err", "scst_set_cmd_error", "len", "isinstance"}


# -- source analysis ----------------------------------------------------------

def _tree(fn: Callable) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(fn)))


def _state_values(expr: ast.expr) -> list[str]:
    """The states an expression assigned to cmd.state may have."""
    if isinstance(expr, ast.IfExp):
        return _state_values(expr.body) + _state_values(expr.orelse)
    if isinstance(expr, ast.Name):
        if expr.id.startswith(_PREFIX):
            return [expr.id[len(_PREFIX):]]
        return [f"({expr.id})"]          # chosen by the caller
    return [f"({ast.unparse(expr)})"]


def _ordered_unique(items: list[tuple[int, int, str]]) -> list[str]:
    out: list[str] = []
    for _line, _col, s in sorted(items):
        if s not in out:
            out.append(s)
    return out


def assigned_states(fn: Callable) -> list[str]:
    """States fn may store in cmd.state, in source order."""
    found = []
    for node in ast.walk(_tree(fn)):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and t.attr == "state":
                    for s in _state_values(node.value):
                        found.append((node.lineno, node.col_offset, s))
    return _ordered_unique(found)


def returned_results(fn: Callable) -> list[str]:
    """The _RES_* names fn returns, in source order."""
    found = []
    for node in ast.walk(_tree(fn)):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Name) \
                and node.value.id.startswith("_RES_"):
            found.append((node.lineno, node.col_offset, node.value.id))
    return _ordered_unique(found)


def _is_tracing(f: ast.expr) -> bool:
    """A call of a tracepoint (trace_x(...), trace_x.span_end(...)) or of
    kshim.tracepoint (tracepoint.now())."""
    base = f.value if isinstance(f, ast.Attribute) else f
    return isinstance(base, ast.Name) and (base.id.startswith("trace_") or base.id == "tracepoint")


def called(fn: Callable) -> list[str]:
    """Functions fn calls and callbacks it reaches, in source order:
    `f` for a plain call, `mod.f` for a module's function, `handler.x` /
    `tgtt.x` for a dev handler or target driver callback (a callback
    fetched into a local variable first is named by its fetch)."""
    tree = _tree(fn)
    local = {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    local |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_tracing(node.func):
            continue             # tracepoints are not steps of the state machine
        if isinstance(node, ast.Attribute) and node.attr in _CALLBACKS:
            base = ast.unparse(node.value)
            for owner in ("handler", "tgtt"):
                if base == owner or base.endswith("." + owner):
                    found.append((node.lineno, node.col_offset, f"{owner}.{node.attr}"))
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id not in _IGNORED_CALLS and f.id not in local:
                found.append((node.lineno, node.col_offset, f.id))
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                    and f.value.id not in ("cmd", "dev", "handler", "tgtt", "sess"):
                found.append((node.lineno, node.col_offset, f"{f.value.id}.{f.attr}"))
    return _ordered_unique(found)


# -- the SCST command state machine --------------------------------------------

def _scst() -> tuple:
    return targ, SCST_CMD_STATE_NAMES


def _code(items: list[str]) -> str:
    return ", ".join(f"`{s}`" for s in items) if items else "-"


def scst_states() -> str:
    targ, names = _scst()
    fns = targ._state_fns
    rows = ["| value | state | handler in `_state_fns` | may set `cmd.state` to | returns | calls |",
            "|---:|---|---|---|---|---|"]
    for value, fn in enumerate(fns):
        name = names.get(value, str(value))
        if fn is targ._bad_state:
            rows.append(f"| {value} | {name} | `_bad_state` (not entered through the table) "
                        f"| - | - | - |")
            continue
        rows.append(f"| {value} | **{name}** | `{fn.__name__}` | {_code(assigned_states(fn))} "
                    f"| {_code(returned_results(fn))} | {_code(called(fn))} |")
    rows.append("")
    rows.append("Results: " + "; ".join(f"`{k}`: {v}" for k, v in RESULTS.items()) + ".")
    return "\n".join(rows)


def _check_entries() -> None:
    targ, _names = _scst()
    set_by_table = set()
    for fn in targ._state_fns:
        if fn is not targ._bad_state:
            set_by_table.update(assigned_states(fn))
    for entry, src in ENTRY_FROM.items():
        if not hasattr(targ, entry):
            raise SystemExit(f"gen_docs: scst_core.targ has no {entry}: update ENTRY_FROM")
        if src != "[*]" and src not in set_by_table:
            raise SystemExit(f"gen_docs: no state handler sets {src} any more, "
                             f"but ENTRY_FROM says {entry} leaves it: update ENTRY_FROM")
    for name in RESULTS:
        if not hasattr(targ, name):
            raise SystemExit(f"gen_docs: scst_core.targ has no {name}: update RESULTS")


def scst_entries() -> str:
    targ, _names = _scst()
    _check_entries()
    rows = ["| entry point | command is in | may set `cmd.state` to | then calls |",
            "|---|---|---|---|"]
    for entry, src in ENTRY_FROM.items():
        fn = getattr(targ, entry)
        src_txt = "a new command (INIT)" if src == "[*]" else src
        rows.append(f"| `{entry}` | {src_txt} | {_code(assigned_states(fn))} "
                    f"| {_code(called(fn))} |")
    return "\n".join(rows)


def scst_diagram() -> str:
    targ, names = _scst()
    _check_entries()
    lines = ["```mermaid", "stateDiagram-v2"]
    edges: list[str] = []

    def edge(a: str, b: str, label: str) -> None:
        if b.startswith("("):
            return                       # a state the caller passes in
        e = f"    {a} --> {b}: {label}"
        if e not in edges:
            edges.append(e)
    for entry, src in ENTRY_FROM.items():
        for s in assigned_states(getattr(targ, entry)):
            edge(src, s, entry)
    for value, fn in enumerate(targ._state_fns):
        if fn is targ._bad_state:
            continue
        for s in assigned_states(fn):
            edge(names[value], s, fn.__name__)
        if "_finish_cmd" in called(fn):
            edge("FINISHED", "[*]", "_finish_cmd")
    lines += edges
    lines.append("```")
    return "\n".join(lines)


# -- the login state machine -----------------------------------------------------

def login_table() -> str:
    rows = ["| state | event | action (`login_session._<action>`) | may leave the login in |",
            "|---|---|---|---|"]
    order = list(iscsid.login_state)
    for (state, ev), tr in iscsid.login_transitions.items():
        nxt = sorted(tr.next_states, key=order.index)
        if not callable(getattr(iscsid.login_session, "_" + tr.action, None)):
            raise SystemExit(f"gen_docs: login_session has no _{tr.action}")
        rows.append(f"| {state.name} | {ev.name} | `{tr.action}` | "
                    f"{', '.join(s.name for s in nxt)} (or STATE_DROP) |")
    return "\n".join(rows)


def login_diagram() -> str:
    order = list(iscsid.login_state)
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {iscsid.STATE_FREE.name}"]
    for (state, ev), tr in iscsid.login_transitions.items():
        for nxt in sorted(tr.next_states, key=order.index):
            lines.append(f"    {state.name} --> {nxt.name}: {ev.name} / {tr.action}")
    lines.append(f"    {iscsid.STATE_FULL.name} --> [*]: session created")
    lines.append(f"    {iscsid.STATE_DROP.name} --> [*]: connection closed")
    lines.append("```")
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "scst-states": scst_states,
    "scst-entries": scst_entries,
    "scst-diagram": scst_diagram,
    "login-table": login_table,
    "login-diagram": login_diagram,
}


# -- real traces -------------------------------------------------------------------

TRACE_IQN = "iqn.2026-11.org.uscst:trace"
_TRACE_TIMEOUT = 20.0        # seconds for the whole run


class _tracer:
    """Wraps functions in place; logs (task or softirq, nesting, result)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth: dict[int, int] = {}
        self.done = 0                 # scst_tgt_cmd_done calls seen

    def _ctx(self) -> tuple[Any, str]:
        t = sched.current()
        return t, t.comm + (" softirq" if sched.in_serving_softirq() else "")

    def wrap(self, label: str, fn: Callable, show: bool = False,
             fmt: Callable[[Any], str] | None = None) -> Callable:
        def traced(*a: Any, **k: Any) -> Any:
            t, ctx = self._ctx()
            d = self.depth.get(t.pid, 0)
            i = len(self.lines)
            self.lines.append(f"{'  ' * d}{label}  [{ctx}]")
            self.depth[t.pid] = d + 1
            try:
                r = fn(*a, **k)
            finally:
                self.depth[t.pid] = d
            if show:
                self.lines[i] += f" -> {fmt(r) if fmt else r}"
            return r
        return traced

    def patch(self, mod: Any, name: str, show: bool = False,
              fmt: Callable[[Any], str] | None = None) -> None:
        setattr(mod, name, self.wrap(name, getattr(mod, name), show, fmt))


def _errno_fmt(r: Any) -> str:
    return f"{r} ({errname(r)})" if isinstance(r, int) and r < 0 else str(r)


def _instrument(tr: _tracer) -> None:
    # These wrappers are not tracepoints, so READ and WRITE prediction
    # would take the commands; the traces show the full path
    # (architecture.md 5.1-5.3).
    fastpath.scst_fast_read = fastpath.scst_fast_write = 0
    for name in ("iscsi_data_ready", "iscsi_write_space"):
        tr.patch(conn_mod, name)
    tr.patch(nthread, "iscsi_rx", True, _errno_fmt)
    tr.patch(nthread, "iscsi_tx_flush", True, _errno_fmt)
    tr.patch(nthread, "kernel_sendmsg", True, _errno_fmt)
    for name in ("iscsi_rx_hdr", "_scsi_cmd_rx_start", "scst_cmd_init_done", "_send_r2ts",
                 "iscsi_queue_tx", "_scsi_data_done", "_data_out_rx_start", "_data_out_done",
                 "scst_rx_data", "iscsi_tx_build"):
        tr.patch(iscsi, name)
    t = iscsi.iscsi_template
    t.rdy_to_xfer = tr.wrap("iscsi_rdy_to_xfer", t.rdy_to_xfer)
    t.xmit_response = tr.wrap("iscsi_xmit_response", t.xmit_response)
    done = iscsi.scst_tgt_cmd_done

    def tgt_cmd_done(*a: Any) -> Any:
        r = done(*a)
        tr.done += 1
        return r
    iscsi.scst_tgt_cmd_done = tr.wrap("scst_tgt_cmd_done", tgt_cmd_done)
    tr.patch(targ, "_queue_to_threads")
    for name in ("vfs_readv_nowait", "vfs_readv", "vfs_writev"):
        tr.patch(fileio, name, True, _errno_fmt)
    tr.patch(fs, "_pool_call", True, _errno_fmt)
    tr.patch(fs, "_io_complete")
    dt = fileio.fileio_devtype
    dt.exec_nowait = tr.wrap("fileio_exec_nowait", dt.exec_nowait, True)
    dt.exec = tr.wrap("fileio_exec", dt.exec)
    names = SCST_CMD_STATE_NAMES
    for value, fn in enumerate(targ._state_fns):
        if fn is targ._bad_state:
            continue

        def state_fn(cmd: Any, fn: Callable = fn) -> int:
            return fn(cmd)
        label = f"{names[value]}: {fn.__name__}"
        w = tr.wrap(label, state_fn)

        def shown(cmd: Any, w: Callable = w) -> int:
            i = len(tr.lines)
            r = w(cmd)
            tr.lines[i] += f" -> {names[cmd.state]}, {_result_name(targ, r)}"
            return r
        targ._state_fns[value] = shown


def _result_name(targ: Any, r: int) -> str:
    for name in RESULTS:
        if getattr(targ, name) == r:
            return name
    return str(r)


def record_traces() -> dict[str, str]:
    """Run the target and an initiator; return the trace blocks."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from initiator import Initiator     # tests/ is on sys.path for --trace only
    tr = _tracer()
    _instrument(tr)
    ready = threading.Event()
    marks: dict[str, tuple[int, int]] = {}
    failure: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="gen_docs-")
    path = os.path.join(tmp.name, "disk.img")
    with open(path, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def init() -> int:
        if vdisk_init() or iscsi_init() or vdisk_add_device("vdisk_fileio", "disk0",
                                                            {"filename": path}):
            return -1
        tgt = iscsi_target_add(iscsi_template, TRACE_IQN)
        if isinstance(tgt, int) or scst_acg_add_lun(tgt.scst_tgt.default_acg,
                                                    scst_find_device("disk0"), 0, False):
            return -1
        if isinstance(iscsi_add_portal("127.0.0.1", port), int):
            return -1
        ready.set()
        return 0

    def exit_fn() -> None:
        iscsi_exit()
        vdisk_exit()

    def settle(n: int, deadline: float) -> None:
        # Until the n-th command has been freed (its response is out).
        while tr.done < n and time.monotonic() < deadline:
            time.sleep(0.001)

    def client() -> None:
        deadline = time.monotonic() + _TRACE_TIMEOUT
        try:
            if not ready.wait(_TRACE_TIMEOUT):
                failure.append("target did not start")
                return
            ini = Initiator(port=port, timeout=_TRACE_TIMEOUT)
            ini.connect()
            ini.login(TRACE_IQN, keys={"InitialR2T": "Yes", "ImmediateData": "Yes",
                                       "FirstBurstLength": "16384", "MaxBurstLength": "32768",
                                       "MaxOutstandingR2T": "1",
                                       "MaxRecvDataSegmentLength": "8192"})
            ini.test_unit_ready().check()
            settle(1, deadline)
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            read = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
            steps = [("trace-read-miss", read, None, 4096),
                     ("trace-read-hit", read, None, 4096),
                     ("trace-write", bytes([0x2A, 0, 0, 0, 0, 0x40, 0, 0, 128, 0]),
                      os.urandom(65536), 0)]
            for n, (name, cdb, data, rlen) in enumerate(steps, start=2):
                start = len(tr.lines)
                ini.scsi(cdb, data_out=data, read_len=rlen).check()
                settle(n, deadline)
                marks[name] = (start, len(tr.lines))
            ini.logout()
            ini.close()
        except Exception as e:       # reported below, the target still stops
            failure.append(f"{type(e).__name__}: {e}")
        finally:
            engine.request_shutdown_threadsafe()

    set_debug(True)
    th = threading.Thread(target=client, name="gen_docs-initiator", daemon=True)
    th.start()
    try:
        engine.run(init, exit_fn, handle_signals=False)
    finally:
        th.join(_TRACE_TIMEOUT)
        tmp.cleanup()
    if failure or len(marks) != 3:
        raise SystemExit(f"gen_docs: trace run failed: {failure or marks}")
    return {name: "```\n" + "\n".join(tr.lines[a:b]) + "\n```" for name, (a, b) in marks.items()}


# -- writing and checking --------------------------------------------------------

def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- gen_docs:begin {re.escape(name)} -->\n)(.*?)"
                      rf"(<!-- gen_docs:end {re.escape(name)} -->)", re.S)


def render(text: str, blocks: dict[str, str]) -> str:
    """text with each of `blocks` it marks replaced by the new body."""
    for name, body in blocks.items():
        text = _block_re(name).sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gen_docs", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite the blocks in FILE")
    g.add_argument("--check", action="store_true", help="exit 1 if FILE's blocks are stale")
    p.add_argument("--trace", action="store_true",
                   help="also record the trace blocks (runs the target on loopback)")
    p.add_argument("file", nargs="?", default=str(DEFAULT_DOC))
    args = p.parse_args(argv)
    if args.check and args.trace:
        p.error("--check does not take --trace")
    blocks = {name: fn() for name, fn in BLOCKS.items()}
    if args.trace:
        blocks.update(record_traces())
    if not (args.write or args.check):
        for name, body in blocks.items():
            print(f"<!-- gen_docs:begin {name} -->\n{body}\n<!-- gen_docs:end {name} -->\n")
        return 0
    path = Path(args.file)
    text = path.read_text()
    missing = [n for n in blocks if not _block_re(n).search(text)]
    if missing:
        print(f"gen_docs: {path} has no block(s) {', '.join(missing)}", file=sys.stderr)
        return 1
    new = render(text, blocks)
    if args.check:
        if new != text:
            print(f"gen_docs: {path} is stale: run python tools/gen_docs.py --write",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
