"""MatchEvent: validation table, JSON round trip, and docs/events.md kept in sync with the code."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from namus_edge_testing.events import make_event

from namus_edge.edge.events import (
    SCHEMA_VERSION,
    CandidateRef,
    CaseRef,
    EventError,
    EventModels,
    MatchEvent,
    ModelRef,
    PhotoRef,
    PolicyRef,
    SexEstimate,
    parse_timestamp,
    utc_timestamp,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def doc_json_blocks() -> list[Any]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)]


def test_defaults_and_round_trip() -> None:
    event = make_event()
    assert event.schema_version == SCHEMA_VERSION == 2
    assert uuid.UUID(event.event_id).version == 4
    assert event.review_required is True
    assert event.timestamp.endswith("Z")
    assert abs(parse_timestamp(event.timestamp) - datetime.now(timezone.utc)) < timedelta(seconds=5)
    text = event.to_json()
    data = json.loads(text)
    assert "crop_jpeg_b64" not in data
    assert data["bbox"] == [10.0, 20.0, 110.0, 140.0]
    assert data["case"]["id_formatted"] == "MP12345"
    assert data["models"]["age"] == {"name": "age_v1", "sha256": "0f9e8d7c"}
    assert MatchEvent.from_json(text) == event
    assert MatchEvent.from_json(text.encode()) == event
    assert make_event().event_id != event.event_id


def test_numpy_scalars_are_normalised() -> None:
    event = make_event(
        similarity=np.float32(0.5), track_id=np.int64(3), bbox=np.array([1, 2, 3, 4], dtype=np.float32)
    )
    assert type(event.similarity) is float and type(event.track_id) is int
    assert event.bbox == (1.0, 2.0, 3.0, 4.0)
    json.loads(event.to_json())


def test_inline_crop_round_trip() -> None:
    crop = base64.b64encode(b"\xff\xd8\xff\xe0" + b"x" * 20).decode()
    event = make_event(crop_jpeg_b64=crop)
    assert json.loads(event.to_json())["crop_jpeg_b64"] == crop
    assert MatchEvent.from_json(event.to_json()) == event


def test_age_model_optional() -> None:
    event = make_event(
        estimated_age=None,
        models=EventModels(
            detector=ModelRef(name="d", sha256="00112233"), embedder=ModelRef(name="e", sha256="44556677")
        ),
        case=CaseRef(id_formatted="UP9", case_set="UP", name="", link="https://www.namus.gov/x"),
    )
    data = json.loads(event.to_json())
    assert data["estimated_age"] is None and data["models"]["age"] is None
    assert data["case"]["current_age_min"] is None
    assert MatchEvent.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"similarity": 1.5}, "similarity"),
        ({"similarity": float("nan")}, "similarity"),
        ({"similarity": "0.5"}, "similarity"),
        ({"margin": -0.1}, "margin"),
        ({"quality": 1.01}, "quality"),
        ({"estimated_age": -1}, "estimated_age"),
        ({"track_id": -1}, "track_id"),
        ({"track_id": True}, "track_id"),
        ({"track_id": 1.0}, "track_id"),
        ({"frames": 0}, "frames"),
        ({"bbox": (10, 20, 5, 40)}, "bbox"),
        ({"bbox": (10, 20, 30)}, "bbox"),
        ({"bbox": (-1, 20, 30, 40)}, "bbox[0]"),
        ({"bbox": "1,2,3,4"}, "bbox"),
        ({"device_id": "bad/id"}, "device_id"),
        ({"camera_id": ""}, "camera_id"),
        ({"timestamp": "2024-05-01T12:00:00"}, "no time zone"),
        ({"timestamp": "2024-05-01T12:00:00+02:00"}, "not UTC"),
        ({"timestamp": "yesterday"}, "not ISO 8601"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"event_id": str(uuid.uuid1())}, "UUID4"),
        ({"event_id": str(uuid.uuid4()).upper()}, "canonical"),
        ({"review_required": False}, "review_required"),
        ({"schema_version": 3}, "schema_version"),
        ({"index_version": ""}, "index_version"),
        ({"image_key": 3}, "image_key"),
        ({"crop_jpeg_b64": "###"}, "base64"),
        ({"crop_jpeg_b64": base64.b64encode(b"\x89PNG....").decode()}, "JPEG"),
        ({"case": {"id_formatted": "MP1"}}, "CaseRef"),
        ({"models": None}, "EventModels"),
    ],
)
def test_invalid_events(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match=re.escape(message)):
        make_event(**overrides)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"case_set": "XX"}, "case.case_set"),
        ({"link": "ftp://x"}, "case.link"),
        ({"current_age_min": 40, "current_age_max": 30}, "current_age_min (40)"),
        ({"current_age_max": 200}, "case.current_age_max"),
        ({"id_formatted": ""}, "case.id_formatted"),
    ],
)
def test_invalid_case(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"id_formatted": "MP1", "case_set": "MP", "name": "", "link": "https://www.namus.gov/1"}
    with pytest.raises(EventError, match=re.escape(message)):
        CaseRef(**{**base, **kwargs})


@pytest.mark.parametrize("digest", ["abc", "ABCDEF12", "g" * 8, "0" * 65])
def test_invalid_model_digest(digest: str) -> None:
    with pytest.raises(EventError, match=r"models\.sha256"):
        ModelRef(name="det", sha256=digest)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("frames"), "missing field(s) frames"),
        (lambda d: d.update(extra=1), "unknown field(s) extra"),
        (lambda d: d["case"].pop("link"), "case: missing field(s) link"),
        (lambda d: d["models"].update(age={"name": "a"}), "models.age: missing field(s) sha256"),
        (lambda d: d.update(bbox={"x": 1}), "bbox"),
    ],
)
def test_from_json_rejects_bad_documents(mutate: Any, message: str) -> None:
    data = json.loads(make_event().to_json())
    mutate(data)
    with pytest.raises(EventError, match=re.escape(message)):
        MatchEvent.from_json(json.dumps(data))


def test_from_json_rejects_non_json() -> None:
    with pytest.raises(EventError, match="not valid JSON"):
        MatchEvent.from_json(b"\xff\xfe{")
    with pytest.raises(EventError, match="expected a JSON object"):
        MatchEvent.from_json("[1, 2]")


def test_timestamps() -> None:
    assert utc_timestamp(datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))) == (
        "2024-05-01T12:00:00.123Z"
    )
    with pytest.raises(EventError, match="naive"):
        utc_timestamp(datetime(2024, 5, 1))
    assert parse_timestamp("2024-05-01T12:00:00+00:00") == parse_timestamp("2024-05-01T12:00:00Z")
    assert make_event(timestamp="2024-05-01T12:00:00+00:00").timestamp == "2024-05-01T12:00:00+00:00"


def test_replace_revalidates() -> None:
    with pytest.raises(EventError, match="quality"):
        replace(make_event(), quality=2.0)


def test_docs_example_parses_and_schema_matches_the_code() -> None:
    schema, example = doc_json_blocks()[:2]
    event = MatchEvent.from_dict(example)
    assert event.to_dict() == example
    produced = make_event(crop_jpeg_b64=base64.b64encode(b"\xff\xd8\xff").decode()).to_dict()
    assert set(schema["required"]) | {"crop_jpeg_b64"} == set(schema["properties"]) == set(produced)
    assert set(schema["required"]) == set(make_event().to_dict())
    assert set(schema["properties"]["case"]["required"]) == set(produced["case"])
    assert set(schema["properties"]["models"]["required"]) == set(produced["models"])
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert re.match(schema["properties"]["event_id"]["pattern"], make_event().event_id)
    text = DOC.read_text()
    for phrase in ("human review", "event_id", "QoS 1", "/availability", "/status", "index/announce", "/crop"):
        assert phrase in text


# -- schema version 2 ---------------------------------------------------------------------------


def make_v2_event(**overrides: Any) -> MatchEvent:
    values: dict[str, Any] = {
        "candidates": (
            CandidateRef(id_formatted="MP12345", similarity=0.52, image_key="MP12345/img-2", category="FacialCaseId"),
            CandidateRef(id_formatted="MP7", similarity=0.31, image_key="MP7-a", category="AgeProgression",
                         is_rendering=True),
        ),
        "photo": PhotoRef(category="FacialCaseId", is_rendering=False),
        "static_suspect": True,
        "estimated_sex": SexEstimate.from_p_male(0.2),
        "policy": PolicyRef(rule="target_fpir", threshold=0.45, gallery_size=14000, target_fpir=0.003),
    }
    values.update(overrides)
    return make_event(**values)


def test_v2_round_trip_and_schema_validation() -> None:
    schema = doc_json_blocks()[0]
    for event in (make_v2_event(), make_event(), make_v2_event(estimated_sex=None, static_suspect=False)):
        data = json.loads(event.to_json())
        jsonschema.validate(data, schema)
        assert MatchEvent.from_json(event.to_json()) == event
    data = make_v2_event().to_dict()
    assert data["estimated_sex"] == {"label": "female", "confidence": 0.8}
    assert data["candidates"][1]["is_rendering"] is True and data["static_suspect"] is True
    bad = dict(data, candidates=[])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(EventError, match="candidates"):
        MatchEvent.from_dict(bad)


def test_default_candidates_are_the_single_match() -> None:
    event = make_event()
    assert [c.id_formatted for c in event.candidates] == ["MP12345"]
    assert event.candidates[0].similarity == event.similarity and event.candidates[0].image_key == event.image_key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"candidates": (CandidateRef(id_formatted="MP9", similarity=0.5, image_key="k"),)}, "alerted case"),
        ({"candidates": tuple(CandidateRef(id_formatted="MP12345", similarity=0.5, image_key="k")
                              for _ in range(6))}, "at most 5"),
        ({"static_suspect": 1}, "static_suspect"),
    ],
)
def test_v2_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match=message):
        make_v2_event(**overrides)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SexEstimate(label="other", confidence=0.9), "estimated_sex.label"),
        (lambda: SexEstimate(label="male", confidence=0.4), "estimated_sex.confidence"),
        (lambda: PolicyRef(rule="x", threshold=1.5, gallery_size=1), "policy.threshold"),
        (lambda: PolicyRef(rule="x", threshold=0.4, gallery_size=-1), "policy.gallery_size"),
        (lambda: CandidateRef(id_formatted="MP1", similarity=2.0, image_key="k"), "candidates"),
        (lambda: PhotoRef(category="x", is_rendering="no"), "photo.is_rendering"),
    ],
)
def test_v2_value_objects_validate(build: Any, message: str) -> None:
    with pytest.raises(EventError, match=message):
        build()


def test_sex_estimate_from_p_male() -> None:
    assert SexEstimate.from_p_male(None) is None
    assert SexEstimate.from_p_male(0.5) == SexEstimate(label="male", confidence=0.5)
    assert SexEstimate.from_p_male(0.93) == SexEstimate(label="male", confidence=0.93)
    with pytest.raises(EventError):
        SexEstimate.from_p_male(1.2)


def test_v1_payload_is_read_with_v2_defaults_and_written_back_as_v1() -> None:
    v1 = make_event().to_dict()
    for key in ("candidates", "photo", "static_suspect", "estimated_sex", "policy"):
        v1.pop(key)
    v1["schema_version"] = 1
    event = MatchEvent.from_dict(v1)
    assert event.schema_version == 1
    assert [c.id_formatted for c in event.candidates] == [v1["case"]["id_formatted"]]
    assert event.candidates[0].category is None and event.photo == PhotoRef()
    assert event.static_suspect is False and event.estimated_sex is None and event.policy is None
    assert event.to_dict() == v1
    with pytest.raises(EventError, match="unknown field"):
        MatchEvent.from_dict(dict(v1, static_suspect=False))
    with pytest.raises(EventError, match="missing field"):
        MatchEvent.from_dict(dict(v1, schema_version=2))
