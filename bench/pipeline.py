"""Frame pipeline benchmark (issue 7): our face pipeline against InsightFace's FaceAnalysis on the same frames.

Both sides run the same ONNX files from the verified model cache: SCRFD ``det_500m`` at the configured
detector input (640x640) and threshold, the configured embedder (EdgeFace-XS by default) and ``age-v1``.
InsightFace's ``FaceAnalysis`` is pointed at a temporary folder holding links to those files, so it finds
them locally and never downloads (the worker also refuses every outgoing socket connection). ``age-v1`` is
not an InsightFace model, so the InsightFace side runs it the InsightFace way: an extra task in
``FaceAnalysis.models`` that our :class:`models.age.AgeEstimator` serves one face at a time (the same chip
and model as ours, so both sides do the same work).

Rows (``--impls``):

* ``insightface``: ``FaceAnalysis.get(frame)`` (detect; per face: align + embed + age, batch 1);
* ``plain``: ``FaceAnalyzer.analyze(frame)`` (detect; align + quality; embed and age of the frame's faces
  in one batch);
* ``pipeline``: the edge pipeline (:class:`edge.pipeline.Pipeline`) with both video advantages off: one
  frame per ``process`` call and ``embed_all=True`` (every face that passes the quality gates is embedded);
* ``pipeline+batch``: ``--batch-frames`` frames per ``process`` call (their faces share one embed, age
  and search batch), ``embed_all=True``;
* ``pipeline+track``: one frame per call, tracking on (``embed_all=False``: only faces that are new or
  better than what their track holds are embedded);
* ``pipeline+track+batch``: both (how the service runs).
* any ``pipeline*`` row with ``@N<k>`` appended (e.g. ``pipeline+track+batch@N1``): that row with
  ``detection.interval=k`` instead of the configured default (``@N1`` = full-frame detection on every frame, the
  behaviour before the detection interval). Pipeline rows at interval > 1 run full passes on some frames and
  re-detect tracked faces in crops on the others (``edge/detect_schedule.py``); the identity check compares
  the faces embedded on full-pass frames (``min_cos``: same detector run as InsightFace's) and reports the
  crop-measured ones separately (``min_cos_roi``: a different, full-resolution measurement of the same face).
* ``whatif-plain``, ``whatif-pipeline+track+batch``: not the shipped code: the same rows with our detector
  patched to resize like InsightFace and build its input with ``cv2.dnn.blobFromImage``
  (:func:`install_insightface_preprocessing`), to show what that change would give. Not run by default.

The pipeline rows also search every embedded face in a real signed bundle of 10,000 random unit vectors
(written once with :class:`namus_edge.index.bundle_writer.BundleWriter`) and feed the decision engine; InsightFace has
neither stage, so this is extra work on our side only (small: see the search column).

Every (case, row, threads) runs in its own subprocess (fair peak RSS, no shared caches). Frames are made
or decoded outside the timed sections; CPU use is process CPU time over the timed wall time (100 % = one
core). The first frame is processed once untimed to warm up. Identity checks compare every row's faces
with InsightFace's, frame by frame, matched by IoU.

Benchmarks never fail: they print a markdown table (``--json`` prints one JSON object instead).

Usage::

    python -m bench.pipeline --quick --json
    nice -n 10 python -m bench.pipeline --threads 1,2 --out /tmp/pipeline.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import emit_summary, machine_info, machine_markdown, markdown_table, peak_rss_mb

log = logging.getLogger("bench.pipeline")

REPO = Path(__file__).resolve().parents[1]
IMPLS = ("insightface", "plain", "pipeline", "pipeline+batch", "pipeline+track", "pipeline+track+batch",
         "whatif-plain", "whatif-pipeline+track+batch")
DEFAULT_IMPLS = IMPLS[:6]
VIDEO_IMPL = "pipeline+track+batch"
VIDEO_FPS = 30.0
BUNDLE_FACES = 10_000
QUICK_CASE = "synthetic-1080p-5faces"
STAGES = ("detect", "align", "embed", "age", "track", "search")


def shared_dir() -> Path:
    """../shared beside the checkout, or $NAMUS_EDGE_SHARED."""
    env = os.environ.get("NAMUS_EDGE_SHARED")
    return Path(env) if env else REPO.parent / "shared"


# --------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One frame source.

    Attributes:
        name: case label used in tables.
        kind: "synthetic" (faces pasted over a background) or "video" (a file decoded with OpenCV).
        width: frame width in pixels (synthetic).
        height: frame height in pixels (synthetic).
        faces: number of pasted faces (synthetic).
        frames: frames to process.
        path: the video file (video).
    """

    name: str
    kind: str
    width: int = 0
    height: int = 0
    faces: int = 0
    frames: int = 40
    path: str = ""


def all_cases(frames: int) -> dict[str, Case]:
    """The benchmark cases: 720p/1080p synthetic frames with 1, 5 and 20 faces, and the two real videos."""
    video = shared_dir() / "data" / "video"
    out: dict[str, Case] = {}
    for h, w in ((720, 1280), (1080, 1920)):
        for n in (1, 5, 20):
            name = f"synthetic-{h}p-{n}face{'s' if n > 1 else ''}"
            out[name] = Case(name, "synthetic", w, h, n, frames)
    out["video-hamilton"] = Case("video-hamilton", "video", frames=275, path=str(video / "hamilton_short_clip.mp4"))
    out["video-bbt"] = Case("video-bbt", "video", frames=5, path=str(video / "faceapi_bbt_5frames.mp4"))
    return out


