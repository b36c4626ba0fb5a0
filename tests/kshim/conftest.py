"""Run kernel-style test bodies on the real engine."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from kshim import bug, engine


def run_kernel(body: Callable[[], Any]) -> Any:
    """Boot the engine, run body() in a kthread, stop, return body's result."""
    box: list[Any] = []

    def init() -> int:
        box.append(body())
        engine.request_shutdown()
        return 0
    engine.run(init, handle_signals=False)
    return box[0] if box else None


@pytest.fixture
def kernel():
    bug.reset_reports()
    yield run_kernel
    bug.reset_reports()
