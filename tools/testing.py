"""An embeddable iSCSI target for initiator developers, with faults in plain words.

    from uscst_tools.testing import UscstTarget    # tools.testing in a checkout

    with UscstTarget() as target:              # a real target on a loopback port
        target.script("fail the 3rd WRITE with MEDIUM ERROR at its first LBA")
        run_my_initiator(target.url)           # iscsi://127.0.0.1:PORT/IQN/0
        assert target.injected("fail_scsi_cmd") == 1

or as a pytest fixture (`pytest -p uscst_tools.testing`, or import `uscst_target`
into a conftest.py):

    def test_my_initiator_retries(uscst_target):
        uscst_target.script("answer TASK SET FULL to the next 4 commands")
        ...

The target is a uscstd subprocess (`uscstd --debug`, run as `python -m`), not
in-process: the daemon's engine owns its thread's event loop and signal
handling, so it runs in a process of its own. It serves one LUN, a sparse
file of `size` bytes in a temporary directory, on 127.0.0.1 and a free
port, with a private control socket; faults are written into its live
debugfs tree (docs/fault-injection.md), so they apply from the next
command. Stopping it (leaving the `with`) checks it exited cleanly and
logged no BUG, WARNING, Oops or traceback.

Plain-word faults (`script()`; one phrase per call, case-insensitive):

    fail the 3rd WRITE with MEDIUM ERROR [at its first LBA]
    fail the next READ with NOT READY
    answer TASK SET FULL to the next 4 commands        (BUSY, RESERVATION CONFLICT)
    answer BUSY to the next 2 WRITEs
    delay every READ by 50 ms                          (every WRITE, every command)
    drop the connection after the 2nd Data-Out         (SCSI-Command, NOP-Out, ...)
    clear faults

"after the Nth Data-Out" drops the connection when the (N+1)th arrives,
before the target acts on it. Command rules share one point
(fail_scsi_cmd): a new command rule replaces the previous one. Anything
else the live tree can do is one `fault("POINT:attr=value,...")` away.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from . import module_argv
from .uscstadmin import Ctl, Failed

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IQN = "iqn.2026-11.org.uscst:testing"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
UNHEALTHY = re.compile(r"Traceback|BUG:|Oops|WARNING:|Kernel panic")

_ORDINAL = r"(?:(\d+)(?:st|nd|rd|th)|next)"
_OPS = {"read": "READ", "reads": "READ", "write": "WRITE", "writes": "WRITE",
        "command": "ANY", "commands": "ANY"}
_SENSES = {  # name -> (sense for READ / other, sense for WRITE)
    "medium error": ("03/11/00", "03/0C/00"),
    "not ready": ("02/04/00", "02/04/00"),
    "hardware error": ("04/44/00", "04/44/00"),
    "aborted command": ("0B/00/00", "0B/00/00"),
    "unit attention": ("06/29/00", "06/29/00"),
}
_STATUSES = {"task set full": "TASK_SET_FULL", "busy": "BUSY",
             "reservation conflict": "RESERVATION_CONFLICT"}
_PDUS = {"data-out": "Data-Out", "scsi-command": "SCSI-Command", "nop-out": "NOP-Out",
         "text": "Text", "task-management": "Task-Management", "logout": "Logout"}
PHRASES = (
    "fail the Nth READ|WRITE|command with MEDIUM ERROR|NOT READY|HARDWARE ERROR|"
    "ABORTED COMMAND|UNIT ATTENTION [at its first LBA]",
    "answer TASK SET FULL|BUSY|RESERVATION CONFLICT to the next N commands|READs|WRITEs",
    "delay every READ|WRITE|command by N ms",
    "drop the connection after the Nth Data-Out|SCSI-Command|NOP-Out|Text|Logout",
    "clear faults",
)


def parse_phrase(text: str) -> list[str]:
    """The --fault specs one plain-word phrase means; ValueError (naming the
    phrases understood) if it means nothing."""
    t = " ".join(text.lower().split()).rstrip(".")
    m = re.fullmatch(rf"fail the {_ORDINAL} (reads?|writes?|commands?) with "
                     rf"({'|'.join(_SENSES)})( at its first lba)?", t)
    if m:
        nth = int(m.group(1) or 1)
        op = _OPS[m.group(2)]
        sense = _SENSES[m.group(3)][1 if op == "WRITE" else 0]
        info = "first-lba" if m.group(4) else "none"
        return [f"fail_scsi_cmd:probability=0,op={op},status=CHECK_CONDITION,sense={sense},"
                f"info={info},interval={nth},times=1,injected=0,probability=100"]
    m = re.fullmatch(rf"answer ({'|'.join(_STATUSES)}) to the next (\d+) "
                     r"(commands?|reads?|writes?)", t)
    if m:
        return [f"fail_scsi_cmd:probability=0,op={_OPS[m.group(3)]},"
                f"status={_STATUSES[m.group(1)]},interval=1,times={int(m.group(2))},"
                f"injected=0,probability=100"]
    m = re.fullmatch(r"delay every (read|write|command) by (\d+) ?ms", t)
    if m:
        return [f"fail_scsi_cmd:probability=0,op={_OPS[m.group(1)]},status=delay,"
                f"delay-ms={int(m.group(2))},interval=1,times=-1,injected=0,probability=100"]
    m = re.fullmatch(rf"drop the connection after the {_ORDINAL} ({'|'.join(_PDUS)})", t)
    if m:
        nth = int(m.group(1) or 0)
        return [f"fail_iscsi_pdu:probability=0,opcode={_PDUS[m.group(2)]},"
                f"interval={nth + 1},times=1,injected=0,probability=100"]
    if t == "clear faults":
        return ["fail_scsi_cmd:probability=0", "fail_iscsi_pdu:probability=0"]
    raise ValueError(f"not a fault phrase: {text!r}; phrases: " + "; ".join(PHRASES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UscstTarget:
    """A uscstd serving one file LUN on 127.0.0.1 (a context manager)."""

    def __init__(self, size: str = "64M", blocksize: int = 512, iqn: str = DEFAULT_IQN,
                 faults: tuple[str, ...] = (), debug: bool = True,
                 workdir: str | os.PathLike | None = None):
        self.size = size
        self.blocksize = blocksize
        self.iqn = iqn
        self.faults = faults
        self.debug = debug
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.workdir = Path(workdir) if workdir is not None else None
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    # -- life -------------------------------------------------------------------

    def start(self) -> "UscstTarget":
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="uscst-target-")
            self.workdir = Path(self._tmp.name)
        self.port = _free_port()
        self.control = str(self.workdir / "ctl.sock")
        self.log = self.workdir / "uscstd.err"
        argv = [*module_argv("uscstd"), "--portal", f"{self.host}:{self.port}",
                "--disk", str(self.workdir / "disk.img"), "--size", self.size,
                "--blocksize", str(self.blocksize), "--iqn", self.iqn,
                "--control", self.control]
        if self.debug:
            argv.append("--debug")
        for f in self.faults:
            argv += ["--fault", f]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while True:                 # until the control socket answers
            try:
                Ctl(self.control).call("ping")
                return self
            except Failed:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"uscstd did not start: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM; raise RuntimeError if it did not exit 0 or logged a bug."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
                bad = self.unhealthy_lines()
                if proc.returncode != 0 or bad:
                    raise RuntimeError(f"uscstd exit {proc.returncode}; log: {bad[:5]}")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
                self.workdir = None

    def __enter__(self) -> "UscstTarget":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """iscsi://127.0.0.1:PORT/IQN/0 (LUN 0), as libiscsi and QEMU take it."""
        return f"iscsi://{self.host}:{self.port}/{self.iqn}/0"

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unhealthy_lines(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines() if UNHEALTHY.search(ln)]

    # -- faults -----------------------------------------------------------------

    def get(self, path: str) -> str:
        """A live-tree attribute (`debug/failslab/injected`, ...)."""
        return Ctl(self.control).read(path).strip()

    def set(self, path: str, value: str) -> None:
        Ctl(self.control).write(path, value)

    def fault(self, spec: str) -> None:
        """Apply one POINT:attr=value,... spec through the live tree, in order."""
        point, _, rest = spec.partition(":")
        ctl = Ctl(self.control)
        for item in rest.split(","):
            name, _, value = item.partition("=")
            ctl.write(f"debug/{point}/{name.strip()}", value.strip())

    def script(self, phrase: str) -> list[str]:
        """Apply one plain-word fault phrase (see the module help); return
        the specs it became."""
        specs = parse_phrase(phrase)
        for s in specs:
            self.fault(s)
        return specs

    def injected(self, point: str) -> int:
        return int(self.get(f"debug/{point}/injected"))


def uscst_target_fixture() -> Iterator[UscstTarget]:
    with UscstTarget() as t:
        yield t


try:
    import pytest
except ImportError:         # usable without pytest; the fixture needs it
    pytest = None           # type: ignore[assignment]
if pytest is not None:
    uscst_target = pytest.fixture(uscst_target_fixture, name="uscst_target")
