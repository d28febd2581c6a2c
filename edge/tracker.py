"""Face tracking per camera: IoU association, stable track ids, folding re-attached tracks.

Each camera has its own tracks and its own id counter (1, 2, 3, ... in creation order; ids are
never reused while the tracker lives). Per frame, :meth:`Tracker.update`:

1. closes the camera's tracks unseen for more than ``matching.track_max_age_s``;
2. pairs detections with open tracks greedily by IoU, highest first, while IoU >= ``track_iou``
   (greedy rather than Hungarian: with a handful of faces per frame it gives the same pairs in
   practice, needs no scipy, and ties resolve deterministically by order);
3. opens a new track for every detection still unpaired.

Re-attachment after a short occlusion needs the face's embedding, which the pipeline computes
after tracking: :func:`edge.reattach.reattach` then folds the new track into the lost one with
:meth:`Tracker.absorb`.

A track keeps the ``faces_per_track`` best faces by quality. The pipeline asks
:meth:`Track.needs_embedding` before embedding a face (only new or better faces are embedded)
and reports the result with :meth:`Track.add_face`, which also refreshes the track's
embedding. Match votes live in :class:`edge.decision.DecisionEngine`, keyed by
``(camera_id, track_id)``, so there is one source of truth for decisions; call
``DecisionEngine.end_track`` for each track returned by :meth:`Tracker.pop_closed`.

Not thread-safe: one inference loop owns a tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from namus_edge.core.config import MatchingConfig
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.face import Detection


def _greedy_pairs(scores: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken greedily by descending score while score >= minimum, each row/col once."""
    if scores.size == 0:
        return []
    order = np.argsort(-scores, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, scores.shape)
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if scores[r, c] < minimum:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    if n == 0.0 or not np.isfinite(n):
        raise ValueError("embedding must be a finite, non-zero vector")
    return v / n


@dataclass(frozen=True)
class KeptFace:
    """One of a track's best faces.

    Attributes:
        quality: combined quality score in [0, 1].
        timestamp: monotonic capture time (s).
        bbox: float32 (4,) ``x1, y1, x2, y2`` pixels.
        embedding: float32 (D,) L2-normalised.
        age: estimated age in years, or ``None``.
    """

    quality: float
    timestamp: float
    bbox: np.ndarray
    embedding: np.ndarray
    age: float | None = None


@dataclass
class Track:
    """A face followed across frames of one camera (owned and mutated by :class:`Tracker`).

    Attributes:
        camera_id: the camera.
        track_id: stable id, unique per camera, increasing from 1.
        bbox: float32 (4,) last box, ``x1, y1, x2, y2`` pixels.
        first_seen: monotonic time of the first detection (s).
        last_seen: monotonic time of the latest detection (s).
        hits: frames in which the track was detected.
        faces_per_track: how many best faces are kept.
        faces: the kept faces, best quality first.
    """

    camera_id: str
    track_id: int
    bbox: np.ndarray
    first_seen: float
    last_seen: float
    faces_per_track: int
    hits: int = 1
    faces: list[KeptFace] = field(default_factory=list)
    _embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def embedding(self) -> np.ndarray | None:
        """float32 (D,) L2-normalised mean of the kept faces' embeddings, or ``None`` before any."""
        return self._embedding

    @property
    def best_face(self) -> KeptFace | None:
        """The highest-quality kept face, or ``None``."""
        return self.faces[0] if self.faces else None

    def needs_embedding(self, quality: float) -> bool:
        """Whether a face of this quality would enter the kept set (so is worth embedding).

        True while fewer than ``faces_per_track`` faces are kept, or when ``quality`` beats the
        worst kept face.
        """
        if len(self.faces) < self.faces_per_track:
            return True
        return quality > self.faces[-1].quality

    def add_face(
        self, quality: float, bbox: np.ndarray, timestamp: float, embedding: np.ndarray, age: float | None = None
    ) -> bool:
        """Offer an embedded face; keep it if it is among the best ``faces_per_track``.

        Args:
            quality: combined quality in [0, 1].
            bbox: float (4,) ``x1, y1, x2, y2`` pixels.
            timestamp: monotonic capture time (s).
            embedding: float (D,) face embedding (normalised here).
            age: estimated age in years, or ``None``.

        Returns:
            Whether the face was kept (the track embedding is refreshed when it was).
        """
        if not self.needs_embedding(quality):
            return False
        emb = _unit(embedding)
        if self.faces and self.faces[0].embedding.shape != emb.shape:
            raise ValueError(
                f"track {self.track_id}: embedding dimension {emb.shape[0]} differs from the track's "
                f"{self.faces[0].embedding.shape[0]}"
            )
        face = KeptFace(float(quality), float(timestamp), np.asarray(bbox, np.float32).reshape(4), emb, age)
        self.faces.append(face)
        self.faces.sort(key=lambda f: -f.quality)
        del self.faces[self.faces_per_track :]
        self._embedding = _unit(np.mean([f.embedding for f in self.faces], axis=0))
        return True


