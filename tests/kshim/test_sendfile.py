"""kshim.net's kernel_sendfile and kshim.filemap on the trio engine: real
files, real TCP on 127.0.0.1 (the peer a plain host socket read from a host
thread), the bytes compared with the file's."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

from kshim import fault_inject as fi
from kshim.err import EAGAIN, EIO, EOPNOTSUPP
from kshim.fault_sock import fail_sock_send, fail_sock_sendfile
from kshim.filemap import file_extent, filemap_range_cached
from kshim.fs import O_DIRECT, O_RDONLY, O_RDWR, filp_close, filp_open, vfs_truncate
from kshim.net import (AF_INET, MSG_DONTWAIT, SOCK_STREAM, kernel_accept, kernel_bind,
                       kernel_getsockname, kernel_listen, kernel_sendfile, sock_create_kern,
                       sock_release, statistics)
from kshim.wait import wait_event, wait_queue_head, wake_up

HOST_WAIT_S = 10.0
SIZE = 8 << 20


class reader:
    """A host thread connected to a kernel listener, keeping every byte it
    reads until the kernel side closes."""

    def __init__(self) -> None:
        ls = sock_create_kern(AF_INET, SOCK_STREAM, 0)
        assert not isinstance(ls, int)
        assert kernel_bind(ls, ("127.0.0.1", 0)) == 0 and kernel_listen(ls, 1) == 0
        name = kernel_getsockname(ls)
        assert not isinstance(name, int)
        self.got = bytearray()
        self.go = threading.Event()       # set: read; clear: let the socket fill
        self.go.set()
        self.c = socket.create_connection(("127.0.0.1", name[1]), HOST_WAIT_S)
        self.t = threading.Thread(target=self._read)
        self.t.start()
        s = kernel_accept(ls, 0)
        assert not isinstance(s, int)
        sock_release(ls)
        self.s = s
        self.wq = wait_queue_head("test sendfile")
        self.space = 0
        s.sk.sk_write_space = self._write_space

    def _write_space(self, _sk: Any) -> None:       # softirq: count and wake
        self.space += 1
        wake_up(self.wq)

    def _read(self) -> None:
        for _ in range(100000):                     # bounded: the peer closes long before
            if not self.go.wait(HOST_WAIT_S):
                return
            b = self.c.recv(1 << 20)
            if not b:
                return
            self.got += b

    def finish(self) -> bytes:
        """Close the kernel side, wait for the reader, return its bytes."""
        self.go.set()
        sock_release(self.s)
        self.t.join(HOST_WAIT_S)
        self.c.close()
        assert not self.t.is_alive()
        return bytes(self.got)


def _file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    p = tmp_path / "data.img"
    p.write_bytes(data)
    return p, data


def test_kernel_sendfile_sends_the_range_bit_identical_and_counts_it(kernel, tmp_path):
    """A blocking send of a range in the middle of a file, then a
    non-blocking one of another: the peer reads exactly those bytes."""
    path, data = _file(tmp_path)

    def body() -> tuple:
        f = filp_open(str(path), O_RDONLY)
        assert not isinstance(f, int)
        before = statistics()
        r = reader()
        a = kernel_sendfile(r.s, file_extent(f, 4096 + 7, 300000), 0)
        b = kernel_sendfile(r.s, file_extent(f, 1 << 20, 8192), MSG_DONTWAIT)
        after = statistics()
        got = r.finish()
        filp_close(f)
        return a, b, got, after.calls - before.calls, after.bytes - before.bytes
    a, b, got, calls, nbytes = kernel(body)
    assert (a, b, calls, nbytes) == (300000, 8192, 2, 308192)
    assert got == data[4103:4103 + 300000] + data[1 << 20:(1 << 20) + 8192]


def test_a_short_send_to_a_full_socket_arms_write_space_and_resumes_at_its_offset(kernel,
                                                                                   tmp_path):
    """The peer stops reading: a non-blocking send of the whole file comes
    back short (then -EAGAIN), sk_write_space fires once the peer reads
    again, and sending ext[sent:] until done delivers the file unchanged."""
    path, data = _file(tmp_path)

    def body() -> tuple:
        f = filp_open(str(path), O_RDONLY)
        assert not isinstance(f, int)
        r = reader()
        r.go.clear()
        ext = file_extent(f, 0, SIZE)
        first = kernel_sendfile(r.s, ext, MSG_DONTWAIT)
        again = kernel_sendfile(r.s, ext[first:], MSG_DONTWAIT)
        r.go.set()
        sent = first
        for _ in range(10000):                      # bounded: each pass moves bytes or waits
            if sent == SIZE:
                break
            wait_event(r.wq, lambda: not r.s.sk.tx_armed)
            n = kernel_sendfile(r.s, ext[sent:], MSG_DONTWAIT)
            assert n > 0 or n == -EAGAIN, n
            sent += max(n, 0)
        got = r.finish()
        filp_close(f)
        return first, again, r.space, got
    first, again, space, got = kernel(body)
    assert 0 < first < SIZE and again == -EAGAIN and space >= 1
    assert got == data


def test_kernel_sendfile_returns_0_where_the_file_ends_and_what_came_before(kernel, tmp_path):
    """A range past the end of a file truncated under it: the bytes up to
    the end, then 0 (the caller sends what the READ path would read)."""
    path, data = _file(tmp_path)

    def body() -> tuple:
        f = filp_open(str(path), O_RDWR)
        assert not isinstance(f, int)
        r = reader()
        ext = file_extent(f, SIZE - 16384, 16384)
        assert vfs_truncate(f, SIZE - 4096) == 0
        before = statistics().eof
        a = kernel_sendfile(r.s, ext, 0)
        b = kernel_sendfile(r.s, ext[a:], MSG_DONTWAIT)
        eof = statistics().eof - before
        got = r.finish()
        filp_close(f)
        return a, b, eof, got
    a, b, eof, got = kernel(body)
    assert (a, b, eof) == (12288, 0, 2)
    assert got == data[SIZE - 16384:SIZE - 4096]


def test_faults_at_kernel_sendfile_short_eio_and_eof_seed_16020(kernel, tmp_path):
    """Seed 16020. fail_sock_send cuts a sendfile in half as it cuts a
    sendmsg; fail_sock_sendfile's EIO fails the call and leaves the socket
    connected (the caller decides); its eof reports the file ended. What
    went out is still the file's bytes, in order."""
    path, data = _file(tmp_path)

    def body() -> tuple:
        f = filp_open(str(path), O_RDONLY)
        assert not isinstance(f, int)
        r = reader()
        out = []
        fi.apply_fault_specs(["fail_sock_send:error=short,probability=100,times=1,"
                              "seed=16020,verbose=0"])
        out.append(kernel_sendfile(r.s, file_extent(f, 0, 65536), MSG_DONTWAIT))
        out.append(kernel_sendfile(r.s, file_extent(f, out[0], 65536 - out[0]), MSG_DONTWAIT))
        fi.apply_fault_specs(["fail_sock_sendfile:error=EIO,probability=100,times=1,"
                              "seed=16020,verbose=0"])
        out.append(kernel_sendfile(r.s, file_extent(f, 65536, 4096), MSG_DONTWAIT))
        out.append(r.s.sk.sk_err)
        fi.apply_fault_specs(["fail_sock_sendfile:error=eof,probability=100,times=1,"
                              "seed=16020,verbose=0"])
        out.append(kernel_sendfile(r.s, file_extent(f, 65536, 4096), MSG_DONTWAIT))
        out.append(kernel_sendfile(r.s, file_extent(f, 65536, 4096), MSG_DONTWAIT))
        out += [fail_sock_send.injected, fail_sock_sendfile.injected]
        fi.fault_reset()
        got = r.finish()
        filp_close(f)
        return out, got
    out, got = kernel(body)
    assert out == [32768, 32768, -EIO, 0, 0, 4096, 1, 2]
    assert got == data[:65536 + 4096]


def test_filemap_range_cached_sees_a_read_file_and_cannot_tell_for_o_direct(kernel, tmp_path):
    """A file just written and read is in the page cache (1); past its end
    nothing is (0); an O_DIRECT file cannot be asked (-EOPNOTSUPP)."""
    path, _ = _file(tmp_path)
    path.read_bytes()

    def body() -> tuple:
        f = filp_open(str(path), O_RDONLY)
        d = filp_open(str(path), O_RDONLY | O_DIRECT)
        assert not isinstance(f, int) and not isinstance(d, int)
        out = (filemap_range_cached(f, 4096, 131072), filemap_range_cached(f, SIZE, 4096),
               filemap_range_cached(d, 0, 4096))
        filp_close(f)
        filp_close(d)
        return out
    assert kernel(body) == (1, 0, -EOPNOTSUPP)
