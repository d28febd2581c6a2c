"""The service survives what 24/7 cameras bring: many cameras, a non-finite embedding, a failing batch,
an outbox that cannot be written (a real EFBIG from the kernel), and acknowledged crops never linger."""

from __future__ import annotations

import json
import logging
import resource
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from namus_edge_testing.namus_factory import lfw_identities

from namus_edge.core.config import config_from_mapping
from namus_edge.demo import synthesize_clip
from namus_edge.edge.event_sink import EventSink
from namus_edge.edge.events import MatchEvent
from namus_edge.edge.frame_queue import Frame, FrameQueue
from namus_edge.edge.health import ServiceHealth, status_line
from namus_edge.edge.outbox import Outbox
from namus_edge.edge.pipeline import Pipeline
from namus_edge.edge.scheduler import FairScheduler
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.registry import get_spec

IMAGE = np.zeros((8, 8, 3), np.uint8)


def _frame(cam: str, i: int) -> Frame:
    return Frame(cam, i, float(i), datetime.now(timezone.utc), IMAGE)


def test_six_busy_cameras_get_equal_shares_of_the_batches() -> None:
    queues = {f"cam{i}": FrameQueue(8, live=True) for i in range(6)}
    sched = FairScheduler(queues, batch_frames=4, per_camera=1)
    served = dict.fromkeys(queues, 0)
    n = 0
    for _ in range(150):
        for cam, q in queues.items():  # every camera always has frames waiting
            while len(q) < 8:
                q.put(_frame(cam, n))
                n += 1
        frames, ended = sched.collect(timeout=0.1)
        assert len(frames) == 4 and ended == []
        for f in frames:
            served[f.camera_id] += 1
    assert set(served.values()) == {100}, served  # 600 frames over 6 cameras: 100 each, cameras 4 and 5 included


def test_scheduler_skips_idle_cameras_and_reports_ended_ones() -> None:
    queues = {f"c{i}": FrameQueue(4, live=True) for i in range(5)}
    sched = FairScheduler(queues, batch_frames=4, per_camera=2)
    for i in range(3):
        queues["c3"].put(_frame("c3", i))
    queues["c1"].close()
    frames, ended = sched.collect(timeout=0.1)
    assert [f.camera_id for f in frames] == ["c3", "c3"]  # the per-camera budget, then nobody else has frames
    assert ended == ["c1"] and "c1" not in sched.open_cameras
    frames, ended = sched.collect(timeout=0.05)
    assert [f.index for f in frames] == [2] and ended == []
    frames, ended = sched.collect(timeout=0.05)
    assert frames == [] and ended == []


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, data_dir, model_cache):
    """A real signed bundle holding one LFW person's first photo, and a clip of another photo of them."""
    root = tmp_path_factory.mktemp("nan")
    lfw = lfw_identities(data_dir)
    person = next(k for k, v in lfw.items() if len(v) >= 3)
    config = config_from_mapping({"matching": {"age_check": {"enabled": False}}}, "test")
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    face = max(analyzer.analyze(cv2.imread(str(lfw[person][0])), photo=True), key=lambda f: f.quality)
    spec = get_spec(analyzer.model_identities()["embedder"].name)
    key, pub = generate_keypair(root / "op.key")
    with BundleWriter(root / "bundle", ModelIdentity(spec.name, spec.sha256, analyzer.dim), {"name": "det"}) as w:
        w.add_case({"id_formatted": "MP77", "display_name": "Enrolled Person"})
        w.add_face("MP77", "k0", face.embedding, quality=0.9, det_score=0.9, bbox=[0, 0, 1, 1],
                   category="FacialCaseId", is_rendering=False, file_sha256="0" * 64)
        w.finish(key)
    clip = synthesize_clip(cv2.imread(str(lfw[person][1])), root / "clip.avi", frames=40, size=(640, 360),
                           face_height=200)
    return {"config": config, "analyzer": analyzer, "bundle": root / "bundle", "pub": pub, "clip": clip}


def test_non_finite_embedding_through_the_pipeline_is_dropped_and_counted(enrolled, caplog):
    analyzer = enrolled["analyzer"]
    real_embed = analyzer.embed
    poisoned = []

    def fp16_overflow_once(faces):  # a GPU's fp16 overflow cannot happen on this CPU: one NaN row, once
        out = real_embed(faces)
        if not poisoned and len(out):
            out = out.copy()
            out[0, 3] = np.nan
            poisoned.append(True)
        return out

    analyzer.embed = fp16_overflow_once
    events: list[MatchEvent] = []
    bundle = Bundle.load(enrolled["bundle"], [enrolled["pub"]])
    try:
        pipe = Pipeline(enrolled["config"], analyzer, lambda: bundle, lambda e, c: events.append(e))
        cap = cv2.VideoCapture(str(enrolled["clip"]))
        i = 0
        frames: list[np.ndarray] = []
        t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with caplog.at_level(logging.WARNING):
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                frames.append(img)
                pipe.process([Frame("door", i, i / 30.0, t0 + timedelta(seconds=i), img)])
                i += 1
        cap.release()
    finally:
        analyzer.embed = real_embed
        bundle.close()
    assert poisoned and pipe.stats.nonfinite_dropped == 1
    assert any("non-finite embedding" in r.getMessage() for r in caplog.records)
    assert [e.case.id_formatted for e in events] == ["MP77"]  # the track went on and matched
    # every field of the event comes from one frame: the one its timestamp names holds a face at its bbox
    n = round((datetime.fromisoformat(events[0].timestamp.replace("Z", "+00:00")) - t0).total_seconds())
    boxes = [d.bbox for d in analyzer.detect(frames[n])]
    assert any(np.allclose(b, events[0].bbox, atol=1.0) for b in boxes), (events[0].bbox, boxes)
    assert pipe.stats.frames == i == 40


