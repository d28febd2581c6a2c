"""Review console test helpers and fixtures (re-exported by tests/review/conftest.py): databases per backend,
events, an operator bundle, a console factory, MQTT helpers."""

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
        "image_key": f"{case}-img-1",
        "frames": 3,
        "review_required": True,
    }
    if crop is not None:
        ev["crop_jpeg_b64"] = base64.b64encode(crop).decode()
    if version == 2:
        cands = [(case, similarity), *(others or [("MP7001", 0.31)])]
        ev["candidates"] = [{"id_formatted": c, "similarity": s, "image_key": f"{c}-img-1",
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




def drawn_face(seed: int, size: int = 112) -> bytes:
    """A JPEG of a simple drawn face (no real person: safe for docs screenshots)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 235, np.uint8)
    skin = tuple(int(c) for c in rng.integers(120, 220, 3))
    c = size // 2
    cv2.ellipse(img, (c, c + 4), (size // 3, int(size / 2.4)), 0, 0, 360, skin, -1)
    for dx in (-size // 7, size // 7):
        cv2.circle(img, (c + dx, c - size // 10), max(2, size // 20), (40, 40, 40), -1)
    cv2.ellipse(img, (c, c + size // 5), (size // 8, size // 20), 0, 0, 180, (60, 60, 140), 2)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


@pytest.fixture(scope="session")
def operator_bundle(tmp_path_factory):
    """A real signed operator bundle with cases MP7000..MP7004 and drawn-face thumbnails."""
    import hashlib

    from namus_edge.core.config import Config
    from namus_edge.index.bundle_writer import BundleWriter
    from namus_edge.index.signing import generate_keypair
    from namus_edge.index.sync import expected_model_from_config

    root = tmp_path_factory.mktemp("operator")
    key, _pub = generate_keypair(root / "op.key")
    model = expected_model_from_config(Config())
    rng = np.random.default_rng(5)
    out = root / "bundle"
    with BundleWriter(out, model, {"name": "det_500m"}) as writer:
        for i in range(5):
            writer.add_case({"id_formatted": f"MP700{i}", "display_name": f"Test Person {i}", "sex": "Female",
                             "age_min": 24 + i, "age_max": 24 + i, "date_last": "2019-06-15",
                             "current_age_min": 30 + i, "current_age_max": 31 + i})
        for i in range(5):
            for j in range(2 if i == 4 else 1):
                vec = rng.standard_normal(model.dim).astype(np.float32)
                vec /= np.linalg.norm(vec)
                writer.add_face(f"MP700{i}", f"MP700{i}-img-{j + 1}", vec, quality=0.9, det_score=0.95,
                                bbox=[0, 0, 50, 60], category="FacialCaseId" if j == 0 else "AgeProgression",
                                is_rendering=j == 1, file_sha256=hashlib.sha256(f"{i}-{j}".encode()).hexdigest(),
                                thumbnail_jpeg=drawn_face(10 * i + j))
        writer.finish(key)
    return out


class Console:
    """A ReviewService with its web server on a free loopback port (uvicorn in a thread)."""

    def __init__(self, service, port: int) -> None:
        import threading

        import uvicorn

        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Console:
        import time

        self.service.start()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        if self.service.link is not None:
            assert self.service.link.wait_connected(15), "console did not connect to mosquitto"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.service.stop()


def console_config(tmp_path, broker=None, bundle=None, **review: Any):
    from namus_edge.core.config import Config

    cfg: dict[str, Any] = {
        "service": {"state_dir": str(tmp_path / "state")},
        "review": {"cookie_secure": False, "bundle_dir": str(bundle) if bundle else None, **review},
        "mqtt": {"enabled": broker is not None, "password_env": None, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
    }
    if broker is not None:
        cfg["mqtt"].update(host=broker.host, port=broker.port, keepalive_s=5)
    return Config.model_validate(cfg)


@pytest.fixture()
def console_factory(tmp_path):
    from namus_edge.review.service import ReviewService
    from namus_edge_testing.mosquitto import free_port

    started: list[Console] = []

    def make(broker=None, bundle=None, state=None, **review: Any) -> Console:
        config = console_config(state or tmp_path, broker, bundle, **review)
        c = Console(ReviewService(config), free_port()).start()
        started.append(c)
        return c

    try:
        yield make
    finally:
        for c in started:
            c.stop()


def login(base_url: str, user: str, password: str):
    """An httpx client logged in through the real login form (CSRF token taken from the page)."""
    import re

    import httpx

    client = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": user, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    return client


def csrf_of(client, path: str) -> str:
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def mqtt_publish(broker, messages, *, retain: bool = False) -> None:
    """Publish (topic, payload) pairs at QoS 1 with a real paho client and wait for every PUBACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
