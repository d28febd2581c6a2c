"""MQTT topic names that more than one layer uses (the device publishes, operators announce)."""

from __future__ import annotations


def announce_topic(prefix: str) -> str:
    """Return the fleet-wide index announcement topic ``<prefix>/index/announce``."""
    return f"{prefix}/index/announce"


def suppress_topic(prefix: str, device_id: str) -> str:
    """Return a device's suppression topic ``<prefix>/<device_id>/suppress`` (console -> device)."""
    return f"{prefix}/{device_id}/suppress"


def review_topic(prefix: str, event_id: str) -> str:
    """Return the verdict topic of one event ``<prefix>/review/<event_id>`` (console -> fleet)."""
    return f"{prefix}/review/{event_id}"
