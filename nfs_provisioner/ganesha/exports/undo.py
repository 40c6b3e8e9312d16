"""Two habits that keep a multi-step change short: an undo list and one place where errors are mapped.

:class:`Undo` follows OpenStack Manila's Ganesha helper. Each step that has been done pushes its undo, and a
failure (any exception) runs the undos in reverse order before the exception goes on. An undo that fails itself is
logged with one line, and the others still run.

:func:`map_errors` follows httpx's ``map_exceptions``. A table says, for each kind of error, whether it is raised
as it is (``None``) or as one of this package's errors, with the failed operation named and the original as its
cause.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType

log = logging.getLogger(__name__)

ErrorMap = Mapping[type[BaseException], Callable[[str], BaseException] | None]
"""Error class -> the class (called with one message) to raise instead, or None to raise it as it is. The first
entry that the error is an instance of decides, so list subclasses before their bases."""


@contextlib.contextmanager
def map_errors(table: ErrorMap, what: str) -> Iterator[None]:
    """Raise an error of the block as ``table`` says: ``to(f"{what}: {error}") from error``. An error that no
    entry matches is raised as it is."""
    try:
        yield
    except Exception as e:
        for kind, to in table.items():
            if isinstance(e, kind):
                if to is None:
                    raise
                raise to(f"{what}: {e}") from e
        raise


class Undo:
    """``with Undo("export x", "add") as undo: ...; undo.push("removing its file", unlink)``. If the block raises,
    every pushed undo runs, the last pushed first. :attr:`error` is the exception being undone (an undo can look at
    it)."""

    def __init__(self, subject: str, operation: str) -> None:
        self.subject = subject
        self.operation = operation
        self.error: BaseException | None = None
        self._undos: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        """``what``: the undo, for the log line if it fails (e.g. ``"withdrawing it"``)."""
        self._undos.append((what, undo))

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if error is None:
            return
        self.error = error
        for what, undo in reversed(self._undos):
            try:
                undo()
            except Exception as e:  # noqa: BLE001 - logged; the remaining undos still run
                log.error("%s: %s after a failed %s failed: %s", self.subject, what, self.operation, e)
