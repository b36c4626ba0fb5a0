"""kshim.engine_trio: socket readiness from the engine's epoll, through real
TCP sockets on 127.0.0.1 (kernel sockets served by the engine, the peers
plain host sockets driven from a host thread)."""
from __future__ import annotations

import select
import socket
import threading
from typing import Any, Callable

import pytest

from kshim import engine_trio, host
from kshim.err import EAGAIN, EINVAL
from kshim.host import io_job
from kshim.jiffies import jiffies
from kshim.net import (AF_INET, MSG_DONTWAIT, SOCK_STREAM, kernel_accept, kernel_bind,
                       kernel_getsockname, kernel_listen, kernel_recvmsg, kernel_sendmsg,
                       sock_create_kern, sock_release, sock_rx_armed)
from kshim.sysfs import sysfs_read, sysfs_write
from kshim.timer import mod_timer, timer_list, timer_setup
from kshim.wait import wait_event, wait_queue_head, wake_up

HOST_WAIT_S = 10.0           # bound on every host-side wait (a hang fails, never blocks)


class peers:
    """n host-side client sockets connected to a kernel listener, and the
    kernel side's accepted sockets, with a count of sk_data_ready and
    sk_write_space calls per accepted socket."""

    def __init__(self, n: int) -> None:
        ls = sock_create_kern(AF_INET, SOCK_STREAM, 0)
        assert not isinstance(ls, int), ls
        self.ls = ls
        assert kernel_bind(ls, ("127.0.0.1", 0)) == 0
        assert kernel_listen(ls, n) == 0
        name = kernel_getsockname(ls)
        assert not isinstance(name, int), name
        port = name[1]
        self.clients: list[socket.socket] = []
        t = threading.Thread(target=self._connect, args=(port, n))
        t.start()
        self.wq = wait_queue_head("test peers")
        self.rx = [0] * n
        self.tx = [0] * n
        self.socks: list[Any] = []
        for i in range(n):
            c = kernel_accept(self.ls, 0)
            assert not isinstance(c, int), c
            c.sk.sk_data_ready = self._counter(self.rx, i)
            c.sk.sk_write_space = self._counter(self.tx, i)
            self.socks.append(c)
        t.join(HOST_WAIT_S)
        assert len(self.clients) == n

    def _connect(self, port: int, n: int) -> None:
        for _ in range(n):
            self.clients.append(socket.create_connection(("127.0.0.1", port), HOST_WAIT_S))

    def _counter(self, counts: list[int], i: int) -> Callable[[Any], None]:
        def cb(_sk: Any) -> None:        # softirq context: count and wake, never sleep
            counts[i] += 1
            wake_up(self.wq)
        return cb

    def wait(self, cond: Callable[[], bool]) -> None:
        wait_event(self.wq, cond)

    def wait_rx(self, i: int, n: int) -> None:
        """Sleep until socket i has had n sk_data_ready calls."""
        wait_event(self.wq, lambda: self.rx[i] == n)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for s in self.socks:
            if s.sk.host is not None:
                sock_release(s)
        sock_release(self.ls)


def _until_readable(socks: list, what: str) -> None:
    """Host side: block until every kernel socket's host socket has bytes to
    read (the arrivals' edges are then queued in the engine's epoll)."""
    pending = [s.sk.host for s in socks]
    for _ in range(1000):
        if not pending:
            return
        ready, _, _ = select.select(pending, [], [], HOST_WAIT_S)
        pending = [h for h in pending if h not in ready]
    raise AssertionError(f"{what}: data never arrived")


def _drain(sock_: Any) -> bytes:
    buf = bytearray(65536)
    n = kernel_recvmsg(sock_, [memoryview(buf)], len(buf), MSG_DONTWAIT)
    assert n > 0, n
    return bytes(buf[:n])


