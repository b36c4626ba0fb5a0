"""The sim engine's network: in-memory TCP connections with seeded timing.

Part of kshim.engine_sim (the socket and readiness operations of the
host-ops table, and SimPeer, the outside end of a connection).

The model, per connection, each direction a byte stream:
- Bytes sent travel as segments; each segment's size is drawn from the
  seed (a PDU may arrive split at any byte, or several PDUs in one segment),
  and so is its latency; segments of one direction arrive in order, strictly
  one after another in virtual time. Connections are independent, so their
  segments interleave in a seeded order.
- Kernel -> outside: a send window per connection (seeded, 16 KiB..1 MiB)
  counts bytes sent and not yet read by the peer; a full window makes
  kernel_sendmsg short or -EAGAIN, and sk_write_space follows when the peer
  reads. Outside -> kernel: unbounded (actors never block in send).
- A send with MSG_MORE stays in the socket (cork) until a send without
  it, a send the window cuts short or refuses, or a close: then what the
  socket holds is cut into segments as one stream. sock_sendfile reads the
  range through the sim's files and sends it as sock_sendmsg does.
- Readiness is edge-triggered per arming, as in the trio engine: an armed
  socket gets one sk_data_ready / sk_write_space, delivered as an event.
- close() sends FIN after the data already sent; reset() sends RST, which
  overtakes data: the kernel's next receive or send answers -ECONNRESET.

Contexts: the operations run on the CPU (any context, never sleep); SimPeer
methods run in actors (or the driving greenlet, which then runs the
simulation until the call can return).

Differs from TCP: no loss, no retransmission, no Nagle, no RST when a
socket closes with unread data, no outgoing kernel connections.
"""
from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING, Any

from kshim import host, softirq

if TYPE_CHECKING:
    from kshim.engine_sim import Simulation, _actor

_MSS_CHOICES = (1, 48, 536, 1448, 9000, 65536)


class sim_sock:
    """The kernel end of a simulated socket (sk.host under the sim)."""

    __slots__ = ("sid", "family", "addr", "peer_addr", "listening", "backlog", "rx", "rx_eof",
                 "reset", "closed", "wr_shut", "peer", "sk", "opts", "window", "inflight",
                 "rx_event", "tx_event", "last_to_peer", "cork")

    def __init__(self, sid: int, family: int) -> None:
        self.sid = sid
        self.family = family
        self.addr: tuple | None = None
        self.peer_addr: tuple | None = None
        self.listening = False
        self.backlog: deque[sim_sock] = deque()
        self.rx = bytearray()           # arrived from the peer, not yet received
        self.rx_eof = False             # the peer's FIN arrived
        self.reset = False              # an RST arrived
        self.closed = False             # released by the kernel
        self.wr_shut = False            # kernel_sock_shutdown(SHUT_WR) done
        self.peer: SimPeer | None = None
        self.sk: Any = None             # the kshim sock while attached
        self.opts: dict[tuple[int, int], int] = {}
        self.window = 0
        self.inflight = 0               # sent to the peer, not yet read by it
        self.rx_event = False           # a readiness event is queued
        self.tx_event = False
        self.last_to_peer = 0           # arrival time of the last segment sent
        self.cork = bytearray()         # sent with MSG_MORE, not yet cut into segments

    def readable(self) -> bool:
        return bool(self.rx) or self.rx_eof or self.reset or bool(self.backlog)

    def writable(self) -> bool:
        """Worth a sk_write_space: a quarter of the window is free (no
        silly-window trickle of one-byte sends, as TCP's receiver-side
        window update rule avoids), or the connection was reset. (A closed
        peer drops what arrives, which frees the window.)"""
        return self.reset or self.window - self.inflight >= self.window // 4


