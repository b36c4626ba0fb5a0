"""Start and stop real NBD servers (Debian's nbdkit and qemu-nbd) on
loopback for the vdisk_nbd tests, and write the scst.conf that exports
one NBD-backed LUN."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from uscstd_support import free_port

READY_TIMEOUT_S = 20.0
NBD_TARGET = "iqn.2026-11.org.uscst:nbd"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def _listening(port: int | None, path: Path | None) -> bool:
    family = socket.AF_UNIX if path is not None else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path) if path is not None else ("127.0.0.1", port))
        except OSError:
            return False
        return True


class NbdServer:
    """One NBD server process: nbdkit PLUGIN ARGS on 127.0.0.1:port (or
    on a unix socket), restartable on the same address."""

    def __init__(self, workdir: Path, argv: list[str], port: int | None = None,
                 unix: Path | None = None) -> None:
        self.workdir = workdir
        self.base_argv = argv
        self.port = port if port is not None or unix is not None else free_port()
        self.unix = unix
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        if self.unix is not None:
            return f"nbd+unix:///?socket={self.unix}"
        return f"nbd://127.0.0.1:{self.port}/"

    def start(self) -> "NbdServer":
        argv = list(self.base_argv)
        if self.unix is not None:
            argv[1:1] = ["--unix" if "nbdkit" in argv[0] else "-k", str(self.unix)]
        else:
            argv[1:1] = ["-i", "127.0.0.1", "-p", str(self.port)] if "nbdkit" in argv[0] else \
                ["-b", "127.0.0.1", "-p", str(self.port)]
        if "nbdkit" in argv[0]:
            argv[1:1] = ["-f"]
        log = open(self.workdir / f"nbd-{self.starts}.log", "wb")
        self.starts += 1
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        # Bounded by the deadline; polls every 20 ms.
        while not _listening(self.port, self.unix):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{argv} did not start listening")
            time.sleep(0.02)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None
        if self.unix is not None and self.unix.exists():
            self.unix.unlink()


class NbdFactory:
    """What the nbd_server fixture yields: nbd_server(argv...) starts one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[NbdServer] = []

    def __call__(self, *argv: str, unix: Path | None = None) -> NbdServer:
        need(argv[0])
        srv = NbdServer(self.workdir, list(argv), unix=unix)
        self.servers.append(srv)
        return srv.start()

    def close(self) -> None:
        for s in self.servers:
            s.kill()


def nbd_config(uri: str, *attrs: str, dev: str = "nd0") -> str:
    """scst.conf text: one vdisk_nbd device at LUN 0 of NBD_TARGET."""
    lines = "".join(f"        {a}\n" for a in attrs)
    return (f"HANDLER vdisk_nbd {{\n    DEVICE {dev} {{\n        uri {uri}\n{lines}    }}\n}}\n"
            f"TARGET_DRIVER iscsi {{\n    enabled 1\n    TARGET {NBD_TARGET} {{\n"
            f"        LUN 0 {dev}\n        enabled 1\n    }}\n}}\n")


def sense_info(sense: bytes) -> int | None:
    """The INFORMATION field of fixed or descriptor sense data, if valid."""
    if not sense:
        return None
    code = sense[0] & 0x7F
    if code in (0x70, 0x71):
        return int.from_bytes(sense[3:7], "big") if sense[0] & 0x80 else None
    off = 8
    while off + 1 < len(sense):        # bounded: each descriptor moves off forward
        if sense[off] == 0x00 and sense[off + 2] & 0x80:
            return int.from_bytes(sense[off + 4:off + 12], "big")
        off += 2 + sense[off + 1]
    return None
