"""A valid match event with overridable fields, for tests."""

from __future__ import annotations

from typing import Any

from namus_edge.edge.events import (
    CaseRef,
    EventModels,
    MatchEvent,
    ModelRef,
)


def make_event(**overrides: Any) -> MatchEvent:
    values: dict[str, Any] = {
        "device_id": "edge-01",
        "camera_id": "lobby",
        "track_id": 7,
        "case": CaseRef(
            id_formatted="MP12345", case_set="MP", name="Jane Doe",
            link="https://www.namus.gov/MissingPersons/Case#/12345", current_age_min=31, current_age_max=33,
        ),
        "similarity": 0.52,
        "margin": 0.1,
        "estimated_age": 33.5,
        "quality": 0.8,
        "bbox": (10.0, 20.0, 110.0, 140.0),
        "index_version": "2024.05.01-1",
        "models": EventModels(
            detector=ModelRef(name="det_500m", sha256="5e4447f5"),
            embedder=ModelRef(name="edgeface_xs", sha256="a1b2c3d4e5f6"),
            age=ModelRef(name="age_v1", sha256="0f9e8d7c"),
        ),
        "image_key": "MP12345/img-2",
        "frames": 3,
    }
    values.update(overrides)
    return MatchEvent(**values)
