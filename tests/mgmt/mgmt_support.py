"""Helpers and fixtures for the management tests (imported by conftest.py
and the tests under this unique name): a uscstd started with --config on a
free loopback port and a private control socket, and helpers to run
uscstadmin against it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uscstd_support import uscstadmin_run

REPO = Path(__file__).resolve().parents[2]
TARGET = "iqn.2026-11.org.uscst:mgmt"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def base_config(tmp: Path, port: int) -> str:
    return f"""# two devices and a group
HANDLER vdisk_fileio {{
\tDEVICE disk0 {{
\t\tfilename {tmp}/disk0.img
\t\tsize 16M
\t}}
}}
HANDLER vdisk_nullio {{
\tDEVICE null1 {{
\t\tsize 1G
\t}}
\tDEVICE null2 {{
\t\tsize 2G
\t\tblocksize 4096
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tportal 127.0.0.1:{port}
\tTARGET {TARGET} {{
\t\tLUN 0 disk0
\t\tLUN 1 null1
\t\tGROUP special {{
\t\t\tLUN 0 null1 {{
\t\t\t\tread_only 1
\t\t\t}}
\t\t\tINITIATOR iqn.1993-08.org.special:*
\t\t}}
\t\tenabled 1
\t}}
}}
"""


class Daemon:
    def __init__(self, tmp: Path, config_text: str | None = None, extra: list[str] | None = None,
                 env: dict | None = None, port: int | None = None):
        self.tmp = tmp
        self.port = port or free_port()
        self.config = tmp / "scst.conf"
        self.config.write_text(config_text if config_text is not None
                               else base_config(tmp, self.port))
        self.sock = str(tmp / "ctl.sock")
        self.log = tmp / "uscstd.log"
        self.args = [sys.executable, "-m", "tools.uscstd", "--config", str(self.config),
                     "--control", self.sock, *(extra or [])]
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def output(self) -> str:
        return self.log.read_text()

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = uscstadmin_run(self.sock, *args)
        if check and r.returncode != 0:
            raise AssertionError(f"uscstadmin {args} failed ({r.returncode}): {r.stderr}")
        return r

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path)
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        assert "ready at" in d.output(), d.output()
        yield d
    finally:
        d.stop()
