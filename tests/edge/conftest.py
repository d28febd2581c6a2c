"""Fixtures for tests/edge: a real mosquitto broker (see tests/mosquitto.py)."""

from __future__ import annotations

from namus_edge_testing.mosquitto import mosquitto, mosquitto_factory  # noqa: F401 - fixtures re-exported for pytest
