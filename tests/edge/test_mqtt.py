"""MqttPublisher against a real mosquitto: order, outages, crashes, TLS, auth, will, bound, status."""

from __future__ import annotations

import base64
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from namus_edge_testing.events import make_event
from namus_edge_testing.mosquitto import Collector, MosquittoBroker, make_tls_files

from namus_edge.core.config import MqttConfig
from namus_edge.core.secrets import SecretError, read_mqtt_password
from namus_edge.edge.events import MatchEvent
from namus_edge.edge.mqtt_publisher import AUTH_REFUSED_MESSAGE, MqttError, MqttPublisher, announce_topic
from namus_edge.edge.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
DEVICE = "dev-1"
MATCH = f"namus-edge/{DEVICE}/match"
AVAIL = f"namus-edge/{DEVICE}/availability"
STATUS = f"namus-edge/{DEVICE}/status"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture()
def publishers(tmp_path: Path) -> Iterator[Callable[..., tuple[MqttPublisher, Outbox]]]:
    """``make(cfg, password=None, outbox_path=None, max_events=1000, start=True)``; closed in finally."""
    made: list[tuple[MqttPublisher, Outbox]] = []

    def make(
        cfg: MqttConfig,
        password: str | None = None,
        outbox_path: Path | None = None,
        max_events: int = 1000,
        start: bool = True,
    ) -> tuple[MqttPublisher, Outbox]:
        box = Outbox(outbox_path or tmp_path / f"outbox-{len(made)}.sqlite3", max_events=max_events)
        pub = MqttPublisher(cfg, DEVICE, box, password)
        made.append((pub, box))
        if start:
            pub.start()
        return pub, box

    try:
        yield make
    finally:
        for pub, box in made:
            pub.close(timeout=1.0)
            box.close()


def events_on(sub: Collector, topic: str = MATCH) -> list[MatchEvent]:
    return [MatchEvent.from_json(p) for p in sub.on(topic)]


def dedupe(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


def jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


# (a) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_delivered_in_order(
    mosquitto: MosquittoBroker, publishers: Callable[..., Any], protocol: str
) -> None:
    with Collector(mosquitto, ["namus-edge/+/match", AVAIL]) as sub:
        pub, box = publishers(mosquitto.mqtt_config(protocol=protocol, max_inflight=5))
        assert wait_until(lambda: pub.connected, 5)
        sent = [make_event(track_id=i) for i in range(30)]
        for event in sent:
            pub.publish_event(event)
        assert pub.flush(10)
        assert len(box) == 0
        assert sub.wait_for(lambda m: len([x for x in m if x[0] == MATCH]) >= 30, 5)
        received = events_on(sub)
        assert [e.event_id for e in received] == [e.event_id for e in sent]
        assert received == sent  # the schema round-trips: every field intact
        assert sub.on(AVAIL)[:1] == [b"online"]


@pytest.mark.parametrize("mode", ["off", "topic", "inline"])
def test_face_crop_modes(mosquitto: MosquittoBroker, publishers: Callable[..., Any], mode: str) -> None:
    crop = jpeg()
    with Collector(mosquitto, ["namus-edge/#"]) as sub:
        pub, _ = publishers(mosquitto.mqtt_config(face_crop=mode))
        event = make_event()
        pub.publish_event(event, crop)
        assert pub.flush(5)
        assert sub.wait_for(lambda m: any(t == MATCH for t, _, _ in m), 5)
        time.sleep(0.2)  # a crop, if any, follows the event
        got = events_on(sub)[0]
        crop_topic = f"{MATCH}/{event.event_id}/crop"
        if mode == "inline":
            assert got.crop_jpeg_b64 is not None and sub.on(crop_topic) == []
            assert base64.b64decode(got.crop_jpeg_b64) == crop
        elif mode == "topic":
            assert got.crop_jpeg_b64 is None and sub.on(crop_topic) == [crop]
        else:
            assert got.crop_jpeg_b64 is None and not [t for t, _, _ in sub.messages if t.endswith("/crop")]
        assert got.event_id == event.event_id
        if mode != "off":
            with pytest.raises(MqttError, match="JPEG"):
                pub.publish_event(make_event(), b"\x89PNG not a jpeg")


# (b) ------------------------------------------------------------------------------------------


