"""Reviewer feedback on the device: a "not a match" suppresses that (camera, case) pair for a while.

The review console publishes on ``<prefix>/<device_id>/suppress`` (QoS 1, not retained)::

    {"camera_id": str, "id_formatted": str, "seconds": number > 0, "event_id": str, "issued_at": ISO-8601 UTC}

The device keeps the pair suppressed for ``min(seconds, matching.suppress_rejected_s)``
(``0`` ignores suppressions) from the moment the message arrives; the decision engine then
emits no event for that camera and case. Suppressions live in memory: a restart forgets them,
and the console's next "not a match" renews them. Malformed messages are logged and ignored.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

from namus_edge.edge.events import EventError, parse_timestamp

logger = logging.getLogger(__name__)

_KEYS = frozenset({"camera_id", "id_formatted", "seconds", "event_id", "issued_at"})


class SuppressionError(ValueError):
    """A suppression message is malformed; the message names the field."""


def parse_suppression(payload: bytes | str) -> tuple[str, str, float]:
    """Parse one suppression message into ``(camera_id, id_formatted, seconds)``.

    Raises:
        SuppressionError: not a JSON object with exactly the contract's fields, or a bad value.
    """
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuppressionError(f"suppress: not valid JSON ({exc})") from None
    if not isinstance(msg, dict) or set(msg) != _KEYS:
        got = sorted(msg) if isinstance(msg, dict) else type(msg).__name__
        raise SuppressionError(f"suppress: expected the fields {sorted(_KEYS)}, got {got}")
    for key in ("camera_id", "id_formatted", "event_id"):
        if not isinstance(msg[key], str) or not 0 < len(msg[key]) <= 64:
            raise SuppressionError(f"suppress.{key}: expected a non-empty string, got {msg[key]!r}")
    seconds = msg["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise SuppressionError(f"suppress.seconds: expected a number > 0, got {seconds!r}")
    try:
        parse_timestamp(msg["issued_at"])
    except EventError as exc:
        raise SuppressionError(f"suppress.issued_at: {exc}") from None
    return msg["camera_id"], msg["id_formatted"], float(seconds)


class Suppressions:
    """The (camera, case) pairs a reviewer rejected, each until a deadline.

    Args:
        max_seconds: cap on a requested suppression (``matching.suppress_rejected_s``); 0 ignores all.
        clock: monotonic seconds (injectable for tests).

    Thread-safe: MQTT's network thread adds, the inference loop asks.
    """

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.suppressed_events = 0

    def add(self, camera_id: str, id_formatted: str, seconds: float) -> float:
        """Suppress the pair for ``min(seconds, max_seconds)`` from now; returns the seconds applied."""
        applied = min(float(seconds), self.max_seconds)
        if applied <= 0:
            return 0.0
        with self._lock:
            until = self.clock() + applied
            key = (camera_id, id_formatted)
            self._until[key] = max(until, self._until.get(key, until))
        return applied

    def active(self, camera_id: str, id_formatted: str) -> bool:
        """True while the pair is suppressed (counts the events it stops)."""
        with self._lock:
            until = self._until.get((camera_id, id_formatted))
            if until is None:
                return False
            if self.clock() >= until:
                del self._until[(camera_id, id_formatted)]
                return False
            self.suppressed_events += 1
            return True

    def on_message(self, topic: str, payload: bytes) -> None:
        """MQTT callback for ``<prefix>/<device>/suppress``: apply it, or log why not."""
        try:
            camera_id, case_id, seconds = parse_suppression(payload)
        except SuppressionError as exc:
            logger.warning("ignored a suppression on %s: %s", topic, exc)
            return
        applied = self.add(camera_id, case_id, seconds)
        logger.info("reviewer said 'not a match': camera %s / case %s suppressed for %.0f s", camera_id, case_id,
                    applied)
