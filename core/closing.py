"""One context-manager protocol for everything that holds a resource until ``close()``."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_T = TypeVar("_T", bound="Closing")


class Closing:
    """Mixin: ``with obj:`` returns ``obj`` and calls ``obj.close()`` on exit, also after an exception.

    Subclasses implement :meth:`close` (idempotent).
    """

    def close(self) -> None:
        """Release what the object holds (idempotent)."""
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
