"""``namus-edge demo``: the whole chain on one machine, with nothing but the package registries.

1. Models: the cache is filled from ``--models-from`` (default ../shared/models when present,
   else the official URLs) and every sha256 verified.
2. A demo case: a NamUs-format "missing person" record made from a face photo that
   scikit-image ships (the NASA astronaut portrait of Eileen Collins, public domain) or from
   photos the user names; a bundle is built and signed with a throw-away key.
3. A camera: a short clip synthesised from the photo (the face drifting and zooming across a
   720p frame, with lighting changes), written as MJPG AVI.
4. A broker: mosquitto on a free loopback port when installed, else amqtt (pure Python).
5. The clip is scanned with ``--mqtt``; a subscriber prints every event it receives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from namus_edge.core.config import Config, config_from_mapping
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.extras import require_extra
from namus_edge.edge.service import scan_file
from namus_edge.index.build import build_bundle
from namus_edge.index.signing import generate_keypair
from namus_edge.models.fetch import fetch_models
from namus_edge.models.imagefile import read_image
from namus_edge.models.registry import check_file, get_spec

logger = logging.getLogger(__name__)


class DemoError(NamusEdgeError):
    """The demo cannot run (no photo, no broker, models unavailable)."""


def synthesize_clip(photo_bgr: np.ndarray, out_path: Path, *, frames: int = 90, size: tuple[int, int] = (1280, 720),
                    fps: float = 30.0, face_height: int = 260, seed: int = 0) -> Path:
    """Write a clip in which the photo drifts, zooms and changes brightness over a plain background.

    Args:
        photo_bgr: uint8 (H, W, 3) BGR photo (a portrait).
        out_path: .avi file (MJPG) to write.
        frames: number of frames.
        size: frame (width, height).
        fps: frame rate written in the file.
        face_height: approximate height of the pasted photo in pixels at zoom 1.
        seed: random seed of the lighting noise.

    Returns:
        ``out_path``.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise DemoError(f"cannot write {out_path} with the MJPG codec")
    ph, pw = photo_bgr.shape[:2]
    try:
        for i in range(frames):
            t = i / max(1, frames - 1)
            zoom = 0.85 + 0.3 * t
            th = max(16, int(face_height * zoom))
            tw = max(16, int(pw * th / ph))
            tile = cv2.resize(photo_bgr, (tw, th), interpolation=cv2.INTER_AREA)
            gain = 0.85 + 0.25 * math.sin(2 * math.pi * t)
            tile = np.clip(tile.astype(np.float32) * gain + rng.normal(0, 3, tile.shape), 0, 255).astype(np.uint8)
            frame = np.full((h, w, 3), (60, 70, 80), np.uint8)
            cx = int(w * (0.3 + 0.4 * t))
            cy = int(h * 0.5 + 30 * math.sin(3 * t))
            x0, y0 = max(0, cx - tw // 2), max(0, cy - th // 2)
            x1, y1 = min(w, x0 + tw), min(h, y0 + th)
            frame[y0:y1, x0:x1] = tile[: y1 - y0, : x1 - x0]
            writer.write(frame)
    finally:
        writer.release()
    return out_path


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """mosquitto (when installed) or amqtt on a free loopback port, for the demo only."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._amqtt: Any = None
        self.kind = ""

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
            self.kind = "mosquitto"
        else:
            self._start_amqtt()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise DemoError(f"the embedded {self.kind} broker did not start on port {self.port}")

    def _start_amqtt(self) -> None:
        import asyncio

        broker_module = require_extra("amqtt.broker", "demo",
                                      "the demo without mosquitto (or: apt-get install mosquitto)")
        Broker = broker_module.Broker
        port = self.port
        loop = asyncio.new_event_loop()
        cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
               "auth": {"allow-anonymous": True}}

        def serve() -> None:
            asyncio.set_event_loop(loop)
            broker = Broker(cfg, loop=loop)
            loop.run_until_complete(broker.start())
            loop.run_forever()

        threading.Thread(target=serve, name="amqtt", daemon=True).start()
        self._amqtt = loop
        self.kind = "amqtt"

    def stop(self) -> None:
        """Stop the broker."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._amqtt is not None:
            self._amqtt.call_soon_threadsafe(self._amqtt.stop)


def _demo_photo(photos: Sequence[Path]) -> tuple[list[np.ndarray], str]:

    if photos:
        return [read_image(p) for p in photos], ", ".join(str(p) for p in photos)
    data = require_extra("skimage.data", "demo", "the demo's default photo (or pass --photo FILE)")
    return [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)], "scikit-image astronaut (Eileen Collins, NASA)"


