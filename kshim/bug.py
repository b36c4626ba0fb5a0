"""BUG, WARN, panic, dump_stack and the reports of the debugging aids.

Twin of include/asm-generic/bug.h, lib/bug.c, kernel/panic.c (warn and
panic) and lib/dump_stack.c.

Contexts: any.

Differs from the kernel: BUG_ON raises KernelBug, which kills the kthread
that raised it (the scheduler prints an oops naming it; in a softirq the
engine's softirq runner does) but not the process. panic() raises
KernelPanic the same way instead of halting. report_bug() is the common
sink of every debugging aid (lockdep, slab debug, might_sleep, hung task,
soft lockup, object debugging); it prints a report with the stack and keeps
it in `reports` so tests can assert what was caught. WARN_ON and friends
also land in `reports` (title "WARNING: ..."), so a test that expects a
clean run sees them. `panic_on_report` turns reports into KernelBug at the
call site, as panic_on_warn would.

Debug aids: stack_capture() takes a cheap snapshot of the caller's frames
(code object and bytecode offset each; filename, line and function once
formatted) for the aids to keep with an object; format_entries() turns one
into text, and looks the lines up, only when a report needs it.
"""
from __future__ import annotations

import traceback
from types import CodeType, FrameType

import attrs

from kshim.host import ops
from kshim.printk import KERN_EMERG, KERN_ERR, KERN_WARNING, printk


class KernelBug(Exception):
    """A BUG(): a broken invariant in kernel-style code."""


class KernelPanic(KernelBug):
    """panic(): the emulated machine cannot go on."""


@attrs.frozen
class bug_report:
    """One report: title, details (names the culprit), stack."""

    title: str
    details: dict
    stack: str


reports: list[bug_report] = []
panic_on_report = False
_once: set = set()

# A captured stack: innermost first, each (filename, lineno, function).
stack_entries = tuple


def getframe(depth: int = 0) -> FrameType | None:
    """The frame `depth` levels above the caller (0: the caller's own), as
    sys._getframe(depth) would give the caller. Frame introspection for the
    debugging aids; kshim reaches sys only through kshim.host."""
    try:
        return ops.getframe(depth + 1)
    except ValueError:
        return None


def stack_capture(skip: int = 1, limit: int = 12) -> tuple:
    """Snapshot of the caller's stack, `skip` frames above this call's
    caller, innermost first, at most `limit` frames, as (code, bytecode
    offset) pairs: the offset costs nothing to read, the line number it
    stands for is looked up only when a report formats the entry (reading
    f_lineno scans the code's line table, for every frame). Costs about a
    microsecond; format it with format_entries() only when reporting."""
    f = getframe(skip + 1)
    out = []
    n = limit
    while f is not None and n:
        out.append((f.f_code, f.f_lasti))
        f = f.f_back
        n -= 1
    return tuple(out)


def _line_of(co: CodeType, lasti: int) -> int:
    """The source line of bytecode offset lasti in co (what f_lineno says)."""
    for start, end, line in co.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return co.co_firstlineno


def entry_parts(e: tuple) -> tuple[str, int, str]:
    """(filename, line, function) of one stack_capture() entry."""
    co, lasti = e
    return co.co_filename, _line_of(co, lasti), co.co_name


def format_entries(entries: tuple, indent: str = "  ") -> str:
    """Text of a stack_capture() snapshot, outermost call first, as tracebacks read."""
    return "".join(f'{indent}File "{co.co_filename}", line {_line_of(co, lasti)}, '
                   f'in {co.co_name}\n' for co, lasti in reversed(entries))


def caller_site(skip: int = 1) -> str:
    """'file:line (function)' of the caller's caller (skip=1)."""
    f = getframe(skip + 1)
    if f is None:
        return "?"
    return f"{f.f_code.co_filename}:{f.f_lineno} ({f.f_code.co_name})"


def caller_outside(*files: str) -> str:
    """'file:line (function)' of the first caller whose file is not one of
    `files` (and not this one): the user of a helper module."""
    f = getframe(1)
    skip = set(files) | {__file__}
    while f is not None and f.f_code.co_filename in skip:
        f = f.f_back
    if f is None:
        return "?"
    return f"{f.f_code.co_filename}:{f.f_lineno} ({f.f_code.co_name})"