class SimPeer:
    """An outside host's end of a TCP connection to a kernel socket."""

    def __init__(self, sim: "Simulation", cid: int, ks: sim_sock) -> None:
        self._sim = sim
        self.cid = cid
        self._ks = ks
        self._rx = bytearray()
        self._eof = False
        self._reset = False
        self.closed = False
        self._waiter: _actor | None = None
        self._last_to_kernel = 0

    def __repr__(self) -> str:
        return f"<SimPeer c{self.cid}>"

    def send(self, data: bytes) -> None:
        """Send data: it reaches the kernel socket in seeded segments with
        seeded latency. ConnectionResetError after a reset, BrokenPipeError
        after close()."""
        if self._reset:
            raise ConnectionResetError(f"c{self.cid}: connection reset")
        if self.closed:
            raise BrokenPipeError(f"c{self.cid}: send after close")
        if not data:
            return
        net = self._sim.net
        for seg in net.segments(bytes(data)):
            t = max(self._last_to_kernel + 1, self._sim.now_ns + net.latency())
            self._last_to_kernel = t
            self._sim.schedule_at(t, self._ks_arrive, seg, f"seg c{self.cid} >k {len(seg)}")

    def _ks_arrive(self, seg: bytes) -> None:
        ks = self._ks
        if ks.closed or ks.reset:
            return
        ks.rx += seg
        self._sim.net.kick_rx(ks)

    def recv(self, n: int) -> bytes:
        """Up to n bytes, at least one; b"" at end of stream (the kernel
        closed). Blocks the calling actor until then. ConnectionResetError
        after a reset."""
        self._sim.wait_for(lambda: bool(self._rx) or self._eof or self._reset, self._register)
        if self._reset:
            raise ConnectionResetError(f"c{self.cid}: connection reset")
        if not self._rx:
            return b""
        data = bytes(self._rx[:n])
        del self._rx[:n]
        ks = self._ks
        ks.inflight -= len(data)
        self._sim.net.kick_tx(ks)
        return data

    def _register(self, a: "_actor") -> None:
        self._waiter = a

    def _wake(self, what: str) -> None:
        a = self._waiter
        if a is not None:
            self._waiter = None
            self._sim.wake(a, what)

    def _peer_arrive(self, seg: bytes) -> None:
        if self._reset:
            return
        if self.closed:
            self._ks.inflight -= len(seg)    # dropped by a closed peer: frees the window
            self._sim.net.kick_tx(self._ks)
            return
        self._rx += seg
        self._wake(f"c{self.cid}")

    def _peer_fin(self, _: Any) -> None:
        self._eof = True
        self._wake(f"c{self.cid} fin")

    def _peer_rst(self, _: Any) -> None:
        self._reset = True
        self._wake(f"c{self.cid} rst")

    def close(self) -> None:
        """Close: FIN reaches the kernel after the data already sent."""
        if self.closed or self._reset:
            self.closed = True
            return
        self.closed = True
        self._drop_rx()
        t = max(self._last_to_kernel + 1, self._sim.now_ns + self._sim.net.latency())
        self._last_to_kernel = t
        self._sim.schedule_at(t, self._ks_fin, None, f"fin c{self.cid} >k")

    def _ks_fin(self, _: Any) -> None:
        ks = self._ks
        if not ks.closed:
            ks.rx_eof = True
            self._sim.net.kick_rx(ks)
            self._sim.net.kick_tx(ks)

    def reset(self) -> None:
        """Abort the connection: RST reaches the kernel after one latency,
        overtaking data in flight; this end's recv/send raise
        ConnectionResetError from now on."""
        if self._reset:
            return
        self._reset = True
        self.closed = True
        self._drop_rx()
        self._sim.schedule(self._sim.net.latency(), self._ks_rst, None, f"rst c{self.cid} >k")

    def _drop_rx(self) -> None:
        """Discard what arrived unread; it no longer holds the window."""
        self._ks.inflight -= len(self._rx)
        self._rx.clear()
        self._sim.net.kick_tx(self._ks)

    def _ks_rst(self, _: Any) -> None:
        ks = self._ks
        if ks.closed:
            return
        ks.reset = True
        ks.rx.clear()
        self._sim.net.kick_rx(ks)
        self._sim.net.kick_tx(ks)


