"""Helpers for the reliability tests: a raw control-socket client, and a
uscstd started in its own scratch directory (so fuzzed management writes
that name relative files create them there, not in the repository).

A module of its own name (not conftest) so the test files import it."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from uscstd_support import free_port

REPO = Path(__file__).resolve().parents[2]
UNHEALTHY_RE = re.compile(r"Traceback|BUG:|Oops|WARNING:|Kernel panic|control: .* raised")


class RawCtl:
    """One control-socket connection speaking raw lines (test code only)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send_line(self, line: bytes) -> dict | None:
        """Send line (a newline is added) and return the decoded reply, or
        None if the server closed the connection instead of replying."""
        self.sock.sendall(line + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        rsp, _, self.buf = self.buf.partition(b"\n")
        return json.loads(rsp)

    def call(self, op: str, **kw: object) -> dict:
        rsp = self.send_line(json.dumps({"op": op, **kw}).encode())
        assert rsp is not None, f"control socket closed on {op}"
        return rsp

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawCtl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Daemon:
    """uscstd --debug with a control socket, cwd in its own directory."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.ctl = str(workdir / "ctl.sock")
        self.log = workdir / "uscstd.log"
        self.port = free_port()
        self.fuse = extra[extra.index("--fuse") + 1] if "--fuse" in extra else None
        self.argv = [sys.executable, "-m", "tools.uscstd", "--portal", f"127.0.0.1:{self.port}",
                     "--control", self.ctl, "--debug", *extra]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                self.argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # Bounded by the deadline; polls the log every 50 ms.
        while time.monotonic() < deadline:
            out = self.output()
            if "uscstd: control socket" in out and "ready at" in out:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"uscstd not ready:\n{self.output()[-4000:]}")

    def unhealthy(self) -> list[str]:
        return [ln for ln in self.output().splitlines() if UNHEALTHY_RE.search(ln)]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.fuse is not None and os.path.ismount(self.fuse):
            # A killed daemon cannot unmount its FUSE tree itself.
            subprocess.run(["fusermount3", "-u", "-z", self.fuse], capture_output=True, timeout=30)
