"""Frames/s and latency from frame capture to MQTT delivery, 720p/1080p with 1 and several faces.

For each case a synthetic stream is made from real LFW photos pasted on a 720p or 1080p frame
(one of them enrolled in a small signed bundle, the others strangers), moving a few pixels per
frame. Frames go through the real pipeline (detect, track, gates, embed, age, search, decide)
and events through the real outbox and MQTT publisher to a real mosquitto on loopback; a
subscriber timestamps their arrival.

Reported per case: frames/s of the pipeline, per-frame processing latency (capture -> pipeline
done; p50/p95), and the alert latency: capture of the confirming frame -> event received by the
subscriber. Usage: ``python bench/latency.py [--frames 60] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, machine_markdown
from namus_edge.core.config import load_config
from namus_edge.demo import EmbeddedBroker
from namus_edge.edge.frame_queue import Frame
from namus_edge.edge.mqtt_publisher import MqttPublisher
from namus_edge.edge.outbox import Outbox
from namus_edge.edge.pipeline import Pipeline
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def lfw_photos(n: int) -> list[Path]:
    root = SHARED / "data" / "verification" / "lfw"
    people = sorted(p for p in root.iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    return [sorted(p.glob("*.jpg"))[0] for p in people[:n]]


def make_frames(photos: list[np.ndarray], size: tuple[int, int], frames: int) -> list[np.ndarray]:
    w, h = size
    tile_h = h // 3
    out = []
    for i in range(frames):
        frame = np.full((h, w, 3), (70, 75, 80), np.uint8)
        for k, ph in enumerate(photos):
            th = tile_h if k == 0 else tile_h // 2
            tw = int(ph.shape[1] * th / ph.shape[0])
            tile = cv2.resize(ph, (tw, th), interpolation=cv2.INTER_AREA)
            cols = max(1, w // (tw + 10))
            x = 20 + (k % cols) * (tw + 10) + (i * 2) % 40
            y = 20 + (k // cols) * (th + 10)
            if x + tw <= w and y + th <= h:
                frame[y : y + th, x : x + tw] = tile
        out.append(frame)
    return out


def run_case(analyzer, config, bundle_path, size, n_faces, frames, port, tmp):
    from paho.mqtt import client as mqtt

    photos = [cv2.imread(str(p)) for p in lfw_photos(n_faces)]
    stream = make_frames(photos, size, frames)
    received: dict[str, float] = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: received.setdefault(json.loads(m.payload)["event_id"], time.perf_counter())
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/+/match", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    cfg = config.model_copy(deep=True)
    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix = "127.0.0.1", port, "bench"
    cfg.matching.age_check.enabled = False
    outbox = Outbox(tmp / f"outbox-{size[1]}-{n_faces}.sqlite3")
    pub = MqttPublisher(cfg.mqtt, "bench", outbox)
    pub.start()
    bundle = Bundle.load(bundle_path)
    capture_time: dict[str, float] = {}
    current: dict[str, float] = {}

    def emit(event, crop):
        capture_time[event.event_id] = current["t"]
        pub.publish_event(event, crop)

    pipe = Pipeline(cfg, analyzer, lambda: bundle, emit)
    per_frame = []
    t_start = time.perf_counter()
    for i, img in enumerate(stream):
        t_cap = time.perf_counter()
        current["t"] = t_cap
        pipe.process([Frame("cam", i, i / 30.0, datetime.now(timezone.utc), img.copy())])
        per_frame.append(time.perf_counter() - t_cap)
    wall = time.perf_counter() - t_start
    pub.flush(10)
    deadline = time.time() + 5
    while len(received) < len(capture_time) and time.time() < deadline:
        time.sleep(0.05)
    pub.close(5)
    outbox.close()
    sub.loop_stop()
    sub.disconnect()
    bundle.close()
    alert = [received[e] - capture_time[e] for e in capture_time if e in received]
    pf = np.asarray(per_frame) * 1000
    return {
        "case": f"{size[1]}p, {n_faces} face(s)",
        "frames": frames,
        "fps": round(frames / wall, 2),
        "frame_latency_ms_p50": round(float(np.percentile(pf, 50)), 1),
        "frame_latency_ms_p95": round(float(np.percentile(pf, 95)), 1),
        "events": len(capture_time),
        "alert_latency_ms": [round(a * 1000, 1) for a in alert],
        "stage_ms": {k: round(v, 2) for k, v in pipe.stats.ms.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    config = load_config()
    analyzer = FaceAnalyzer(config)
    tmp = Path(tempfile.mkdtemp(prefix="namus-latency-"))
    broker = EmbeddedBroker(tmp)  # mosquitto when installed, else amqtt (the demo's broker)
    broker.start()
    port = broker.port
    time.sleep(0.5)
    try:
        # enrol the first (largest) person of every case: the same first LFW identity, another photo of it
        enrolled = sorted((SHARED / "data/verification/lfw").iterdir())
        first = next(p for p in enrolled if len(list(p.glob("*.jpg"))) >= 2)
        enrol_img = cv2.imread(str(sorted(first.glob("*.jpg"))[1]))
        face = analyzer.analyze(enrol_img)[0]
        spec = analyzer.embedder_spec
        key, _ = generate_keypair(tmp / "k")
        bpath = tmp / "bundle"
        with BundleWriter(bpath, ModelIdentity(spec.name, spec.sha256, analyzer.dim), {"name": "det_500m"}) as w:
            w.add_case({"id_formatted": "MP1", "display_name": first.name.replace("_", " "),
                        "link": "https://www.namus.gov/MissingPersons/Case#/1"})
            w.add_face("MP1", "0" * 32, face.embedding, quality=0.9, det_score=0.9, bbox=[0, 0, 1, 1],
                       category="FacialCaseId", is_rendering=False, file_sha256="0" * 64)
            w.finish(key)
        rows = [run_case(analyzer, config, bpath, size, n, args.frames, port, tmp)
                for size in ((1280, 720), (1920, 1080)) for n in (1, 5)]
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": machine_info(), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(machine_markdown(result["machine"]))
    print()
    print("| case | frames/s | frame latency p50 / p95 ms | events | capture -> MQTT received ms |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['case']} | {r['fps']} | {r['frame_latency_ms_p50']} / {r['frame_latency_ms_p95']} | "
              f"{r['events']} | {', '.join(str(a) for a in r['alert_latency_ms']) or '-'} |")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
