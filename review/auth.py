"""Access helpers: the session signing key, CSRF tokens and login rate limiting."""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path


def load_or_create_secret(path: Path) -> str:
    """The session signing key in ``path``, created (0600, 32 random bytes hex) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip()


def new_csrf_token() -> str:
    """A fresh random CSRF token (kept in the signed session, echoed in every form)."""
    return secrets.token_urlsafe(32)


def csrf_ok(expected: object, given: object) -> bool:
    """Constant-time comparison of the session's CSRF token with the one a form/header sent."""
    return isinstance(expected, str) and isinstance(given, str) and bool(expected) and hmac.compare_digest(
        expected.encode(), given.encode())


class LoginLimiter:
    """Refuses logins after ``max_failures`` failures within ``window_s``, per client address and per user name.

    Args:
        max_failures: failures allowed in the window.
        window_s: sliding window in seconds.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, client: str, user: str) -> bool:
        """True when the client or the user name has too many recent failures."""
        now = self.clock()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.max_failures for k in (f"ip:{client}", f"user:{user}"))

    def failed(self, client: str, user: str) -> None:
        """Record a failed attempt."""
        now = self.clock()
        with self._lock:
            for k in (f"ip:{client}", f"user:{user}"):
                self._recent(k, now).append(now)

    def succeeded(self, user: str) -> None:
        """Forget the user's failures after a successful login."""
        with self._lock:
            self._failures.pop(f"user:{user}", None)
