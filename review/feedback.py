"""Verdicts back to the fleet: the review topic, the device's suppression topic, Home Assistant.

Messages (CONTRACTS.md, "Review feedback to devices"), all JSON at QoS 1, not retained:

* ``<prefix>/review/<event_id>``: every verdict, ``{"event_id", "event_ids", "device_id",
  "camera_id", "id_formatted", "verdict", "reason", "status", "confirmed", "match_votes",
  "issued_at"}`` (no reviewer name, no note, no crop).
* ``<prefix>/<device_id>/suppress``: for "not_a_match", ``{"camera_id", "id_formatted",
  "seconds", "event_id", "issued_at"}``: the device suppresses that (camera, case) pair.

Verdicts never touch the signed index bundle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from namus_edge.core.topics import review_topic, suppress_topic
from namus_edge.edge.events import utc_timestamp
from namus_edge.review.homeassistant import HomeAssistant
from namus_edge.review.store import VerdictOutcome

logger = logging.getLogger(__name__)

#: ``publish(topic, payload)`` at QoS 1, not retained.
Publish = Callable[[str, str], None]


def iso_utc(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with ``Z`` (millisecond precision)."""
    return utc_timestamp(datetime.fromtimestamp(ts, timezone.utc))


def verdict_message(outcome: VerdictOutcome, now: float) -> dict[str, Any]:
    """The review-topic JSON of one verdict."""
    item = outcome.item
    return {
        "event_id": outcome.event_id,
        "event_ids": item["event_ids"],
        "device_id": item["device_id"],
        "camera_id": item["camera_id"],
        "id_formatted": item["case"]["id_formatted"],
        "verdict": outcome.verdict,
        "reason": outcome.reason,
        "status": outcome.status_after,
        "confirmed": outcome.status_after == "confirmed",
        "match_votes": item["match_votes"],
        "issued_at": iso_utc(now),
    }


def suppression_message(outcome: VerdictOutcome, seconds: float, now: float) -> dict[str, Any]:
    """The suppression JSON for a "not_a_match" (CONTRACTS.md)."""
    item = outcome.item
    return {"camera_id": item["camera_id"], "id_formatted": item["case"]["id_formatted"], "seconds": float(seconds),
            "event_id": outcome.event_id, "issued_at": iso_utc(now)}


class Feedback:
    """Publishes what a verdict means for the fleet and for Home Assistant.

    Args:
        publish: QoS 1 publisher.
        prefix: ``mqtt.topic_prefix``.
        suppress_seconds: suppression length asked for by a "not a match".
        homeassistant: the discovery publisher, or None when disabled.
        clock: epoch seconds.
    """

    def __init__(self, publish: Publish, prefix: str, suppress_seconds: float,
                 homeassistant: HomeAssistant | None = None, clock: Callable[[], float] = time.time) -> None:
        self._publish = publish
        self.prefix = prefix
        self.suppress_seconds = suppress_seconds
        self.homeassistant = homeassistant
        self.clock = clock

    def verdict(self, outcome: VerdictOutcome, pending: int) -> None:
        """Publish one recorded verdict (and its suppression / confirmation), then the pending count."""
        now = self.clock()
        item = outcome.item
        self._publish(review_topic(self.prefix, outcome.event_id),
                      json.dumps(verdict_message(outcome, now), separators=(",", ":")))
        if outcome.verdict == "not_a_match":
            self._publish(suppress_topic(self.prefix, item["device_id"]),
                          json.dumps(suppression_message(outcome, self.suppress_seconds, now), separators=(",", ":")))
            logger.info("review: asked %s to suppress camera %s / case %s for %.0f s", item["device_id"],
                        item["camera_id"], item["case"]["id_formatted"], self.suppress_seconds)
        if self.homeassistant is not None:
            if outcome.status_after == "confirmed" and outcome.status_before != "confirmed":
                self.homeassistant.confirmed(item, now)
            self.homeassistant.pending(pending)
