"""Start, check and stop real uscstd processes for the tests.

A module of its own name (not conftest) so tests that need a server for a
whole module (tests/iscsi/test_mcs.py, test_fuzz.py) import the same code
the `uscstd` fixture uses.
"""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IQN = "iqn.2026-11.org.uscst:default"
READY_TIMEOUT = 20.0        # seconds for "ready at" to appear
STOP_TIMEOUT = 15.0         # seconds for SIGTERM to end the process
# A line reporting a kernel-idiom bug, a WARN_ON, or an escaped exception.
UNHEALTHY_RE = re.compile(r"Traceback|BUG:|Oops|WARNING:|Kernel panic")


def uscstadmin_run(sock: "Path | str", *args: str) -> "subprocess.CompletedProcess[str]":
    """Run uscstadmin against the control socket sock, whatever it returns."""
    return subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(sock),
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def uscstadmin_ok(sock: "Path | str", *args: str) -> str:
    """Run uscstadmin against the control socket sock; its stdout, after
    asserting it succeeded (the message names the arguments and stderr)."""
    r = uscstadmin_run(sock, *args)
    assert r.returncode == 0, f"uscstadmin {args}: {r.stderr}"
    return r.stdout


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody uses right now, below the ephemeral range: a test
    that restarts a server on the same port (a killed node, a reload) must
    not find it taken by some outgoing connection's local port, which the
    kernel picks from the ephemeral range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    for _ in range(50):                  # bounded; then the kernel picks
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class UscstdServer:
    """One running uscstd process.

    url: the iscsi:// URL of LUN 0 as uscstd printed it; host, port, iqn;
    proc: the Popen; log: path of its stderr; out: path of its stdout.
    """

    def __init__(self, proc: subprocess.Popen, host: str, port: int, iqn: str,
                 log: Path, out: Path, argv: list[str]) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.iqn = iqn
        self.log = log
        self.out = out
        self.argv = argv
        self.url = ""
        self.stopped = False
        self.returncode: int | None = None

    @property
    def portal(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    @property
    def target_url(self) -> str:
        """iscsi://host:port (no target), for discovery tools like iscsi-ls."""
        return f"iscsi://{self.portal}"

    def stderr_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stdout_text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def unhealthy_lines(self) -> list[str]:
        return [ln for ln in self.stderr_text().splitlines() if UNHEALTHY_RE.search(ln)]

    def assert_healthy(self) -> None:
        """The process is still running and its log shows no bug so far."""
        assert self.proc.poll() is None, \
            f"uscstd exited with {self.proc.returncode}; stderr:\n{self.stderr_text()[-4000:]}"
        bad = self.unhealthy_lines()
        assert not bad, "uscstd reported a bug:\n" + self.stderr_text()[-8000:]

    def _control_settled(self) -> bool:
        """With --control, the control socket is bound (or refused): it
        starts after "ready at", and a test's first uscstadmin call must not
        race it on a loaded machine."""
        if "--control" not in self.argv:
            return True
        return ("uscstd: control socket " in self.stdout_text()
                or "uscstd: control socket:" in self.stderr_text())

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        # Bounded by the deadline; polls the stdout file every 20 ms.
        while time.monotonic() < deadline:
            m = re.search(r"uscstd: ready at (\S+)", self.stdout_text())
            if m and self._control_settled():
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"uscstd exited with {self.proc.returncode} before ready; "
                                   f"stderr:\n{self.stderr_text()[-4000:]}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"uscstd not ready within {timeout} s; "
                           f"stderr:\n{self.stderr_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send sig, wait for exit (bounded), return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"uscstd did not stop within {timeout} s after signal "
                                     f"{sig}; stderr:\n{self.stderr_text()[-4000:]}") from None
        self.stopped = True
        self.returncode = self.proc.returncode
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_uscstd(workdir: Path, *extra: str, host: str = "127.0.0.1",
                 port: int | None = None, disk: Path | str | None = "default",
                 size: str | None = "64M", iqn: str | None = None,
                 debug: bool = True, wait: bool = True,
                 env: dict[str, str] | None = None) -> UscstdServer:
    """Start `python -m tools.uscstd` serving one portal on host:port.

    disk="default" puts a file disk.img in workdir; None passes no --disk
    (so --nullio or --data-dir decide). extra args go last. With port=None
    a free port is picked, and picked again (3 tries at most) if another
    process on this shared machine takes it first.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        srv = _spawn_uscstd(workdir, extra, host, port if port is not None else free_port(host),
                            disk, size, iqn, debug, env)
        if not wait:
            return srv
        try:
            srv.wait_ready()
            return srv
        except RuntimeError:
            lost_race = (port is None and srv.proc.poll() == 1
                         and "address already in use" in srv.stderr_text())
            if not lost_race or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _spawn_uscstd(workdir: Path, extra: tuple[str, ...], host: str, port: int,
                  disk: Path | str | None, size: str | None, iqn: str | None,
                  debug: bool, env: dict[str, str] | None) -> UscstdServer:
    portal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [sys.executable, "-m", "tools.uscstd", "--portal", portal]
    if disk == "default":
        disk = workdir / "disk.img"
    if disk is not None:
        argv += ["--disk", str(disk)]
    if size is not None:
        argv += ["--size", size]
    if iqn is not None:
        argv += ["--iqn", iqn]
    if debug:
        argv.append("--debug")
    argv += list(extra)
    n = len(list(workdir.glob("uscstd-*.err")))
    log = workdir / f"uscstd-{n}.err"
    out = workdir / f"uscstd-{n}.out"
    # O_APPEND: a test may append to the log while uscstd writes to it.
    with open(log, "ab") as ferr, open(out, "ab") as fout:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=fout, stderr=ferr,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return UscstdServer(proc, host, port, iqn or DEFAULT_IQN, log, out, argv)


def finish_uscstd(srv: UscstdServer) -> None:
    """Teardown check: SIGTERM -> exit 0, log free of bugs."""
    if srv.stopped:
        rc = srv.returncode
    else:
        rc = srv.stop()
    err = srv.stderr_text()
    assert rc == 0, f"uscstd exit status {rc} after SIGTERM; stderr:\n{err[-4000:]}"
    bad = srv.unhealthy_lines()
    assert not bad, "uscstd log reports a bug:\n" + err[-8000:]


class UscstdFactory:
    """What the `uscstd` fixture yields: call it to start a server;
    check(srv) is the teardown check (SIGTERM, exit 0, clean log), exposed
    so a test can prove the check itself fails when it should."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[UscstdServer] = []

    def __call__(self, *extra: str, **kw) -> UscstdServer:
        srv = start_uscstd(self.workdir / f"srv{len(self.servers)}", *extra, **kw)
        self.servers.append(srv)
        return srv

    check = staticmethod(finish_uscstd)