def test_broker_outage_loses_nothing(
    mosquitto_factory: Callable[..., MosquittoBroker], publishers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="namus_edge.edge.mqtt_publisher")
    broker = mosquitto_factory(persistence=True)
    with Collector(broker, [MATCH], client_id="collector-b", clean_session=False) as sub:
        # the collector's session must be on disk before the broker is killed
        assert broker.wait_saved(since=time.time())
        pub, box = publishers(broker.mqtt_config(max_inflight=4))
        assert wait_until(lambda: pub.connected, 5)
        sent = [make_event(track_id=i) for i in range(5)]
        for e in sent:
            pub.publish_event(e)
        assert pub.flush(5)
        # A PUBACK means the broker took the events over; let it pass them on before it crashes, or they
        # would be lost inside the broker (not something a publisher can prevent).
        first = {e.event_id for e in sent}
        assert sub.wait_for(lambda m: {MatchEvent.from_json(p).event_id for _, p, _ in m} >= first, 5)
        # The broker hangs: a burst is sent but never acknowledged, then the broker dies.
        broker.freeze()
        burst = [make_event(track_id=100 + i) for i in range(12)]
        for e in burst:
            pub.publish_event(e)
        time.sleep(0.3)
        assert len(box) == 12
        broker.kill()
        assert wait_until(lambda: not pub.connected, 5)
        down = [make_event(track_id=200 + i) for i in range(10)]
        for e in down:
            pub.publish_event(e)
        assert len(box) == 22
        assert not pub.flush(0.3)
        broker.start()
        assert pub.flush(15), f"{len(box)} left in the outbox"
        expected = [e.event_id for e in sent + burst + down]
        assert sub.wait_for(lambda m: {MatchEvent.from_json(p).event_id for _, p, _ in m} >= set(expected), 10)
        ids = [e.event_id for e in events_on(sub)]
        assert set(ids) == set(expected)
        assert dedupe(ids) == expected  # order kept; only QoS 1 duplicates may repeat
        assert len(box) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("4 message(s) were not acknowledged when the connection dropped" in m for m in messages)
    assert any("Lost connection to MQTT broker" in m and "reconnecting in" in m for m in messages)
    assert any("Cannot reach MQTT broker" in m and "retrying in" in m for m in messages)


