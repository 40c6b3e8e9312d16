"""Every background thread of the package, started one way: named, daemon, its crash logged and counted.

``spawn(target, name=...)`` starts a daemon thread named ``name``. An exception that escapes ``target`` is
logged once at ERROR with the thread's name and traceback (``thread resync crashed ...``), counted by kind
(:func:`crashes`; ``controller.metrics`` exposes it as ``nfs_provisioner_thread_crashes_total{thread}``), and
ends that thread only: the process and its other threads go on. Whoever spawns a thread owns it and stops it
(with its own stop event or queue); :func:`join` waits for several in the order given under one deadline and
names those still running, so an owner stops its threads in stages.

``SystemExit`` and ``KeyboardInterrupt`` are not caught (``threading.excepthook`` sees them, as before).
No I/O beyond logging, nothing but the standard library: ``appliance.lifecycle`` imports it before anything
heavy (signals are installed first). The bottom layer of the package (imports nothing of it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_crashes: dict[str, int] = {}
"""Crashed threads by kind, since the process started."""
_crashes_lock = threading.Lock()

_NUMBERED = re.compile(r"-\d+$")


def kind_of(name: str) -> str:
    """The metric label of a thread's name: ``claim-worker-3`` -> ``claim-worker`` (bounded label values)."""
    return _NUMBERED.sub("", name)


def spawn(target: Callable[..., object], *args: object, name: str, kind: str | None = None) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread called ``name``; a crash is logged and counted, not raised.

    :param kind: the crash metric's ``thread`` label (default: ``name`` without a trailing ``-N``); give one
        for names that carry an unbounded part (a volume's name)."""
    label = kind if kind is not None else kind_of(name)

    def guarded() -> None:
        try:
            target(*args)
        except Exception:
            with _crashes_lock:
                _crashes[label] = _crashes.get(label, 0) + 1
            log.exception("thread %s crashed (the process goes on without it)", name)

    thread = threading.Thread(target=guarded, name=name, daemon=True)
    thread.start()
    return thread


def join(threads: Iterable[threading.Thread | None], timeout: float) -> list[str]:
    """Wait for ``threads`` one after the other (in the order given), ``timeout`` seconds for all together;
    the names of those still running after it (None entries are skipped; the calling thread is not waited
    for)."""
    deadline = time.monotonic() + timeout
    waited = [t for t in threads if t is not None and t is not threading.current_thread()]
    for t in waited:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in waited if t.is_alive()]


def crashes() -> dict[str, int]:
    """Crashed threads by kind so far (a copy)."""
    with _crashes_lock:
        return dict(_crashes)