def _ensure_models(config: Config, models_from: str | None) -> None:

    cache = config.models.resolved_cache_dir()
    names = config.models.selected_all()  # detector, embedder, age, sex, second age
    missing = [n for n in names if check_file(get_spec(n), cache)[0] != "present"]
    if not missing:
        return
    source = models_from
    if source is None:
        local = Path(__file__).resolve().parents[2] / "shared" / "models"
        source = str(local) if local.is_dir() else "official"
    print(f"fetching models {', '.join(missing)} from {source} into {cache}")
    report = fetch_models(source, cache, missing)
    if report.failed:
        raise DemoError("models unavailable: " + "; ".join(f"{k}: {v}" for k, v in report.failed.items()))


def run_demo(config: Config, *, photos: Sequence[Path] = (), models_from: str | None = None,
             workdir: Path | None = None, frames: int = 90) -> int:
    """Run the demo end to end and print each event a subscriber receives; returns the exit code."""
    import paho.mqtt.client as mqtt


    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="namus-edge-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    _ensure_models(config, models_from)
    images, label = _demo_photo(photos)
    print(f"demo case MP1 from {label}")

    # 1. the demo case in the Prepager layout and its signed bundle
    out = tmp / "source" / "output" / "MissingPersons"
    files = out / "files" / "FacialCaseId"
    files.mkdir(parents=True, exist_ok=True)
    image_entries = []
    for i, img in enumerate(images):
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        key = hashlib.md5(buf.tobytes(), usedforsecurity=False).hexdigest()
        (files / f"1-{key}.jpg").write_bytes(buf.tobytes())
        image_entries.append({"id": i + 1, "identityId": i + 1, "category": {"name": "FacialCaseId"},
                              "files": {"original": {"storageKey": key, "mimeType": "image/jpg",
                                                     "href": f"/api/CaseSets/NamUs/MissingPersons/Cases/1/Images/"
                                                             f"{i + 1}/Original"}}})
    # no ages and no sex: the photo may be anyone's (--photo), and the age and sex checks only reject on
    # evidence, so a fictional age or sex would make the demo's one event depend on the age model's guess
    record = {"id": 1, "idFormatted": "MP1", "modifiedDateTime": "2026-01-01T00:00:00", "caseIsResolved": False,
              "subjectIdentification": {"firstName": "Demo", "lastName": "Person"},
              "subjectDescription": {},
              "sighting": {"date": "2020-01-01", "address": {"city": "Demo City", "state": {"name": "Texas"}}},
              "images": image_entries}
    (out / "MissingPersons.json").write_text(json.dumps([record]), encoding="utf-8")
    key_path = tmp / "demo-operator.key"
    pub_path = key_path.with_name(key_path.name + ".pub")
    if not key_path.exists():
        generate_keypair(key_path)
    bundle = tmp / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    summary = build_bundle(config, str(tmp / "source"), bundle, key_path, progress=False)
    print(f"bundle {summary.version}: {summary.faces} face(s) indexed")

    # 2. the camera: a clip synthesised from the photo
    clip = synthesize_clip(images[0], tmp / "camera.avi", frames=frames)
    print(f"camera clip {clip} ({frames} frames, 1280x720)")

    # 3. the broker and a subscriber that prints what it receives
    broker = EmbeddedBroker(tmp)
    broker.start()
    print(f"broker: {broker.kind} on 127.0.0.1:{broker.port}")
    received: list[dict[str, Any]] = []
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="namus-edge-demo-subscriber")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/match"):
            event = json.loads(msg.payload)
            received.append(event)
            print(f"subscriber got {msg.topic}: {event['case']['id_formatted']} ({event['case']['name']}) "
                  f"similarity {event['similarity']:.3f}, estimated age {event['estimated_age']}, "
                  f"event_id {event['event_id']}")
            got.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("namus-edge/#", qos=1)
    sub.loop_start()
    try:
        data = config.model_dump(mode="json")
        data["index"]["bundle"] = str(bundle)
        data["sync"]["pubkeys"] = [str(pub_path)]  # fail closed, as on a device: the demo key is pinned
        data["mqtt"].update(host="127.0.0.1", port=broker.port, outbox_path=str(tmp / "outbox.sqlite3"))
        data["service"]["state_dir"] = str(tmp)
        demo_cfg = config_from_mapping(data, "demo")
        result = scan_file(demo_cfg, clip, events_path=tmp / "events.jsonl", mqtt=True, camera_id="demo-cam")
        got.wait(timeout=10)
        time.sleep(0.5)
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    print(f"scanned {result.frames} frames in {result.seconds:.1f} s: {len(result.events)} event(s) published, "
          f"{len(received)} received by the subscriber; events also in {tmp / 'events.jsonl'}")
    if not received:
        print("no event received: see the log above", file=sys.stderr)
        return 1
    return 0
