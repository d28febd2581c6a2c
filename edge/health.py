"""What the device service knows about its own health: failed batches, degraded parts, camera outages.

The service never restarts itself for a fault it can survive. It counts and reports instead:
a batch that raised is logged with its traceback, counted and dropped; a part that cannot do its
job (the outbox cannot be written, the index has expired) puts the service in a *degraded*
state that the retained status message and systemd's ``STATUS=`` line both show until it
clears; a camera that is down is reported with how long it has been down. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraHealth:
    """One camera as the status reports it.

    Attributes:
        camera_id: the camera.
        state: ``live`` (frames arriving), ``down`` (reconnecting), ``dead`` (capture stopped on
            an error) or ``ended`` (a file reached its end).
        down_s: seconds since the camera was last seen live (0 when live).
        error: the capture's last error, or ``None``.
    """

    camera_id: str
    state: str
    down_s: float
    error: str | None


class ServiceHealth:
    """Counters and degraded reasons of one running service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batch_errors = 0
        self.last_batch_error: str | None = None
        self._degraded: dict[str, str] = {}
        self._down_since: dict[str, float] = {}

    # -- batches -------------------------------------------------------------------------------

    def batch_failed(self, exc: BaseException, cameras: Iterable[str]) -> None:
        """Count a batch that raised (the caller drops it) and log it with its traceback."""
        cams = sorted(set(cameras))
        with self._lock:
            self.batch_errors += 1
            self.last_batch_error = f"{type(exc).__name__}: {exc}"
            n = self.batch_errors
        logger.error("batch of camera(s) %s dropped after an error (%d so far); the service goes on",
                     ", ".join(cams), n, exc_info=exc)

    # -- degraded parts ----------------------------------------------------------------------------

    def degrade(self, part: str, reason: str) -> None:
        """Mark ``part`` degraded; logs a WARNING when it becomes degraded or the reason changes."""
        with self._lock:
            changed = self._degraded.get(part) != reason
            self._degraded[part] = reason
        if changed:
            logger.warning("degraded: %s: %s", part, reason)

    def recover(self, part: str) -> None:
        """Clear ``part``'s degraded state (logs once when it was degraded)."""
        with self._lock:
            was = self._degraded.pop(part, None)
        if was is not None:
            logger.warning("recovered: %s (was: %s)", part, was)

    @property
    def degraded(self) -> dict[str, str]:
        """Degraded parts and why (empty when healthy)."""
        with self._lock:
            return dict(self._degraded)

    # -- cameras -----------------------------------------------------------------------------------

    def camera(self, camera_id: str, connected: bool, running: bool, error: str | None,
               now: float | None = None) -> CameraHealth:
        """Classify a camera from its capture thread's state and remember when it went down."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if connected:
                self._down_since.pop(camera_id, None)
                return CameraHealth(camera_id, "live", 0.0, None)
            since = self._down_since.setdefault(camera_id, t)
        state = "down" if running else ("dead" if error else "ended")
        return CameraHealth(camera_id, state, round(t - since, 1), error)

    def snapshot(self) -> dict[str, Any]:
        """The ``health`` object of the status message."""
        with self._lock:
            return {"degraded": dict(self._degraded), "batch_errors": self.batch_errors,
                    "last_batch_error": self.last_batch_error}


def status_line(cameras: list[CameraHealth], index_version: str | None, degraded: dict[str, str]) -> str:
    """The one-line ``STATUS=`` text, e.g. ``running: 5/6 cameras live (cam6 down 42 s); index V; degraded: outbox``."""
    live = sum(c.state == "live" for c in cameras)
    text = f"running: {live}/{len(cameras)} camera(s) live"
    out = [f"{c.camera_id} {c.state} {c.down_s:.0f} s" for c in cameras if c.state != "live"]
    if out:
        text += " (" + ", ".join(out[:4]) + (", ..." if len(out) > 4 else "") + ")"
    text += f"; index {index_version}"
    if degraded:
        text += "; degraded: " + ", ".join(sorted(degraded))
    return text
