"""Which detector work a frame gets: the detection interval (as DeepStream's ``interval``).

Full-frame detection of every frame is most of the per-frame bill. Per camera,
:meth:`DetectionSchedule.detect` runs the full-frame detector on every
``detection.interval``-th frame and, in between:

* **ROI re-detection** (``detection.roi_redetect``, at most ``roi_max_tracks`` such tracks): each
  live track that still wants faces (fewer kept than ``matching.faces_per_track``: a new track, the
  one whose faces decide a match) is re-detected in a square crop of the *full-resolution* frame around its
  predicted box (:mod:`edge.motion`), at a small detector input (``roi_input``, 192x192 by
  default: 9 % of a 640x640 pass). The face is measured, not guessed: real box, landmarks and
  score, at native pixels (a small face is larger in its crop than in the 640 letterbox), so
  it is aligned and embedded as on a full pass.
* **Motion prediction** (tracks that hold all the faces they keep): the track's constant-velocity
  prediction stands in for its detection, keeping it alive until the next full pass measures it
  again (where a better face is still taken); predicted faces are never aligned or embedded
  (``ScheduledDetections.measured`` is False).

Tracks that want faces are never merely predicted: when more than ``roi_max_tracks`` of them are
live (one 192x192 crop costs ~4 ms of CPU against ~31 ms for the full 1080p pass here, so beyond
~8 crops the full pass is cheaper), or ROI re-detection is off, the frame gets a full pass
(reasons "crowd", "measure"), so new faces are embedded as often as with ``interval: 1``.

A full pass runs at once, whatever the interval, when:

* the camera has no state yet, or the previous frame ended with a track not found (lost);
* a live track is not re-found in its crop (this frame's ROI results are discarded);
* the frame changed outside the live tracks by more than ``motion_trigger`` of its area since
  the previous frame (something new may have appeared), checked on a 160-px grey thumbnail.

Frames with no live track and no new motion get no detector run until the interval comes
round. Small faces: with ``verify_low`` set, a full pass also keeps the faces it scores in
``[verify_low, score_threshold)`` that the verifier confirms in their full-resolution crop
(:class:`models.detect_regions.VerifyRule`);
every ``tile_every``-th full pass also detects on 2x2 full-resolution tiles.
With ``interval: 1`` the schedule is a plain full pass per frame (the pre-interval behaviour).

Not thread-safe: one inference loop owns it (the pipeline holds its lock around it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from namus_edge.core.config import DetectionConfig
from namus_edge.edge.motion import MotionModel, motion_thumbnail, new_motion
from namus_edge.edge.tracker import Track, TrackedFace
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.detect_regions import (
    VerifyRule,
    detect_crop,
    detect_tiled,
    detect_verified,
    merge_detections,
    square_region,
)
from namus_edge.models.face import Detection

logger = logging.getLogger(__name__)

#: Minimum IoU between a track's predicted box and the face found in its crop.
ROI_MIN_IOU = 0.2

#: Kinds of frame (``ScheduledDetections.kind``), also the keys of ``DetectionSchedule.stats``.
KINDS = ("full", "tiled", "roi", "predicted", "skipped")


@dataclass(frozen=True)
class ScheduledDetections:
    """One frame's detections and how they were obtained.

    Attributes:
        detections: faces in frame pixels.
        measured: per detection, True when a detector found it (full pass or crop), False when it
            is a motion prediction (never align or embed those).
        kind: one of :data:`KINDS`.
        reason: why a full pass ran ("interval", "start", "lost", "motion", "crowd", "measure"), else "".
    """

    detections: list[Detection]
    measured: list[bool]
    kind: str
    reason: str = ""


@dataclass
class _Camera:
    motion: MotionModel = field(default_factory=MotionModel)
    thumb: np.ndarray | None = None
    since_full: int = 0
    full_passes: int = 0
    lost: bool = True
    last_timestamp: float | None = None
    expected: set[int] = field(default_factory=set)
    full_this_frame: bool = False


class DetectionSchedule:
    """Per-camera detection interval with ROI re-detection and motion prediction (module docstring).

    Args:
        cfg: the ``detection`` section (interval, roi_*, motion_trigger, tile_every).
        analyzer: loaded models; full passes call ``analyzer.detect``, crops its detector.
    """

    def __init__(self, cfg: DetectionConfig, analyzer: FaceAnalyzer) -> None:
        self.cfg = cfg
        self.analyzer = analyzer
        self._cameras: dict[str, _Camera] = {}
        self.stats: Counter[str] = Counter()

    def detect(self, camera_id: str, image_bgr: np.ndarray, timestamp: float,
               tracks: Sequence[Track]) -> ScheduledDetections:
        """Detections for one frame of ``camera_id``.

        Args:
            camera_id: the camera.
            image_bgr: uint8 (H, W, 3) BGR frame at full resolution.
            timestamp: monotonic capture time (s).
            tracks: the camera's open tracks (``Tracker.tracks(camera_id)``) before this frame.
        """
        if self.cfg.interval <= 1:
            return self._full(None, image_bgr, "interval")
        cam = self._cameras.setdefault(camera_id, _Camera())
        thumb = motion_thumbnail(image_bgr)
        previous, cam.thumb = cam.thumb, thumb
        live = [t for t in tracks if cam.last_timestamp is not None and t.last_seen >= cam.last_timestamp
                and t.track_id in cam.motion]
        cam.last_timestamp = timestamp
        cam.expected = {t.track_id for t in live}
        cam.full_this_frame = False
        reason = ""
        if previous is None or cam.full_passes == 0:
            reason = "start"
        elif cam.lost:
            reason = "lost"
        elif cam.since_full + 1 >= self.cfg.interval:
            reason = "interval"
        else:
            predicted = [cam.motion.predict(t.track_id, timestamp) for t in live]
            moved = new_motion(previous, thumb, image_bgr.shape, [p.bbox for p in predicted], self.cfg.roi_scale)
            if moved > self.cfg.motion_trigger:
                reason = "motion"
            elif not live:
                cam.since_full += 1
                return self._count(ScheduledDetections([], [], "skipped"))
            else:
                # measure (in crops) the tracks that still want faces; carry the satisfied ones by prediction
                wants = [len(t.faces) < t.faces_per_track for t in live]
                measure = [p for p, w in zip(predicted, wants, strict=True) if w]
                carried = [p for p, w in zip(predicted, wants, strict=True) if not w]
                if measure and not self.cfg.roi_redetect:
                    reason = "measure"
                elif len(measure) > self.cfg.roi_max_tracks:
                    reason = "crowd"  # one full pass measures them all for less than their crops
                else:
                    found = self._roi(image_bgr, measure) if measure else []
                    if found is not None:
                        cam.since_full += 1
                        kind = "roi" if measure else "predicted"
                        measured = [True] * len(found) + [False] * len(carried)
                        return self._count(ScheduledDetections(found + carried, measured, kind))
                    reason = "lost"
        return self._full(cam, image_bgr, reason)

    def observe(self, camera_id: str, tracked: Sequence[TrackedFace], measured: Sequence[bool],
                timestamp: float, open_tracks: Sequence[Track]) -> None:
        """Feed the tracker's assignment of this frame back (motion model, lost tracks).

        Args:
            camera_id: the camera.
            tracked: ``Tracker.update``'s result for this frame's detections.
            measured: ``ScheduledDetections.measured`` of those detections (same order as given to the tracker).
            timestamp: the frame's monotonic time (s).
            open_tracks: the camera's open tracks after the update.
        """
        if self.cfg.interval <= 1:
            return
        cam = self._cameras.setdefault(camera_id, _Camera())
        seen = set()
        for tf in tracked:
            seen.add(tf.track_id)
            if measured[tf.detection_index]:
                cam.motion.update(tf.track_id, tf.detection, timestamp)
        # a track live before this frame and not assigned after a crop/prediction frame is lost: full pass next
        # (a full pass already looked for it everywhere)
        cam.lost = not cam.full_this_frame and bool(cam.expected - seen)
        cam.motion.retain({t.track_id for t in open_tracks})

    def track_folded(self, camera_id: str, old_id: int, into_id: int) -> None:
        """Track ``old_id`` was re-attached to ``into_id`` (``edge.reattach``): move its motion state."""
        cam = self._cameras.get(camera_id)
        if cam is not None:
            cam.motion.rename(old_id, into_id)

    def forget(self, camera_id: str) -> None:
        """Drop a camera's state (end of stream)."""
        self._cameras.pop(camera_id, None)

    # -- internals --------------------------------------------------------------------------------

    def _count(self, result: ScheduledDetections) -> ScheduledDetections:
        self.stats[result.kind] += 1
        if result.reason:
            self.stats[f"full_{result.reason}"] += 1
        return result

    def _full(self, cam: _Camera | None, image_bgr: np.ndarray, reason: str) -> ScheduledDetections:
        kind = "full"
        if cam is not None:
            cam.full_this_frame = True
            cam.since_full = 0
            cam.full_passes += 1
            if self.cfg.tile_every and cam.full_passes % self.cfg.tile_every == 0:
                kind = "tiled"
        if kind == "tiled":
            dets = detect_tiled(self.analyzer.detector, image_bgr, (2, 2))
        elif self.cfg.verify_low is not None:
            dets = detect_verified(self.analyzer.detector, image_bgr, VerifyRule.from_config(self.cfg),
                                   self.analyzer.verifier())
        else:
            dets = self.analyzer.detect(image_bgr)
        return self._count(ScheduledDetections(dets, [True] * len(dets), kind, reason))

    def _roi(self, image_bgr: np.ndarray, predicted: list[Detection]) -> list[Detection] | None:
        """Each predicted face re-detected in its crop; None as soon as one is not found."""
        found: list[Detection] = []
        for pred in predicted:
            region = square_region(pred.bbox, self.cfg.roi_scale, image_bgr.shape)
            dets = detect_crop(self.analyzer.detector, image_bgr, region, self.cfg.roi_input,
                               self.cfg.roi_score_threshold)
            if not dets:
                return None
            ious = iou_matrix(pred.bbox[None], np.stack([d.bbox for d in dets]))[0]
            best = int(ious.argmax())
            if ious[best] < ROI_MIN_IOU:
                return None
            found.append(dets[best])
        return merge_detections([found], self.analyzer.detector.cfg.nms_threshold, self.analyzer.detector.cfg.max_faces)