def test_readiness_is_delivered_once_per_arming_then_again_after_a_short_receive(kernel):
    """sk_data_ready fires once for an armed socket however many segments
    arrive before the reader receives; a receive shorter than asked arms it
    again, and the next arrival fires it once more."""
    def body() -> list:
        p = peers(2)
        data, marker = p.socks
        p.clients[0].sendall(b"a" * 10)
        p.wait(lambda: p.rx[0] == 1)
        for i in range(5):              # data sits unread: no callback may follow
            p.clients[0].sendall(b"b" * 10)
            p.clients[1].sendall(b"m")  # after the data: its edge comes later
            p.wait_rx(1, i + 1)
            assert _drain(marker) == b"m" and sock_rx_armed(marker)
        seen: list[Any] = [p.rx[0]]
        got = _drain(data)              # everything, fewer bytes than asked: armed
        seen += [len(got), sock_rx_armed(data)]
        p.clients[0].sendall(b"c")
        p.wait(lambda: p.rx[0] == 2)
        seen.append(_drain(data))
        p.close()
        return seen
    assert kernel(body) == [1, 60, True, b"c"]


def test_many_ready_sockets_are_delivered_in_one_pass(kernel):
    """Eight sockets that became readable while the CPU was busy get their
    eight sk_data_ready calls from one epoll batch, and
    /sys/kernel/engine/readiness shows the engine's counters."""
    def body() -> tuple:
        p = peers(8)
        for c in p.clients:
            c.sendall(b"x")
        _until_readable(p.socks, "eight sends")
        before = dict(engine_trio.stats)
        p.wait(lambda: sum(p.rx) == 8)
        after = dict(engine_trio.stats)
        shown = sysfs_read("kernel/engine/readiness")
        got = [_drain(s) for s in p.socks]
        p.close()
        return (p.rx, after["rx_events"] - before["rx_events"],
                after["ready_passes"] - before["ready_passes"], got, shown, after)
    rx, events, passes, got, shown, after = kernel(body)
    assert (rx, events, passes, got) == ([1] * 8, 8, 1, [b"x"] * 8)
    # The live tree shows the same counters: 8 sockets and the listener.
    fields = dict(line.split() for line in shown.splitlines())
    assert fields["sockets"] == "9"
    assert int(fields["ready_passes"]) == after["ready_passes"]
    assert int(fields["rx_events"]) == after["rx_events"]


def test_a_socket_detached_while_armed_gets_no_callback_and_leaves_the_epoll(kernel):
    """sock_release of an armed socket: its peer's data and close reach no
    callback, the engine forgets its fd, and the other sockets are served."""
    def body() -> tuple:
        p = peers(2)
        gone, other = p.socks
        fd = gone.sk.engine_priv
        assert engine_trio._socks.get(fd) is gone.sk
        sock_release(gone)
        watched = engine_trio._socks.get(fd) is not None
        try:
            p.clients[0].sendall(b"late")
        except OSError:
            pass                          # reset: the kernel side is closed
        p.clients[0].close()
        p.clients[1].sendall(b"m")
        p.wait(lambda: p.rx[1] == 1)
        seen = (p.rx[0], watched, _drain(other))
        p.clients.pop(0)
        p.socks.pop(0)
        p.close()
        return seen
    assert kernel(body) == (0, False, b"m")


def test_a_peer_close_while_armed_fires_data_ready_and_the_receive_sees_end_of_stream(kernel):
    """The peer closes a socket that waits armed with nothing to read: the
    reader is called once and its receive returns 0 (end of stream)."""
    def body() -> tuple:
        p = peers(1)
        s = p.socks[0]
        buf = bytearray(16)
        first = kernel_recvmsg(s, [memoryview(buf)], 16, MSG_DONTWAIT)
        p.clients[0].close()
        p.wait(lambda: p.rx[0] == 1)
        seen = (first, p.rx[0], kernel_recvmsg(s, [memoryview(buf)], 16, MSG_DONTWAIT))
        p.clients.clear()
        p.close()
        return seen
    assert kernel(body) == (-EAGAIN, 1, 0)


@pytest.mark.parametrize("size_given", [False, True], ids=["size_counted", "size_given"])
def test_write_space_fires_once_after_a_full_socket_drains(kernel, size_given):
    """A send that found the socket full arms sk_write_space; it fires once
    when the peer has read enough to make room. The same when the sender
    passes the kvecs' size (as the iSCSI flush does) instead of having it
    counted."""
    def body() -> tuple:
        p = peers(1)
        s = p.socks[0]
        chunk = memoryview(bytes(1 << 20))
        size = len(chunk) if size_given else -1
        sent = 0
        for _ in range(1000):             # until the socket buffers are full
            n = kernel_sendmsg(s, [chunk], MSG_DONTWAIT, size)
            if n < len(chunk):
                sent += max(n, 0)
                break
            sent += n
        armed_before = p.tx[0]
        reader = threading.Thread(target=_read_exactly, args=(p.clients[0], sent))
        reader.start()
        p.wait(lambda: p.tx[0] == 1)
        reader.join(HOST_WAIT_S)
        seen = (armed_before, p.tx[0], reader.is_alive())
        p.close()
        return seen
    assert kernel(body) == (0, 1, False)


