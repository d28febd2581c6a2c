"""Fixtures for tests/edge: a real mosquitto broker (see tests/mosquitto.py)."""

from __future__ import annotations

from tests.mosquitto import mosquitto, mosquitto_factory  # noqa: F401 - fixtures re-exported for pytest
