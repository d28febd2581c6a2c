"""The console for real: uvicorn on loopback, mosquitto, paho publishers, httpx clients."""

from __future__ import annotations

import json

import httpx
from namus_edge_testing.mosquitto import Collector
from namus_edge_testing.review import csrf_of, jpeg_bytes, login, make_event, mqtt_publish, wait_until

PW = "correct horse battery"


def _users(console, *names_roles):
    for name, role in names_roles:
        console.service.store.add_user(name, role, PW)


def test_unauthenticated_requests_are_refused(console_factory):
    console = console_factory()
    anon = httpx.Client(base_url=console.url, follow_redirects=False, timeout=30)
    for path in ("/api/candidates", "/api/candidates?status=all", "/api/metrics",
                 "/api/candidates/3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42", "/metrics.csv",
                 "/crops/3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42.jpg"):
        r = anon.get(path)
        assert r.status_code == 401, (path, r.status_code)
    r = anon.post("/api/candidates/3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42/verdict", json={"verdict": "match"})
    assert r.status_code == 401
    assert anon.get("/api/candidates", headers={"Authorization": "Bearer nert_wrong"}).status_code == 401
    for path in ("/queue", "/metrics", "/", "/candidates/3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42"):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    login_page = anon.get("/login")
    assert login_page.status_code == 200 and "Investigative lead, not an identification" in login_page.text
    assert "frame-ancestors 'none'" in login_page.headers["content-security-policy"]


