"""Bounded polling for tests: wait for a condition or fail with what was seen last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(fn: Callable[[], T | None], *, timeout: float, what: str | Callable[[], str], interval: float = 0.1) -> T:
    """``what`` may be a callable, evaluated only on failure (e.g. to attach a log as it is then)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - remembered for the failure message
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described} (last: {last!r})")
        time.sleep(interval)
