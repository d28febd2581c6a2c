"""`namus-edge scan`: clips of enrolled and unenrolled people, real videos, events on MQTT and in JSONL."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import faiss
import pytest
from namus_edge_testing.mosquitto import Collector
from namus_edge_testing.namus_factory import enrolled_lfw_bundle

from namus_edge.cli import main
from namus_edge.core.config import load_config
from namus_edge.demo import synthesize_clip
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.registry import match_threshold

N_CASES = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir, model_cache):
    """A signed bundle of N_CASES LFW people (first photo enrolled) and their other photos."""
    w = enrolled_lfw_bundle(tmp_path_factory.mktemp("scan"), data_dir, model_cache, N_CASES)
    lfw = w["lfw"]
    unenrolled = [v[0] for k, v in lfw.items() if len(v) == 1][:3]
    return {**w, "unenrolled": unenrolled}


def _sets(world, tmp_path, *extra):
    return ["--set", f"index.bundle={world['bundle']}", "--set", f"sync.pubkeys=[{world['pub']}]",
            "--set", f"service.state_dir={tmp_path}", "--set", "matching.age_check.enabled=false", *extra]


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_enrolled_person_gives_one_event_on_mqtt_and_jsonl(world, tmp_path, mosquitto, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    person = world["people"][4]
    probe = cv2.imread(str(world["lfw"][person][1]))  # another photo than the enrolled one
    clip = synthesize_clip(probe, tmp_path / "clip.avi", frames=75)
    events_path = tmp_path / "events.jsonl"
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    with Collector(mosquitto, ["namus-edge/#"]) as sub:
        try:
            rc = main(["scan", "--source", str(clip), "--events", str(events_path), "--mqtt",
                       *_sets(world, tmp_path, "--set", f"mqtt.port={mosquitto.port}", "--set", "mqtt.host=127.0.0.1",
                              "--set", f"service.debug_save_crops={tmp_path / 'debug'}")])
            assert faiss.omp_get_max_threads() == 1  # index.search_threads, default 1
        finally:
            faiss.omp_set_num_threads(threads)
        assert rc == 0
        assert sub.wait_for(lambda msgs: any(t.endswith("/match") for t, _, _ in msgs), timeout=10)
        mqtt_events = [json.loads(p) for p in sub.on("namus-edge/edge-01/match")]
    file_events = _events(events_path)
    assert len(file_events) == 1, file_events
    e = file_events[0]
    assert e["case"]["id_formatted"] == "MP7004"
    assert e["schema_version"] == 2 and e["review_required"] is True
    assert e["similarity"] >= match_threshold(load_config()) and e["frames"] >= 3
    assert [m["event_id"] for m in mqtt_events] == [e["event_id"]]
    # the explicit debug option saves the matched face crop (smaller than the frame), and nothing else
    saved = list((tmp_path / "debug").iterdir())
    assert [p.name for p in saved] == [f"{e['event_id']}.jpg"]
    crop = cv2.imread(str(saved[0]))
    assert crop.shape[0] * crop.shape[1] < 0.5 * 1280 * 720


def test_unenrolled_people_and_real_videos_give_no_event(world, tmp_path, data_dir, model_cache, monkeypatch, capsys):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    clips = [synthesize_clip(cv2.imread(str(p)), tmp_path / f"stranger{i}.avi", frames=36, seed=i)
             for i, p in enumerate(world["unenrolled"][:2])]
    clips += [data_dir / "video" / "hamilton_short_clip.mp4", data_dir / "video" / "faceapi_bbt_5frames.mp4"]
    events_path = tmp_path / "events.jsonl"
    for clip in clips:
        assert main(["scan", "--source", str(clip), "--events", str(events_path), *_sets(world, tmp_path)]) == 0
    assert _events(events_path) == []
    # nothing about the strangers is written anywhere: no images, no embeddings
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".avi",)]
    assert [p.name for p in written] == ["events.jsonl"] or written == []
    out = capsys.readouterr()
    # privacy: faces that match nothing are never logged or printed
    for person in world["people"]:
        assert person.split(":")[1] not in out.out + out.err


def test_scan_without_index_is_a_clear_error(world, tmp_path, capsys, model_cache, monkeypatch, data_dir):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    rc = main(["scan", "--source", str(data_dir / "video" / "faceapi_bbt_5frames.mp4"),
               "--set", f"index.bundle={tmp_path / 'none'}", "--set", f"sync.pubkeys=[{world['pub']}]"])
    assert rc == 1
    assert "no loadable index" in capsys.readouterr().err


def test_scan_fails_closed_on_unsigned_or_unverifiable_bundles(world, tmp_path, capsys, caplog, model_cache,
                                                               monkeypatch, data_dir):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    clip = ["scan", "--source", str(data_dir / "video" / "faceapi_bbt_5frames.mp4")]
    # no pinned key: refused before anything is loaded
    assert main([*clip, "--set", f"index.bundle={world['bundle']}"]) == 1
    assert "sync.pubkeys is empty" in capsys.readouterr().err
    # a key is pinned but the bundle's signature is gone: refused
    unsigned = tmp_path / "unsigned"
    shutil.copytree(world["bundle"], unsigned)
    (unsigned / "manifest.sig").unlink()
    assert main([*clip, "--set", f"index.bundle={unsigned}", "--set", f"sync.pubkeys=[{world['pub']}]"]) == 1
    assert "unsigned" in capsys.readouterr().err
    # signed by another key than the pinned one: refused
    _, rogue = generate_keypair(tmp_path / "rogue.key")
    assert main([*clip, "--set", f"index.bundle={world['bundle']}", "--set", f"sync.pubkeys=[{rogue}]"]) == 1
    assert "no loadable index" in capsys.readouterr().err
    # development only: index.allow_unsigned loads it, loudly
    with caplog.at_level(logging.WARNING):
        assert main([*clip, "--set", f"index.bundle={unsigned}", "--set", "index.allow_unsigned=true",
                     "--set", f"service.state_dir={tmp_path}"]) == 0
    assert any("WITHOUT a signature check" in r.getMessage() for r in caplog.records)


def _pipeline_events(world, analyzer, clip, interval, *overrides):
    """Run the edge pipeline over a clip at a detection interval; [(frame index, event)] and the schedule stats."""
    from datetime import datetime, timezone

    from namus_edge.edge.frame_queue import Frame
    from namus_edge.edge.pipeline import Pipeline
    from namus_edge.index.bundle import Bundle

    config = load_config(overrides=[f"detection.interval={interval}", "matching.age_check.enabled=false", *overrides])
    bundle = Bundle.load(world["bundle"], [world["pub"]])
    events = []
    pipe = Pipeline(config, analyzer, lambda: bundle, lambda e, crop: events.append(e))
    cap = cv2.VideoCapture(str(clip))
    now = datetime.now(timezone.utc)
    out = []
    try:
        i = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            if pipe.process([Frame("cam", i, i / 30.0, now, image)]):
                out.append((i, events[-1]))
            i += 1
    finally:
        cap.release()
        bundle.close()
    pipe.finish_camera("cam")
    return out, dict(pipe.schedule.stats)


@pytest.mark.slow
def test_detection_interval_keeps_video_events(world, tmp_path, data_dir, model_cache):
    """Default interval (> 1): each enrolled clip gives exactly its one event, on the same track within two frames
    of the every-frame run; strangers and the real videos give none (at interval 5)."""
    assert load_config().detection.interval > 1
    analyzer = FaceAnalyzer(load_config(), model_cache)
    for k in (1, 6, 9):
        person = world["people"][k]
        clip = synthesize_clip(cv2.imread(str(world["lfw"][person][1])), tmp_path / f"p{k}.avi", frames=60, seed=k)
        every, _ = _pipeline_events(world, analyzer, clip, 1)
        interval, stats = _pipeline_events(world, analyzer, clip, load_config().detection.interval)
        assert stats.get("roi", 0) > 0, stats  # the interval really ran between full passes
        assert len(every) == 1 and len(interval) == 1, (every, interval)
        (f1, e1), (f3, e3) = every[0], interval[0]
        assert e1.case.id_formatted == e3.case.id_formatted == f"MP{7000 + k}"
        assert e3.track_id == e1.track_id and abs(f3 - f1) <= 2
    others = [synthesize_clip(cv2.imread(str(p)), tmp_path / f"s{i}.avi", frames=36, seed=i)
              for i, p in enumerate(world["unenrolled"][:2])]
    others += [data_dir / "video" / "hamilton_short_clip.mp4", data_dir / "video" / "faceapi_bbt_5frames.mp4"]
    for clip in others:
        assert _pipeline_events(world, analyzer, clip, 5)[0] == []


@pytest.mark.slow
def test_small_face_verification_keeps_video_events(world, tmp_path, data_dir, model_cache):
    """With the small-face path on (detection.verify_low, det_2.5g crops) at the default interval: each enrolled
    clip still gives exactly its one event, strangers and the real videos none."""
    analyzer = FaceAnalyzer(load_config(), model_cache)
    verify = "detection.verify_low=0.2"
    interval = load_config().detection.interval
    for k in (1, 6, 9):
        person = world["people"][k]
        clip = synthesize_clip(cv2.imread(str(world["lfw"][person][1])), tmp_path / f"p{k}.avi", frames=60, seed=k)
        events, stats = _pipeline_events(world, analyzer, clip, interval, verify)
        assert stats.get("full", 0) > 0 and stats.get("roi", 0) > 0, stats
        assert [e.case.id_formatted for _, e in events] == [f"MP{7000 + k}"], events
    assert "verifier" in analyzer.model_identities()  # the full passes really ran with the verifier
    others = [synthesize_clip(cv2.imread(str(p)), tmp_path / f"s{i}.avi", frames=36, seed=i)
              for i, p in enumerate(world["unenrolled"][:2])]
    others += [data_dir / "video" / "hamilton_short_clip.mp4", data_dir / "video" / "faceapi_bbt_5frames.mp4"]
    for clip in others:
        assert _pipeline_events(world, analyzer, clip, interval, verify)[0] == []


def test_only_faces_reaching_the_threshold_are_aged(world, tmp_path, model_cache):
    """Age runs for faces whose best case reaches the threshold (the only ones the age check and events read)."""
    analyzer = FaceAnalyzer(load_config(), model_cache)
    aged: list[int] = []
    estimate = analyzer.estimate_age_sex

    def counting(faces, embeddings=None):
        aged.append(len(faces))
        return estimate(faces, embeddings)

    analyzer.estimate_age_sex = counting
    stranger = synthesize_clip(cv2.imread(str(world["unenrolled"][0])), tmp_path / "s.avi", frames=30, seed=3)
    assert _pipeline_events(world, analyzer, stranger, 3)[0] == []
    assert aged == []  # a face matching nothing is never aged
    person = world["people"][2]
    clip = synthesize_clip(cv2.imread(str(world["lfw"][person][1])), tmp_path / "p.avi", frames=45, seed=2)
    events, _ = _pipeline_events(world, analyzer, clip, 3)
    assert len(events) == 1 and events[0][1].estimated_age is not None and sum(aged) >= 3
    assert events[0][1].estimated_sex is not None  # the sex model ran for the matched face (v2 event)
