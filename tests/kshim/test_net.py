"""kshim.net: receive readiness (sk_data_ready arming) under the sim engine."""
from __future__ import annotations

from typing import Any

from kshim.engine_sim import Simulation
from kshim.err import EAGAIN
from kshim.kthread import kthread_run
from kshim.net import (AF_INET, MSG_DONTWAIT, SOCK_STREAM, kernel_accept, kernel_bind,
                       kernel_listen, kernel_recvmsg, sock_create_kern, sock_release,
                       sock_rx_armed)
from kshim.timer import msleep

ADDR = ("10.0.0.1", 3260)


def test_short_receive_arms_data_ready_and_a_full_one_does_not():
    """Seed 5. A receive that fills its buffer may have left bytes behind:
    no sk_data_ready is due, the reader must receive again. One that got
    fewer bytes than asked drained the socket and armed sk_data_ready, so
    the reader may sleep without the receive that would return -EAGAIN."""
    sim = Simulation(5)
    log: list[Any] = []
    socks: list[Any] = []

    def server(_: Any) -> int:
        c = kernel_accept(socks[0], 0)
        msleep(100)                              # every segment has arrived
        buf = bytearray(4096)
        log.append(("full", kernel_recvmsg(c, [memoryview(buf)[:4]], 4, MSG_DONTWAIT),
                    sock_rx_armed(c)))
        log.append(("short", kernel_recvmsg(c, [memoryview(buf)], 4096, MSG_DONTWAIT),
                    sock_rx_armed(c)))
        log.append(("empty", kernel_recvmsg(c, [memoryview(buf)], 4096, MSG_DONTWAIT),
                    sock_rx_armed(c)))
        sock_release(c)
        return 0

    def init() -> int:
        ls = sock_create_kern(AF_INET, SOCK_STREAM, 0)
        assert kernel_bind(ls, ADDR) == 0 and kernel_listen(ls, 1) == 0
        socks.append(ls)
        kthread_run(server, None, "server")
        return 0

    assert sim.boot(init) == 0

    def client() -> None:
        p = sim.connect(ADDR)
        p.send(b"0123456789")
        p.recv(10)                               # until the server closes
        p.close()
    sim.spawn(client, "client")
    sim.run(until=lambda: len(log) == 3)
    sim.shutdown(lambda: sock_release(socks[0]))
    assert log == [("full", 4, False), ("short", 6, True), ("empty", -EAGAIN, True)]