def _event(n: int) -> MatchEvent:
    from namus_edge.edge.events import CaseRef, EventModels, ModelRef

    return MatchEvent(device_id="d", camera_id="c", track_id=n, timestamp="2026-01-01T00:00:00.000Z",
                      case=CaseRef(id_formatted="MP1", case_set="MP", name="A",
                                   link="https://www.namus.gov/MissingPersons/Case#/1"),
                      similarity=0.5, margin=0.1, estimated_age=None, quality=0.5, bbox=(0.0, 0.0, 1.0, 1.0),
                      index_version="v", image_key="k", frames=3,
                      models=EventModels(detector=ModelRef(name="d", sha256="0" * 16),
                                         embedder=ModelRef(name="e", sha256="0" * 16)))


def test_outbox_that_cannot_grow_degrades_then_recovers_without_losing_events(tmp_path, caplog):
    health = ServiceHealth()
    box = Outbox(tmp_path / "outbox.sqlite3")
    sink = EventSink(lambda e, c: box.put("p/d/match", e.to_json().encode()), health, retry_s=0.0)
    sink.emit(_event(1), None)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with caplog.at_level(logging.WARNING):
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # the kernel refuses to grow any file: EFBIG
        try:
            sink.emit(_event(2), None)
            sink.emit(_event(3), None)
            sink.retry(force=True)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sink.pending == 2 and "outbox" in health.degraded
    assert "degraded: outbox" in status_line([], "v", health.degraded)
    assert any(r.levelno == logging.WARNING and "degraded: outbox" in r.getMessage() for r in caplog.records)
    sink.emit(_event(4), None)  # writable again: held events first, in order
    assert sink.pending == 0 and health.degraded == {}
    tracks = [MatchEvent.from_dict(json.loads(i.payload)).track_id for i in box.peek(10)]
    assert tracks == [1, 2, 3, 4]
    box.close()


def test_acknowledged_crops_leave_no_bytes_in_the_outbox_files(tmp_path: Path) -> None:
    marker = b"FACE-CROP-BYTES-" * 512
    with Outbox(tmp_path / "o.sqlite3") as box:
        box.put_many([("p/d/match", b"{}", 1, False), ("p/d/match/x/crop", marker, 1, False)])
        for item in box.peek(10):
            box.ack(item.seq)
        data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"FACE-CROP-BYTES-" not in data


def test_batch_guard_drops_the_batch_and_keeps_the_service(tmp_path, enrolled, caplog):
    from namus_edge.edge.service import EdgeService

    cfg = config_from_mapping({
        "cameras": [{"id": "a", "source": str(enrolled["clip"])}, {"id": "b", "source": str(enrolled["clip"])}],
        "index": {"bundle": str(enrolled["bundle"])}, "sync": {"pubkeys": [str(enrolled["pub"])]},
        "mqtt": {"enabled": False}, "service": {"state_dir": str(tmp_path)},
        "matching": {"age_check": {"enabled": False}}}, "test")
    svc = EdgeService(cfg)
    svc.index.refresh()
    analyzer = enrolled["analyzer"]
    real_detect = analyzer.detect

    def driver_bug_on_camera_b(image):  # stands in for a bug or a driver error on one frame
        if image.shape[0] == 99:
            raise RuntimeError("inference engine returned garbage")
        return real_detect(image)

    analyzer.detect = driver_bug_on_camera_b
    svc.pipeline = Pipeline(cfg, analyzer, lambda: svc._batch_index, svc._emit)
    try:
        with caplog.at_level(logging.ERROR):
            svc.process_batch([Frame("b", 0, 0.0, datetime.now(timezone.utc), np.zeros((99, 99, 3), np.uint8))])
        svc.process_batch([Frame("a", 0, 0.0, datetime.now(timezone.utc), np.zeros((64, 64, 3), np.uint8))])
    finally:
        analyzer.detect = real_detect
        svc.index.close()
    assert svc.health.batch_errors == 1 and "garbage" in (svc.health.last_batch_error or "")
    assert svc.pipeline.stats.frames == 1  # the failed frame was dropped, the next batch ran
    assert any("dropped after an error" in r.getMessage() for r in caplog.records)
