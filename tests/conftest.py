"""Shared pytest configuration for the uscst test-suite.

Its presence makes pytest (default "prepend" import mode) put tests/ on
sys.path, so any test in any subfolder can `from initiator import Initiator`
(the independent iSCSI initiator in tests/initiator.py).

Keep it minimal: only fixtures several test folders share belong here.

Fixtures:
  uscstd         factory: uscstd(*extra_args, disk=..., size=..., ...) starts
                 a real `python -m tools.uscstd --debug` on a free loopback
                 port and returns a UscstdServer; every server it started is
                 stopped with SIGTERM at teardown, which then asserts exit
                 status 0 and a healthy log (no Traceback, BUG:, Oops,
                 WARNING: (a WARN_ON), Kernel panic).
  uscstd_server  one default server (64 MiB file LUN) for a test that just
                 needs a target.
  sim_target     (tools/sim/pytest_plugin.py) the target booted in-process
                 under the sim engine, driven by the sim initiator at the
                 test's seed (@pytest.mark.sim_seed(N); USCST_SEED=N replays).
The server object carries url, host, port, portal, target_url, iqn,
proc, log (its stderr file), out (its stdout file), argv, and
assert_healthy() / stop(sig) / stderr_text(); uscstd.check(srv) is the
teardown check itself. Test files need not import this module (two
conftest.py files share the module name in prepend mode); a test that needs
a server for a whole module imports tests/uscstd_support.py, where the
start/stop/check helpers live.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from uscstd_support import UscstdFactory, UscstdServer, finish_uscstd

# sim_target (boot the target under the sim engine, replay a seed with
# USCST_SEED=N): tools/sim/pytest_plugin.py.
pytest_plugins = ("tools.sim.pytest_plugin",)


@pytest.fixture
def uscstd(tmp_path: Path) -> Iterator[UscstdFactory]:
    """Factory: uscstd(*extra_args, **start_uscstd kwargs) -> UscstdServer.

    Servers are stopped (SIGTERM) at teardown; each must exit 0 with a
    clean log. A test that stops a server itself (server.stop()) still gets
    its exit status and log checked, unless it sets server.checked = True
    to say it checked an expected failure itself.
    """
    factory = UscstdFactory(tmp_path)
    yield factory
    errors: list[str] = []
    for srv in factory.servers:
        if getattr(srv, "checked", False):
            srv.kill()
            continue
        try:
            finish_uscstd(srv)
        except AssertionError as e:
            errors.append(str(e))
        finally:
            srv.kill()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def uscstd_server(uscstd: UscstdFactory) -> UscstdServer:
    """One default uscstd (64 MiB file LUN 0, --debug) for this test."""
    return uscstd()
