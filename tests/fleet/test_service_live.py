"""`namus-edge run` as a real process: sd_notify READY and watchdog, status topic, a published and
announced bundle going live without a restart, a camera outage reported (not restarted), SIGTERM,
and exit 1 when every capture is dead."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from namus_edge_testing.mjpeg import MjpegServer
from namus_edge_testing.mosquitto import Collector

from namus_edge.index.publish import Announcement, announce, publish_bundle
from namus_edge.index.sync import sync_once


class NotifySocket:
    """A real NOTIFY_SOCKET datagram socket recording what the service sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(m == text for _, m in self.messages):
                return True
            self.pump(0.2)
        return False

    def count(self, text: str, since: float) -> int:
        return sum(1 for t, m in self.messages if m == text and t >= since)

    def close(self):
        self.sock.close()


def _status(sub, prefix="namus-edge/edge-01/status"):
    msgs = sub.on(prefix)
    return json.loads(msgs[-1]) if msgs else None


@pytest.mark.slow
def test_run_service_live_update_watchdog_and_sigterm(tmp_path, make_bundle, keys, served, mosquitto, device_model,
                                                      model_cache):
    tree, server = served
    _, pub = keys["operator"]
    v1, v2 = make_bundle(20, seed=11), make_bundle(24, seed=12)
    r1 = publish_bundle(v1, tree)
    state = tmp_path / "state"
    first = sync_once(server.url, state, [pub], device_model, timeout_s=5, max_bytes=10**9, keep_versions=3)
    assert first.status == "updated" and first.current == r1.version

    cam = MjpegServer(fps=25.0, size=(160, 120))
    cam.start()
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = {
        "cameras": [{"id": "cam1", "source": cam.url, "kind": "stream", "read_timeout_s": 2,
                     "reconnect_initial_s": 0.5, "reconnect_max_s": 1.0}],
        "index": {"bundle": str(state / "current")},
        "sync": {"url": server.url, "state_dir": str(state), "pubkeys": [str(pub)]},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "status_interval_s": 0.5, "keepalive_s": 5,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "password_env": None},
        "service": {"state_dir": str(tmp_path / "svc"), "index_poll_s": 0.3, "watchdog_stall_s": 1.5,
                    "drain_timeout_s": 5},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000",
               NAMUS_EDGE_MODELS=str(model_cache))
    sub = Collector(mosquitto, ["namus-edge/#"]).start()
    proc = subprocess.Popen([sys.executable, "-m", "namus_edge.cli", "run", "--config", str(cfg_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert notify.wait_for("READY=1", timeout=90), proc.stdout.read1().decode() if proc.poll() else "no READY"
        # status reports the live index version
        assert sub.wait_for(lambda m: (_status(sub) or {}).get("index_version") == r1.version, timeout=10)
        # watchdog pings while frames flow
        t0 = time.monotonic()
        notify.pump(2.5)
        assert notify.count("WATCHDOG=1", t0) >= 3

        # operator publishes v2 and announces it: the service syncs and reloads without a restart
        r2 = publish_bundle(v2, tree)
        ann = Announcement(version=r2.version, url=server.url, manifest_sha256=r2.latest["manifest_sha256"])
        from namus_edge.core.config import MqttConfig

        announce(MqttConfig(host="127.0.0.1", port=mosquitto.port, password_env=None), ann)
        assert sub.wait_for(lambda m: (_status(sub) or {}).get("index_version") == r2.version, timeout=20)
        assert os.path.realpath(state / "current").endswith(r2.version)
        assert proc.poll() is None  # same process

        # the camera disappears: the loop still turns, so the watchdog is still fed (no restart), and the
        # outage is reported per camera in the retained status and in STATUS=
        cam.stop()
        assert sub.wait_for(lambda m: ((_status(sub) or {}).get("cameras", {}).get("cam1") or {}).get("state")
                            == "down", timeout=20)
        notify.pump(2.5)  # > watchdog_stall_s
        t1 = time.monotonic()
        notify.pump(2.5)
        assert notify.count("WATCHDOG=1", t1) >= 2
        assert any(m.startswith("STATUS=running: 0/1 camera(s) live (cam1 down") for _, m in notify.messages)
        assert proc.poll() is None
        # it comes back: reconnected and live again, same process
        cam.start()
        assert sub.wait_for(lambda m: ((_status(sub) or {}).get("cameras", {}).get("cam1") or {}).get("state")
                            == "live", timeout=30)
        status = _status(sub)
        assert status["cameras"]["cam1"]["reconnects"] >= 1 and status["health"]["batch_errors"] == 0

        # SIGTERM: drains, flushes, says offline, exits 0 within the bound
        t2 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t2 < 15
        assert sub.wait_for(lambda m: sub.on("namus-edge/edge-01/availability")[-1:] == [b"offline"], timeout=5)
        notify.pump(0.5)
        assert any(m == "STOPPING=1" for _, m in notify.messages)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.stop()
        notify.close()
        cam.stop()


@pytest.mark.slow
def test_run_exits_1_when_every_capture_is_dead(tmp_path, make_bundle, keys, model_cache):
    _, pub = keys["operator"]
    cfg = {
        "cameras": [{"id": "gone", "source": str(tmp_path / "missing.mp4")},
                    {"id": "broken", "source": str(tmp_path / "broken.mp4")}],
        "index": {"bundle": str(make_bundle(8, seed=13))},
        "sync": {"pubkeys": [str(pub)]},
        "mqtt": {"enabled": False},
        "service": {"state_dir": str(tmp_path / "svc")},
    }
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, NAMUS_EDGE_MODELS=str(model_cache))
    res = subprocess.run([sys.executable, "-m", "namus_edge.cli", "run", "--config", str(cfg_path)], env=env,
                         capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "every capture has stopped, 2 on an error" in res.stderr
