"""Device side of reviewer feedback: suppression messages over real MQTT reach the decision engine."""

from __future__ import annotations

import json
import time

import numpy as np
import paho.mqtt.publish as publish
import pytest
from namus_edge_testing.mosquitto import Collector

from namus_edge.core.config import Config, MatchingConfig
from namus_edge.edge.decision import DecisionEngine
from namus_edge.edge.service import EdgeService
from namus_edge.edge.suppression import SuppressionError, Suppressions, parse_suppression
from namus_edge.index.signing import generate_keypair


class Hit:
    def __init__(self, case: str, score: float) -> None:
        self.id_formatted, self.score, self.image_key = case, score, f"{case}-1"


def _msg(camera="cam1", case="MP1", seconds=60.0, **extra):
    return json.dumps({"camera_id": camera, "id_formatted": case, "seconds": seconds,
                       "event_id": "3f2b8c1e-9a4d-4c6b-8e2f-1d5a7b9c0e42", "issued_at": "2026-01-01T00:00:00.000Z",
                       **extra}).encode()


def test_parse_suppression_rejects_bad_messages():
    assert parse_suppression(_msg()) == ("cam1", "MP1", 60.0)
    for bad, field in [(b"nope", "JSON"), (_msg(seconds=0), "seconds"), (_msg(seconds=True), "seconds"),
                       (_msg(camera=""), "camera_id"), (_msg(extra=1), "fields"),
                       (_msg().replace(b"2026-01-01T00:00:00.000Z", b"yesterday"), "issued_at")]:
        with pytest.raises(SuppressionError, match=field):
            parse_suppression(bad)


def test_suppressed_pair_emits_nothing_until_it_expires():
    now = [100.0]
    sup = Suppressions(max_seconds=30.0, clock=lambda: now[0])
    engine = DecisionEngine(MatchingConfig(threshold=0.4, confirm_frames=2, cooldown_s=0.0), lambda c: None,
                            suppressed=sup.active)

    def fire(camera: str, track: int, t: float):
        out = None
        for k in range(2):
            out = engine.observe(camera, track, t + k, 0.9, 4000.0, None, [Hit("MP1", 0.6)], np.zeros(4))
        return out

    assert sup.add("cam1", "MP1", 3600.0) == 30.0  # capped by matching.suppress_rejected_s
    assert fire("cam1", 1, 0.0) is None and sup.suppressed_events == 1
    assert fire("cam2", 2, 0.0) is not None  # another camera is not suppressed
    now[0] += 31.0
    assert fire("cam1", 3, 10.0) is not None  # expired
    assert Suppressions(max_seconds=0.0).add("cam1", "MP1", 60.0) == 0.0  # 0 ignores suppressions


def test_edge_service_subscribes_to_its_suppress_topic(mosquitto, tmp_path):
    generate_keypair(tmp_path / "operator.key")  # trust fails closed: the service needs a pinned key
    config = Config.model_validate({
        "sync": {"pubkeys": [str(tmp_path / "operator.key.pub")]},
        "cameras": [{"id": "cam1", "source": str(tmp_path / "none.avi"), "kind": "file"}],
        "index": {"bundle": str(tmp_path / "bundle")},
        "service": {"state_dir": str(tmp_path), "device_id": "edge-07"},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "password_env": None, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0},
    })
    service = EdgeService(config)
    service._start_mqtt()
    try:
        with Collector(mosquitto, ["namus-edge/edge-07/availability"]) as sub:
            assert sub.wait_for(lambda m: any(p == b"online" for _, p, _ in m), timeout=15)
        publish.single("namus-edge/edge-07/suppress", _msg(camera="cam1", case="MP9"), qos=1,
                       hostname=mosquitto.host, port=mosquitto.port)
        publish.single("namus-edge/edge-08/suppress", _msg(camera="cam1", case="MP8"), qos=1,
                       hostname=mosquitto.host, port=mosquitto.port)
        deadline = time.monotonic() + 15
        while not service.suppressions.active("cam1", "MP9"):
            assert time.monotonic() < deadline, "the suppression never arrived"
            time.sleep(0.05)
        assert not service.suppressions.active("cam1", "MP8")  # another device's topic
    finally:
        service.publisher.close(timeout=2)
        service.outbox.close()
        service.index.close()
