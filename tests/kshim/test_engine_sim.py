"""kshim.engine_sim: virtual time, seeded choices, in-memory sockets and
disks, the trace hash, and the after-teardown checks."""
from __future__ import annotations

from typing import Any

import pytest

from kshim import bug, host
from kshim.completion import complete, completion, wait_for_completion
from kshim.engine_sim import SimPeer, SimStall, Simulation, check_determinism, teardown_problems
from kshim.err import ECONNRESET, ENOENT, ENOTCONN
from kshim.fs import O_CREAT, O_RDWR, filp_close, filp_open, vfs_readv, vfs_writev
from kshim.jiffies import jiffies, ktime_get_ns
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.net import (AF_INET, SOCK_STREAM, kernel_accept, kernel_bind, kernel_listen,
                       kernel_recvmsg, kernel_sendmsg, sock_create_kern, sock_release)
from kshim.sched import cond_resched
from kshim.timer import msleep, timer_list, timer_setup, mod_timer

ADDR = ("10.0.0.1", 3260)


@pytest.fixture(autouse=True)
def _clean_reports():
    bug.reset_reports()
    yield
    bug.reset_reports()


class EchoServer:
    """A kernel listening socket and one kthread per connection that echoes
    upper-cased bytes and logs the size of every receive."""

    def __init__(self) -> None:
        self.ls: Any = None
        self.threads: list = []
        self.conns: list = []
        self.recv_sizes: list[int] = []
        self.errors: list[int] = []

    def init(self) -> int:
        self.ls = sock_create_kern(AF_INET, SOCK_STREAM, 0)
        assert kernel_bind(self.ls, ADDR) == 0 and kernel_listen(self.ls, 8) == 0
        self.threads.append(kthread_run(self._accept, None, "accept"))
        return 0

    def _accept(self, _: Any) -> int:
        while not kthread_should_stop():
            c = kernel_accept(self.ls, 0)
            if isinstance(c, int):
                return 0
            self.conns.append(c)
            self.threads.append(kthread_run(self._echo, c, "echo"))
        return 0

    def _echo(self, c: Any) -> int:
        buf = bytearray(4096)
        while True:
            n = kernel_recvmsg(c, [memoryview(buf)], len(buf), 0)
            if n <= 0:
                if n < 0 and n != -ENOTCONN:      # -ENOTCONN: exit() released it
                    self.errors.append(n)
                break
            self.recv_sizes.append(n)
            kernel_sendmsg(c, [bytes(buf[:n]).upper()], 0)
        sock_release(c)
        return 0

    def exit(self) -> None:
        sock_release(self.ls)
        for c in self.conns:
            sock_release(c)                 # wakes an echo thread blocked in recv
        for t in self.threads:
            kthread_stop(t)


def _echo_run(seed: int, nconn: int = 3, payload: bytes = b"abcdefgh" * 64,
              trace: bool = False) -> tuple[Simulation, EchoServer, list[bytes]]:
    sim = Simulation(seed, trace=trace)
    srv = EchoServer()
    assert sim.boot(srv.init) == 0
    got: list[bytes] = []

    def client() -> None:
        p = sim.connect(ADDR)
        p.send(payload)
        data = b""
        while len(data) < len(payload):
            chunk = p.recv(1 << 16)
            assert chunk, "early EOF"
            data += chunk
        got.append(data)
        p.close()
    for i in range(nconn):
        sim.spawn(client, f"client{i}")
    sim.run()
    sim.shutdown(srv.exit)
    return sim, srv, got


def test_sim_boot_runs_init_under_virtual_time_and_skips_idle_time():
    sim = Simulation(1)

    def init() -> int:
        msleep(30_000)                      # a 30 s idle wait
        return ktime_get_ns() // 1_000_000
    ms = sim.boot(init)
    assert 30_000 <= ms <= 30_002           # timer slack is below a millisecond
    assert sim.now_ns >= 30 * 10**9 and sim.events < 10
    sim.shutdown(None)
    assert teardown_problems(sim) == []


def test_sim_echo_delivers_every_byte_in_order_on_every_connection():
    sim, srv, got = _echo_run(7)
    assert got == [b"ABCDEFGH" * 64] * 3
    assert srv.errors == []
    assert teardown_problems(sim) == []


def test_sim_same_seed_gives_the_same_trace_and_another_seed_another():
    a, _, _ = _echo_run(7, trace=True)
    b, _, _ = _echo_run(7, trace=True)
    c, _, _ = _echo_run(8, trace=True)
    assert a.trace_lines() == b.trace_lines() and a.trace_hash() == b.trace_hash()
    assert len(a.trace_hash()) == 16 and int(a.trace_hash(), 16) >= 0
    assert c.trace_hash() != a.trace_hash()


def test_sim_segments_split_and_merge_pdus_depending_on_the_seed():
    # One 512-byte send: across seeds it arrives whole at least once and
    # split into several receives at least once, always with the same bytes.
    splits = set()
    for seed in range(1, 13):
        _, srv, got = _echo_run(seed, nconn=1)
        assert got == [b"ABCDEFGH" * 64]
        splits.add(len(srv.recv_sizes) > 1)
    assert splits == {True, False}