def test_csrf_less_posts_and_login_rate_limit(console_factory):
    console = console_factory(login_max_failures=3)
    _users(console, ("alice", "reviewer"))
    ev = make_event()
    console.service.ingestor.on_match("namus-edge/edge-01/match", json.dumps(ev).encode())
    # a login form post without the CSRF token is refused
    anon = httpx.Client(base_url=console.url, follow_redirects=False, timeout=30)
    assert anon.post("/login", data={"username": "alice", "password": PW}).status_code == 403
    client = login(console.url, "alice", PW)
    # a verdict form without / with a wrong CSRF token is refused, and nothing is recorded
    path = f"/candidates/{ev['event_id']}/verdict"
    assert client.post(path, data={"verdict": "match"}).status_code == 403
    assert client.post(path, data={"verdict": "match", "csrf_token": "forged"}).status_code == 403
    # a session-authenticated API post needs the X-CSRF-Token header
    assert client.post(f"/api/candidates/{ev['event_id']}/verdict", json={"verdict": "match"}).status_code == 403
    assert console.service.store.get_item(ev["event_id"])["verdicts"] == []
    token = csrf_of(client, f"/candidates/{ev['event_id']}")
    r = client.post(path, data={"verdict": "unsure", "reason": "low_quality", "note": "", "csrf_token": token})
    assert r.status_code == 303
    r = client.post(f"/api/candidates/{ev['event_id']}/verdict", json={"verdict": "unsure"},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["status"] == "unsure"
    # rate limiting: after 3 failures even the right password is refused (429) for this user
    for _ in range(3):
        tok = csrf_of(anon, "/login")
        r = anon.post("/login", data={"username": "alice", "password": "wrong", "csrf_token": tok})
        assert r.status_code == 401
    tok = csrf_of(anon, "/login")
    assert anon.post("/login", data={"username": "alice", "password": PW, "csrf_token": tok}).status_code == 429
    actions = [a["action"] for a in console.service.store.audit_log()]
    assert actions.count("login_failed") == 3 and "login_blocked" in actions


def test_mqtt_ingest_api_feedback_and_home_assistant(mosquitto, console_factory, operator_bundle):
    console = console_factory(mosquitto, operator_bundle)
    _users(console, ("alice", "reviewer"), ("bob", "admin"))
    store = console.service.store
    tokens = {u: store.create_token(u) for u in ("alice", "bob")}
    api = {u: httpx.Client(base_url=console.url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
           for u, t in tokens.items()}
    crop = jpeg_bytes(3)
    v1 = make_event(track=1, case="MP7004")
    v2 = make_event(version=2, track=2, case="MP7003", crop=jpeg_bytes(4), device="edge-02")
    bad = [
        ("namus-edge/edge-01/match", b"not json"),
        ("namus-edge/edge-01/match", json.dumps({k: v for k, v in make_event().items() if k != "similarity"}).encode()),
        ("namus-edge/edge-01/match", json.dumps(make_event(similarity=7.0)).encode()),
        ("namus-edge/edge-01/match", json.dumps(make_event(device="edge-09")).encode()),  # posing as another device
        ("namus-edge/edge-01/match", json.dumps(make_event(version=3)).encode()),
        ("namus-edge/edge-01/match", json.dumps({**make_event(version=2), "candidates": []}).encode()),
    ]
    with Collector(mosquitto, ["namus-edge/#", "homeassistant/#"]) as sub:
        mqtt_publish(mosquitto, [("namus-edge/edge-01/availability", b"online"),
                                 ("namus-edge/edge-02/availability", b"online")], retain=True)
        mqtt_publish(mosquitto, [(f"namus-edge/edge-01/match/{v1['event_id']}/crop", crop),
                                 ("namus-edge/edge-01/match", json.dumps(v1).encode()),
                                 ("namus-edge/edge-02/match", json.dumps(v2).encode()), *bad,
                                 ("namus-edge/edge-01/match", json.dumps(v1).encode())])  # a QoS 1 duplicate
        wait_until(lambda: sum(console.service.ingestor.stats()["rejected"].values()) == len(bad)
                   and console.service.ingestor.stats()["duplicates"] == 1, what="ingest")
        stats = console.service.ingestor.stats()
        assert stats["accepted"] == 2 and stats["crops"] == 1
        assert stats["rejected"] == {"event": 2, "similarity": 1, "device_id": 1, "schema_version": 1,
                                     "candidates": 1}
        items = api["alice"].get("/api/candidates", params={"status": "pending"}).json()["items"]
        assert sorted(i["event_id"] for i in items) == sorted([v1["event_id"], v2["event_id"]])
        one = api["alice"].get(f"/api/candidates/{v1['event_id']}").json()
        assert {k: one[k] for k in ("event_id", "similarity", "camera_id", "device_id", "status", "verdicts")} == {
            "event_id": v1["event_id"], "similarity": 0.55, "camera_id": "lobby", "device_id": "edge-01",
            "status": "pending", "verdicts": []}
        assert one["case"]["id_formatted"] == "MP7004"
        assert api["alice"].get(f"/crops/{v1['event_id']}.jpg").content == crop
        assert api["alice"].get(f"/crops/{v2['event_id']}.jpg").content == jpeg_bytes(4)
        assert [a["event_id"] for a in store.audit_log() if a["action"] == "view_crop"] == [v1["event_id"],
                                                                                            v2["event_id"]]
        # two reviewers confirm v1; the verdicts go out on the review topic, HA gets the confirmed event
        r = api["alice"].post(f"/api/candidates/{v1['event_id']}/verdict",
                              json={"verdict": "match", "reason": "same_person", "note": "scar on chin"})
        assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["match_votes"] == 1
        r = api["bob"].post(f"/api/candidates/{v1['event_id']}/verdict", json={"verdict": "match", "reason": "x"})
        assert r.json()["status"] == "confirmed" and [v["user"] for v in r.json()["verdicts"]] == ["alice", "bob"]
        assert api["bob"].post(f"/api/candidates/{v1['event_id']}/verdict",
                               json={"verdict": "perhaps"}).status_code == 422
        assert api["bob"].post("/api/candidates/3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42/verdict",
                               json={"verdict": "match"}).status_code == 404
        # a "not a match" on v2 asks edge-02 to suppress (camera, case)
        r = api["alice"].post(f"/api/candidates/{v2['event_id']}/verdict",
                              json={"verdict": "not_a_match", "reason": "different_person", "note": ""})
        assert r.json()["status"] == "rejected"
        review_v1 = f"namus-edge/review/{v1['event_id']}"
        assert sub.wait_for(lambda m: sum(1 for t, _, _ in m if t == review_v1) == 2
                            and any(t == "namus-edge/edge-02/suppress" for t, _, _ in m)
                            and any(t == "namus-edge/review-console/confirmed" for t, _, _ in m), timeout=15)
        last = json.loads(sub.on(review_v1)[-1])
        assert last["verdict"] == "match" and last["status"] == "confirmed" and last["confirmed"] is True
        assert "note" not in last and "user" not in last
        supp = json.loads(sub.on("namus-edge/edge-02/suppress")[0])
        assert supp["camera_id"] == "lobby" and supp["id_formatted"] == "MP7003" and supp["seconds"] == 86400.0
        assert supp["event_id"] == v2["event_id"] and supp["issued_at"].endswith("Z")
        assert sub.on("namus-edge/edge-01/suppress") == []
        confirmed = [json.loads(p) for p in sub.on("namus-edge/review-console/confirmed")]
        assert [c["id_formatted"] for c in confirmed] == ["MP7004"] and confirmed[0]["event_type"] == "confirmed_match"
        assert "crop" not in json.dumps(confirmed)
        # Home Assistant discovery: retained, device based, one connectivity sensor per device
        ha = console.service.homeassistant
        cfg_topic = ha.config_topic(ha.console_id)
        assert sub.wait_for(lambda m: any(t == "homeassistant/device/namus_edge_edge-02/config" for t, _, _ in m))
        conf = json.loads(sub.on(cfg_topic)[-1])
        assert {c["p"] for c in conf["cmps"].values()} == {"event", "sensor"}
        dev = json.loads(sub.on("homeassistant/device/namus_edge_edge-01/config")[-1])
        assert dev["cmps"]["connectivity"]["state_topic"] == "namus-edge/edge-01/availability"
        assert dev["cmps"]["connectivity"]["device_class"] == "connectivity"
        # the pending count is re-published after each verdict: wait for the last one, do not race it
        assert sub.wait_for(lambda m: [p for t, p, _ in m if t == "namus-edge/review-console/pending"][-1:] == [b"0"],
                            timeout=15)
        # Home Assistant restarts: everything is re-published
        before = len(sub.on(cfg_topic))
        mqtt_publish(mosquitto, [("homeassistant/status", b"online")])
        assert sub.wait_for(lambda m: sum(1 for t, _, _ in m if t == cfg_topic) > before, timeout=15)
    # retained: a late subscriber (Home Assistant starting later) still gets the configs
    with Collector(mosquitto, ["homeassistant/device/+/config"]) as late:
        assert late.wait_for(lambda m: len({t for t, _, r in m if r}) == 3, timeout=15)
    metrics = api["alice"].get("/api/metrics").json()
    assert metrics["overall"]["confirmed"] == 1 and metrics["overall"]["rejected"] == 1
    assert metrics["overall"]["precision"] == 0.5
    assert metrics["by"]["device"]["edge-02"]["rejected"] == 1
    csv_text = api["alice"].get("/metrics.csv").text
    assert csv_text.splitlines()[0].startswith("item_id,device_id,camera_id") and len(csv_text.splitlines()) == 3


def test_shared_subscription_splits_events_between_two_instances(mosquitto, console_factory, tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    a = console_factory(mosquitto, state=tmp_path / "a", database_url=db, share_group="consoles",
                        client_id="console-a")
    b = console_factory(mosquitto, state=tmp_path / "b", database_url=db, share_group="consoles",
                        client_id="console-b")
    events = [make_event(track=i) for i in range(30)]
    mqtt_publish(mosquitto, [("namus-edge/edge-01/match", json.dumps(e).encode()) for e in events])
    wait_until(lambda: a.service.ingestor.stats()["accepted"] + b.service.ingestor.stats()["accepted"] == 30,
               what="both instances to store the 30 events")
    assert a.service.ingestor.stats()["accepted"] > 0 and b.service.ingestor.stats()["accepted"] > 0
    assert a.service.store.count_events() == 30
