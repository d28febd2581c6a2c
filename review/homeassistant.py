"""Home Assistant MQTT discovery, device-based (one retained config per device with its components).

* The console device: an ``event`` entity fired for **confirmed** matches only (an unconfirmed
  candidate and any crop stay out of Home Assistant) and a ``sensor`` with the number of
  items waiting for review.
* One device per edge device seen on ``<prefix>/<device>/availability``: a ``binary_sensor``
  (device class ``connectivity``) reading that retained topic directly.

Configs go to ``<discovery_prefix>/device/<object_id>/config``, retained, and are re-published
when Home Assistant announces itself (``<discovery_prefix>/status`` = ``online``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from namus_edge.edge.events import utc_timestamp
from namus_edge.review.mqtt_link import CONSOLE_NODE, console_availability_topic

logger = logging.getLogger(__name__)

#: ``publish(topic, payload, retain)`` at QoS 1.
PublishRetained = Callable[[str, str, bool], None]

ORIGIN = {"name": "namus-edge", "url": "https://github.com/namus-edge/namus-edge"}


def object_id(text: str) -> str:
    """A Home Assistant object id: ``[A-Za-z0-9_-]`` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class HomeAssistant:
    """Discovery configs and states for Home Assistant.

    Args:
        publish: QoS 1 publisher taking ``(topic, payload, retain)``.
        prefix: ``mqtt.topic_prefix``.
        discovery_prefix: ``review.homeassistant.discovery_prefix``.
        pending_count: returns the current number of items waiting for review.
    """

    def __init__(self, publish: PublishRetained, prefix: str, discovery_prefix: str,
                 pending_count: Callable[[], int]) -> None:
        self._publish = publish
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix
        self.pending_count = pending_count
        self.devices: set[str] = set()
        self._lock = threading.Lock()
        self.console_id = object_id(f"namus_edge_review_{prefix}")
        self.pending_topic = f"{prefix}/{CONSOLE_NODE}/pending"
        self.confirmed_topic = f"{prefix}/{CONSOLE_NODE}/confirmed"

    @property
    def status_topic(self) -> str:
        """Home Assistant's birth/last-will topic."""
        return f"{self.discovery_prefix}/status"

    @property
    def availability_filter(self) -> str:
        """Every device's availability topic."""
        return f"{self.prefix}/+/availability"

    def config_topic(self, oid: str) -> str:
        """The discovery topic of one device."""
        return f"{self.discovery_prefix}/device/{oid}/config"

    def console_config(self) -> dict[str, Any]:
        """The console device: confirmed-match event + pending-review sensor."""
        oid = self.console_id
        return {
            "dev": {"ids": [oid], "name": "namus-edge review console", "mf": "namus-edge", "mdl": "review console"},
            "o": ORIGIN,
            "avty_t": console_availability_topic(self.prefix),
            "cmps": {
                "confirmed_match": {
                    "p": "event", "name": "Confirmed match", "unique_id": f"{oid}_confirmed_match",
                    "state_topic": self.confirmed_topic, "event_types": ["confirmed_match"],
                    "icon": "mdi:account-search",
                },
                "pending_reviews": {
                    "p": "sensor", "name": "Pending reviews", "unique_id": f"{oid}_pending_reviews",
                    "state_topic": self.pending_topic, "state_class": "measurement", "icon": "mdi:clipboard-clock",
                },
            },
            "qos": 1,
        }

    def device_config(self, device_id: str) -> dict[str, Any]:
        """One edge device: a connectivity binary_sensor from its retained availability topic."""
        oid = object_id(f"namus_edge_{device_id}")
        return {
            "dev": {"ids": [oid], "name": f"namus-edge {device_id}", "mf": "namus-edge", "mdl": "edge device",
                    "via_device": self.console_id},
            "o": ORIGIN,
            "cmps": {
                "connectivity": {
                    "p": "binary_sensor", "device_class": "connectivity", "name": "Connectivity",
                    "unique_id": f"{oid}_connectivity", "state_topic": f"{self.prefix}/{device_id}/availability",
                    "payload_on": "online", "payload_off": "offline",
                },
            },
            "qos": 1,
        }

    def publish_all(self) -> None:
        """(Re-)publish every discovery config (retained) and the pending count."""
        self._publish(self.config_topic(self.console_id), json.dumps(self.console_config()), True)
        with self._lock:
            devices = sorted(self.devices)
        for dev in devices:
            self._publish(self.config_topic(object_id(f"namus_edge_{dev}")), json.dumps(self.device_config(dev)), True)
        self.pending(self.pending_count())

    def pending(self, count: int) -> None:
        """Publish the pending-review count (retained state)."""
        self._publish(self.pending_topic, str(int(count)), True)

    def confirmed(self, item: dict[str, Any], now: float) -> None:
        """Fire the event entity for a newly confirmed match (case and place, no face)."""
        payload = {"event_type": "confirmed_match", "id_formatted": item["case"]["id_formatted"],
                   "case_link": item["case"]["link"], "device_id": item["device_id"],
                   "camera_id": item["camera_id"], "event_id": item["event_id"],
                   "similarity": round(float(item["similarity"]), 4),
                   "confirmed_at": utc_timestamp(datetime.fromtimestamp(now, timezone.utc))}
        self._publish(self.confirmed_topic, json.dumps(payload), False)

    def on_availability(self, topic: str, payload: bytes) -> None:
        """A device's availability: announce its connectivity sensor the first time it is seen."""
        parts = topic.split("/")
        device = parts[-2] if len(parts) >= 3 else ""
        if not device or device == CONSOLE_NODE or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", device):
            return
        with self._lock:
            if device in self.devices:
                return
            self.devices.add(device)
        self._publish(self.config_topic(object_id(f"namus_edge_{device}")), json.dumps(self.device_config(device)),
                      True)

    def on_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant (re)started: re-publish the configs."""
        if payload.strip() == b"online":
            logger.info("review: Home Assistant is online; re-publishing discovery")
            self.publish_all()
