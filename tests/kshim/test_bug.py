"""kshim.bug: BUG_ON, WARN_ON, panic and the report sink."""
from __future__ import annotations

import sys

import pytest

from kshim import bug, printk
from kshim.bug import (BUG, BUG_ON, WARN, WARN_ON, WARN_ON_ONCE, KernelBug, KernelPanic,
                       dump_stack, panic, report_bug)


@pytest.fixture(autouse=True)
def clean():
    level = printk.console_loglevel
    printk.set_console_loglevel(0)
    bug.reset_reports()
    yield
    bug.reset_reports()
    bug.panic_on_report = False
    printk.console_loglevel = level


def test_bug_on_raises_naming_the_site_only_when_the_condition_holds():
    BUG_ON(False)
    with pytest.raises(KernelBug, match="test_bug.py"):
        BUG_ON(True, "invariant")
    with pytest.raises(KernelBug, match="unreachable"):
        BUG("unreachable")


def test_warn_on_returns_the_condition_and_records_a_warning_with_the_site():
    assert WARN_ON(0) is False
    assert WARN_ON(1, "odd state") is True
    assert WARN(True, "formatted 3") is True
    titles = [r.title for r in bug.reports]
    assert titles == ["WARNING: odd state", "WARNING: formatted 3"]
    assert "test_bug.py" in bug.reports[0].details["at"]
    assert any("WARNING: CPU: 0 PID" in m for m in printk.dmesg())


def test_warn_on_once_warns_once_per_site():
    for _ in range(3):
        WARN_ON_ONCE(True, "only once")
    assert [r.title for r in bug.reports] == ["WARNING: only once"]


def test_panic_raises_kernel_panic_and_records_it():
    with pytest.raises(KernelPanic):
        panic("cannot go on")
    assert bug.reports[-1].details["msg"] == "cannot go on"


def test_report_bug_keeps_details_and_the_stack_and_can_raise():
    rep = report_bug("something odd", lock="x")
    assert rep.details == {"lock": "x"} and "test_bug.py" in rep.stack
    bug.panic_on_report = True
    with pytest.raises(KernelBug, match="something worse"):
        report_bug("something worse")


def test_dump_stack_returns_and_prints_the_callers_stack():
    text = dump_stack()
    assert "test_dump_stack_returns" in text and "Call Trace:" in printk.dmesg()[-1]


def test_stack_capture_is_innermost_first_and_formats_outermost_first():
    def inner():
        return bug.stack_capture(0, 3)
    st = inner()
    assert bug.entry_parts(st[0])[2] == "inner"
    text = bug.format_entries(st)
    assert text.rstrip().endswith("in inner")


def test_stack_capture_entries_name_the_lines_f_lineno_names():
    def inner():
        return bug.stack_capture(0, 2), sys._getframe().f_lineno
    (st, line), outer_line = inner(), sys._getframe().f_lineno
    assert bug.entry_parts(st[0])[1:] == (line, "inner")
    name = "test_stack_capture_entries_name_the_lines_f_lineno_names"
    assert bug.entry_parts(st[1])[1:] == (outer_line, name)
    assert f"line {outer_line}, in {name}" in bug.format_entries(st).splitlines()[0]
