"""Shared steps of the READ and WRITE prediction tests (test_fast_read.py,
test_fast_started.py): a uscstd whose control socket is up, a logged-in
session with its first unit attentions consumed, and the counters."""
from __future__ import annotations

import time
from pathlib import Path

from initiator import Initiator
from uscstd_support import uscstadmin_ok

TIMEOUT = 10.0


def wait_control(srv) -> None:
    """Until uscstd says its control socket listens (bounded: 10 s)."""
    deadline = time.monotonic() + 10.0
    while "uscstd: control socket" not in srv.stdout_text():
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr_text()
        time.sleep(0.05)


def login(srv, name: str, **kw) -> Initiator:
    """A session whose first UAs are consumed (bounded)."""
    ini = Initiator(host=srv.host, port=srv.port, initiator_name=name, timeout=TIMEOUT)
    ini.connect()
    ini.login(srv.iqn, **kw)
    for _ in range(8):
        if ini.test_unit_ready().ok:
            return ini
    raise AssertionError("TEST UNIT READY never came back GOOD")


def fast_count(sock: Path, kind: str) -> int:
    """/sys/kernel/scst_tgt/fast_<kind> (reads, writes)."""
    return int(uscstadmin_ok(sock, "get", f"fast_{kind}"))
