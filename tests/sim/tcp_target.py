"""A uscstd set up for the sim scenarios over real TCP, for tests/sim/.

One file LUN 0 (disk0) and a second device (churn1) that config-churn maps
at LUN 1; MaxConnections 8 for MC/S; NopInInterval/NopInTimeout 1 s for
nop-timeout; a control socket for live changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import uscstd_support
from tools.sim.scenarios import TargetSpec
from tools.sim.tcp import UscstadminControl

IQN = "iqn.2026-11.org.uscst:sim"


def config(tmp: Path) -> str:
    return f"""HANDLER vdisk_fileio {{
\tDEVICE disk0 {{
\t\tfilename {tmp}/disk0.img
\t\tsize 4M
\t}}
\tDEVICE churn1 {{
\t\tfilename {tmp}/churn1.img
\t\tsize 4M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN} {{
\t\tMaxConnections 8
\t\tInitialR2T No
\t\tNopInInterval 1
\t\tNopInTimeout 1
\t\tLUN 0 disk0
\t\tLUN 1 churn1
\t\tenabled 1
\t}}
}}
"""


def start(factory, tmp: Path) -> tuple[uscstd_support.UscstdServer, TargetSpec]:
    """Start the uscstd (factory: the `uscstd` fixture's, or
    uscstd_support.UscstdFactory); return (server, TargetSpec)."""
    cfg = tmp / "sim.conf"
    cfg.write_text(config(tmp))
    sock = tmp / "ctl.sock"
    srv = factory("--config", str(cfg), "--control", str(sock), disk=None, size=None, iqn=IQN)
    spec = TargetSpec(addr=(srv.host, srv.port), iqn=IQN, max_connections=8, fresh=False,
                      nop_in_interval=1.0, nop_in_timeout=1.0,
                      control=UscstadminControl(str(sock), IQN, "churn1"))
    return srv, spec


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory) -> Iterator[tuple[uscstd_support.UscstdServer, TargetSpec]]:
    """One such uscstd for a test module; checked healthy at the end."""
    tmp = tmp_path_factory.mktemp("simtcp")
    factory = uscstd_support.UscstdFactory(tmp)
    srv, spec = start(factory, tmp)
    try:
        yield srv, spec
    finally:
        try:
            uscstd_support.finish_uscstd(srv)
        finally:
            srv.kill()