def frame_stack(frame: FrameType | None) -> str:
    """Text of the stack ending at `frame` (a sleeping greenlet's gr_frame)."""
    if frame is None:
        return "  (no stack: not started or finished)\n"
    return "".join(traceback.format_stack(frame))


def dump_stack(skip: int = 1) -> str:
    """Print the caller's stack through printk and return it."""
    text = "".join(traceback.format_stack()[:-skip])
    printk(KERN_WARNING + "Call Trace:\n" + text)
    return text


def report_bug(title: str, **details: object) -> bug_report:
    """Record and print a report of a debugging aid; return it."""
    stack = "".join(traceback.format_stack()[:-1])
    rep = bug_report(title, dict(details), stack)
    reports.append(rep)
    extra = " ".join(f"{k}={v}" for k, v in details.items() if "\n" not in str(v))
    multi = "".join(f"{k}:\n{v}" for k, v in details.items() if "\n" in str(v))
    printk(KERN_ERR + f"BUG: {title}" + (f" ({extra})" if extra else "") + "\n" + multi
           + "Call Trace:\n" + stack)
    if panic_on_report:
        raise KernelBug(f"{title} {extra}".strip())
    return rep


def reset_reports() -> None:
    """Forget the recorded reports (tests)."""
    reports.clear()


def find_reports(title_part: str) -> list[bug_report]:
    """The recorded reports whose title contains title_part (for tests)."""
    return [r for r in reports if title_part in r.title]


def BUG_ON(cond: object, msg: str = "") -> None:
    """Raise KernelBug if cond: the running kthread dies with an oops."""
    if cond:
        raise KernelBug(f"{msg or 'BUG_ON'} at {caller_site()}")


def BUG(msg: str = "") -> None:
    raise KernelBug(f"{msg or 'BUG'} at {caller_site()}")


def _current_desc() -> str:
    from kshim import sched           # bug is imported by sched: no cycle at load
    t = sched.cpu.curr
    return f"CPU: 0 PID: {t.pid} Comm: {t.comm}"


def __warn(msg: str, site: str) -> None:
    title = f"WARNING: {msg}" if msg else "WARNING"
    rep = bug_report(title, {"at": site}, "")
    reports.append(rep)
    printk(KERN_WARNING + f"------------[ cut here ]------------\n"
           f"{title}\nWARNING: {_current_desc()} at {site}")
    dump_stack(3)
    if panic_on_report:
        raise KernelBug(f"{title} at {site}")


def WARN_ON(cond: object, msg: str = "") -> bool:
    """If cond: print a warning with the caller's site and stack. Return cond."""
    if cond:
        __warn(msg or "WARN_ON", caller_site())
    return bool(cond)


def WARN(cond: object, msg: str) -> bool:
    if cond:
        __warn(msg, caller_site())
    return bool(cond)


def WARN_ON_ONCE(cond: object, msg: str = "") -> bool:
    """WARN_ON, at most once per call site."""
    if cond:
        f = getframe(1)
        key = (f.f_code, f.f_lineno)
        if key not in _once:
            _once.add(key)
            __warn(msg or "WARN_ON_ONCE", caller_site())
    return bool(cond)


def WARN_ONCE(cond: object, msg: str) -> bool:
    if cond:
        f = getframe(1)
        key = (f.f_code, f.f_lineno)
        if key not in _once:
            _once.add(key)
            __warn(msg, caller_site())
    return bool(cond)


def panic(msg: str) -> None:
    """Print 'Kernel panic - not syncing' and raise KernelPanic."""
    printk(KERN_EMERG + f"Kernel panic - not syncing: {msg}")
    dump_stack(2)
    reports.append(bug_report("Kernel panic - not syncing", {"msg": msg}, ""))
    raise KernelPanic(msg)


def BUILD_BUG_ON(cond: object) -> None:
    """A compile-time check in C; here, checked when the line runs."""
    if cond:
        raise KernelBug(f"BUILD_BUG_ON failed at {caller_site()}")
