"""MQTT topic names that more than one layer uses (the device publishes, operators announce)."""

from __future__ import annotations


def announce_topic(prefix: str) -> str:
    """Return the fleet-wide index announcement topic ``<prefix>/index/announce``."""
    return f"{prefix}/index/announce"
