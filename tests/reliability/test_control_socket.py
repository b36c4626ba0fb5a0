"""The control socket cannot take the data path down (issue 16 section 7):
oversized and over-nested requests are refused before decoding, an
exception in a handler becomes an error reply and one log line, and the
service keeps serving, while an iSCSI session stays up throughout."""
from __future__ import annotations

import json
from pathlib import Path

import trio

from ctl_support import Daemon, RawCtl
from initiator import Initiator
from kshim import engine, engine_ctl, printk

IQN = "iqn.2026-11.org.uscst:default"


def _session(d: Daemon) -> Initiator:
    ini = Initiator(port=d.port, timeout=10.0)
    ini.connect()
    ini.login(IQN)
    assert ini.test_unit_ready().status == 0
    return ini


def test_control_request_of_100000_nested_brackets_is_refused_and_sessions_survive(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path, "--nullio", "--size", "64M")
    try:
        d.wait_ready()
        ini = _session(d)
        with RawCtl(d.ctl) as c:
            rsp = c.send_line(b"[" * 100000)
            assert rsp is not None and not rsp["ok"]
            assert "nested deeper than" in rsp["error"]
            rsp = c.send_line(b'{"op": "read", "path": ' + b"[" * 40 + b"]" * 40 + b"}")
            assert rsp is not None and not rsp["ok"] and "nested" in rsp["error"]
            assert c.call("ping")["ok"]
        assert ini.test_unit_ready().status == 0
        ini.logout()
        ini.close()
        assert d.proc.poll() is None
        assert d.unhealthy() == []
    finally:
        assert d.stop() == 0, d.output()[-4000:]


def test_control_request_longer_than_the_limit_is_refused_then_the_socket_serves_again(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path, "--nullio", "--size", "64M")
    try:
        d.wait_ready()
        with RawCtl(d.ctl) as c:
            rsp = c.send_line(b'"' + b"x" * (engine_ctl.MAX_REQUEST + 10) + b'"')
            assert rsp is not None and not rsp["ok"] and "longer than" in rsp["error"]
        with RawCtl(d.ctl) as c:
            assert c.call("ping")["ok"]
        assert d.unhealthy() == []
    finally:
        assert d.stop() == 0


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert engine_ctl.json_depth(b'{"a": [1, [2]], "b": "[[[[{{{{"}') == 3
    assert engine_ctl.json_depth(b'"\\"[[["') == 0
    assert engine_ctl.json_depth(b"[" * 100000) == 100000
    assert engine_ctl.json_depth(b"") == 0


def _serve_in_process(path: str, extra_ops: dict, client) -> list:
    """Run the engine with the control service and an async client task;
    return what the client returned."""
    box: list = []
    ready = trio.Event()

    async def run_client() -> None:
        await ready.wait()
        try:
            box.append(await client())
        finally:
            engine.request_shutdown()
    svc = engine_ctl.control_service(path, extra_ops, on_ready=ready.set)
    engine.run(lambda: 0, handle_signals=False, services=[svc, run_client])
    return box


async def _ask(path: str, req: dict) -> dict:
    s = await trio.open_unix_socket(path)
    async with s:
        await s.send_all(json.dumps(req).encode() + b"\n")
        buf = b""
        with trio.fail_after(20):
            while not buf.endswith(b"\n"):
                chunk = await s.receive_some(65536)
                assert chunk, "control socket closed instead of replying"
                buf += chunk
    return json.loads(buf)


def test_an_exception_in_a_handler_becomes_an_error_reply_and_a_log_line(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")

    async def boom_async(req: dict) -> dict:
        raise KeyError("planted async bug")

    async def boom_in_task(req: dict) -> dict:
        return await engine_ctl.ctl_call("boom_in_task", lambda: {}["planted task bug"])

    async def client() -> list[dict]:
        return [await _ask(path, {"op": "boom_async"}), await _ask(path, {"op": "boom_in_task"}),
                await _ask(path, {"op": "ping"})]
    printk.dmesg_clear()
    a, b, ping = _serve_in_process(path, {"boom_async": boom_async, "boom_in_task": boom_in_task},
                                   client)[0]
    assert not a["ok"] and "KeyError" in a["error"] and a["errno"] == 5
    assert not b["ok"] and "planted task bug" in b["error"]
    assert ping["ok"]
    log = printk.dmesg()
    assert any("control: op 'boom_async' raised KeyError at" in m for m in log), log
    assert any("control: boom_in_task raised KeyError" in m for m in log), log


def test_the_control_service_restarts_after_a_failure_outside_any_handler(
        tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "ctl.sock")
    calls = []

    def planted(sock) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("planted failure before the request loop")
        return True
    monkeypatch.setattr(engine_ctl, "_peer_allowed", planted)

    async def client() -> dict:
        s = await trio.open_unix_socket(path)
        async with s:
            with trio.fail_after(20):
                try:                # the first client is dropped: EOF or reset
                    assert await s.receive_some(100) == b""
                except trio.BrokenResourceError:
                    pass
        with trio.fail_after(20):
            while True:             # until the restarted service listens again
                try:
                    return await _ask(path, {"op": "ping"})
                except (OSError, trio.BrokenResourceError):
                    await trio.sleep(0.02)
    restarts0 = engine_ctl.stats["restarts"]
    printk.dmesg_clear()
    (ping,) = _serve_in_process(path, {}, client)
    assert ping["ok"]
    assert engine_ctl.stats["restarts"] == restarts0 + 1
    assert any("control: control client raised RuntimeError" in m
               or "control: control service raised" in m for m in printk.dmesg())