def lfw_photos(data_dir: Path, count: int, seed: int) -> list[Path]:
    """`count` LFW photos of different identities (seeded choice), from verification/manifest.csv."""
    by_id: dict[str, Path] = {}
    with (data_dir / "verification" / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["dataset"] == "lfw":
                by_id.setdefault(row["identity"], data_dir / "verification" / row["path"])
    names = sorted(by_id)
    rng = np.random.default_rng(seed)
    return [by_id[names[i]] for i in rng.choice(len(names), size=count, replace=False)]


class SyntheticScene:
    """Frames of `faces` LFW face crops (with some context) drifting slowly over a smooth background.

    Each face sits in its own grid cell and moves on a slow ellipse (a few pixels per frame), so a
    tracker can follow it while the crops, the detections and the embeddings change a little.

    Args:
        width: frame width in pixels.
        height: frame height in pixels.
        faces: number of faces (1 .. 30).
        data_dir: ../shared/data.
        seed: seeds the background, the photos and the motion.
    """

    def __init__(self, width: int, height: int, faces: int, data_dir: Path, seed: int = 7) -> None:
        rng = np.random.default_rng(seed + faces * 1000 + height)
        small = rng.integers(40, 200, size=(9, 16, 3), dtype=np.uint8)
        bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
        self.background = np.clip(bg.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        cols = math.ceil(math.sqrt(faces * width / height))
        rows = math.ceil(faces / cols)
        cell_w, cell_h = width // cols, height // rows
        side = int(min(cell_w, cell_h) * 0.62)
        self.crops: list[np.ndarray] = []
        self.base: list[tuple[float, float]] = []
        self.motion: list[tuple[float, float, float, float]] = []
        for k, path in enumerate(lfw_photos(data_dir, faces, seed)):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f"cannot read {path}")
            h, w = img.shape[:2]
            m = int(min(h, w) * 0.16)  # LFW 250x250: keep the face and some hair/shoulders
            crop = img[m:h - m, m:w - m]
            self.crops.append(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))
            r, c = divmod(k, cols)
            self.base.append((c * cell_w + (cell_w - side) / 2, r * cell_h + (cell_h - side) / 2))
            amp = (cell_w - side) * 0.3, (cell_h - side) * 0.3
            self.motion.append((amp[0], amp[1], float(rng.uniform(40, 90)), float(rng.uniform(0, 2 * math.pi))))
        self.side = side

    def frame(self, t: int) -> np.ndarray:
        """Frame number `t`: uint8 (height, width, 3) BGR."""
        out = self.background.copy()
        hh, ww = out.shape[:2]
        for crop, (bx, by), (ax, ay, period, phase) in zip(self.crops, self.base, self.motion, strict=True):
            a = 2 * math.pi * t / period + phase
            x = round(bx + ax * math.cos(a))
            y = round(by + ay * math.sin(a))
            x, y = min(max(x, 0), ww - self.side), min(max(y, 0), hh - self.side)
            out[y:y + self.side, x:x + self.side] = crop
        return out


def iter_frames(case: Case, data_dir: Path) -> Iterator[np.ndarray]:
    """The case's frames, uint8 (H, W, 3) BGR, made or decoded one at a time."""
    if case.kind == "synthetic":
        scene = SyntheticScene(case.width, case.height, case.faces, data_dir)
        for t in range(case.frames):
            yield scene.frame(t)
        return
    cap = cv2.VideoCapture(case.path)
    if not cap.isOpened():
        raise OSError(f"cannot open video {case.path}")
    try:
        for _ in range(case.frames):
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------- timing


class StageClock:
    """Accumulates wall seconds per stage (also used to wrap library methods in place)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.active = False

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` timed into `stage` while the clock is active."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        return timed

    def add(self, stage: str, t0: float) -> None:
        """Add the time since `t0` (perf_counter) to `stage`."""
        if self.active:
            self.seconds[stage] += time.perf_counter() - t0


@dataclass
class FaceLog:
    """Faces a run produced, for the identity checks (bbox/kps in frame pixels, emb NaN when not embedded)."""

    frame: list[int] = field(default_factory=list)
    bbox: list[np.ndarray] = field(default_factory=list)
    kps: list[np.ndarray] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    emb: list[np.ndarray | None] = field(default_factory=list)

    def add(self, frame: int, bbox: Any, kps: Any, score: float, emb: np.ndarray | None) -> None:
        """Record one face."""
        self.frame.append(frame)
        self.bbox.append(np.asarray(bbox, np.float32).reshape(4))
        self.kps.append(np.asarray(kps, np.float32).reshape(5, 2))
        self.score.append(float(score))
        self.emb.append(None if emb is None or np.size(emb) == 0 else np.asarray(emb, np.float32).reshape(-1))

    def save(self, path: Path, dim: int) -> None:
        """Write an .npz: frame (F,), bbox (F, 4), kps (F, 5, 2), score (F,), emb (F, D) NaN rows = not embedded."""
        emb = np.full((len(self.frame), dim), np.nan, np.float32)
        for i, e in enumerate(self.emb):
            if e is not None:
                emb[i] = e / max(float(np.linalg.norm(e)), 1e-12)
        np.savez(path, frame=np.asarray(self.frame, np.int32), bbox=np.asarray(self.bbox, np.float32).reshape(-1, 4),
                 kps=np.asarray(self.kps, np.float32).reshape(-1, 5, 2), score=np.asarray(self.score, np.float32),
                 emb=emb)


# --------------------------------------------------------------------------------------------- worker side


def _forbid_network() -> None:
    """Refuse every outgoing connection in this process (InsightFace must not download)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(f"bench.pipeline: network access is forbidden here (tried {args!r})")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse


#: ``--set`` overrides for our rows (not InsightFace's), set by the worker from its command line.
OUR_OVERRIDES: list[str] = []


def _config(threads: int, interval: int | None = None, *, ours: bool = True) -> Any:
    from namus_edge.core.config import load_config

    extra = [*(OUR_OVERRIDES if ours else []), *([] if interval is None else [f"detection.interval={interval}"])]
    return load_config(overrides=[f"models.backend.intra_op_threads={threads}", "models.backend.inter_op_threads=1",
                                  *extra])


def split_impl(impl: str) -> tuple[str, int | None]:
    """``"pipeline+track@N1"`` -> (``"pipeline+track"``, 1); no suffix -> (impl, None)."""
    base, _, suffix = impl.partition("@N")
    return base, (int(suffix) if suffix else None)


def _age_estimator(config: Any) -> Any:
    """Our AgeEstimator for the configured age model (as FaceAnalyzer builds it)."""
    from namus_edge.models.age import AgeEstimator
    from namus_edge.models.backends.factory import create_backend
    from namus_edge.models.registry import get_spec, resolve

    name = config.models.selected()[2]
    cache = config.models.resolved_cache_dir()
    points = config.models.age_calibration
    cal = None if not points else np.asarray(sorted(points), np.float64)
    est = AgeEstimator(create_backend(resolve(name, cache), config.models.backend), get_spec(name),
                       flip=config.models.age_flip, calibration=cal)
    est.warmup(config.models.backend.warmup_runs)
    return est


def insightface_root(config: Any, folder: Path) -> Path:
    """Make `folder`/models/namus-bench with links to our verified detector and embedder files; returns it."""
    from namus_edge.models.registry import resolve

    det, emb, _ = config.models.selected()
    cache = config.models.resolved_cache_dir()
    d = folder / "models" / "namus-bench"
    d.mkdir(parents=True, exist_ok=True)
    for name in (det, emb):
        p = resolve(name, cache)  # verifies size + sha256
        (d / p.name).symlink_to(p)
    return d


class _AgeTask:
    """age-v1 as a FaceAnalysis task: one face per call, like InsightFace's own genderage model."""

    taskname = "age"

    def __init__(self, estimator: Any, clock: StageClock) -> None:
        from namus_edge.models.aligner import align_age_chip

        self.estimator = estimator
        self.chip = clock.wrap("align", align_age_chip)
        self.estimate = clock.wrap("age", estimator.estimate)

    def prepare(self, ctx_id: int, **kwargs: Any) -> None:
        """Nothing to prepare (FaceAnalysis API)."""

    def get(self, img: np.ndarray, face: Any) -> float:
        """Age of one face (sets ``face.age`` as InsightFace's attribute models do)."""
        chip = self.chip(img, face.kps)
        face.age = float(self.estimate(chip[None])[0])
        return face.age


