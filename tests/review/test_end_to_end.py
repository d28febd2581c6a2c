"""End to end with real parts: `namus-edge scan --mqtt` on an enrolled clip into the console; two reviewers
confirm; a "not a match" suppresses that (camera, case) on a running device (real models, real FAISS)."""

from __future__ import annotations

import json
import threading

import cv2
import faiss
import httpx
import pytest
from namus_edge_testing.mosquitto import Collector
from namus_edge_testing.namus_factory import enrolled_lfw_bundle
from namus_edge_testing.review import mqtt_publish, wait_until

from namus_edge.cli import main
from namus_edge.core.config import Config
from namus_edge.demo import synthesize_clip
from namus_edge.edge.service import EdgeService

N_CASES = 8
PW = "correct horse battery"


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir, model_cache):
    """A signed bundle of N_CASES LFW people (first photo enrolled) and a clip of person 4's second photo."""
    w = enrolled_lfw_bundle(tmp_path_factory.mktemp("e2e"), data_dir, model_cache, N_CASES)
    clip = synthesize_clip(cv2.imread(str(w["lfw"][w["people"][4]][1])), w["root"] / "clip.avi", frames=75)
    return {"bundle": w["bundle"], "pub": w["pub"], "clip": clip}


def _device_sets(world, tmp_path, broker, *extra):
    return ["--set", f"index.bundle={world['bundle']}", "--set", f"sync.pubkeys=[{world['pub']}]",
            "--set", f"service.state_dir={tmp_path / 'device'}", "--set", "matching.age_check.enabled=false",
            "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.face_crop=topic",
            *extra]


@pytest.mark.slow
def test_scan_to_console_dedupe_two_reviewers_confirm(world, tmp_path, mosquitto, console_factory, model_cache,
                                                      monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    console = console_factory(mosquitto, world["bundle"])
    for name in ("alice", "bob"):
        console.service.store.add_user(name, "reviewer", PW)
    api = {u: httpx.Client(base_url=console.url, timeout=30,
                           headers={"Authorization": f"Bearer {console.service.store.create_token(u)}"})
           for u in ("alice", "bob")}
    threads = faiss.omp_get_max_threads()
    with Collector(mosquitto, ["namus-edge/#"]) as sub:
        try:
            rc = main(["scan", "--source", str(world["clip"]), "--mqtt", *_device_sets(world, tmp_path, mosquitto)])
            assert rc == 0
        finally:
            faiss.omp_set_num_threads(threads)
        assert sub.wait_for(lambda m: any(t.endswith("/match") for t, _, _ in m), timeout=15)
        stats = console.service.ingestor.stats
        wait_until(lambda: stats()["accepted"] == 1 and stats()["crops"] == 1, what="the event and its crop")
        items = api["alice"].get("/api/candidates", params={"status": "pending"}).json()["items"]
        assert len(items) == 1, items
        item = items[0]
        assert item["case"]["id_formatted"] == "MP7004" and item["device_id"] == "edge-01"
        crop = api["alice"].get(f"/crops/{item['event_id']}.jpg")
        assert crop.status_code == 200 and crop.content.startswith(b"\xff\xd8")
        # the same event re-published (QoS 1 re-delivery): still one item, one stored event
        payload = sub.on("namus-edge/edge-01/match")[0]
        mqtt_publish(mosquitto, [("namus-edge/edge-01/match", payload)])
        wait_until(lambda: console.service.ingestor.stats()["duplicates"] == 1, what="the duplicate")
        assert len(api["alice"].get("/api/candidates", params={"status": "all"}).json()["items"]) == 1
        assert console.service.store.count_events() == 1
        card = httpx.Client(base_url=console.url, timeout=30)
        assert card.get(f"/candidates/{item['event_id']}").status_code == 303  # no session: to the login page
        # two reviewers confirm; the verdicts appear on the review topic
        for user in ("alice", "bob"):
            r = api[user].post(f"/api/candidates/{item['event_id']}/verdict",
                               json={"verdict": "match", "reason": "same_person", "note": ""})
            assert r.status_code == 200
        assert r.json()["status"] == "confirmed"
        topic = f"namus-edge/review/{item['event_id']}"
        assert sub.wait_for(lambda m: sum(1 for t, _, _ in m if t == topic) == 2, timeout=15)
        assert [json.loads(p)["status"] for p in sub.on(topic)] == ["pending", "confirmed"]
    assert api["alice"].get("/api/candidates", params={"status": "pending"}).json()["items"] == []


@pytest.mark.slow
def test_not_a_match_suppresses_the_pair_on_a_running_device(world, tmp_path, mosquitto, console_factory,
                                                             model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    console = console_factory(mosquitto, world["bundle"])
    console.service.store.add_user("alice", "reviewer", PW)
    api = httpx.Client(base_url=console.url, timeout=30,
                       headers={"Authorization": f"Bearer {console.service.store.create_token('alice')}"})
    config = Config.model_validate({
        "cameras": [{"id": "door", "source": str(world["clip"]), "kind": "file", "loop": True}],
        "index": {"bundle": str(world["bundle"])},
        "sync": {"pubkeys": [str(world["pub"])]},
        "matching": {"age_check": {"enabled": False}, "cooldown_s": 1.0},
        "service": {"state_dir": str(tmp_path / "device"), "device_id": "edge-05"},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "password_env": None, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0},
    })
    device = EdgeService(config)
    threads = faiss.omp_get_max_threads()
    runner = threading.Thread(target=device.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: console.service.ingestor.stats()["accepted"] >= 1, timeout=180, what="a first event")
        item = api.get("/api/candidates", params={"status": "pending"}).json()["items"][0]
        assert item["device_id"] == "edge-05" and item["camera_id"] == "door"
        r = api.post(f"/api/candidates/{item['event_id']}/verdict",
                     json={"verdict": "not_a_match", "reason": "different_person", "note": "test"})
        assert r.json()["status"] == "rejected"
        case = item["case"]["id_formatted"]
        wait_until(lambda: device.suppressions.suppressed_events >= 1, timeout=120,
                   what="the device to suppress a decision for the pair")
        emitted = device.pipeline.stats.events
        seen = device.suppressions.suppressed_events
        wait_until(lambda: device.suppressions.suppressed_events >= seen + 2, timeout=120,
                   what="two more suppressed decisions")
        assert device.pipeline.stats.events == emitted  # the pair fired again, but nothing was emitted
        assert device.suppressions.active("door", case)
    finally:
        device.request_stop()
        runner.join(60)
        faiss.omp_set_num_threads(threads)
    assert not runner.is_alive()
