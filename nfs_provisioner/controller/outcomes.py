"""What a sync of one claim or volume asks of its work queue."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Next(enum.Enum):
    DONE = "done"
    """Finished (or nothing to do): forget the item's failures."""
    RETRY = "retry"
    """Failed: retry with backoff while below the failure threshold."""
    RETRY_FOREVER = "retry-forever"
    """Failed, but giving up would leak an asset: retry with backoff, ignore the threshold."""
    RETRY_AFTER = "retry-after"
    """Come back after ``delay`` seconds (not a failure of the provisioner)."""


@dataclass(frozen=True)
class Outcome:
    next: Next
    delay: float = 0.0
    reason: str = ""


DONE = Outcome(Next.DONE)


def retry(reason: str) -> Outcome:
    return Outcome(Next.RETRY, reason=reason)


def retry_forever(reason: str) -> Outcome:
    return Outcome(Next.RETRY_FOREVER, reason=reason)


def retry_after(delay: float, reason: str) -> Outcome:
    return Outcome(Next.RETRY_AFTER, delay=delay, reason=reason)
