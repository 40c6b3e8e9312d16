"""Work queues with client-go semantics, plus retry rate limiters.

A key is queued at most once, is never processed by two workers at a time
(re-added while processing, it comes back after ``done``), and can be
delayed (``add_after``) or retried with per-item backoff (``add_rate_limited``).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from nfs_provisioner.controller.settings import RetrySettings


class RateLimiter:
    """Per-item exponential backoff combined with an overall token bucket (Go's default controller limiter),
    or a fixed delay when backoff is off."""

    def __init__(self, settings: RetrySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._bucket_tokens = float(settings.overall_burst)
        self._bucket_last = clock()

    def when(self, key: str) -> float:
        """Delay before the next retry of ``key``; counts one more failure."""
        s = self.settings
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
            if not s.exponential_backoff:
                return s.fixed_delay
            per_item = min(s.max_delay, s.base_delay * (2 ** min(n, 62)))
            now = self._clock()
            if s.overall_qps > 0:
                refill = (now - self._bucket_last) * s.overall_qps
                self._bucket_tokens = min(s.overall_burst, self._bucket_tokens + refill)
                self._bucket_last = now
                self._bucket_tokens -= 1
                overall = -self._bucket_tokens / s.overall_qps if self._bucket_tokens < 0 else 0.0
            else:
                overall = 0.0
            return float(max(per_item, overall))

    def failures(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class ShutDown(Exception):
    """Raised by :meth:`WorkQueue.get` once the queue is shut down."""


class WorkQueue:
    """A deduplicating, delaying, rate-limited work queue (one per kind: claims, volumes)."""

    def __init__(self, name: str, limiter: RateLimiter, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.limiter = limiter
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._shutting_down = False

    def __len__(self) -> int:
        """Depth: keys waiting to be processed now (delayed retries excluded)."""
        with self._cond:
            return len(self._queue)

    def delayed(self) -> int:
        with self._cond:
            return len(self._delayed)

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        delay = self.limiter.when(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self.limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return self.limiter.failures(key)

    def get(self, timeout: float | None = None) -> str | None:
        """Next key to process (mark it done with :meth:`done`); ``None`` on timeout.

        Raises :class:`ShutDown` once the queue is shut down."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shutting_down:
                    raise ShutDown(self.name)
                now = self._clock()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key = heapq.heappop(self._delayed)
                    self._add_locked(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                wait = None if deadline is None else deadline - now
                if self._delayed:
                    until_next = self._delayed[0][0] - now
                    wait = until_next if wait is None else min(wait, until_next)
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)
