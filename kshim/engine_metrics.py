"""The Prometheus metrics endpoint: an engine-side HTTP service.

Twin of nothing in the kernel: like kshim.engine_ctl's control socket,
this is how the emulated machine's counters reach the host. It is a trio
task on the CPU's own thread (no OS thread reads kernel state behind the
CPU's back): each GET /metrics runs the collectors in a kthread through
engine.call_in_task, then formats their families with prometheus-client's
text exposition (prometheus_client.generate_latest).

A collector returns families (name, kind, help, samples), kind "counter",
"gauge" or "histogram"; see scst_core/stats.py. Counter names get the
`_total` suffix from the formatter.

Serves: GET /metrics (text format 0.0.4), GET / (a one-line pointer);
anything else 404, other methods 405. One request per connection, at most
MAX_CLIENTS at once, REQUEST_TIMEOUT seconds to send the request.
"""
from __future__ import annotations

import socket
from typing import Any, Awaitable, Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from kshim import engine

MAX_CLIENTS = 16
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Family = tuple[str, str, str, list]
Collect = Callable[[], list[Family]]


class _FamiliesCollector:
    """prometheus-client's collector protocol over families gathered
    beforehand (in a kthread)."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for name, kind, doc, samples in self.families:
            names = sorted(samples[0][0]) if samples else []
            if kind == "counter":
                m: Any = CounterMetricFamily(name, doc, labels=names)
                for labels, v in samples:
                    m.add_metric([labels[k] for k in names], v)
            elif kind == "gauge":
                m = GaugeMetricFamily(name, doc, labels=names)
                for labels, v in samples:
                    m.add_metric([labels[k] for k in names], v)
            else:
                m = HistogramMetricFamily(name, doc, labels=names)
                for labels, (buckets, total, count) in samples:
                    bs = [(repr(float(le)), n) for le, n in buckets] + [("+Inf", count)]
                    m.add_metric([labels[k] for k in names], bs, total)
            yield m


def format_metrics(families: list[Family]) -> bytes:
    """The Prometheus text format of families."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_FamiliesCollector(families))
    return generate_latest(reg)


def _gather(collectors: list[Collect]) -> list[Family]:
    out: list[Family] = []
    for c in collectors:
        out += c()
    return out


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


stats = {"scrapes": 0, "errors": 0, "clients": 0}


async def _scrape(collectors: list[Collect]) -> bytes:
    """The /metrics response. A collector that oopses (its kthread reported
    it and returned nothing) or a malformed family gives a 500, never a dead
    service."""
    fams = await engine.call_in_task(lambda: _gather(collectors))
    if fams is None:
        stats["errors"] += 1
        return _response("500 Internal Server Error", b"collecting failed: see the log\n")
    try:
        body = format_metrics(fams)
    except (ValueError, TypeError, KeyError) as e:
        stats["errors"] += 1
        return _response("500 Internal Server Error", f"formatting failed: {e}\n".encode())
    stats["scrapes"] += 1
    return _response("200 OK", body, CONTENT_TYPE)


async def _client(stream: trio.SocketStream, collectors: list[Collect]) -> None:
    if stats["clients"] >= MAX_CLIENTS:
        await stream.aclose()
        return
    stats["clients"] += 1
    try:
        buf = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        parts = buf.split(b"\r\n", 1)[0].split()
        if len(parts) < 2:
            rsp = _response("400 Bad Request", b"bad request\n")
        elif parts[0] != b"GET":
            rsp = _response("405 Method Not Allowed", b"only GET\n")
        elif parts[1].split(b"?")[0] == b"/metrics":
            rsp = await _scrape(collectors)
        elif parts[1] == b"/":
            rsp = _response("200 OK", b"uscstd metrics: GET /metrics\n")
        else:
            rsp = _response("404 Not Found", b"not found: try /metrics\n")
        await stream.send_all(rsp)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        stats["errors"] += 1
    finally:
        stats["clients"] -= 1
        with trio.CancelScope(shield=True):
            await stream.aclose()


def metrics_service(host: str, port: int, collectors: list[Collect],
                    on_error: Callable[[str], None] | None = None,
                    on_ready: Callable[[str], None] | None = None
                    ) -> Callable[[], Awaitable[None]]:
    """An engine service serving GET /metrics on host:port."""

    async def service() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            await sock.bind((host, port))
        except OSError as e:
            sock.close()
            if on_error is not None:
                on_error(f"cannot listen for metrics on {host}:{port}: {e.strerror}")
            return
        sock.listen(16)
        if on_ready is not None:
            h, p = sock.getsockname()[:2]
            on_ready(f"[{h}]:{p}" if ":" in h else f"{h}:{p}")
        async def client(s: trio.SocketStream) -> None:
            await _client(s, collectors)
        await trio.serve_listeners(client, [trio.SocketListener(sock)])
    return service