def _read_exactly(c: socket.socket, n: int) -> None:
    while n > 0:
        got = c.recv(min(n, 1 << 20))
        if not got:
            return
        n -= len(got)


def _busy_poll_counters() -> dict:
    return dict(engine_trio.busy_poll_stats, passes=engine_trio.stats["ready_passes"])


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


class _pinger:
    """A host thread that sends a byte and waits for the echo, `rounds`
    times or until stopped, then sends b"q": one request in flight, as a
    QD1 initiator."""

    def __init__(self, c: socket.socket, rounds: int) -> None:
        self.stop = False
        self.done = 0
        self.t = threading.Thread(target=self._run, args=(c, rounds))
        self.t.start()

    def _run(self, c: socket.socket, rounds: int) -> None:
        for _ in range(rounds):
            if self.stop:
                break
            c.sendall(b"p")
            if not c.recv(1):
                return
            self.done += 1
        c.sendall(b"q")

    def join(self) -> None:
        self.t.join(HOST_WAIT_S)
        assert not self.t.is_alive()


def _echo(p: peers, until: Callable[[], bool] = lambda: False) -> int:
    """Kernel side of _pinger: echo each request until its b"q" (or until()
    holds after an echo); returns the requests echoed."""
    s, n = p.socks[0], 0
    buf = bytearray(64)
    for _ in range(1 << 20):
        seen = p.rx[0]
        got = kernel_recvmsg(s, [memoryview(buf)], 64, MSG_DONTWAIT)
        if got == -EAGAIN:
            p.wait(lambda seen=seen: p.rx[0] > seen)
            continue
        assert got > 0, got
        if buf[got - 1:got] == b"q":
            return n + got - 1
        assert kernel_sendmsg(s, [memoryview(buf)[:got]], 0) == got
        n += got
        if until():
            return n
    raise AssertionError("the pinger never stopped")


def test_busy_poll_tunable_turns_polling_on_and_off_and_the_counters_show_it(kernel):
    """/sys/kernel/engine/busy_poll: at 0 a pass never polls; at 200 us
    every pass ends in a busy-poll or a yield to trio (passes = polls +
    yields); a bad value is refused and changes nothing."""
    def body() -> tuple:
        p = peers(1)
        old = sysfs_read("kernel/engine/busy_poll")
        refused = [sysfs_write("kernel/engine/busy_poll", v) for v in ("x", "-1", "10001")]
        kept = sysfs_read("kernel/engine/busy_poll")
        deltas = []
        for us in ("0", "200"):
            assert sysfs_write("kernel/engine/busy_poll", us) == len(us)
            ping = _pinger(p.clients[0], 300)
            p.wait(lambda: p.rx[0] > 0)       # inside a readiness pass from here on
            a = _busy_poll_counters()
            echoed = _echo(p)
            b = _busy_poll_counters()
            ping.join()
            deltas.append((echoed, _delta(a, b)))
            p.rx[0] = 0
        shown = dict(line.split() for line in sysfs_read("kernel/engine/readiness").splitlines())
        shown["now"] = str(engine_trio.busy_poll_stats["polls"])
        sysfs_write("kernel/engine/busy_poll", old)
        p.close()
        return old, refused, kept, deltas, shown
    old, refused, kept, deltas, shown = kernel(body)
    assert refused == [-EINVAL] * 3 and kept == old
    (n_off, off), (n_on, on) = deltas
    assert n_off == n_on == 300
    assert (off["polls"], off["hits"], off["spins"], off["yields"]) == (0, 0, 0, 0)
    assert off["passes"] > 0
    assert on["passes"] > 0 and on["passes"] == on["polls"] + on["yields"]
    assert on["spins"] >= on["polls"] >= on["hits"]
    assert shown["busy_poll_us"] == "200"
    assert shown["busy_polls"] == shown["now"]


