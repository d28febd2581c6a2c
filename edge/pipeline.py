"""Frames in, match events out: detection, tracking, quality gates, batched embedding, search, decision.

One :class:`Pipeline` serves every camera. :meth:`Pipeline.process` takes a batch of frames
(from one or several cameras), detects faces per frame, assigns them to tracks, drops faces
that fail the quality gates, embeds only faces that are new or better than what their track
already holds (in one batch across all frames and cameras), searches the index, estimates ages
(one batch) of the faces whose best case reaches the match threshold, and feeds the decision
engine. A confirmed match becomes a :class:`~edge.events.MatchEvent` handed to ``emit``.

Privacy: a face that matches nothing leaves no trace. Its crop, embedding and scores live only
in local variables of one :meth:`process` call and in its track's memory (which is dropped
when the track ends); nothing about it is logged, written or published.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from namus_edge.core.cases import case_link_for, parse_case_id
from namus_edge.core.config import Config
from namus_edge.edge.debug_store import DebugCropStore
from namus_edge.edge.decision import DecisionEngine, MatchDecision
from namus_edge.edge.detect_schedule import DetectionSchedule
from namus_edge.edge.embedding_guard import usable_rows
from namus_edge.edge.event_v2 import v2_fields
from namus_edge.edge.events import CaseRef, EventModels, MatchEvent, ModelRef, utc_timestamp
from namus_edge.edge.frame_queue import Frame
from namus_edge.edge.reattach import reattach
from namus_edge.edge.sources import MaskCache
from namus_edge.edge.static_faces import StaticFaceGuard
from namus_edge.edge.tracker import Tracker
from namus_edge.index.faces import face_thumbnail
from namus_edge.models.analyzer import FaceAnalyzer, PreparedFace
from namus_edge.models.policy import decision_floor, resolve_policy

logger = logging.getLogger(__name__)

STAGES = ("detect", "track", "prepare", "embed", "age", "search", "decide")


class SearchIndex(Protocol):
    """What the pipeline needs of an index bundle (see :class:`index.bundle.Bundle`)."""

    version: str

    @property
    def ntotal(self) -> int:
        """Faces in the index (the gallery size of the alert policy)."""

    @property
    def has_hub_offsets(self) -> bool:
        """Whether the bundle carries per-face hub offsets (a hub-normalised search is possible)."""

    def search(self, queries: np.ndarray, top_k: int = 5, *, hub_norm: bool = False,
               exact_above: float | None = None) -> list[list[Any]]:
        """Top cases per query: lists of objects with id_formatted, score, similarity, image_key."""

    def case(self, id_formatted: str) -> dict[str, Any] | None:
        """Device-safe case row."""

    def photo(self, image_key: str) -> dict[str, Any] | None:
        """``{"category", "is_rendering"}`` of a case photo."""


EmitFn = Callable[[MatchEvent, bytes | None], None]


@dataclass
class StageStats:
    """Per-stage latency: exponentially weighted mean milliseconds per processed frame batch."""

    alpha: float = 0.1
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    faces: int = 0
    embedded: int = 0
    events: int = 0
    nonfinite_dropped: int = 0

    def add(self, stage: str, seconds: float) -> None:
        """Fold one measurement into the stage's moving average."""
        prev = self.ms[stage]
        self.ms[stage] = seconds * 1000 if prev == 0 else (1 - self.alpha) * prev + self.alpha * seconds * 1000


@dataclass
class _Candidate:
    frame: Frame
    track: Any
    prepared: PreparedFace


