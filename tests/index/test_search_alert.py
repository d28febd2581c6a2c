"""``index search --alert``: the device's alert policy applied to still photos, on a bundle built from NamUs cases."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import cv2
import numpy as np
import pytest
from namus_edge_testing.namus_factory import SyntheticCase, lfw_identities, write_prepager

from namus_edge.cli import main
from namus_edge.core.config import load_config
from namus_edge.index.build import build_bundle
from namus_edge.index.bundle import Bundle
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir, model_cache):
    """Six adult LFW cases (sex recorded, one with an age progression) and one 'child' case with its age.

    The adult cases carry no age: their LFW photos' true ages are unknown, and a made-up age would make
    the mated alert depend on the age model's error at the tolerance's edge, not on the policy.
    """
    root = tmp_path_factory.mktemp("alert")
    lfw = lfw_identities(data_dir)
    people = [k for k, v in lfw.items() if len(v) >= 3][:7]
    recent = (datetime.now(timezone.utc).date() - timedelta(days=400)).isoformat()
    cases = [SyntheticCase("MP", 9100 + i, n.split(":")[1], "Test", [lfw[n][0]], age_at_last=None, sex="Male",
                           date_last=recent) for i, n in enumerate(people[:6])]
    cases[1].photos.append(lfw[people[1]][2])
    cases[1].categories[:] = ["FacialCaseId", "AgeProgression"]
    # an adult's photo filed as a 4-year-old missing a year ago: an adult face cannot be this child today
    cases.append(SyntheticCase("MP", 9200, "Child", "Test", [lfw[people[6]][0]], age_at_last=4, sex="Male",
                               date_last=recent))
    write_prepager(root / "src", cases)
    key, pub = generate_keypair(root / "op.key")
    config = load_config()
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    build_bundle(config, str(root / "src"), root / "bundle", key, analyzer=analyzer, today=date(2026, 11, 23))
    stranger = next(v[0] for k, v in lfw.items() if len(v) == 1)
    return {"bundle": root / "bundle", "pub": pub, "lfw": lfw, "people": people, "stranger": stranger}


def test_alert_json_reports_vote_reason_candidates_and_threshold(world, model_cache, capsys):
    lfw, people = world["lfw"], world["people"]
    photos = [lfw[people[0]][1], world["stranger"], lfw[people[6]][1], lfw[people[1]][1]]
    argv = ["index", "search", str(world["bundle"]), "--alert", "--json", "--pubkey", str(world["pub"]),
            "--set", f"models.cache_dir={model_cache}"]
    for p in photos:
        argv += ["--image", str(p)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    with Bundle.load(world["bundle"], verify=False) as b:
        ntotal = b.ntotal
    assert doc["policy"]["gallery_size"] == ntotal == 8
    assert doc["policy"]["rule"] in ("target_fpir", "embedder_default")
    mated, stranger, child, progressed = doc["results"]
    for row in doc["results"]:
        assert {"image", "alert", "reason", "candidates", "threshold"} <= set(row)
        assert row["threshold"] == doc["policy"]["threshold"]
    assert mated["image"] == str(photos[0])
    assert mated["alert"] == "MP9100" and mated["reason"] == "alert", mated
    assert mated["candidates"][0]["case"] == "MP9100" and mated["candidates"][0]["category"] == "FacialCaseId"
    assert stranger["alert"] is None and stranger["reason"] in ("threshold", "margin")
    assert stranger["candidates"][0]["score"] < stranger["threshold"] or stranger["reason"] == "margin"
    # the face scores above the threshold for the 'child' case, but an adult face cannot be a 5-year-old
    assert child["alert"] is None and child["reason"] == "age", child
    assert child["candidates"][0]["case"] == "MP9200" and child["candidates"][0]["score"] >= child["threshold"]
    # a case with an age progression: its best photo scores, and the category says which one matched
    top = progressed["candidates"][0]
    assert top["case"] == "MP9101" and top["category"] in ("FacialCaseId", "AgeProgression")
    assert top["is_rendering"] is (top["category"] == "AgeProgression")


def test_alert_text_output_and_fixed_threshold_override(world, model_cache, capsys):
    lfw, people = world["lfw"], world["people"]
    argv = ["index", "search", str(world["bundle"]), "--alert", "--image", str(lfw[people[0]][1]),
            "--set", f"models.cache_dir={model_cache}", "--set", "matching.threshold=0.99",
            "--pubkey", str(world["pub"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fixed_threshold threshold 0.99" in out and "no alert (threshold)" in out
    assert "MP9100" in out


def test_alert_on_a_photo_without_a_face(world, model_cache, tmp_path, capsys):
    blank = tmp_path / "wall.jpg"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    assert main(["index", "search", str(world["bundle"]), "--alert", "--json", "--image", str(blank),
                 "--set", f"models.cache_dir={model_cache}", "--pubkey", str(world["pub"])]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["alert"] is None and row["reason"] == "no_face" and row["candidates"] == []


def test_bundle_carries_photo_category(world):
    with Bundle.load(world["bundle"], verify=False) as b:
        cats = {f["category"] for f in b.faces()}
        assert "AgeProgression" in cats
        rendered = [f for f in b.faces() if f["category"] == "AgeProgression"]
        assert all(b.photo(f["image_key"]) == {"category": "AgeProgression", "is_rendering": True} for f in rendered)
        assert b.photo("no-such-key") is None
        case = b.case("MP9100")
        assert case is not None and case["sex"] == "Male" and case["age_min"] is None
        child = b.case("MP9200")
        assert child is not None and child["sex"] == "Male" and child["age_min"] == 4
