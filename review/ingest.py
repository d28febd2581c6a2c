"""MQTT ingest: match events and crops into the store; malformed payloads counted and logged, never fatal.

Topics: ``<prefix>/<device>/match`` (JSON events, schema v1 or v2) and
``<prefix>/<device>/match/<event_id>/crop`` (JPEG). An event whose ``device_id`` differs from
its topic's is refused (a device cannot post as another). Rejections are counted per reason
(the first field named by the error) and logged with the topic and reason only: a payload may
hold a face, so it is never logged.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from namus_edge.edge.events import EventError
from namus_edge.review.events import parse_event
from namus_edge.review.store import IngestResult, Store, StoreError

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 4_000_000
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*):")


def match_filter(prefix: str) -> str:
    """``<prefix>/+/match``: every device's events."""
    return f"{prefix}/+/match"


def crop_filter(prefix: str) -> str:
    """``<prefix>/+/match/+/crop``: every device's crops."""
    return f"{prefix}/+/match/+/crop"


def _reason(exc: Exception) -> str:
    m = _FIELD.match(str(exc))
    return re.sub(r"\[\d+\]", "[]", m.group(1)) if m else "invalid"


class Ingestor:
    """Turns MQTT messages into stored events.

    Args:
        store: the database.
        prefix: ``mqtt.topic_prefix``.
        on_stored: called with the result after each stored event (new or duplicate), e.g. to
            update Home Assistant's pending count.
    """

    def __init__(self, store: Store, prefix: str, on_stored: Callable[[IngestResult], None] | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.on_stored = on_stored
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.duplicates = 0
        self.crops = 0
        self._lock = threading.Lock()

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
        logger.warning("review: rejected a message on %s: %s", topic, detail)

    def stats(self) -> dict[str, object]:
        """Counters: accepted, duplicates, crops, rejected per reason."""
        with self._lock:
            return {"accepted": self.accepted, "duplicates": self.duplicates, "crops": self.crops,
                    "rejected": dict(self.rejected)}

    def on_match(self, topic: str, payload: bytes) -> IngestResult | None:
        """Handle one event message; returns the result, or None when rejected."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[-1] != "match":
            self._reject(topic, "topic", "not a <prefix>/<device>/match topic")
            return None
        if len(payload) > MAX_EVENT_BYTES:
            self._reject(topic, "size", f"payload of {len(payload)} bytes exceeds {MAX_EVENT_BYTES}")
            return None
        try:
            parsed = parse_event(payload)
        except EventError as exc:
            self._reject(topic, _reason(exc), str(exc)[:300])
            return None
        if parsed.event.device_id != parts[-2]:
            self._reject(topic, "device_id", f"device_id {parsed.event.device_id!r} differs from the topic's")
            return None
        crop = base64.b64decode(parsed.event.crop_jpeg_b64) if parsed.event.crop_jpeg_b64 else None
        try:
            result = self.store.add_event(parsed, crop)
        except SQLAlchemyError:
            logger.exception("review: could not store event %s (database error)", parsed.event.event_id)
            with self._lock:
                self.rejected["database"] += 1
            return None
        with self._lock:
            if result.new:
                self.accepted += 1
            else:
                self.duplicates += 1
        if result.new:
            logger.info("review: event %s stored (device %s camera %s case %s)", parsed.event.event_id,
                        parsed.event.device_id, parsed.event.camera_id, parsed.event.case.id_formatted)
        if self.on_stored is not None:
            self.on_stored(result)
        return result

    def on_crop(self, topic: str, payload: bytes) -> bool:
        """Handle one crop message; True when stored."""
        parts = topic.split("/")
        if len(parts) < 5 or parts[-1] != "crop" or parts[-3] != "match" or not _UUID4.match(parts[-2]):
            self._reject(topic, "topic", "not a <prefix>/<device>/match/<event_id>/crop topic")
            return False
        try:
            stored = self.store.add_crop(parts[-2], payload)
        except StoreError as exc:
            self._reject(topic, "crop", str(exc))
            return False
        except SQLAlchemyError:
            logger.exception("review: could not store the crop of %s (database error)", parts[-2])
            return False
        if stored:
            with self._lock:
                self.crops += 1
        return stored
