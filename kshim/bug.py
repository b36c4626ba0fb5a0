"""BUG, WARN and bug reports from the debugging aids.

Twin of include/asm-generic/bug.h, lib/bug.c and lib/dump_stack.c.

Contexts: any.

Differs from the kernel: BUG_ON raises KernelBug, which kills the kthread
that raised it (the scheduler prints an oops naming it) but not the process.
report_bug() is the common sink of every debugging aid (lockdep, slab debug,
might_sleep, hung task); it prints a report and keeps it in `reports` so
tests can assert what was caught. `panic_on_report` turns reports into
exceptions at the call site for tests that want that.
"""
from __future__ import annotations

import traceback

import attrs

from kshim.printk import KERN_ERR, KERN_WARNING, printk


class KernelBug(Exception):
    """A BUG(): a broken invariant in kernel-style code."""


@attrs.frozen
class bug_report:
    title: str
    details: dict
    stack: str


reports: list[bug_report] = []
panic_on_report = False
_once: set = set()


def dump_stack(skip: int = 1) -> str:
    """Print the caller's stack through printk and return it."""
    text = "".join(traceback.format_stack()[:-skip])
    printk(KERN_WARNING + "Call Trace:\n" + text)
    return text


def report_bug(title: str, **details: object) -> bug_report:
    stack = "".join(traceback.format_stack()[:-1])
    rep = bug_report(title, dict(details), stack)
    reports.append(rep)
    extra = " ".join(f"{k}={v}" for k, v in details.items())
    printk(KERN_ERR + f"BUG: {title}" + (f" ({extra})" if extra else "") + "\n" + stack)
    if panic_on_report:
        raise KernelBug(f"{title} {extra}".strip())
    return rep


def BUG_ON(cond: object, msg: str = "") -> None:
    if cond:
        raise KernelBug(msg or "BUG_ON")


def BUG(msg: str = "") -> None:
    raise KernelBug(msg or "BUG")


def WARN_ON(cond: object, msg: str = "") -> bool:
    if cond:
        printk(KERN_WARNING + f"WARNING: {msg or 'WARN_ON'}")
        dump_stack(2)
    return bool(cond)


def WARN_ON_ONCE(cond: object, msg: str = "") -> bool:
    if cond:
        frame = traceback.extract_stack(limit=2)[0]
        key = (frame.filename, frame.lineno)
        if key not in _once:
            _once.add(key)
            WARN_ON(True, msg)
    return bool(cond)


def reset_reports() -> None:
    reports.clear()