def test_a_due_timer_ends_a_busy_poll_run_that_never_runs_dry(kernel, monkeypatch):
    """Every pass leaves the next request already queued (the reader's own
    send over loopback), so the busy-poll always hits and, with the run
    limit lifted, only a due timer can give trio its turn: the timer fires
    while the requests go on, and the yield is counted."""
    monkeypatch.setattr(engine_trio, "BUSY_POLL_RUN_US", 10 ** 9)

    def body() -> tuple:
        p = peers(1)
        k, c = p.socks[0], p.clients[0]
        old = sysfs_read("kernel/engine/busy_poll")
        assert sysfs_write("kernel/engine/busy_poll", "50") == 2
        fired: list[int] = []
        t = timer_list()

        def fn(_t: timer_list) -> None:    # softirq: note when, and wake the reader
            fired.append(jiffies())
            wake_up(p.wq)
        timer_setup(t, fn)
        c.sendall(b"r")
        p.wait(lambda: p.rx[0] > 0)
        a = _busy_poll_counters()
        expires = jiffies() + 2
        mod_timer(t, expires)
        rounds = after = 0
        buf = bytearray(64)
        while rounds < 100000:
            rounds += 1
            seen = p.rx[0]
            got = kernel_recvmsg(k, [memoryview(buf)], 64, MSG_DONTWAIT)
            assert got > 0, got              # each wake-up finds its request
            if fired:
                after += 1
                if after == 100:
                    break
            c.send(b"r")                     # the next request, queued before the pass ends
            p.wait(lambda seen=seen: p.rx[0] > seen)
        b = _busy_poll_counters()
        sysfs_write("kernel/engine/busy_poll", old)
        p.close()
        return expires, fired, rounds, _delta(a, b)
    expires, fired, rounds, d = kernel(body)
    assert len(fired) == 1 and fired[0] >= expires
    assert rounds < 100000                   # the timer fired while requests went on
    assert d["yields"] >= 1 and d["hits"] >= rounds - d["yields"] - 1


def _self_fed_rounds(p: peers, n: int) -> None:
    """n wake-ups of socket 0, each finding the request the previous one
    queued over loopback before its pass ended."""
    k, c = p.socks[0], p.clients[0]
    buf = bytearray(64)
    for _ in range(n):
        seen = p.rx[0]
        assert kernel_recvmsg(k, [memoryview(buf)], 64, MSG_DONTWAIT) > 0
        c.send(b"r")
        p.wait(lambda seen=seen: p.rx[0] > seen)


def test_busy_poll_gives_way_while_the_io_pool_has_a_job(kernel, monkeypatch):
    """While a job is in the host I/O pool (its completion comes through
    trio), every pass returns to trio instead of polling; once it has
    completed, the same requests are busy-polled again."""
    monkeypatch.setattr(engine_trio, "BUSY_POLL_RUN_US", 10 ** 9)

    def body() -> tuple:
        p = peers(1)
        old = sysfs_read("kernel/engine/busy_poll")
        assert sysfs_write("kernel/engine/busy_poll", "50") == 2
        p.clients[0].sendall(b"r")
        p.wait(lambda: p.rx[0] > 0)
        gate = threading.Event()
        done: list[int] = []

        def complete(j: io_job) -> None:   # softirq: note the result, wake the test
            done.append(j.result)
            wake_up(p.wq)
        host.ops.io_submit(io_job(lambda: int(not gate.wait(HOST_WAIT_S)), (), complete))
        a = _busy_poll_counters()
        _self_fed_rounds(p, 50)
        b = _busy_poll_counters()
        gate.set()
        p.wait(lambda: bool(done))
        _self_fed_rounds(p, 1)
        c = _busy_poll_counters()
        _self_fed_rounds(p, 50)
        d = _busy_poll_counters()
        sysfs_write("kernel/engine/busy_poll", old)
        p.close()
        return done, _delta(a, b), _delta(c, d)
    done, busy, free = kernel(body)
    assert done == [0]
    assert busy["passes"] >= 50 and busy["polls"] == 0 and busy["yields"] == busy["passes"]
    assert free["passes"] >= 50 and free["hits"] >= 49