class sim_net:
    """The simulated network of one Simulation and its socket operations."""

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        self._next_sid = 0
        self._next_cid = 0
        self._next_port = 40000
        self.listeners: dict[tuple, sim_sock] = {}
        self.socks: list[sim_sock] = []

    # -- seeded choices -------------------------------------------------------

    def latency(self) -> int:
        return self.sim.draw(self.sim.net_latency_ns)

    def segments(self, data: bytes) -> list[bytes]:
        """data cut into seeded segments."""
        rng = self.sim.rng
        out = []
        i, n = 0, len(data)
        while i < n:
            left = n - i
            if rng.random() < 0.5:
                size = min(left, 65536)
            else:
                size = rng.randint(1, min(left, rng.choice(_MSS_CHOICES)))
            out.append(data[i:i + size])
            i += size
        return out

    # -- readiness --------------------------------------------------------------

    def kick_rx(self, s: sim_sock) -> None:
        """Queue a readiness event if s is armed for receive and readable."""
        sk = s.sk
        if sk is not None and sk.rx_armed and not s.rx_event and s.readable():
            s.rx_event = True
            self.sim.schedule(0, self._rx_event, s, f"rx s{s.sid}")

    def kick_tx(self, s: sim_sock) -> None:
        sk = s.sk
        if sk is not None and sk.tx_armed and not s.tx_event and s.writable():
            s.tx_event = True
            self.sim.schedule(0, self._tx_event, s, f"tx s{s.sid}")

    def _rx_event(self, s: sim_sock) -> None:
        s.rx_event = False
        sk = s.sk
        if sk is not None and sk.rx_armed and s.readable():
            sk.rx_armed = False
            softirq.softirq_run(sk.sk_data_ready, sk)

    def _tx_event(self, s: sim_sock) -> None:
        s.tx_event = False
        sk = s.sk
        if sk is not None and sk.tx_armed and s.writable():
            sk.tx_armed = False
            softirq.softirq_run(sk.sk_write_space, sk)

    def sock_attach(self, sk: Any) -> None:
        s = sk.host
        if sk.engine_priv is not None or not isinstance(s, sim_sock):
            return
        sk.engine_priv = s
        s.sk = sk
        sk.rx_armed = True
        self.kick_rx(s)

    def sock_arm_rx(self, sk: Any) -> None:
        if not sk.rx_armed:
            sk.rx_armed = True
            s = sk.engine_priv
            if s is not None:
                self.kick_rx(s)

    def sock_arm_tx(self, sk: Any) -> None:
        if not sk.tx_armed:
            sk.tx_armed = True
            s = sk.engine_priv
            if s is not None:
                self.kick_tx(s)

    def sock_detach(self, sk: Any) -> None:
        s = sk.host
        if s is None:
            return
        sk.engine_priv = None
        sk.host = None
        self._close(s)

    def _close(self, s: sim_sock) -> None:
        if s.closed:
            return
        s.closed = True
        s.sk = None
        if s.listening:
            if self.listeners.get(s.addr) is s:
                del self.listeners[s.addr]
            while s.backlog:
                self._close(s.backlog.popleft())
            return
        p = s.peer
        if p is not None and not s.reset and not s.wr_shut:
            self._fin_to_peer(s)

    def _fin_to_peer(self, s: sim_sock) -> None:
        self._push(s)
        p = s.peer
        t = max(s.last_to_peer + 1, self.sim.now_ns + self.latency())
        s.last_to_peer = t
        self.sim.schedule_at(t, p._peer_fin, None, f"fin c{p.cid} >p")

    # -- outside connections ----------------------------------------------------

    def connect(self, addr: tuple[str, int]) -> SimPeer:
        key = (addr[0], addr[1])
        ls = self.listeners.get(key)
        if ls is None:
            raise ConnectionRefusedError(f"nothing listens on {addr[0]}:{addr[1]} in the sim")
        self._next_cid += 1
        cid = self._next_cid
        ks = self._new(ls.family)
        ks.addr = key
        ks.peer_addr = (f"fd00::{cid:x}", 50000 + cid, 0, 0) if ls.family == host.AF_INET6 \
            else (f"10.1.{cid // 250}.{cid % 250 + 1}", 50000 + cid)
        ks.window = self.sim.rng.choice((16384, 65536, 262144, 1 << 20))
        peer = SimPeer(self.sim, cid, ks)
        ks.peer = peer
        self.sim.schedule(self.latency(), self._syn, (ls, ks), f"syn c{cid} >k")
        return peer

    def _syn(self, arg: tuple[sim_sock, sim_sock]) -> None:
        ls, ks = arg
        if ls.closed or not ls.listening:
            ks.closed = True
            p = ks.peer
            self.sim.schedule(self.latency(), p._peer_rst, None, f"rst c{p.cid} >p")
            return
        ls.backlog.append(ks)
        self.kick_rx(ls)

    def _new(self, family: int) -> sim_sock:
        self._next_sid += 1
        s = sim_sock(self._next_sid, family)
        self.socks.append(s)
        return s

    def release(self) -> None:
        """At shutdown: every socket closes, every peer sees a reset."""
        for s in self.socks:
            s.closed = True
            s.sk = None
            if s.peer is not None:
                s.peer._reset = True
        self.socks.clear()
        self.listeners.clear()

    # -- the socket operations of the host-ops table -----------------------------

    def fill_ops(self, t: host.host_operations) -> None:
        t.sock_new = self.sock_new
        t.sock_bind = self.sock_bind
        t.sock_listen = self.sock_listen
        t.sock_accept = self.sock_accept
        t.sock_connect = self.sock_connect
        t.sock_setsockopt = self.sock_setsockopt
        t.sock_getsockopt = self.sock_getsockopt
        t.sock_name = self.sock_name
        t.sock_error = self.sock_error
        t.sock_shutdown = self.sock_shutdown
        t.sock_recv_into = self.sock_recv_into
        t.sock_recvmsg_into = self.sock_recvmsg_into
        t.sock_sendmsg = self.sock_sendmsg
        t.sock_sendfile = self.sock_sendfile
        t.sock_attach = self.sock_attach
        t.sock_arm_rx = self.sock_arm_rx
        t.sock_arm_tx = self.sock_arm_tx
        t.sock_detach = self.sock_detach

    def sock_new(self, family: int, type_: int, proto: int) -> "sim_sock | int":
        if family not in (host.AF_INET, host.AF_INET6) or type_ != host.SOCK_STREAM:
            return -errno.EAFNOSUPPORT
        return self._new(family)

    def sock_bind(self, s: sim_sock, addr: tuple) -> int:
        if s.addr is not None:
            return -errno.EINVAL
        h, port = addr[0], addr[1]
        if port == 0:
            self._next_port += 1
            port = self._next_port
        key = (h, port)
        if key in self.listeners or any(x.addr == key and not x.closed and x.peer is None
                                        for x in self.socks):
            return -errno.EADDRINUSE
        s.addr = key
        return 0

    def sock_listen(self, s: sim_sock, backlog: int) -> int:
        if s.addr is None:
            return -errno.EINVAL
        s.listening = True
        self.listeners[s.addr] = s
        return 0

    def sock_accept(self, s: sim_sock) -> "tuple[sim_sock, tuple] | int":
        if not s.listening:
            return -errno.EINVAL
        if not s.backlog:
            return -errno.EAGAIN
        ks = s.backlog.popleft()
        return ks, ks.peer_addr

    def sock_connect(self, s: sim_sock, addr: "tuple | str") -> int:
        return -errno.ENETUNREACH

    def sock_setsockopt(self, s: sim_sock, level: int, opt: int, val: int) -> int:
        s.opts[(level, opt)] = val
        return 0

    def sock_getsockopt(self, s: sim_sock, level: int, opt: int) -> int:
        if (level, opt) == (host.SOL_SOCKET, host.SO_SNDBUF):
            return s.window or 16384
        return s.opts.get((level, opt), 0)

    def sock_name(self, s: sim_sock, peer: bool) -> "tuple | int":
        a = s.peer_addr if peer else s.addr
        if a is None:
            return -errno.ENOTCONN
        if s.family == host.AF_INET6 and len(a) == 2:
            return (a[0], a[1], 0, 0)
        return a

    def sock_error(self, s: sim_sock) -> int:
        return -errno.ECONNRESET if s.reset else 0

    def sock_shutdown(self, s: sim_sock, how: int) -> int:
        if s.peer is None:
            return -errno.ENOTCONN
        if how in (host.SHUT_WR, host.SHUT_RDWR) and not s.wr_shut and not s.reset:
            s.wr_shut = True
            self._fin_to_peer(s)
        return 0

    def sock_recv_into(self, s: sim_sock, buf: Any, flags: int) -> int:
        if s.reset:
            return -errno.ECONNRESET
        rx = s.rx
        if not rx:
            return 0 if s.rx_eof else -errno.EAGAIN
        n = min(len(buf), len(rx))
        buf[:n] = rx[:n]
        if not flags & host.MSG_PEEK:
            del rx[:n]
        return n

    def sock_recvmsg_into(self, s: sim_sock, bufs: list, flags: int) -> int:
        if s.reset:
            return -errno.ECONNRESET
        rx = s.rx
        if not rx:
            return 0 if s.rx_eof else -errno.EAGAIN
        got = 0
        for b in bufs:
            k = min(len(b), len(rx) - got)
            if k <= 0:
                break
            b[:k] = rx[got:got + k]
            got += k
        if not flags & host.MSG_PEEK:
            del rx[:got]
        return got

    def sock_sendmsg(self, s: sim_sock, bufs: list, flags: int) -> int:
        if s.reset:
            return -errno.ECONNRESET
        p = s.peer
        if p is None:
            return -errno.ENOTCONN
        if s.wr_shut or s.closed or (p.closed and s.rx_eof):
            return -errno.EPIPE
        space = s.window - s.inflight
        if space <= 0:
            self._push(s)
            return -errno.EAGAIN
        cork = s.cork
        before = len(cork)
        for b in bufs:
            k = min(len(b), space - (len(cork) - before))
            if k <= 0:
                break
            cork += memoryview(b)[:k]
        n = len(cork) - before
        s.inflight += n
        if not flags & host.MSG_MORE or n < host.iov_len(bufs):
            # Sent without MSG_MORE, or the window is full: what the
            # socket holds goes (a segment TCP would not hold back).
            self._push(s)
        return n

    def sock_sendfile(self, s: sim_sock, fd: int, pos: int, count: int, flags: int) -> int:
        """Read the range through the sim's files (one seeded-free call),
        then send it as sock_sendmsg does: 0 when the file ends at pos."""
        if s.reset:
            return -errno.ECONNRESET
        buf = bytearray(count)
        n = self.sim.files.file_preadv(fd, [buf], pos)
        if n <= 0:
            return n
        return self.sock_sendmsg(s, [memoryview(buf)[:n]], flags)

    def _push(self, s: sim_sock) -> None:
        """Cut what the socket holds (cork) into segments on their way."""
        data = s.cork
        if not data:
            return
        s.cork = bytearray()
        p = s.peer
        sim = self.sim
        for seg in self.segments(bytes(data)):
            t = max(s.last_to_peer + 1, sim.now_ns + self.latency())
            s.last_to_peer = t
            sim.schedule_at(t, p._peer_arrive, seg, f"seg c{p.cid} >p {len(seg)}")
