"""Minimal systemd notification protocol (``sd_notify``) and a progress-gated watchdog.

With ``Type=notify`` and ``WatchdogSec=`` in the unit, systemd passes ``NOTIFY_SOCKET`` (a
datagram socket path, ``@`` meaning the Linux abstract namespace) and ``WATCHDOG_USEC``.
Without them (a shell, a test, a container) every call is a no-op.

The watchdog is only pinged while the video pipeline makes progress: a pipeline stuck on a
dead camera read or a hung inference stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType

logger = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return how often to ping the watchdog, in seconds: half of ``WATCHDOG_USEC``.

    Args:
        environ: The environment; ``None`` means ``os.environ``.

    Returns:
        Seconds between pings, or ``None`` when the watchdog is off (unset, invalid, zero, or
        ``WATCHDOG_PID`` names another process).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("Ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


class Notifier:
    """Sends state changes to systemd over ``NOTIFY_SOCKET``; a no-op when it is unset.

    Args:
        environ: The environment; ``None`` means ``os.environ`` (read once, here).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        self._address: str | None = None
        if path:
            # '@name' is the abstract namespace: a leading NUL byte on the wire.
            self._address = "\0" + path[1:] if path.startswith("@") else path
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send raw ``KEY=VALUE`` lines (newline separated).

        Returns:
            True when the datagram was sent; False when disabled or the send failed (the first
            failure is logged at WARNING; notifications never raise).
        """
        if self._address is None:
            return False
        data = state.encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._warned:
                    logger.warning("sd_notify to %r failed: %s", self._address.replace("\0", "@"), exc)
                    self._warned = True
                return False
        return True

    def ready(self) -> bool:
        """Tell systemd start-up is complete (``READY=1``)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status`` (newlines are replaced)."""
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class ProgressWatchdog:
    """Pings the watchdog every ``interval_s`` only while ``progress()`` was called recently.

    Args:
        notifier: Where pings go.
        interval_s: Seconds between pings (see :func:`watchdog_interval`).
        stall_s: No ``progress()`` for this long stops the pings (``service.watchdog_stall_s``).

    Raises:
        ValueError: a non-positive interval or stall time.
    """

    def __init__(self, notifier: Notifier, interval_s: float, stall_s: float) -> None:
        if not interval_s > 0 or not stall_s > 0:
            raise ValueError(f"interval_s and stall_s must be > 0, got {interval_s!r} and {stall_s!r}")
        self._notifier = notifier
        self._interval = float(interval_s)
        self._stall = float(stall_s)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self) -> None:
        """Record that the pipeline processed a frame (cheap; call it every frame)."""
        self._last = time.monotonic()

    def start(self) -> None:
        """Start the ping thread (counts as progress, so start-up is not a stall)."""
        if self._thread is not None:
            return
        self.progress()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the ping thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        stalled = False
        while not self._stop.wait(self._interval):
            idle = time.monotonic() - self._last
            if idle <= self._stall:
                if stalled:
                    logger.info("Pipeline progress resumed; watchdog pings resumed")
                    stalled = False
                self._notifier.watchdog()
            elif not stalled:
                logger.error("No pipeline progress for %.1f s; stopped pinging the systemd watchdog", idle)
                stalled = True

    def __enter__(self) -> ProgressWatchdog:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
