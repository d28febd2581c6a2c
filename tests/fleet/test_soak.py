"""Soak: six cameras through the real service while the world misbehaves (issue 12 acceptance).

Cameras: four looping video files of enrolled people, one real RTSP stream (GStreamer's RTSP
server on loopback), one MJPEG-over-HTTP camera that disappears for a while and comes back.
Meanwhile: the MQTT broker (real mosquitto, persistent) restarts, one non-finite embedding is
injected (the only simulated fault: a GPU fp16 overflow cannot happen on this CPU), and the
outbox cannot be written for a while (the kernel refuses to grow any file of the service:
``RLIMIT_FSIZE`` set from outside with prlimit(2), i.e. EFBIG as on a full disk; a chmod of the
outbox directory would not do it: the database and its WAL are already open, and root ignores
permission bits).

Asserted: every camera keeps being processed (the flaky one again after it came back), every
event the service queued reaches the subscriber (duplicates only with the same event_id, as
QoS 1 allows), the outbox outage is reported as degraded and then clears with nothing held,
the service never exits (and exits 0 on SIGTERM), and RSS grows less than RSS_GROWTH_MIB.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import yaml
from namus_edge_testing.mjpeg import MjpegServer
from namus_edge_testing.mosquitto import Collector
from namus_edge_testing.namus_factory import lfw_identities
from namus_edge_testing.rtsp import RtspCamera

from namus_edge.core.config import config_from_mapping
from namus_edge.demo import synthesize_clip
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.registry import get_spec

REPO = Path(__file__).resolve().parents[2]
#: Stated bound on RSS growth between warm-up and the end of the soak.
RSS_GROWTH_MIB = 64
#: Seconds of undisturbed running between phases, the broker's downtime, the outbox outage.
STEADY_S = 20
BROKER_DOWN_S = 10
OUTBOX_FULL_S = 20
STATUS = "namus-edge/soak-01/status"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class ServiceLog:
    """Reads the service's combined output line by line (a pipe: the file-size limit cannot touch it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def ids(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [m.group(1) for line in list(self.lines) if (m := rx.search(line))]

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir, model_cache):
    root = tmp_path_factory.mktemp("soak")
    lfw = lfw_identities(data_dir)
    people = [k for k, v in lfw.items() if len(v) >= 2][:4]
    config = config_from_mapping({}, "test")
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    spec = get_spec(analyzer.model_identities()["embedder"].name)
    key, pub = generate_keypair(root / "op.key")
    clips = []
    with BundleWriter(root / "bundle", ModelIdentity(spec.name, spec.sha256, analyzer.dim), {"name": "det"}) as w:
        for i, person in enumerate(people):
            face = max(analyzer.analyze(cv2.imread(str(lfw[person][0])), photo=True), key=lambda f: f.quality)
            w.add_case({"id_formatted": f"MP{900 + i}", "display_name": f"Soak {i}"})
            w.add_face(f"MP{900 + i}", f"k{i}", face.embedding, quality=0.9, det_score=0.9, bbox=[0, 0, 1, 1],
                       category="FacialCaseId", is_rendering=False, file_sha256=f"{i:064x}")
            clips.append(synthesize_clip(cv2.imread(str(lfw[person][1])), root / f"cam{i}.avi", frames=45,
                                         size=(640, 360), face_height=180, seed=i))
        w.finish(key)
    return {"bundle": root / "bundle", "pub": pub, "clips": clips}


