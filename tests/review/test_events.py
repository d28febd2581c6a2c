"""Parsing events of schema 1 and 2 for review; malformed payloads name the field."""

from __future__ import annotations

import json

import pytest
from namus_edge_testing.review import make_event

from namus_edge.edge.events import EventError
from namus_edge.review.events import parse_event
from namus_edge.review.metrics import band, compute


def test_v1_gets_contract_defaults_and_v2_is_read():
    v1 = parse_event(json.dumps(make_event()).encode())
    assert v1.schema_version == 1 and v1.policy is None and v1.estimated_sex is None and not v1.static_suspect
    assert [c.id_formatted for c in v1.candidates] == ["MP7004"]
    v2 = parse_event(json.dumps(make_event(version=2)).encode())
    assert v2.schema_version == 2 and [c.id_formatted for c in v2.candidates] == ["MP7004", "MP7001"]
    assert v2.policy["gallery_size"] == 12 and v2.estimated_sex == {"label": "female", "confidence": 0.91}


def test_hub_normalised_v2_event_keeps_score_and_policy_flag():
    ev = make_event(version=2)
    ev["policy"] = {**ev["policy"], "hub_norm": True}
    ev["candidates"] = [{**c, "score": round(c["similarity"] - 0.03, 4)} for c in ev["candidates"]]
    parsed = parse_event(json.dumps(ev).encode())
    assert parsed.policy["hub_norm"] is True
    assert [c.to_dict() for c in parsed.candidates] == ev["candidates"]
    plain = parse_event(json.dumps(make_event(version=2)).encode())  # events before hub_norm existed
    assert "hub_norm" not in plain.policy and all(c.score is None for c in plain.candidates)
    bad = {**ev, "policy": {**ev["policy"], "hub_norm": "yes"}}
    with pytest.raises(EventError, match=r"policy\.hub_norm"):
        parse_event(json.dumps(bad).encode())


@pytest.mark.parametrize(("change", "field"), [
    ({"candidates": [{"id_formatted": "MP1", "similarity": 0.5, "image_key": "k", "category": None,
                      "is_rendering": False}]}, "candidates[0].id_formatted"),
    ({"estimated_sex": {"label": "other", "confidence": 0.9}}, "estimated_sex.label"),
    ({"estimated_sex": {"label": "male", "confidence": 0.2}}, "estimated_sex.confidence"),
    ({"policy": {"rule": "x", "threshold": 0.4, "gallery_size": -1, "target_fpir": None}}, "policy.gallery_size"),
    ({"photo": {"category": None}}, "photo"),
    ({"static_suspect": "no"}, "static_suspect"),
    ({"margin": -1}, "margin"),
    ({"schema_version": True}, "schema_version"),
])
def test_malformed_v2_events_name_the_field(change, field):
    ev = {**make_event(version=2), **change}
    with pytest.raises(EventError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_event(json.dumps(ev).encode())
    missing = make_event(version=2)
    del missing["policy"]
    with pytest.raises(EventError, match="policy"):
        parse_event(json.dumps(missing).encode())


def test_metrics_bands_and_precision():
    assert band(0.4) == "0.40-0.45" and band(0.449) == "0.40-0.45" and band(0.45) == "0.45-0.50"
    rows = [{"id": i, "device_id": "d", "camera_id": "c", "index_version": "v", "similarity": s, "status": st,
             "first_seen": 0.0, "first_verdict_at": t, "decided_at": t, "case_id": "MP1"}
            for i, (s, st, t) in enumerate([(0.62, "confirmed", 10.0), (0.41, "rejected", 30.0),
                                            (0.43, "rejected", 50.0), (0.5, "pending", None)])]
    m = compute(rows)
    assert m["overall"]["precision"] == pytest.approx(1 / 3) and m["overall"]["median_time_to_verdict_s"] == 30.0
    assert m["by"]["band"]["0.40-0.45"]["rejected"] == 2 and m["by"]["band"]["0.60-0.65"]["precision"] == 1.0
    assert sum(m["histogram"]["rejected"]) == 2 and m["histogram"]["confirmed"][12] == 1
