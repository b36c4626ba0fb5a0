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

Usage (from the repository root):
  python tools/gen_docs.py                 print every block
  python tools/gen_docs.py --write [FILE]  rewrite the blocks in FILE
  python tools/gen_docs.py --check [FILE]  exit 1 if FILE's blocks are stale
FILE defaults to docs/architecture.md.

Where the code has no table (which wait state an entry point ends), this
tool holds a small map, ENTRY_FROM, and checks it against the code: each
wait state named there must be one a table handler sets.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

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
    from scst_core import targ
    from scst_core.scst import SCST_CMD_STATE_NAMES
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
    from iscsi_scst.usr import iscsid
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
    from iscsi_scst.usr import iscsid
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


# -- writing and checking --------------------------------------------------------

def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- gen_docs:begin {re.escape(name)} -->\n)(.*?)"
                      rf"(<!-- gen_docs:end {re.escape(name)} -->)", re.S)


def render(text: str) -> str:
    """text with every generated block it marks brought up to date."""
    for name, fn in BLOCKS.items():
        body = fn() + "\n"
        text = _block_re(name).sub(lambda m: m.group(1) + body + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gen_docs", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite the blocks in FILE")
    g.add_argument("--check", action="store_true", help="exit 1 if FILE's blocks are stale")
    p.add_argument("file", nargs="?", default=str(DEFAULT_DOC))
    args = p.parse_args(argv)
    if not (args.write or args.check):
        for name, fn in BLOCKS.items():
            print(f"<!-- gen_docs:begin {name} -->\n{fn()}\n<!-- gen_docs:end {name} -->\n")
        return 0
    path = Path(args.file)
    text = path.read_text()
    missing = [n for n in BLOCKS if not _block_re(n).search(text)]
    if missing:
        print(f"gen_docs: {path} has no block(s) {', '.join(missing)}", file=sys.stderr)
        return 1
    new = render(text)
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