@dataclass(frozen=True)
class TrackedFace:
    """A detection with the track it was assigned to in this frame.

    Attributes:
        camera_id: the camera.
        track_id: the track's id.
        detection_index: index of the detection in the list given to ``update``.
        detection: the detection.
        track: the (mutable) track, for ``needs_embedding`` / ``add_face``.
        new: the track was opened by this detection.
        reattached: the track was continued by embedding similarity (IoU failed).
    """

    camera_id: str
    track_id: int
    detection_index: int
    detection: Detection
    track: Track = field(compare=False, repr=False)
    new: bool = False
    reattached: bool = False


class Tracker:
    """Multi-camera face tracker (see the module docstring for the association rules).

    Args:
        cfg: matching settings (``track_iou``, ``track_embed_sim``, ``track_max_age_s``,
            ``faces_per_track``).
    """

    def __init__(self, cfg: MatchingConfig) -> None:
        self.cfg = cfg
        self._tracks: dict[str, dict[int, Track]] = {}
        self._next_id: dict[str, int] = {}
        self._closed: list[Track] = []

    def tracks(self, camera_id: str) -> list[Track]:
        """The camera's open tracks, oldest first."""
        return list(self._tracks.get(camera_id, {}).values())

    def _close(self, camera_id: str, now: float | None = None) -> list[Track]:
        """Close the camera's tracks older than ``track_max_age_s`` at ``now`` (all when ``now`` is None)."""
        tracks = self._tracks.get(camera_id, {})
        gone = [t for t in tracks.values() if now is None or now - t.last_seen > self.cfg.track_max_age_s]
        for t in gone:
            del tracks[t.track_id]
        self._closed.extend(gone)
        return gone

    def close_camera(self, camera_id: str) -> list[Track]:
        """Close all tracks of a camera (end of stream). Returns them (also queued for :meth:`pop_closed`)."""
        return self._close(camera_id)

    def absorb(self, track: Track, into: Track) -> None:
        """Fold ``track`` (just opened, never embedded) into the lost track ``into`` of the same camera.

        ``into`` takes the box, last-seen time and hits of ``track``, which disappears without
        being closed (it never voted). See :mod:`edge.reattach`.
        """
        if track.camera_id != into.camera_id or track.faces:
            raise ValueError(f"cannot fold track {track.track_id} into {into.track_id}")
        tracks = self._tracks.get(track.camera_id, {})
        tracks.pop(track.track_id, None)
        into.bbox = track.bbox.copy()
        into.last_seen = max(into.last_seen, track.last_seen)
        into.hits += track.hits

    def pop_closed(self) -> list[Track]:
        """Tracks closed since the last call, in closing order (hand them to ``DecisionEngine.end_track``)."""
        closed, self._closed = self._closed, []
        return closed

    def update(
        self,
        camera_id: str,
        detections: list[Detection],
        timestamp: float,
    ) -> list[TrackedFace]:
        """Assign one frame's detections to tracks.

        Args:
            camera_id: the camera the frame came from.
            detections: the frame's detections (boxes in frame pixels).
            timestamp: monotonic capture time of the frame (s).

        Returns:
            One :class:`TrackedFace` per detection, in detection order.
        """
        self._close(camera_id, now=timestamp)
        tracks = self._tracks.setdefault(camera_id, {})
        candidates = list(tracks.values())
        assigned: dict[int, tuple[Track, bool]] = {}

        if candidates and detections:
            ious = iou_matrix(np.stack([t.bbox for t in candidates]), np.stack([d.bbox for d in detections]))
            for ti, di in _greedy_pairs(ious, max(self.cfg.track_iou, 1e-9)):
                assigned[di] = (candidates[ti], False)

        out: list[TrackedFace] = []
        for i, det in enumerate(detections):
            if i in assigned:
                track, reattached = assigned[i]
                track.bbox = np.asarray(det.bbox, np.float32).copy()
                track.last_seen = timestamp
                track.hits += 1
                out.append(TrackedFace(camera_id, track.track_id, i, det, track, new=False, reattached=reattached))
                continue
            tid = self._next_id.get(camera_id, 1)
            self._next_id[camera_id] = tid + 1
            track = Track(
                camera_id=camera_id,
                track_id=tid,
                bbox=np.asarray(det.bbox, np.float32).copy(),
                first_seen=timestamp,
                last_seen=timestamp,
                faces_per_track=self.cfg.faces_per_track,
            )
            tracks[tid] = track
            out.append(TrackedFace(camera_id, tid, i, det, track, new=True))
        return out
