"""uscst's host tools: the daemon, the admin CLI, the simulator, the test target.

In a checkout this package is `tools` (tests and `python -m tools.uscstd`
run from the repo root); installed, it is `uscst_tools` (setup.py, decision
0046), so a top-level `tools` of another distribution cannot collide with
it. The shipped modules therefore import each other relatively and start a
sibling tool through module_argv(), never by the literal name `tools`.
"""
from __future__ import annotations

import sys


def module_argv(name: str) -> list[str]:
    """The argv that runs sibling tool NAME: `python -m <this package>.NAME`."""
    return [sys.executable, "-m", f"{__name__}.{name}"]
