"""The engine front door: boot the emulated machine on an engine.

Twin of nothing in the kernel. kshim has two engines behind one host-ops
table (kshim.host): kshim.engine_trio (real sockets, files, timers and
signals on a trio loop; the default, and what uscstd serves with) and
kshim.engine_sim (virtual time, in-memory sockets and disks, every choice
from one seed; driven through kshim.engine_sim.Simulation). This module
keeps the calls tools and tests make engine-agnostic where they can be.

Contexts: run() from a host thread that is not already running an engine;
request_shutdown() from any context on the CPU thread;
request_shutdown_threadsafe() from any host thread; call_in_task() from the
trio engine's services only.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import engine_trio, host

# SIGHUP under the trio engine calls this (in softirq context), if set.
reload_hook: Callable[[], None] | None = None


def _reload() -> None:
    if reload_hook is not None:
        reload_hook()


def run(init: Callable[[], Any], exit_fn: Callable[[], Any] | None = None, *,
        handle_signals: bool = True, services: list | None = None) -> Any:
    """Boot on the trio engine: run init() in a kthread, serve until
    request_shutdown() or a signal, run exit_fn() in a kthread, return init's
    result (kshim.engine_trio.run)."""
    return engine_trio.run(init, exit_fn, handle_signals=handle_signals, services=services,
                           on_reload=_reload)


def request_shutdown() -> None:
    """Begin an orderly stop of whichever engine runs (any context)."""
    host.ops.request_shutdown()


request_shutdown_threadsafe = engine_trio.request_shutdown_threadsafe
call_in_task = engine_trio.call_in_task

