"""Static faces: a missing-person flyer in view gives at most one event, marked ``static_suspect``.

Flyers are posted exactly where cameras look. A printed face matches its case perfectly and never
leaves, so without this guard it would raise an event every ``matching.cooldown_s``. The rules
(``matching.static_faces``):

* **Still.** A track is *still* while its box stays within ``still_px`` x face width of where it
  was when it last moved (centre shift or size change). A live person drifts more than that.
* **Held decisions.** A match decision of a track that has not moved yet is held: it is released
  as a normal event as soon as the track moves (or ends), and as **one** event with
  ``static_suspect: true`` once the track has been still for ``still_seconds``.
* **Re-trigger.** A decision for a case already alerted from the same image region of the same
  camera (box IoU >= ``region_iou``) is treated as static too: a second alert from the same spot is
  the poster, not the person.
* **Suppression.** After a static event, further decisions for that case whose box overlaps the
  region (IoU >= ``region_iou``) are dropped, until no face has been seen in the region for
  ``release_s`` (the poster was taken down, or the person left).

Only boxes, times and case ids are held - never an image or an embedding of a face that matched
nothing (a held decision exists only for a face that matched a case). Not thread-safe: the
pipeline's lock covers it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from namus_edge.core.config import StaticFaceConfig
from namus_edge.models.boxes import iou_matrix

logger = logging.getLogger(__name__)

P = TypeVar("P")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two float (4,) boxes ``x1, y1, x2, y2``."""
    return float(iou_matrix(a, b)[0, 0])


@dataclass
class _Still:
    box: np.ndarray  # float (4,) where the track last moved to
    since: float  # monotonic time it got there
    moved_at: float  # last time it moved (== since)


@dataclass
class _Held(Generic[P]):
    payload: P
    case: str
    box: np.ndarray
    submitted: float


@dataclass
class _Region:
    case: str
    box: np.ndarray
    last_seen: float
    suppressing: bool  # True after a static event; False: a normal event was sent from here


class StaticFaceGuard(Generic[P]):
    """Holds, releases and suppresses match decisions by how still their face is.

    The payload ``P`` is whatever the caller needs to emit the event later (the pipeline passes
    its decision, the face and the index).

    Args:
        cfg: ``matching.static_faces``.
    """

    def __init__(self, cfg: StaticFaceConfig) -> None:
        self.cfg = cfg
        self._still: dict[tuple[str, int], _Still] = {}
        self._held: dict[tuple[str, int], _Held[P]] = {}
        self._regions: dict[str, list[_Region]] = {}

    # -- movement -------------------------------------------------------------------------------

    def _moved(self, old: np.ndarray, new: np.ndarray) -> bool:
        w = max(1.0, float(old[2] - old[0]))
        c_old = (old[:2] + old[2:]) / 2
        c_new = (new[:2] + new[2:]) / 2
        shift = float(np.max(np.abs(c_new - c_old)))
        grow = abs(float(new[2] - new[0]) - w)
        return max(shift, grow) > self.cfg.still_px * w

    def update(self, camera_id: str, tracks: Sequence[tuple[int, np.ndarray]], timestamp: float
               ) -> list[tuple[P, bool]]:
        """Feed the tracked boxes of one frame; returns held decisions now released.

        Args:
            camera_id: the camera.
            tracks: ``(track_id, float (4,) x1, y1, x2, y2 pixels)`` of every face tracked in the frame.
            timestamp: the frame's monotonic time (s).

        Returns:
            ``(payload, static_suspect)`` for each released decision.
        """
        if not self.cfg.enabled:
            return []
        out: list[tuple[P, bool]] = []
        regions = self._regions.get(camera_id, [])
        for track_id, raw in tracks:
            box = np.asarray(raw, np.float64).reshape(4)
            key = (camera_id, track_id)
            st = self._still.get(key)
            if st is None or self._moved(st.box, box):
                self._still[key] = _Still(box.copy(), timestamp, timestamp)
                held = self._held.pop(key, None) if st is not None else None
                if held is not None:
                    out.append(self._release(camera_id, held, timestamp, static=False))
            for r in regions:
                if iou(r.box, box) > 0:
                    r.last_seen = timestamp
        for key in [k for k in self._held if k[0] == camera_id]:
            st = self._still.get(key)
            if st is not None and timestamp - st.since >= self.cfg.still_seconds:
                out.append(self._release(camera_id, self._held.pop(key), timestamp, static=True))
        self._regions[camera_id] = [r for r in self._regions.get(camera_id, [])
                                    if timestamp - r.last_seen <= self.cfg.release_s]
        return out

    # -- decisions ------------------------------------------------------------------------------

    def submit(self, camera_id: str, track_id: int, case: str, box: np.ndarray, timestamp: float,
               payload: P) -> list[tuple[P, bool]]:
        """A match decision fired; returns what to emit now (possibly nothing: held or suppressed)."""
        if not self.cfg.enabled:
            return [(payload, False)]
        b = np.asarray(box, np.float64).reshape(4)
        for r in self._regions.get(camera_id, []):
            if r.case == case and iou(r.box, b) >= self.cfg.region_iou:
                r.last_seen = timestamp
                if r.suppressing:
                    return []
                # the same case again from where it was alerted before: the poster, not the person
                r.suppressing = True
                logger.info("static face: camera %s case %s re-triggered from the same region; "
                            "suppressed until it leaves", camera_id, case)
                return [(payload, True)]
        key = (camera_id, track_id)
        st = self._still.get(key)
        if st is not None and timestamp - st.since >= self.cfg.still_seconds:
            return [self._release(camera_id, _Held(payload, case, b, timestamp), timestamp, static=True)]
        if key in self._held:  # one held decision per track: keep the first, it already waits
            return []
        self._held[key] = _Held(payload, case, b, timestamp)
        return []

    def end_track(self, camera_id: str, track_id: int) -> list[tuple[P, bool]]:
        """A track closed: its held decision is released as a normal event (it may have been a person)."""
        key = (camera_id, track_id)
        self._still.pop(key, None)
        held = self._held.pop(key, None)
        return [self._release(camera_id, held, held.submitted, static=False)] if held is not None else []

    def end_camera(self, camera_id: str) -> list[tuple[P, bool]]:
        """End of stream: release the camera's held decisions and forget its regions."""
        out: list[tuple[P, bool]] = []
        for key in [k for k in self._still if k[0] == camera_id]:
            out += self.end_track(*key)
        for key in [k for k in self._held if k[0] == camera_id]:
            out += self.end_track(*key)
        self._regions.pop(camera_id, None)
        return out

    def _release(self, camera_id: str, held: _Held[P], now: float, *, static: bool) -> tuple[P, bool]:
        regions = self._regions.setdefault(camera_id, [])
        regions.append(_Region(held.case, held.box.copy(), now, suppressing=static))
        if static:
            logger.info("static face: camera %s case %s did not move for %.0f s; one event, then suppressed",
                        camera_id, held.case, self.cfg.still_seconds)
        return held.payload, static

    @property
    def held(self) -> int:
        """Decisions waiting to be released."""
        return len(self._held)
