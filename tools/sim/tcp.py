"""A real-TCP world with the sim engine's actor interface.

TcpWorld offers what kshim/engine_sim.py's Simulation offers the outside
actors of a scenario (rng, now_ns, events, connect, spawn, sleep, run), but
over real sockets to a real uscstd on loopback and the wall clock. So one
scenario body (tools/sim/scenarios.py) drives either a simulated target,
replayable from its seed, or a running daemon; only the sim engine makes
the target's own choices replayable.

Actors are greenlets switched by a hub that waits in a selector: an actor
blocked in TcpPeer.recv/send or TcpWorld.sleep gives way to the others, as
a Simulation's actors do. One host thread; no locks needed.

Where it may be called from: tools and tests (host sockets and clock are
used freely; this is outside the kshim boundary). Every wait is bounded by
run()'s max_virtual_s, here wall seconds.
"""
from __future__ import annotations

import heapq
import random
import selectors
import socket
import subprocess
import time
from typing import Callable

import greenlet

from .. import module_argv


class SimStall(Exception):
    """No actor can make progress (or the run's time bound passed)."""


class TcpPeer:
    """One TCP connection from an outside host to the target."""

    def __init__(self, world: "TcpWorld", sock: socket.socket) -> None:
        self._world = world
        self._sock = sock

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                self._world._wait_fd(self._sock, selectors.EVENT_WRITE)
                continue
            view = view[n:]

    def recv(self, n: int) -> bytes:
        """Block this actor until bytes come; b"" at EOF; raises
        ConnectionResetError when the target reset the connection."""
        while True:
            try:
                return self._sock.recv(n)
            except BlockingIOError:
                self._world._wait_fd(self._sock, selectors.EVENT_READ)

    def close(self) -> None:
        self._sock.close()

    def reset(self) -> None:
        """Abort the connection (RST), as a crashing host would."""
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        self._sock.close()


class TcpWorld:
    """The actor runtime over real TCP; see the module docstring."""

    # The target's files are real: a READ overlapping a WRITE in flight may
    # see part of each block (tools/sim/invariants.py, read-data).
    torn_blocks = True

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events = 0
        self._t0 = time.monotonic_ns()
        self._hub: greenlet.greenlet | None = None
        self._ready: list[greenlet.greenlet] = []
        self._actors: dict[greenlet.greenlet, str] = {}
        self._timers: list[tuple[float, int, greenlet.greenlet]] = []
        self._sel = selectors.DefaultSelector()
        self._seq = 0
        self.error: BaseException | None = None

    @property
    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def connect(self, addr: tuple[str, int]) -> TcpPeer:
        sock = socket.create_connection(addr, timeout=10.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return TcpPeer(self, sock)

    def spawn(self, fn: Callable[[], None], name: str) -> None:
        def body() -> None:
            try:
                fn()
            except BaseException as e:      # handed to run()'s caller
                if self.error is None:
                    self.error = e
            finally:
                del self._actors[g]
        g = greenlet.greenlet(body, parent=self._hub)
        self._actors[g] = name
        self._ready.append(g)

    def sleep(self, seconds: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + seconds, self._seq,
                                      greenlet.getcurrent()))
        self._hub_switch()

    def _hub_switch(self) -> None:
        assert self._hub is not None, "actors block only inside run()"
        self._hub.switch()

    def _wait_fd(self, sock: socket.socket, mask: int) -> None:
        self._sel.register(sock, mask, greenlet.getcurrent())
        try:
            self._hub_switch()
        finally:
            self._sel.unregister(sock)

    def run(self, until: Callable[[], bool] | None = None, *,
            max_virtual_s: float = 120.0) -> None:
        """Run actors until each ended (or until() holds). Re-raises the
        first exception an actor raised; SimStall when none can proceed or
        max_virtual_s wall seconds pass."""
        self._hub = greenlet.getcurrent()
        for g in self._actors:
            g.parent = self._hub
        deadline = time.monotonic() + max_virtual_s
        while self._actors and self.error is None and not (until and until()):
            while self._ready and self.error is None:
                self.events += 1
                self._ready.pop(0).switch()
            if not self._actors or self.error is not None:
                break
            now = time.monotonic()
            if now > deadline:
                raise SimStall(f"actors {sorted(self._actors.values())} still running "
                               f"after {max_virtual_s} s")
            while self._timers and self._timers[0][0] <= now:
                self._ready.append(heapq.heappop(self._timers)[2])
            if self._ready:
                continue
            if not self._timers and not self._sel.get_map():
                raise SimStall(f"actors {sorted(self._actors.values())} wait for nothing")
            wait = deadline - now
            if self._timers:
                wait = min(wait, self._timers[0][0] - now)
            for key, _ in self._sel.select(max(wait, 0.0)):
                self._ready.append(key.data)
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def shutdown(self) -> None:
        self._sel.close()


class UscstadminControl:
    """TargetControl over a running uscstd's control socket: map and
    unmap one device at a LUN with the uscstadmin CLI (blocks the world
    for the call, about a tenth of a second)."""

    def __init__(self, socket_path: str, iqn: str, device: str) -> None:
        self.socket_path = socket_path
        self.iqn = iqn
        self.device = device

    def _admin(self, *args: str) -> None:
        argv = [*module_argv("uscstadmin"), "--socket", self.socket_path, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"uscstadmin {' '.join(args)}: {proc.stderr.strip()}")

    def map_lun(self, lun: int) -> None:
        self._admin("add-lun", self.iqn, str(lun), self.device)

    def unmap_lun(self, lun: int) -> None:
        self._admin("rem-lun", self.iqn, str(lun))
