"""Fixtures for the review console tests: brokers, a PostgreSQL cluster, a database per backend, events."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from namus_edge_testing.mosquitto import mosquitto, mosquitto_factory  # noqa: F401 - fixtures re-exported
from namus_edge_testing.postgres import postgres_cluster  # noqa: F401 - fixture re-exported


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh empty database: a SQLite file, or a new database on the real PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite3'}"
    return request.getfixturevalue("postgres_cluster").new_database()


def jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    """A real small JPEG (random noise face stand-in)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


def make_event(*, version: int = 1, device: str = "edge-01", camera: str = "lobby", track: int = 7,
               case: str = "MP7004", similarity: float = 0.55, event_id: str | None = None,
               timestamp: str = "2026-01-05T10:00:00.000Z", crop: bytes | None = None,
               others: list[tuple[str, float]] | None = None, **extra: Any) -> dict[str, Any]:
    """A valid match event dict, schema v1 or v2 (v2 built from CONTRACTS.md)."""
    ev: dict[str, Any] = {
        "schema_version": version,
        "event_id": event_id or str(uuid.uuid4()),
        "device_id": device,
        "camera_id": camera,
        "timestamp": timestamp,
        "track_id": track,
        "case": {"id_formatted": case, "case_set": "MP", "name": "Test Person",
                 "link": f"https://www.namus.gov/MissingPersons/Case#/{case[2:]}",
                 "current_age_min": 30, "current_age_max": 33},
        "similarity": similarity,
        "margin": 0.12,
        "estimated_age": 31.5,
        "quality": 0.8,
        "bbox": [10.0, 20.0, 110.0, 140.0],
        "index_version": "2026.01.01-1",
        "models": {"detector": {"name": "det_500m", "sha256": "5e4447f5"},
                   "embedder": {"name": "edgeface_xs", "sha256": "a1b2c3d4"}, "age": None},
        "image_key": f"{case}/img-1",
        "frames": 3,
        "review_required": True,
    }
    if crop is not None:
        ev["crop_jpeg_b64"] = base64.b64encode(crop).decode()
    if version == 2:
        cands = [(case, similarity), *(others or [("MP7001", 0.31)])]
        ev["candidates"] = [{"id_formatted": c, "similarity": s, "image_key": f"{c}/img-1",
                             "category": "FacialCaseId", "is_rendering": False} for c, s in cands]
        ev["photo"] = {"category": "FacialCaseId", "is_rendering": False}
        ev["static_suspect"] = False
        ev["estimated_sex"] = {"label": "female", "confidence": 0.91}
        ev["policy"] = {"rule": "target_fpir", "threshold": 0.4, "gallery_size": 12, "target_fpir": 0.01}
    ev.update(extra)
    return ev


@pytest.fixture()
def event_factory() -> Callable[..., dict[str, Any]]:
    return make_event