@pytest.mark.slow
def test_six_cameras_survive_broker_restart_nan_outage_and_unwritable_outbox(
        world, tmp_path, mosquitto_factory, model_cache):
    broker = mosquitto_factory(persistence=True)
    rtsp = RtspCamera(fps=10).start()
    flaky = MjpegServer(fps=10.0, size=(320, 240))
    flaky.start()
    poison = tmp_path / "poison"
    outbox = tmp_path / "svc" / "outbox.sqlite3"
    cameras = [{"id": f"file{i}", "source": str(c), "loop": True, "queue_size": 2}
               for i, c in enumerate(world["clips"])]
    cameras += [{"id": "rtsp", "source": rtsp.url, "kind": "stream", "read_timeout_s": 3, "queue_size": 2,
                 "reconnect_initial_s": 0.5, "reconnect_max_s": 2.0},
                {"id": "flaky", "source": flaky.url, "kind": "stream", "read_timeout_s": 2, "queue_size": 2,
                 "reconnect_initial_s": 0.5, "reconnect_max_s": 1.0}]
    cfg = {
        "cameras": cameras,
        "index": {"bundle": str(world["bundle"])},
        "sync": {"pubkeys": [str(world["pub"])]},
        "models": {"age": None},
        "matching": {"cooldown_s": 4, "age_check": {"enabled": False}},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "status_interval_s": 1, "keepalive_s": 5,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "password_env": None, "outbox_path": str(outbox)},
        "service": {"device_id": "soak-01", "state_dir": str(tmp_path / "svc"), "drain_timeout_s": 10},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, NAMUS_EDGE_MODELS=str(model_cache), SOAK_POISON=str(poison),
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    sub = Collector(broker, ["namus-edge/soak-01/match", STATUS], clean_session=False).start()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/fleet/soak_service.py"), "--config", str(cfg_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = ServiceLog(proc)
    t_start = time.monotonic()
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]

    def status() -> dict:
        msgs = sub.on(STATUS)
        return json.loads(msgs[-1]) if msgs else {}

    def processed() -> dict[str, int]:
        return {k: v["processed"] for k, v in status().get("cameras", {}).items()}

    def wait(pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert proc.poll() is None, f"service exited ({proc.returncode}) while waiting for {what}:\n{log.tail()}"
            if pred():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{status()}\n{log.tail()}")

    def hold(seconds: float) -> None:  # keep running (and keep checking the service is alive)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert proc.poll() is None, f"service exited ({proc.returncode}):\n{log.tail()}"
            time.sleep(0.5)

    try:
        # 1. every camera is processed; steady state before the RSS reference
        wait(lambda: len(processed()) == 6 and all(v > 0 for v in processed().values()), 120, "all six cameras")
        hold(STEADY_S)
        rss_warm = _rss_mib(proc.pid)
        t_warm = time.monotonic()
        # 2. the flaky camera disappears: reported down, the service goes on
        flaky.stop()
        wait(lambda: status()["cameras"]["flaky"]["state"] == "down", 30, "flaky camera reported down")
        hold(STEADY_S)
        # 3. one non-finite embedding
        poison.touch()
        wait(lambda: not poison.exists() and status()["health"]["nonfinite_dropped"] >= 1, 60, "NaN dropped")
        # 4. the broker goes away for a while (events wait in the outbox) and restarts; persistent
        # sessions on both sides, so the subscriber misses nothing
        queued_before_outage = len(log.ids(r"Match event (\S+) queued"))
        broker.stop()
        hold(BROKER_DOWN_S)
        queued_while_broker_down = len(log.ids(r"Match event (\S+) queued")) - queued_before_outage
        broker.start()
        # 5. the flaky camera comes back
        flaky.start()
        wait(lambda: status().get("cameras", {}).get("flaky", {}).get("state") == "live", 60, "flaky camera back")
        # 6. the outbox cannot grow: events are held in memory, the service is degraded, detection goes on
        held_before = len(log.ids(r"match event (\S+) held in memory"))
        frames_before = sum(processed().values())
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1024, hard))
        t_full = time.monotonic()
        try:
            wait(lambda: len(log.ids(r"match event (\S+) held in memory")) > held_before, 90, "an event held")
            wait(lambda: "outbox" in status()["health"]["degraded"], 30, "degraded: outbox in the status")
            hold(max(0.0, OUTBOX_FULL_S - (time.monotonic() - t_full)))
            assert sum(processed().values()) > frames_before  # still detecting
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait(lambda: status()["health"]["degraded"] == {} and status()["health"]["events_held_in_memory"] == 0,
             60, "outbox recovered")
        # 7. every camera is processed after all that
        after = processed()
        hold(STEADY_S)
        wait(lambda: all(processed()[k] > after[k] for k in after), 90, "all six cameras processed again")
        # 8. every queued event reaches the subscriber, once per event_id
        queued = log.ids(r"Match event (\S+) queued")
        held = set(log.ids(r"match event (\S+) held in memory"))
        assert queued and held and held <= set(queued), (len(queued), held)
        assert len(queued) == len(set(queued))  # each event written to the outbox once

        def received() -> list[str]:
            return [json.loads(p)["event_id"] for p in sub.on("namus-edge/soak-01/match")]

        wait(lambda: set(received()) >= set(queued), 60, "every queued event delivered")
        assert set(received()) == set(queued)  # nothing invented, nothing lost; repeats only of the same id
        rss_end = _rss_mib(proc.pid)
        final = status()
        assert final["health"]["batch_errors"] == 0
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.tail()
        summary = {"soak_s": round(time.monotonic() - t_start, 1), "measured_s": round(time.monotonic() - t_warm, 1),
                   "processed": processed(), "events_queued": len(queued), "events_held_during_outage": len(held),
                   "queued_while_broker_down": queued_while_broker_down,
                   "received_messages": len(received()), "rss_warm_mib": round(rss_warm, 1),
                   "rss_end_mib": round(rss_end, 1), "rss_growth_mib": round(rss_end - rss_warm, 1),
                   "reconnects": {k: v["reconnects"] for k, v in final["cameras"].items()},
                   "nonfinite_dropped": final["health"]["nonfinite_dropped"]}
        print("SOAK " + json.dumps(summary))
        (tmp_path / "soak.json").write_text(json.dumps(summary))
        assert rss_end - rss_warm < RSS_GROWTH_MIB, summary
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.stop()
        rtsp.stop()
        flaky.stop()
