"""Errors raised by :mod:`nfs_provisioner.kube.client`.

::

    KubeError                      anything that went wrong talking to the API server
    ├── TransportError             no HTTP answer (connection refused/reset, timeout): retryable
    └── ApiError                   the API server answered with a failure Status
        ├── NotFound               404
        ├── Conflict               409 (stale resourceVersion)
        │   └── AlreadyExists      409 with reason AlreadyExists
        ├── Gone                   410 (watch/list resourceVersion too old: re-list)
        ├── Forbidden              403 (RBAC)
        ├── Invalid                422 (validation / admission refused the object)
        ├── TooManyRequests        429 (server-side throttling): retryable
        └── ServerError            5xx: retryable

The retryable ones are also :class:`nfs_provisioner.errors.Retryable` (``retryable`` says the same); the root
is an :class:`nfs_provisioner.errors.NFSProvisionerError`.
"""

from __future__ import annotations

from typing import Any

from nfs_provisioner.errors import NFSProvisionerError, Retryable


class KubeError(NFSProvisionerError):
    """Base of every error raised while talking to the API server."""

    @property
    def retryable(self) -> bool:
        """Whether trying again unchanged can succeed: the type says it (:class:`Retryable`)."""
        return isinstance(self, Retryable)


class TransportError(KubeError, Retryable):
    """The request got no HTTP answer (network error or timeout)."""


class ApiError(KubeError):
    """The API server answered with a non-2xx status."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class AlreadyExists(Conflict):
    pass


class Gone(ApiError):
    pass


class Forbidden(ApiError):
    pass


class Invalid(ApiError):
    pass


class TooManyRequests(ApiError, Retryable):
    pass


class ServerError(ApiError, Retryable):
    pass


def from_status(status: int, body: dict[str, Any] | None) -> ApiError:
    """Build the most specific :class:`ApiError` for an HTTP status and its ``Status`` body."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    cls: type[ApiError] = ApiError
    if status == 404:
        cls = NotFound
    elif status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 410:
        cls = Gone
    elif status == 403:
        cls = Forbidden
    elif status == 422:
        cls = Invalid
    elif status == 429:
        cls = TooManyRequests
    elif status >= 500:
        cls = ServerError
    return cls(status, reason or str(status), message, body)
