"""Drive a sans-IO InitiatorConnection over a blocking peer, from an actor.

A Channel couples tools/sim/initiator.py's protocol object with a peer
that has send(bytes), recv(n) (blocking the calling actor, b"" at EOF,
ConnectionResetError on a reset) and close(): the sim engine's SimPeer
or tools/sim/tcp.py's TcpPeer. It gives a scenario blocking verbs (login,
run a batch of commands at a queue depth, ping, task management, logout)
while the protocol object stays free of I/O.

Where it may be called from: an actor (a greenlet the world runs); it
blocks in peer.recv. A target that keeps sending without completing
anything (MAX_IDLE_RECEIVES receives in a row) ends the actor with
ChannelError; one that sends nothing is stopped by the world's own time
bound (SimStall).
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

from .initiator import (
    Command,
    CommandAborted,
    CommandComplete,
    Event,
    InitiatorConnection,
    LoginComplete,
    LoginFailed,
    LogoutComplete,
    PingComplete,
    TaskManagementComplete,
)
from .pdu import LOGOUT_CLOSE_SESSION, RESERVED_TAG

# Receives in a row that complete nothing before a wait gives up (a PDU
# may come a byte at a time: 256 KiB of Data-In is 262,192 receives).
MAX_IDLE_RECEIVES = 1_000_000


class Peer(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, n: int) -> bytes: ...

    def close(self) -> None: ...


class ChannelError(Exception):
    """The target ended the connection or refused what we asked."""


class LoginRefused(ChannelError):
    """The target answered the login with a failure status."""

    def __init__(self, status_class: int, status_detail: int) -> None:
        super().__init__(f"login failed: class 0x{status_class:02x} "
                         f"detail 0x{status_detail:02x}")
        self.status_class = status_class
        self.status_detail = status_detail


class Channel:
    """One connection's protocol object and its peer."""

    def __init__(self, conn: InitiatorConnection, peer: Peer) -> None:
        self.conn = conn
        self.peer = peer
        self.events: list[Event] = []      # every event, in order (for scenarios)
        self.eof = False
        self._idle = 0                     # receives in a row that completed nothing

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.eof:
            try:
                self.peer.send(data)
            except (ConnectionResetError, BrokenPipeError) as e:
                self._lost(f"send failed: {e}")

    def pump(self) -> list[Event]:
        """Send what is queued, receive once, return the new events."""
        self.flush()
        if self.eof:
            raise ChannelError("connection closed")
        try:
            chunk = self.peer.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self._lost("target closed the connection")
            raise ChannelError("target closed the connection")
        events = self.conn.receive_data(chunk)
        self.events.extend(events)
        self.flush()
        if events:
            self._idle = 0
        else:
            self._idle += 1
            if self._idle > MAX_IDLE_RECEIVES:
                raise ChannelError(f"{MAX_IDLE_RECEIVES} receives completed nothing")
        return events

    def _lost(self, why: str) -> None:
        self.eof = True
        self.conn.connection_lost(why)

    def wait_for(self, done: Callable[[], bool]) -> None:
        # Bounded: pump() raises after MAX_IDLE_RECEIVES idle receives, and
        # each event it returns is one of finitely many replies due.
        while not done():
            self.pump()

    def wait_closed(self) -> None:
        """Receive (answering what the protocol answers) until EOF."""
        try:
            self.wait_for(lambda: False)
        except ChannelError:
            if not self.eof:
                raise

    # -- verbs --

    def login(self, keys: dict[str, str] | None = None) -> LoginComplete:
        self.conn.start_login(keys)
        # Bounded as wait_for.
        while True:
            for ev in self.pump():
                if isinstance(ev, LoginComplete):
                    return ev
                if isinstance(ev, LoginFailed):
                    raise LoginRefused(ev.status_class, ev.status_detail)

    def submit(self, cdb: bytes, **kw: object) -> Command:
        if self.eof:
            raise ChannelError("connection closed")
        cmd = self.conn.submit(cdb, **kw)    # type: ignore[arg-type]
        self.flush()
        return cmd

    def wait(self, cmds: Iterable[Command]) -> None:
        pending = list(cmds)
        self.wait_for(lambda: all(c.finished for c in pending))

    def run(self, make: Iterable[Callable[["Channel"], Command]], depth: int) -> list[Command]:
        """Issue commands from make (each a function submitting one),
        keeping at most depth outstanding; return them all when finished."""
        out: list[Command] = []
        live: list[Command] = []
        it = iter(make)
        exhausted = False
        # Bounded as wait_for; make is finite.
        while True:
            live = [c for c in live if not c.finished]
            while not exhausted and len(live) < depth:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                cmd = nxt(self)
                out.append(cmd)
                live.append(cmd)
            if exhausted and not live:
                return out
            self.pump()

    def ping(self) -> None:
        itt = self.conn.nop_out()
        self.wait_for(lambda: any(isinstance(e, PingComplete) and e.itt == itt
                                  for e in self.events))

    def task_mgmt(self, function: int, *, ref_itt: int = RESERVED_TAG, lun: int = 0) -> int:
        itt = self.conn.task_mgmt(function, ref_itt=ref_itt, lun=lun)
        self.flush()
        found: list[int] = []

        def done() -> bool:
            for e in self.events:
                if isinstance(e, TaskManagementComplete) and e.itt == itt:
                    found.append(e.response)
                    return True
            return False
        self.wait_for(done)
        return found[0]

    def logout(self, reason: int = LOGOUT_CLOSE_SESSION) -> int:
        self.conn.logout(reason)
        found: list[int] = []

        def done() -> bool:
            for e in self.events:
                if isinstance(e, LogoutComplete):
                    found.append(e.response)
                    return True
            return False
        self.wait_for(done)
        self.wait_closed()
        self.peer.close()
        return found[0]

    def aborted(self) -> list[Command]:
        return [e.command for e in self.events if isinstance(e, CommandAborted)]

    def completed(self) -> list[Command]:
        return [e.command for e in self.events if isinstance(e, CommandComplete)]
