"""Where a tracked face will be: a constant-velocity model of its box and landmarks, and new-motion checks.

Used by :mod:`edge.detect_schedule` between full detector passes: the predicted box places
the crop a face is re-detected in, or (with many faces) stands in for the detection itself.
Pure NumPy/OpenCV, no model.

Coordinates are frame pixels (x right, y down); boxes ``x1, y1, x2, y2``; times monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from namus_edge.models.face import Detection

#: Width of the grey thumbnail the new-motion check compares (pixels).
MOTION_WIDTH = 160
#: Grey-level change (0-255, after a 5x5 blur) that counts as motion.
MOTION_LEVEL = 25


@dataclass
class _State:
    points: np.ndarray  # float64 (14, 2): 2 box corners + 5 landmarks
    velocity: np.ndarray  # float64 (14, 2) pixels per second
    timestamp: float
    score: float


def _points(det: Detection) -> np.ndarray:
    return np.concatenate([np.asarray(det.bbox, np.float64).reshape(2, 2),
                           np.asarray(det.landmarks, np.float64).reshape(5, 2)])


class MotionModel:
    """Constant-velocity prediction of one camera's tracked faces (box corners and landmarks).

    Velocities are the last displacement over its time, smoothed (``smoothing`` of the new
    estimate, the rest from the previous one) so one jittery detection does not throw the
    prediction far.

    Args:
        smoothing: weight of the newest velocity estimate in [0, 1].
    """

    def __init__(self, smoothing: float = 0.6) -> None:
        self.smoothing = smoothing
        self._tracks: dict[int, _State] = {}

    def __contains__(self, track_id: int) -> bool:
        return track_id in self._tracks

    def update(self, track_id: int, det: Detection, timestamp: float) -> None:
        """Record a measured (detected) position of ``track_id`` at ``timestamp``."""
        pts = _points(det)
        st = self._tracks.get(track_id)
        if st is None:
            self._tracks[track_id] = _State(pts, np.zeros_like(pts), timestamp, det.score)
            return
        dt = timestamp - st.timestamp
        if dt > 0:
            v = (pts - st.points) / dt
            st.velocity = self.smoothing * v + (1 - self.smoothing) * st.velocity
        st.points, st.timestamp, st.score = pts, timestamp, det.score

    def predict(self, track_id: int, timestamp: float) -> Detection:
        """The predicted detection of ``track_id`` at ``timestamp`` (score = the last measured one).

        Raises:
            KeyError: the track was never measured.
        """
        st = self._tracks[track_id]
        pts = st.points + st.velocity * max(0.0, timestamp - st.timestamp)
        x1, y1, x2, y2 = pts[0, 0], pts[0, 1], pts[1, 0], pts[1, 1]
        bbox = np.asarray([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], np.float32)
        return Detection(bbox, pts[2:].astype(np.float32), st.score)

    def rename(self, old_id: int, new_id: int) -> None:
        """``old_id`` continues as ``new_id`` (a re-attached track): its state replaces ``new_id``'s.

        The continued track's last motion is from before the occlusion and its box jumped on
        re-attachment; keeping that velocity would throw the prediction across the frame.
        """
        st = self._tracks.pop(old_id, None)
        if st is None:
            self._tracks.pop(new_id, None)
        else:
            self._tracks[new_id] = st

    def retain(self, track_ids: set[int]) -> None:
        """Forget every track not in ``track_ids`` (closed tracks)."""
        for tid in [t for t in self._tracks if t not in track_ids]:
            del self._tracks[tid]


def motion_thumbnail(image_bgr: np.ndarray) -> np.ndarray:
    """Blurred grey thumbnail MOTION_WIDTH wide of a uint8 (H, W, 3) BGR frame: uint8 (h, MOTION_WIDTH)."""
    h, w = image_bgr.shape[:2]
    small = cv2.resize(image_bgr, (MOTION_WIDTH, max(1, round(h * MOTION_WIDTH / w))), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)


def new_motion(previous: np.ndarray, current: np.ndarray, frame_shape: tuple[int, ...],
               ignore: list[np.ndarray], grow: float) -> float:
    """Share of the frame, outside the ``ignore`` boxes, whose grey level changed by >= MOTION_LEVEL.

    Args:
        previous: thumbnail of the previous frame (:func:`motion_thumbnail`).
        current: thumbnail of this frame, same shape.
        frame_shape: the full frame's shape (H, W, ...), to map boxes onto the thumbnail.
        ignore: float (4,) boxes in frame pixels (live tracks: their own motion is expected).
        grow: each ignored box is scaled by this about its centre.

    Returns:
        Fraction in [0, 1] of the thumbnail's pixels outside the boxes that changed.
    """
    if previous.shape != current.shape:
        return 1.0
    changed = cv2.absdiff(previous, current) >= MOTION_LEVEL
    keep = np.ones(changed.shape, bool)
    sy, sx = current.shape[0] / frame_shape[0], current.shape[1] / frame_shape[1]
    for b in ignore:
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        hw, hh = (b[2] - b[0]) * grow / 2, (b[3] - b[1]) * grow / 2
        x1, x2 = max(0, int((cx - hw) * sx)), int(np.ceil((cx + hw) * sx))
        y1, y2 = max(0, int((cy - hh) * sy)), int(np.ceil((cy + hh) * sy))
        keep[y1:y2, x1:x2] = False
    n = int(keep.sum())
    return float((changed & keep).sum()) / n if n else 0.0