class Pipeline:
    """The per-frame processing chain shared by ``run``, ``scan`` and the benchmarks.

    Args:
        config: validated configuration (detection, quality, matching, cameras, mqtt.face_crop).
        analyzer: loaded models.
        index: returns the current index (or None before one is loaded); called once per batch,
            so a reloaded bundle takes effect at the next batch.
        emit: receives each match event and, when ``mqtt.face_crop`` is not ``off``, the JPEG of
            the matched face.
        device_id: the device name in events.
        embed_all: embed every face that passes the gates, not only new or better ones (for
            benchmarks: the tracking gain).
    """

    def __init__(
        self,
        config: Config,
        analyzer: FaceAnalyzer,
        index: Callable[[], SearchIndex | None],
        emit: EmitFn,
        *,
        device_id: str | None = None,
        embed_all: bool = False,
    ) -> None:
        self.config = config
        self.analyzer = analyzer
        self._index = index
        self._emit = emit
        self.device_id = device_id or config.service.device_id
        self.embed_all = embed_all
        self.tracker = Tracker(config.matching)
        self.schedule = DetectionSchedule(config.detection, analyzer)
        self._current_index: SearchIndex | None = None
        self._embedder = analyzer.embedder_spec.name
        self.policy = resolve_policy(config.matching, self._embedder, 0)
        self._policy_key = (0, False)
        self.threshold = self.policy.threshold
        self.engine = DecisionEngine(config.matching.model_copy(update={"threshold": self.threshold}),
                                     self._case_info)
        self.engine.set_policy(self.policy)
        self.static: StaticFaceGuard[tuple[MatchDecision, _Candidate, SearchIndex]] = StaticFaceGuard(
            config.matching.static_faces)
        self.stats = StageStats()
        self._masks = {c.id: MaskCache(c.mask) for c in config.cameras if c.mask}
        svc = config.service
        self._debug = DebugCropStore(Path(svc.debug_save_crops), svc.debug_max_files, svc.debug_retention_h) \
            if svc.debug_save_crops else None
        self._lock = threading.Lock()
        ids = analyzer.model_identities()
        age = ids.get("age")
        self._models = EventModels(
            detector=ModelRef(name=ids["detector"].name, sha256=ids["detector"].sha256[:16]),
            embedder=ModelRef(name=ids["embedder"].name, sha256=ids["embedder"].sha256[:16]),
            age=ModelRef(name=age.name, sha256=age.sha256[:16]) if age else None,
        )

    # -- decision support ------------------------------------------------------------------------

    def _case_info(self, id_formatted: str) -> dict[str, Any] | None:
        idx = self._current_index
        return idx.case(id_formatted) if idx is not None else None

    # -- processing --------------------------------------------------------------------------------

    def process(self, frames: Sequence[Frame]) -> int:
        """Run one batch of frames through the chain.

        Args:
            frames: frames in capture order (several cameras may be mixed); ``Frame.image`` is
                uint8 (H, W, 3) BGR and ``Frame.timestamp`` a monotonic time in seconds.

        Returns:
            The number of match events emitted.
        """
        with self._lock:
            return self._process(frames)

    def _sync_policy(self, index: SearchIndex | None) -> None:
        """Re-derive the alert threshold when the gallery changes size or hub offsets (a new bundle)."""
        size = index.ntotal if index is not None else 0
        offsets = index.has_hub_offsets if index is not None else False
        if (size, offsets) != self._policy_key:
            self._policy_key = (size, offsets)
            self.policy = resolve_policy(self.config.matching, self._embedder, size,
                                         hub_norm=offsets and self.config.matching.hub_norm)
            self.threshold = self.policy.threshold
            self.engine.set_policy(self.policy)
            logger.info("alert policy: %s, threshold %.3f for %d gallery faces (%s scores)", self.policy.rule,
                        self.threshold, size, "hub-normalised" if self.policy.hub_norm else "raw")

    def _process(self, frames: Sequence[Frame]) -> int:
        self._current_index = self._index()
        self._sync_policy(self._current_index)
        released: list[tuple[tuple[MatchDecision, _Candidate, SearchIndex], bool]] = []
        candidates: list[_Candidate] = []
        for frame in frames:
            t0 = time.perf_counter()
            sched = self.schedule.detect(frame.camera_id, frame.image, frame.timestamp,
                                         self.tracker.tracks(frame.camera_id))
            dets, measured = sched.detections, sched.measured
            mask = self._masks.get(frame.camera_id)
            if mask is not None and dets:
                region = mask.get(frame.image.shape)
                inside = [region.contains(d.bbox) for d in dets]
                dets = [d for d, ok in zip(dets, inside, strict=True) if ok]
                measured = [m for m, ok in zip(measured, inside, strict=True) if ok]
            t1 = time.perf_counter()
            tracked = self.tracker.update(frame.camera_id, dets, frame.timestamp)
            released += self.static.update(frame.camera_id, [(tf.track.track_id, tf.detection.bbox) for tf in tracked],
                                           frame.timestamp)
            self.schedule.observe(frame.camera_id, tracked, measured, frame.timestamp,
                                  self.tracker.tracks(frame.camera_id))
            t2 = time.perf_counter()
            for tf in tracked:
                if not measured[tf.detection_index]:
                    continue  # a motion prediction: keeps the track alive, never embedded
                prepared = self.analyzer.prepare(frame.image, tf.detection)
                if not prepared.quality.passed:
                    continue
                if self.embed_all or tf.track.needs_embedding(prepared.quality.score):
                    candidates.append(_Candidate(frame, tf.track, prepared))
            t3 = time.perf_counter()
            self.stats.add("detect", t1 - t0)
            self.stats.add("track", t2 - t1)
            self.stats.add("prepare", t3 - t2)
            self.stats.frames += 1
            self.stats.faces += len(dets)
        for track in self.tracker.pop_closed():
            self.engine.end_track(track.camera_id, track.track_id)
            released += self.static.end_track(track.camera_id, track.track_id)
        if not candidates:
            return self._emit_released(released)
        batch = [c.prepared for c in candidates]
        t0 = time.perf_counter()
        embeddings = self.analyzer.embed(batch)
        t1 = time.perf_counter()
        usable = usable_rows(embeddings)
        if not usable.all():  # e.g. an fp16 overflow: drop those faces, never the batch
            self.stats.nonfinite_dropped += int((~usable).sum())
            logger.warning("dropped %d face(s) with a non-finite embedding (%d so far)",
                           int((~usable).sum()), self.stats.nonfinite_dropped)
            candidates = [c for c, ok in zip(candidates, usable, strict=True) if ok]
            batch = [c.prepared for c in candidates]
            embeddings = embeddings[usable]
            if not candidates:
                return self._emit_released(released)
        index = self._current_index
        results: list[list[Any]] = [[] for _ in candidates]
        if index is not None:  # normalised: exact wherever a verdict could change (decision_floor)
            results = index.search(embeddings, top_k=self.config.matching.top_k, hub_norm=self.policy.hub_norm,
                                   exact_above=decision_floor(self.policy, self.config.matching))
        t2 = time.perf_counter()
        # age and sex only for faces whose best case reaches the threshold: the age and sex checks and the
        # event read no other face's (a face without them passes the checks), and a face matching nothing
        # is never aged or sexed
        aged = [i for i, r in enumerate(results) if r and max(h.score for h in r) >= self.threshold]
        est, est_sex = self.analyzer.estimate_age_sex([batch[i] for i in aged], embeddings[aged]) if aged \
            else (None, None)
        ages = {} if est is None else dict(zip(aged, est.tolist(), strict=True))
        p_males = {} if est_sex is None else dict(zip(aged, est_sex.tolist(), strict=True))
        t3 = time.perf_counter()
        self.stats.add("embed", t1 - t0)
        self.stats.add("search", t2 - t1)
        self.stats.add("age", t3 - t2)
        self.stats.embedded += len(candidates)
        emitted = 0
        folded: dict[int, Any] = {}  # id(new track) -> the lost track it continues
        for i, cand in enumerate(candidates):
            cand.track = folded.get(id(cand.track), cand.track)
            track = reattach(self.tracker, cand.track, embeddings[i], self.config.matching.track_embed_sim)
            if track is not cand.track:
                self.schedule.track_folded(track.camera_id, cand.track.track_id, track.track_id)
                folded[id(cand.track)] = cand.track = track
            age = ages.get(i)
            det = cand.prepared.detection
            cand.track.add_face(cand.prepared.quality.score, det.bbox, cand.frame.timestamp, embeddings[i], age)
            decision = self.engine.observe(cand.frame.camera_id, cand.track.track_id, cand.frame.timestamp,
                                           cand.prepared.quality.score, det.area, age, results[i], bbox=det.bbox,
                                           p_male=p_males.get(i))
            if decision is not None and index is not None:
                released += self.static.submit(decision.camera_id, decision.track_id, decision.id_formatted,
                                               det.bbox, cand.frame.timestamp, (decision, cand, index))
        emitted += self._emit_released(released)
        self.stats.add("decide", time.perf_counter() - t3)
        return emitted

    def _emit_released(self, released: Sequence[tuple[tuple[MatchDecision, _Candidate, SearchIndex], bool]]) -> int:
        for (decision, cand, index), static in released:
            self._emit_decision(decision, cand, index, static_suspect=static)
        self.stats.events += len(released)
        return len(released)

    def finish_camera(self, camera_id: str) -> None:
        """End of a stream: close its tracks and forget their votes."""
        with self._lock:
            released = []
            for track in self.tracker.close_camera(camera_id):
                self.engine.end_track(track.camera_id, track.track_id)
                released += self.static.end_track(track.camera_id, track.track_id)
            self.engine.end_camera(camera_id)
            self._emit_released(released + self.static.end_camera(camera_id))
            self.schedule.forget(camera_id)

    # -- events ---------------------------------------------------------------------------------------

    def _emit_decision(self, d: MatchDecision, cand: _Candidate, index: SearchIndex, *,
                       static_suspect: bool = False) -> None:
        case = index.case(d.id_formatted) or {}
        image = cand.frame.image
        h, w = image.shape[:2]
        box = cand.prepared.detection.bbox  # box, crop, timestamp and debug crop: all from the confirming frame
        x1, y1 = float(np.clip(box[0], 0, w - 2)), float(np.clip(box[1], 0, h - 2))
        x2, y2 = float(np.clip(box[2], x1 + 1, w)), float(np.clip(box[3], y1 + 1, h))
        event = MatchEvent(
            device_id=self.device_id,
            camera_id=d.camera_id,
            track_id=d.track_id,
            timestamp=utc_timestamp(cand.frame.wall_time),
            case=CaseRef(
                id_formatted=d.id_formatted,
                case_set=str(case.get("case_set") or parse_case_id(d.id_formatted)[0]),
                name=str(case.get("display_name") or ""),
                link=str(case.get("link") or case_link_for(d.id_formatted)),
                current_age_min=_int_or_none(case.get("current_age_min")),
                current_age_max=_int_or_none(case.get("current_age_max")),
            ),
            similarity=round(float(d.similarity), 4),
            margin=round(float(d.margin), 4),
            estimated_age=None if d.estimated_age is None else round(float(d.estimated_age), 1),
            quality=round(float(d.quality), 4),
            bbox=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)),
            index_version=index.version,
            models=self._models,
            image_key=d.image_key,
            frames=int(d.frames),
            **v2_fields(d, index.photo, static_suspect=static_suspect),
        )
        crop = None
        if self.config.mqtt.face_crop != "off" or self._debug is not None:
            # the matched face, box grown by 20 %, full resolution (only ever for a confirmed match)
            crop = face_thumbnail(image, cand.prepared.detection.bbox, size=max(image.shape[:2]))
        logger.info("match: camera %s track %d -> %s (similarity %.3f over %d frames)", d.camera_id, d.track_id,
                    d.id_formatted, d.similarity, d.frames)
        if self._debug is not None and crop is not None:  # explicit debug option: the matched face only
            self._debug.save(event.event_id, crop)
        self._emit(event, crop if self.config.mqtt.face_crop != "off" else None)


def _int_or_none(v: Any) -> int | None:
    return None if v is None else round(float(v))