def run_insightface(case: Case, data_dir: Path, threads: int, with_age: bool, clock: StageClock,
                    faces: FaceLog, info: dict[str, Any]) -> tuple[int, float, float]:
    """InsightFace FaceAnalysis over the case; returns (frames, wall s, cpu s) of the timed part."""
    import onnxruntime as ort
    from insightface.app import FaceAnalysis
    from insightface.model_zoo import arcface_onnx

    config = _config(threads, ours=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench_insightface_"))
    model_dir = insightface_root(config, tmp)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    app = FaceAnalysis(name=str(model_dir), root=str(tmp), providers=["CPUExecutionProvider"], sess_options=so)
    size = tuple(config.detection.input_size)
    app.prepare(ctx_id=0, det_thresh=config.detection.score_threshold, det_size=size)
    app.det_model.nms_thresh = config.detection.nms_threshold
    rec = app.models["recognition"]
    info["insightface_models"] = {k: {"class": type(m).__name__, "file": Path(m.model_file).name,
                                      "input_mean": getattr(m, "input_mean", None),
                                      "input_std": getattr(m, "input_std", None)} for k, m in app.models.items()}
    app.det_model.detect = clock.wrap("detect", app.det_model.detect)
    arcface_onnx.face_align.norm_crop = clock.wrap("align", arcface_onnx.face_align.norm_crop)
    rec.get_feat = clock.wrap("embed", rec.get_feat)
    if with_age:
        app.models["age"] = _AgeTask(_age_estimator(config), clock)
    try:
        return timed_frames(case, data_dir, clock, app.get,
                            lambda i, f: faces.add(i, f.bbox, f.kps, f.det_score, f.embedding))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only links; InsightFace reads the files until the first detect


def run_plain(case: Case, data_dir: Path, threads: int, with_age: bool, clock: StageClock, faces: FaceLog,
              info: dict[str, Any]) -> tuple[int, float, float]:
    """FaceAnalyzer.analyze per frame; returns (frames, wall s, cpu s) of the timed part."""
    from namus_edge.models.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer(_config(threads), with_age=with_age)
    analyzer.detect = clock.wrap("detect", analyzer.detect)  # type: ignore[method-assign]
    analyzer.prepare = clock.wrap("align", analyzer.prepare)  # type: ignore[method-assign]
    analyzer.embed = clock.wrap("embed", analyzer.embed)  # type: ignore[method-assign]
    analyzer.estimate_ages = clock.wrap("age", analyzer.estimate_ages)  # type: ignore[method-assign]
    return timed_frames(case, data_dir, clock, analyzer.analyze,
                        lambda i, f: faces.add(i, f.bbox, f.landmarks, f.det_score, f.embedding))


def timed_frames(case: Case, data_dir: Path, clock: StageClock, analyze: Callable[[np.ndarray], Sequence[Any]],
                 record: Callable[[int, Any], None]) -> tuple[int, float, float]:
    """Run ``analyze`` on every frame of the case (the first frame once more, untimed, as warm-up).

    ``record(frame_index, face)`` is called for each face found. Returns (frames, wall s, cpu s) of the
    timed calls; the stage clock runs only during them.
    """
    wall = cpu = 0.0
    n = 0
    for i, frame in enumerate(iter_frames(case, data_dir)):
        if i == 0:
            analyze(frame)  # warm-up, untimed
        clock.active = True
        t0, c0 = time.perf_counter(), time.process_time()
        result = analyze(frame)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        clock.active = False
        n += 1
        for f in result:
            record(i, f)
    return n, wall, cpu


def random_bundle(folder: Path, faces: int, seed: int = 1) -> Path:
    """Write a signed bundle of `faces` random unit vectors (one case and photo each) for the embedder in use.

    Scores of real faces against random vectors stay far below ``matching.threshold``, so the decision
    stage runs on every searched face but never fires: the search and decide costs are those of a real
    bundle of this size without events.
    """
    from namus_edge.core.config import load_config
    from namus_edge.index.bundle_writer import BundleWriter
    from namus_edge.index.manifest import ModelIdentity
    from namus_edge.index.signing import generate_keypair
    from namus_edge.models.registry import get_spec

    config = load_config()
    det, emb, _ = config.models.selected()
    spec, det_spec = get_spec(emb), get_spec(det)
    if spec.output_dim is None:
        raise ValueError(f"{emb}: the registry does not declare its embedding size")
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    key, _ = generate_keypair(folder / "keys" / "operator.key")
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((faces, spec.output_dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = folder / "bundle"
    detector = {"name": det_spec.name, "sha256": det_spec.sha256, "input_size": list(config.detection.input_size)}
    with BundleWriter(out, ModelIdentity(spec.name, spec.sha256, spec.output_dim), detector) as w:
        for i, v in enumerate(vecs):
            cid = f"MP{100000 + i}"
            w.add_case({"id_formatted": cid, "age_min": 20.0 + i % 50, "age_max": 20.0 + i % 50,
                        "date_last": "2015-06-01"})
            w.add_face(cid, f"k{i:08d}", v, quality=0.8, det_score=0.9, bbox=[0, 0, 100, 100],
                       category="FacialCaseId", is_rendering=False, file_sha256=f"{i:064x}")
        w.finish(key)
    return out


def run_pipeline(case: Case, data_dir: Path, threads: int, with_age: bool, clock: StageClock, faces: FaceLog,
                 info: dict[str, Any], *, track: bool, batch: int, bundle: Path,
                 interval: int | None = None) -> tuple[int, float, float]:
    """edge.pipeline.Pipeline over the case; returns (frames, wall s, cpu s) of the timed part.

    Args:
        track: embed only the faces their track wants (``embed_all=False``); otherwise every face that
            passes the quality gates.
        batch: frames per ``Pipeline.process`` call (faces of those frames share one embed/age/search batch).
        bundle: the bundle searched (see :func:`random_bundle`).
        interval: ``detection.interval`` (None: the configured default).
    """
    from datetime import datetime, timezone

    from namus_edge.edge.frame_queue import Frame
    from namus_edge.edge.pipeline import Pipeline
    from namus_edge.index.bundle import Bundle
    from namus_edge.models.analyzer import FaceAnalyzer

    config = _config(threads, interval)
    analyzer = FaceAnalyzer(config, with_age=with_age)
    index = Bundle.load(bundle)
    index.search = clock.wrap("search", index.search)  # type: ignore[method-assign]
    events: list[Any] = []
    pipe = Pipeline(config, analyzer, lambda: index, lambda event, crop: events.append(event), embed_all=not track)
    frame_of: dict[int, int] = {}  # id(image) -> frame number
    prepared_frame: dict[int, int] = {}  # id(PreparedFace) -> frame number
    prepare, embed = analyzer.prepare, analyzer.embed

    def prepare_logged(image: np.ndarray, det: Any) -> Any:
        p = prepare(image, det)
        prepared_frame[id(p)] = frame_of.get(id(image), -1)
        return p

    def embed_logged(prepared: Sequence[Any]) -> np.ndarray:
        vecs = embed(prepared)
        for p, v in zip(prepared, vecs, strict=True):
            d = p.detection
            f = prepared_frame.get(id(p), -1)
            if f >= 0:  # -1: the untimed warm-up
                faces.add(f, d.bbox, d.landmarks, d.score, v)
        return vecs

    schedule_detect = pipe.schedule.detect
    crop_frames: list[int] = []  # frames whose faces were measured in crops (not a full pass)

    def detect_logged(camera_id: str, image: np.ndarray, timestamp: float, tracks: Any) -> Any:
        result = schedule_detect(camera_id, image, timestamp, tracks)
        if result.kind not in ("full", "tiled"):
            crop_frames.append(frame_of.get(id(image), -1))
        return result

    pipe.schedule.detect = clock.wrap("detect", detect_logged)  # type: ignore[method-assign]
    analyzer.prepare = clock.wrap("align", prepare_logged)  # type: ignore[method-assign]
    analyzer.embed = clock.wrap("embed", embed_logged)  # type: ignore[method-assign]
    analyzer.estimate_ages = clock.wrap("age", analyzer.estimate_ages)  # type: ignore[method-assign]
    pipe.tracker.update = clock.wrap("track", pipe.tracker.update)  # type: ignore[method-assign]
    wall = cpu = 0.0
    n = 0
    pending: list[Frame] = []
    now = datetime.now(timezone.utc)

    def process() -> None:
        nonlocal wall, cpu
        clock.active = True
        t0, c0 = time.perf_counter(), time.process_time()
        pipe.process(pending)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        clock.active = False
        pending.clear()

    for i, image in enumerate(iter_frames(case, data_dir)):
        if i == 0:
            analyzer.analyze(image)  # warm-up, untimed
        frame_of[id(image)] = i
        pending.append(Frame("bench", i, i / VIDEO_FPS, now, image))
        n += 1
        if len(pending) >= batch:
            process()
    if pending:
        process()
    pipe.finish_camera("bench")
    info["pipeline"] = {"frames": pipe.stats.frames, "faces": pipe.stats.faces, "embedded": pipe.stats.embedded,
                        "events": len(events), "batch_frames": batch, "embed_all": not track,
                        "interval": config.detection.interval, "schedule": dict(pipe.schedule.stats),
                        "crop_frames": sorted(f for f in crop_frames if f >= 0),
                        "bundle_faces": index.ntotal if hasattr(index, "ntotal") else None}
    index.close()
    return n, wall, cpu


def install_insightface_preprocessing() -> str:
    """What-if rows: our detector with InsightFace's letterbox and cv2.dnn blob (patched in this process only).

    Shows what our numbers and the identity checks would be if models/detector.py resized like
    InsightFace (bilinear, truncated size, instead of INTER_AREA and a rounded size) and built its input
    tensor with ``cv2.dnn.blobFromImage`` instead of NumPy. Not the shipped code.
    """
    import namus_edge.models.detector as detector_mod

    def fast_blob(self: Any, canvas_bgr: np.ndarray) -> np.ndarray:
        c = self.spec.contract
        if len(set(c.std)) != 1:
            return original_blob(self, canvas_bgr)
        size = (canvas_bgr.shape[1], canvas_bgr.shape[0])
        # mean is given in the network's channel order (OpenCV applies it after swapRB)
        blob = cv2.dnn.blobFromImage(canvas_bgr, 1.0 / c.std[0], size, tuple(c.mean), swapRB=c.color == "RGB")
        return np.ascontiguousarray(blob, dtype=np.float32)

    original_blob = detector_mod.FaceDetector._blob
    detector_mod.letterbox = _insightface_letterbox
    detector_mod.FaceDetector._blob = fast_blob  # type: ignore[method-assign]
    return "detector letterbox = InsightFace resize; input blob = cv2.dnn.blobFromImage"


def worker(args: argparse.Namespace) -> int:
    """Run one (case, impl, threads) and write its result JSON and face log into --out-dir."""
    _forbid_network()
    OUR_OVERRIDES[:] = args.overrides
    cv2.setNumThreads(args.threads)
    case = all_cases(args.frames)[args.case]
    data_dir = Path(args.data_dir) if args.data_dir else shared_dir() / "data"
    clock = StageClock()
    faces = FaceLog()
    info: dict[str, Any] = {}
    t_load = time.perf_counter()
    with_age = not args.no_age
    impl, interval = split_impl(args.impl)
    if impl.startswith("whatif-"):
        info["whatif"] = install_insightface_preprocessing()
        impl = impl.removeprefix("whatif-")
    if impl == "insightface":
        n, wall, cpu = run_insightface(case, data_dir, args.threads, with_age, clock, faces, info)
    elif impl == "plain":
        n, wall, cpu = run_plain(case, data_dir, args.threads, with_age, clock, faces, info)
    else:
        n, wall, cpu = run_pipeline(case, data_dir, args.threads, with_age, clock, faces, info,
                                    track="track" in impl, batch=args.batch_frames if "batch" in impl else 1,
                                    bundle=Path(args.bundle), interval=interval)
    total_s = time.perf_counter() - t_load
    embedded = sum(e is not None for e in faces.emb)
    dim = next((len(e) for e in faces.emb if e is not None), 1)
    out = Path(args.out_dir)
    faces.save(out / f"{args.case}__{args.impl}__t{args.threads}.npz", dim)
    result = {
        "case": case.name, "impl": args.impl, "threads": args.threads, "frames": n, "age": with_age,
        "wall_s": wall, "cpu_s": cpu, "fps": n / wall if wall > 0 else float("nan"),
        "ms_per_frame": 1e3 * wall / max(n, 1), "cpu_pct": 100.0 * cpu / wall if wall > 0 else float("nan"),
        "stage_ms": {k: 1e3 * v / max(n, 1) for k, v in clock.seconds.items()},
        "faces_embedded": embedded, "peak_rss_mb": peak_rss_mb(),
        "run_s": total_s, "load_avg": os.getloadavg(), **info,
    }
    (out / f"{args.case}__{args.impl}__t{args.threads}.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------- parent side


def run_job(case: str, impl: str, threads: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any] | None:
    """Run one worker subprocess; returns its result (None when it failed, with the error logged)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "bench.pipeline", "--worker", "--case", case, "--impl", impl, "--threads",
           str(threads), "--frames", str(args.frames), "--batch-frames", str(args.batch_frames),
           "--out-dir", str(out_dir), "--bundle", str(out_dir / "bundle")]
    if args.no_age:
        cmd.append("--no-age")
    for o in args.overrides:
        cmd += ["--set", o]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    path = out_dir / f"{case}__{impl}__t{threads}.json"
    if proc.returncode != 0 or not path.exists():
        log.error("%s / %s / t%d failed (exit %d):\n%s", case, impl, threads, proc.returncode, proc.stderr[-3000:])
        return None
    res: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    log.info("%-24s %-12s t%d: %6.2f frames/s, %5.0f ms/frame, CPU %3.0f%%, RSS %4.0f MiB, embedded %d",
             case, impl, threads, res["fps"], res["ms_per_frame"], res["cpu_pct"], res["peak_rss_mb"],
             res["faces_embedded"])
    return res


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def compare_faces(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], *, all_faces: bool) -> dict[str, Any]:
    """Match our faces to InsightFace's per frame by IoU and compare boxes, landmarks and embeddings.

    Args:
        ref: InsightFace's face log (every detected face, all embedded).
        ours: one of our face logs.
        all_faces: ours lists every detected face (plain, batch): also compare counts per frame.

    Returns:
        Counts, the minimum matched IoU, the largest box/landmark coordinate difference (px) and the
        minimum/mean embedding cosine over faces embedded on both sides.
    """
    from namus_edge.edge.tracker import iou_matrix

    frames = sorted(set(ref["frame"].tolist()) | set(ours["frame"].tolist()))
    count_mismatch, unmatched = 0, 0
    ious, box_d, kps_d, cos = [], [], [], []
    for f in frames:
        a = np.flatnonzero(ref["frame"] == f)
        b = np.flatnonzero(ours["frame"] == f)
        if all_faces and len(a) != len(b):
            count_mismatch += 1
        if len(a) == 0 or len(b) == 0:
            unmatched += len(b)
            continue
        m = iou_matrix(ours["bbox"][b], ref["bbox"][a])  # (ours, ref)
        for bi in range(len(b)):
            ai = int(m[bi].argmax())
            if m[bi, ai] < 0.5:
                unmatched += 1
                continue
            ious.append(float(m[bi, ai]))
            box_d.append(float(np.abs(ours["bbox"][b[bi]] - ref["bbox"][a[ai]]).max()))
            kps_d.append(float(np.abs(ours["kps"][b[bi]] - ref["kps"][a[ai]]).max()))
            eo, er = ours["emb"][b[bi]], ref["emb"][a[ai]]
            if not (np.isnan(eo).any() or np.isnan(er).any()):
                cos.append(float(eo @ er))
    c = np.asarray(cos) if cos else np.asarray([np.nan])
    return {
        "faces_ref": len(ref["frame"]), "faces_ours": len(ours["frame"]),
        "frames_count_mismatch": count_mismatch if all_faces else None, "unmatched": unmatched,
        "min_iou": min(ious) if ious else float("nan"), "max_box_diff_px": max(box_d) if box_d else float("nan"),
        "max_kps_diff_px": max(kps_d) if kps_d else float("nan"), "embeddings_compared": len(cos),
        "min_cos": float(np.nanmin(c)), "mean_cos": float(np.nanmean(c)),
        "share_cos_ge_0999": float(np.mean(c >= 0.999)) if cos else float("nan"),
    }


def _insightface_letterbox(image: np.ndarray, size: tuple[int, int]) -> Any:
    """InsightFace's SCRFD resize (cv2.resize default bilinear, truncated size) in our Letterbox type."""
    from namus_edge.models.detector import Letterbox

    w_in, h_in = size
    h, w = image.shape[:2]
    if h / w > h_in / w_in:
        nh, nw = h_in, int(h_in / (h / w))
    else:
        nw, nh = w_in, int(w_in * (h / w))
    canvas = np.zeros((h_in, w_in, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh))
    return Letterbox(canvas, nh / h)


def parity_diagnostics(case: Case, data_dir: Path, ref: dict[str, np.ndarray], frames: int) -> dict[str, Any]:
    """Where do the two pipelines differ? Run on the first `frames` frames, in this (parent) process.

    * embedder: our align_arcface + FaceEmbedder on InsightFace's own landmarks versus InsightFace's
      embedding (same crop geometry and model, so this isolates normalisation/colour order);
    * resize: our full analyzer with InsightFace's detector resize (bilinear, truncated size) instead of
      ours (INTER_AREA when shrinking, rounded size) versus InsightFace (isolates the letterbox).
    """
    import namus_edge.models.detector as detector_mod
    from namus_edge.models.aligner import align_arcface
    from namus_edge.models.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer(_config(1), with_age=False)
    cos_emb: list[float] = []
    log_resize = FaceLog()
    original = detector_mod.letterbox
    for i, frame in enumerate(iter_frames(Case(**{**asdict(case), "frames": min(case.frames, frames)}), data_dir)):
        idx = np.flatnonzero(ref["frame"] == i)
        if len(idx):
            crops = np.stack([align_arcface(frame, ref["kps"][j]) for j in idx])
            e = analyzer.embedder.embed(crops)
            cos_emb += [float(x) for x in np.sum(e * ref["emb"][idx], axis=1)]
        detector_mod.letterbox = _insightface_letterbox
        try:
            for f in analyzer.analyze(frame):
                log_resize.add(i, f.bbox, f.landmarks, f.det_score, f.embedding)
        finally:
            detector_mod.letterbox = original
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "resize.npz"
        log_resize.save(p, analyzer.dim)
        resized = _load(p)
    sub = {k: v[ref["frame"] < frames] for k, v in ref.items()}
    return {"frames": frames,
            "embedder_min_cos": min(cos_emb) if cos_emb else float("nan"), "embedder_faces": len(cos_emb),
            "with_insightface_resize": compare_faces(sub, resized, all_faces=True)}


# --------------------------------------------------------------------------------------------- output

TABLE_COLUMNS = ["case", "impl", "threads", "frames", "fps", "ratio", "ms_per_frame", "detect", "align", "embed",
                 "age", "track", "search", "cpu_pct", "cpu_ms", "ratio_cpu", "peak_rss_mb", "embedded", "min_cos",
                 "max_box_diff_px", "min_cos_roi", "load_avg"]


def table_rows(results: Sequence[dict[str, Any]], identity: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten worker results into table rows with the ratios to InsightFace (same case and threads).

    ``ratio``: frames/s over InsightFace's; ``ratio_cpu``: InsightFace's CPU ms per frame over ours (the
    steadier figure on a shared machine, where the CPU share each run gets varies).
    """
    base = {(r["case"], r["threads"]): r for r in results if r["impl"] == "insightface"}
    rows = []
    for r in results:
        ident = identity.get(f"{r['case']}|{r['impl']}|{r['threads']}", {})
        b = base.get((r["case"], r["threads"]))
        ref = b["fps"] if b else None
        cpu_ms = 1e3 * r["cpu_s"] / max(r["frames"], 1)
        ref_cpu = 1e3 * b["cpu_s"] / max(b["frames"], 1) if b else None
        rows.append({**{k: r[k] for k in ("case", "impl", "threads", "frames", "fps", "ms_per_frame", "cpu_pct",
                                          "peak_rss_mb")},
                     **{k: v for k, v in r["stage_ms"].items()},
                     "ratio": r["fps"] / ref if ref else None, "embedded": r["faces_embedded"],
                     "cpu_ms": cpu_ms, "ratio_cpu": ref_cpu / cpu_ms if ref_cpu and cpu_ms > 0 else None,
                     "min_cos": ident.get("min_cos"), "max_box_diff_px": ident.get("max_box_diff_px"),
                     "min_cos_roi": identity.get(f"{r['case']}|{r['impl']}|{r['threads']}|roi", {}).get("min_cos"),
                     "load_avg": round(float(r["load_avg"][0]), 1) if r.get("load_avg") else None})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (benchmarks never fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.pipeline")
    ap.add_argument("--cases", default=None, help=f"comma list of cases (default all; --quick: {QUICK_CASE})")
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"rows to run, from {','.join(IMPLS)}")
    ap.add_argument("--threads", default="1,2", help="onnxruntime intra-op threads (same on both sides)")
    ap.add_argument("--frames", type=int, default=40, help="frames per synthetic case (videos: all frames)")
    ap.add_argument("--batch-frames", type=int, default=4,
                    help="+batch rows: frames per Pipeline.process call")
    ap.add_argument("--no-age", action="store_true", help="run without the age model on both sides")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for our rows only (repeatable), e.g. detection.verify_low=0.3")
    ap.add_argument("--parity-frames", type=int, default=5, help="frames per case for the parity diagnostics")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_CASE} only, 30 frames, insightface/plain/{VIDEO_IMPL} (and @N1) at 1 thread")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    ap.add_argument("--out", default=None, help="also write every number (JSON) to this file")
    ap.add_argument("--data-dir", default=None, help="../shared/data")
    ap.add_argument("--log-level", default="INFO")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.worker:
        args.threads = int(args.threads)
        return worker(args)

    if args.quick:
        args.frames = min(args.frames, 30)
        if args.impls == ap.get_default("impls"):
            args.impls = f"insightface,plain,{VIDEO_IMPL},{VIDEO_IMPL}@N1"
        if args.threads == ap.get_default("threads"):
            args.threads = "1"
        args.parity_frames = min(args.parity_frames, 3)
    cases_all = all_cases(args.frames)
    names = args.cases.split(",") if args.cases else ([QUICK_CASE] if args.quick else list(cases_all))
    unknown = [c for c in names if c not in cases_all]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if unknown or any(split_impl(i)[0] not in IMPLS or (split_impl(i)[1] is not None and "pipeline" not in i)
                      for i in impls):
        ap.error(f"unknown case or impl; cases: {','.join(cases_all)}; impls: {','.join(IMPLS)}")
    if "insightface" not in impls:
        impls.insert(0, "insightface")  # the reference of every ratio and identity check
    threads = [int(t) for t in args.threads.split(",")]
    data_dir = Path(args.data_dir) if args.data_dir else shared_dir() / "data"
    info = machine_info(extra_libraries=("insightface",))
    t_all = time.perf_counter()
    results: list[dict[str, Any]] = []
    identity: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        out_dir = Path(tmp)
        if any(i.startswith("pipeline") for i in impls):
            t0 = time.perf_counter()
            random_bundle(out_dir, BUNDLE_FACES)
            log.info("bundle of %d random faces written in %.1f s", BUNDLE_FACES, time.perf_counter() - t0)
        for case in names:
            for t in threads:
                for impl in impls:
                    res = run_job(case, impl, t, args, out_dir)
                    if res is not None:
                        results.append(res)
                ref_path = out_dir / f"{case}__insightface__t{t}.npz"
                if not ref_path.exists():
                    continue
                ref = _load(ref_path)
                for impl in impls[1:]:
                    p = out_dir / f"{case}__{impl}__t{t}.npz"
                    if p.exists():
                        ours = _load(p)
                        res = next((r for r in results if r["case"] == case and r["impl"] == impl
                                    and r["threads"] == t), {})
                        crop = np.isin(ours["frame"], np.asarray(res.get("pipeline", {}).get("crop_frames", []), int))
                        identity[f"{case}|{impl}|{t}"] = compare_faces(ref, {k: v[~crop] for k, v in ours.items()},
                                                                       all_faces=impl.endswith("plain"))
                        if crop.any():
                            identity[f"{case}|{impl}|{t}|roi"] = compare_faces(
                                ref, {k: v[crop] for k, v in ours.items()}, all_faces=False)
                if t == threads[0] and args.parity_frames > 0:
                    parity[case] = parity_diagnostics(cases_all[case], data_dir, ref, args.parity_frames)
    info["load_avg_end"] = tuple(round(v, 2) for v in os.getloadavg())
    info["total_s"] = round(time.perf_counter() - t_all, 1)
    rows = table_rows(results, identity)
    summary: dict[str, Any] = {"machine": info, "argv": sys.argv, "results": results, "identity": identity,
                               "parity": parity}
    quick = {r["impl"]: r for r in rows if r["case"] == QUICK_CASE and r["threads"] == threads[0]}
    if quick.get("insightface"):
        best = VIDEO_IMPL if VIDEO_IMPL in quick else next((i for i in quick if i != "insightface"), None)
        summary["case"] = QUICK_CASE
        summary["threads"] = threads[0]
        summary["ratio_impl"] = best
        summary["ratio_vs_insightface"] = quick[best]["ratio"] if best else None
        summary["ratio_plain_vs_insightface"] = quick["plain"]["ratio"] if "plain" in quick else None
        n1 = f"{VIDEO_IMPL}@N1"
        summary["ratio_interval1_vs_insightface"] = quick[n1]["ratio"] if n1 in quick else None
        summary["ratio_cpu_vs_insightface"] = quick[best]["ratio_cpu"] if best else None
        summary["fps"] = {k: v["fps"] for k, v in quick.items()}
        summary["identity_plain"] = identity.get(f"{QUICK_CASE}|plain|{threads[0]}")
    if emit_summary(summary, args.out, args.json):
        return 0
    print(machine_markdown(info))
    print(f"- Load average at end: {info['load_avg_end']}; total {info['total_s']} s")
    print()
    print(markdown_table(rows, TABLE_COLUMNS))
    print()
    ident_rows = [{"row": k, **{kk: vv for kk, vv in v.items()}} for k, v in identity.items()]
    print(markdown_table(ident_rows, ["row", "faces_ref", "faces_ours", "frames_count_mismatch", "unmatched",
                                      "min_iou", "max_box_diff_px", "max_kps_diff_px", "embeddings_compared",
                                      "min_cos", "mean_cos", "share_cos_ge_0999"]))
    print()
    par_rows = [{"case": k, "embedder_min_cos": v["embedder_min_cos"], "embedder_faces": v["embedder_faces"],
                 **{f"resize_{kk}": vv for kk, vv in v["with_insightface_resize"].items()}} for k, v in parity.items()]
    print(markdown_table(par_rows, ["case", "embedder_faces", "embedder_min_cos", "resize_frames_count_mismatch",
                                    "resize_min_iou", "resize_max_box_diff_px", "resize_min_cos"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
