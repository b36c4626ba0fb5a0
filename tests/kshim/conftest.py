"""Fixtures for the kshim tests: every debugging aid on."""
from __future__ import annotations

import pytest

from kshim import bug, debug, printk
from kshim_support import run_kernel, run_sim_kernel


@pytest.fixture
def kernel():
    """run_kernel with all debugging aids on and a clean report list; the
    console shows only emergencies (reports stay in bug.reports and dmesg)."""
    debug.set_debug(True)
    level = printk.console_loglevel
    printk.set_console_loglevel(1)
    bug.reset_reports()
    yield run_kernel
    bug.reset_reports()
    printk.console_loglevel = level
    debug.set_debug(True)


@pytest.fixture
def sim_kernel(kernel):
    """As kernel, but on the sim engine: time is virtual (a sleep costs no
    wall time and lasts exactly as long as asked, plus timer slack below a
    jiffy), every choice comes from seed 1, or USCST_SEED=N."""
    yield run_sim_kernel