def test_check_determinism_reports_a_scenario_that_is_not_deterministic():
    runs = [0]

    def flaky(sim: Simulation) -> None:
        runs[0] += 1
        sim.boot(lambda: (msleep(runs[0]), 0)[1])     # sleeps longer each run
    h = check_determinism(flaky, 5)
    assert h[0] != h[1]
    steady = check_determinism(lambda sim: sim.boot(lambda: (msleep(5), 0)[1]), 5)
    assert steady[0] == steady[1]


def test_sim_run_queue_choice_among_runnable_kthreads_follows_the_seed():
    def order(seed: int) -> list[int]:
        log: list[int] = []
        sim = Simulation(seed)

        def init() -> int:
            done = completion("all")
            left = [4]

            def worker(i: int) -> int:
                for _ in range(3):
                    log.append(i)
                    cond_resched()
                left[0] -= 1
                if not left[0]:
                    complete(done)
                return 0
            for i in range(4):
                kthread_run(worker, i, f"w{i}")
            wait_for_completion(done)
            return 0
        sim.boot(init)
        sim.shutdown(None)
        return log
    assert order(3) == order(3)
    assert len({tuple(order(s)) for s in range(1, 9)}) > 1


def test_sim_peer_reset_gives_the_kernel_econnreset():
    sim = Simulation(11)
    srv = EchoServer()
    sim.boot(srv.init)

    def client() -> None:
        p = sim.connect(ADDR)
        p.send(b"x")
        assert p.recv(10) == b"X"
        p.reset()
        with pytest.raises(ConnectionResetError):
            p.recv(10)
    sim.spawn(client, "client")
    sim.run()
    sim.run(until=lambda: bool(srv.errors))
    sim.shutdown(srv.exit)
    assert srv.errors == [-ECONNRESET]


def test_sim_stall_is_raised_when_an_actor_waits_for_bytes_that_never_come():
    sim = Simulation(2)
    srv = EchoServer()
    sim.boot(srv.init)
    peers: list[SimPeer] = []

    def client() -> None:
        p = sim.connect(ADDR)
        peers.append(p)
        p.recv(10)                          # the server echoes nothing unasked
    sim.spawn(client, "silent-client")
    with pytest.raises(SimStall, match="silent-client"):
        sim.run(max_virtual_s=60)
    sim.shutdown(srv.exit)


def test_sim_file_io_on_an_in_memory_disk_round_trips_in_virtual_time():
    sim = Simulation(4)
    sim.disks["/sim/d"] = bytearray(8192)

    def init() -> int:
        f = filp_open("/sim/d", O_RDWR)
        assert not isinstance(f, int)
        assert vfs_writev(f, [memoryview(b"hello"), memoryview(b" world")], 4090) == 11
        buf = bytearray(11)
        assert vfs_readv(f, [memoryview(buf)], 4090) == 11
        assert bytes(buf) == b"hello world"
        g = filp_open("/sim/new", O_RDWR | O_CREAT)
        assert not isinstance(g, int) and vfs_writev(g, [memoryview(b"z")], 3) == 1
        filp_close(g)
        filp_close(f)
        return 0
    assert sim.boot(init) == 0
    sim.shutdown(None)
    assert sim.disks["/sim/d"][4090:4101] == b"hello world"
    assert sim.disks["/sim/new"] == b"\0\0\0z"
    assert sim.now_ns > 0                   # the pool calls took virtual time
    assert filp_open_outside_sim_is_real()


def test_sim_reads_a_real_file_registered_with_add_real_file(tmp_path):
    path = tmp_path / "real.img"
    path.write_bytes(b"0123456789" * 100)
    sim = Simulation(6)
    sim.add_real_file(str(path))

    def init() -> Any:
        f = filp_open(str(path), O_RDWR)
        if isinstance(f, int):
            return f
        buf = bytearray(10)
        n = vfs_readv(f, [memoryview(buf)], 990)
        filp_close(f)
        return n, bytes(buf)
    assert sim.boot(init) == (10, b"0123456789")
    sim.shutdown(None)
    unregistered = Simulation(6)
    assert unregistered.boot(lambda: filp_open(str(path), O_RDWR)) == -ENOENT
    unregistered.shutdown(None)


def test_a_second_simulation_cannot_boot_while_one_runs():
    a, b = Simulation(1), Simulation(2)
    a.boot(lambda: 0)
    with pytest.raises(RuntimeError, match="already booted"):
        b.boot(lambda: 0)
    a.shutdown(None)
    assert b.boot(lambda: 7) == 7
    b.shutdown(None)


def filp_open_outside_sim_is_real() -> bool:
    """After shutdown the host-ops table is the real host's again."""
    return host.ops.monotonic_ns() > 10**9 and host.ops.sock_new.__module__ == "kshim.engine_posix"


def test_teardown_problems_names_a_leaked_kthread_and_a_pending_timer():
    sim = Simulation(9)
    tm = timer_list()

    def leaky_timer(_t: timer_list) -> None:
        pass

    def init() -> int:
        kthread_run(lambda _: (msleep(10**7), 0)[1], None, "leaky_thread")
        timer_setup(tm, leaky_timer)
        mod_timer(tm, jiffies() + 10**7)
        return 0
    sim.boot(init)
    sim.shutdown(None)
    problems = teardown_problems(sim)
    assert any("leaky_thread" in p for p in problems), problems
    assert any(p.startswith("timer:") and "leaky_timer" in p for p in problems), problems