def test_subscription_survives_reconnect(mosquitto: MosquittoBroker, publishers: Callable[..., Any]) -> None:
    pub, _ = publishers(mosquitto.mqtt_config())
    got: list[tuple[str, bytes]] = []

    def on_announce(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        if payload == b"boom":
            raise RuntimeError("a subscriber bug must not stop the network loop")

    topic = announce_topic("namus-edge")
    assert pub.topics.announce == topic
    pub.subscribe(topic, on_announce)
    assert wait_until(lambda: pub.connected, 5)
    import paho.mqtt.publish as single

    def announce(payload: bytes, expect: int) -> None:
        # The subscription may not be active yet right after a (re)connect: repeat until seen.
        deadline = time.monotonic() + 5
        while len(got) < expect and time.monotonic() < deadline:
            single.single(topic, payload, qos=1, hostname=mosquitto.host, port=mosquitto.port)
            wait_until(lambda: len(got) >= expect, 0.5)
        assert len(got) >= expect

    announce(b"boom", 1)
    announce(b'{"version": "1"}', len(got) + 1)
    mosquitto.stop()
    assert wait_until(lambda: not pub.connected, 5)
    mosquitto.start()
    assert wait_until(lambda: pub.connected, 5)
    before = len(got)
    announce(b'{"version": "2"}', before + 1)
    assert got[-1] == (topic, b'{"version": "2"}')


# (c) ------------------------------------------------------------------------------------------

CHILD = r"""
import json, os, signal, sys
from namus_edge.core.config import MqttConfig
from namus_edge.edge.events import MatchEvent, new_event_id
from namus_edge.edge.mqtt_publisher import MqttPublisher
from namus_edge.edge.outbox import Outbox

cfg = MqttConfig(**json.loads(sys.argv[1]))
template = json.loads(sys.argv[2])
box = Outbox(sys.argv[3])
pub = MqttPublisher(cfg, "dev-1", box, None)
pub.start()
ids = []
for i in range(12):
    event = MatchEvent.from_dict({**template, "event_id": new_event_id(), "track_id": i})
    pub.publish_event(event)
    ids.append(event.event_id)
print(json.dumps(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_events_survive_process_kill(
    mosquitto: MosquittoBroker, publishers: Callable[..., Any], tmp_path: Path
) -> None:
    cfg = mosquitto.mqtt_config()
    mosquitto.stop()  # the broker is down while the child queues its events
    outbox_path = tmp_path / "crash.sqlite3"
    cfg_json = json.dumps(cfg.model_dump(mode="json"))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, cfg_json, make_event().to_json(), str(outbox_path)],
        check=False, cwd=REPO, capture_output=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ids = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert len(ids) == 12
    mosquitto.start()
    with Collector(mosquitto, [MATCH]) as sub:
        pub, box = publishers(cfg, outbox_path=outbox_path)
        assert len(box) in (0, 12)  # 12 pending (the sender may already be at work)
        assert pub.flush(10)
        assert sub.wait_for(lambda m: len(m) >= 12, 5)
        assert dedupe([e.event_id for e in events_on(sub)]) == ids


# (d) ------------------------------------------------------------------------------------------


def test_tls_with_password(
    mosquitto_factory: Callable[..., MosquittoBroker],
    publishers: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "tls-Pa55word-7f3a"
    broker = mosquitto_factory(users={"dev": secret, "reader": "r3ader"}, tls=True)
    with Collector(broker, [MATCH], username="reader", password="r3ader") as sub:
        pub, _ = publishers(broker.mqtt_config(username="dev"), password=secret)
        assert wait_until(lambda: pub.connected, 5), broker.log_text()
        sent = [make_event(track_id=i) for i in range(3)]
        for e in sent:
            pub.publish_event(e)
        assert pub.flush(5)
        assert sub.wait_for(lambda m: len(m) >= 3, 5)
        assert [e.event_id for e in events_on(sub)] == [e.event_id for e in sent]
    # A CA that did not sign the broker's certificate: no connection, warnings, no exception.
    other_ca = make_tls_files(tmp_path / "other").ca_cert
    cfg = broker.mqtt_config(username="dev", tls={"enabled": True, "ca_file": str(other_ca)})
    caplog.clear()
    stranger, _ = publishers(cfg, password=secret)
    time.sleep(1.0)
    assert not stranger.connected
    assert any("Cannot reach MQTT broker" in r.getMessage() for r in caplog.records)
    with pytest.raises(MqttError, match=r"mqtt\.tls\.ca_file"):
        publishers(broker.mqtt_config(tls={"enabled": True, "ca_file": str(tmp_path / "missing.pem")}))
    assert all(secret not in r.getMessage() for r in caplog.records)


# (e) ------------------------------------------------------------------------------------------


def test_wrong_password_logs_once_and_retries(
    mosquitto_factory: Callable[..., MosquittoBroker], publishers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    right, wrong = "right-Secret-91", "wrong-Secret-42"
    broker = mosquitto_factory(users={"dev": right, "reader": "r3ader"}, persistence=True)
    # A persistent-session subscriber: it keeps its subscription across the broker restart below.
    reader = {"username": "reader", "password": "r3ader", "client_id": "col-e", "clean_session": False}
    with Collector(broker, [MATCH], **reader) as sub:
        pub, box = publishers(broker.mqtt_config(username="dev"), password=wrong)
        event = make_event()
        pub.publish_event(event)
        # it keeps retrying, with back-off, without raising (wait for a retry; a loaded machine is slow)
        assert wait_until(lambda: any("still refuses" in r.getMessage() for r in caplog.records), 30)
        assert not pub.connected
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith(AUTH_REFUSED_MESSAGE)
        assert len(box) == 1 and sub.messages == []
        # The operator fixes the broker's password file: the publisher gets in and delivers.
        broker.set_users({"dev": wrong, "reader": "r3ader"})
        broker.restart()
        assert wait_until(lambda: pub.connected, 30)
        assert pub.flush(30)
        assert sub.wait_for(lambda m: len(m) >= 1, 30)
        assert events_on(sub)[0].event_id == event.event_id
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert wrong not in text and right not in text
    assert "Connected to MQTT broker" in text


# (f) ------------------------------------------------------------------------------------------

LIVE_CHILD = r"""
import json, sys, time
from namus_edge.core.config import MqttConfig
from namus_edge.edge.mqtt_publisher import MqttPublisher
from namus_edge.edge.outbox import Outbox

pub = MqttPublisher(MqttConfig(**json.loads(sys.argv[1])), "dev-1", Outbox(sys.argv[2]), None)
pub.start()
while not pub.connected:
    time.sleep(0.02)
print("up", flush=True)
time.sleep(60)
"""


def test_availability_online_will_and_clean_offline(
    mosquitto: MosquittoBroker, publishers: Callable[..., Any], tmp_path: Path
) -> None:
    cfg = mosquitto.mqtt_config()
    child = subprocess.Popen(
        [sys.executable, "-c", LIVE_CHILD, json.dumps(cfg.model_dump(mode="json")), str(tmp_path / "c.sqlite3")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"up"
        with Collector(mosquitto, [AVAIL]) as sub:
            assert sub.wait_for(lambda m: len(m) >= 1, 3)
            assert sub.messages[0] == (AVAIL, b"online", True)  # retained
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            # The socket died without DISCONNECT: the broker publishes the will.
            assert sub.wait_for(lambda m: len(m) >= 2, 5), mosquitto.log_text()
            assert sub.messages[1][:2] == (AVAIL, b"offline")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)

    pub, _ = publishers(cfg)
    assert wait_until(lambda: pub.connected, 5)
    with Collector(mosquitto, [AVAIL]) as sub:
        assert sub.wait_for(lambda m: (AVAIL, b"online", True) in m, 3)
    pub.close(timeout=2)
    assert not pub.connected
    with Collector(mosquitto, [AVAIL]) as sub:
        assert sub.wait_for(lambda m: len(m) >= 1, 3)
        assert sub.messages == [(AVAIL, b"offline", True)]


# (g) ------------------------------------------------------------------------------------------


def test_outbox_bound_drops_oldest(
    mosquitto: MosquittoBroker, publishers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = mosquitto.mqtt_config()
    mosquitto.stop()
    caplog.set_level(logging.WARNING, logger="namus_edge.edge.outbox")
    pub, box = publishers(cfg, max_events=5)
    sent = [make_event(track_id=i) for i in range(8)]
    for e in sent:
        pub.publish_event(e)
    assert len(box) == 5
    drops = [r.getMessage() for r in caplog.records if "dropped 1 oldest" in r.getMessage()]
    assert len(drops) == 3 and "3 dropped since start" in drops[-1]
    mosquitto.start()
    with Collector(mosquitto, [MATCH]) as sub:
        assert pub.flush(10)
        assert sub.wait_for(lambda m: len(m) >= 5, 5)
        time.sleep(0.2)
        assert dedupe([e.event_id for e in events_on(sub)]) == [e.event_id for e in sent[3:]]


# (h) ------------------------------------------------------------------------------------------


def test_status_is_retained_state(mosquitto: MosquittoBroker, publishers: Callable[..., Any]) -> None:
    cfg = mosquitto.mqtt_config()
    mosquitto.stop()
    pub, box = publishers(cfg)
    assert pub.publish_status({"state": "starting"}) is False  # not queued while disconnected
    assert len(box) == 0
    mosquitto.start()
    assert wait_until(lambda: pub.connected, 5)
    status = {"state": "running", "fps": 12.5, "cameras": {"lobby": "ok"}, "index_version": "v1"}
    assert pub.publish_status(status) is True
    with pytest.raises(MqttError, match="JSON"):
        pub.publish_status({"bad": object()})
    with Collector(mosquitto, [STATUS]) as first:  # the publish may still be in flight: live or retained
        assert first.wait_for(lambda m: len(m) >= 1, 3)
        assert json.loads(first.messages[0][1]) == status
    with Collector(mosquitto, [STATUS]) as sub:  # the broker now holds it: a late subscriber gets it retained
        assert sub.wait_for(lambda m: len(m) >= 1, 3)
        _, payload, retained = sub.messages[0]
        assert retained and json.loads(payload) == status


def test_client_id_and_topics(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as box:
        pub = MqttPublisher(MqttConfig(topic_prefix="fleet/a"), "cam-box", box)
        assert pub.client_id == "namus-edge-cam-box"
        assert pub.topics.match == "fleet/a/cam-box/match"
        assert pub.topics.crop("e1") == "fleet/a/cam-box/match/e1/crop"
        assert pub.topics.announce == "fleet/a/index/announce"
        assert MqttPublisher(MqttConfig(client_id="x"), "d", box).client_id == "x"
        with pytest.raises(MqttError, match="device_id"):
            MqttPublisher(MqttConfig(), "a/b", box)


# secrets ----------------------------------------------------------------------------------------


def test_password_from_systemd_credentials_and_env(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "NAMUS_EDGE_MQTT_PASSWORD": "from-env\n"}
    # Relative names resolve inside $CREDENTIALS_DIRECTORY; exactly one trailing newline is removed.
    assert read_mqtt_password(MqttConfig(password_file="mqtt-password"), env) == "s3cret\n"
    assert read_mqtt_password(MqttConfig(password_file="$CREDENTIALS_DIRECTORY/mqtt-password"), env) == "s3cret\n"
    assert read_mqtt_password(MqttConfig(password_file=str(creds / "mqtt-password")), {}) == "s3cret\n"
    # Without a file, the variable named by password_env.
    assert read_mqtt_password(MqttConfig(), env) == "from-env"
    assert read_mqtt_password(MqttConfig(password_env="OTHER"), env) is None
    assert read_mqtt_password(MqttConfig(password_env=None), env) is None
    assert read_mqtt_password(MqttConfig(), {}) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfepw-bytes", "not UTF-8"),
    ],
)
def test_password_file_errors_name_the_file_not_the_secret(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretError, match=message) as info:
        read_mqtt_password(MqttConfig(password_file=str(path)), {"NAMUS_EDGE_MQTT_PASSWORD": "env-pw"})
    assert str(path) in str(info.value) and "mqtt.password_file" in str(info.value)
    assert "pw-bytes" not in str(info.value) and "env-pw" not in str(info.value)


def test_reconnect_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="reconnect_min_s"):
        MqttConfig(reconnect_min_s=10, reconnect_max_s=1)
