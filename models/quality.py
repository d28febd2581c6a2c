"""Face quality: one score from detector confidence, size, sharpness and pose.

Each term is mapped to [0, 1] and the score is their geometric mean, so one bad term (a
profile face, a blurred crop) pulls the score down however good the others are. Gates in
:class:`~edge.config.QualityConfig` decide whether a face is worth embedding.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from namus_edge.core.config import QualityConfig
from namus_edge.models.face import Detection, QualityReport


def sharpness(aligned_bgr: np.ndarray) -> float:
    """Variance of the Laplacian of an aligned uint8 (112, 112, 3) BGR crop (higher = sharper)."""
    grey = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float]:
    """Approximate (yaw, roll) in degrees from five detector landmarks.

    Roll is the angle of the eye line. Yaw comes from the nose tip's horizontal offset from
    the eye/mouth midline after removing roll, relative to half the inter-ocular distance:
    0 for a frontal face, about +-90 when the nose reaches the outline (``asin`` of the
    clipped ratio). Positive yaw: nose towards image right. A coarse estimate, good enough
    to gate profiles.

    Args:
        landmarks: float (5, 2) image pixels, detector order.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    le, re, nose, lm_, rm = lm
    dx, dy = re - le
    roll = math.degrees(math.atan2(dy, dx))
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    pts = (lm - lm.mean(0)) @ rot.T
    le, re, nose, lm_, rm = pts
    half_iod = max(abs(re[0] - le[0]) / 2, 1e-6)
    mid = (le[0] + re[0] + lm_[0] + rm[0]) / 4
    ratio = float(np.clip((nose[0] - mid) / half_iod, -1.0, 1.0))
    return math.degrees(math.asin(ratio)), roll


def assess(det: Detection, aligned_bgr: np.ndarray, cfg: QualityConfig) -> QualityReport:
    """Score one face and check the gates.

    Args:
        det: the detection (box and landmarks in image pixels).
        aligned_bgr: uint8 (112, 112, 3) BGR ArcFace-aligned crop of the same face.
        cfg: thresholds and saturation points.
    """
    face_px = math.sqrt(det.area)
    sharp = sharpness(aligned_bgr)
    yaw, roll = pose_from_landmarks(det.landmarks)
    terms = (
        max(det.score, 1e-3),
        min(1.0, max(face_px / cfg.good_face_px, 1e-3)),
        min(1.0, max(sharp / cfg.good_sharpness, 1e-3)),
        max(1e-3, math.cos(math.radians(min(abs(yaw), 89.0)))),
    )
    score = float(math.exp(sum(math.log(t) for t in terms) / len(terms)))
    reasons = []
    if det.area < cfg.min_face_area:
        reasons.append("too_small")
    if det.score < cfg.min_det_score:
        reasons.append("low_confidence")
    if sharp < cfg.min_sharpness:
        reasons.append("blurry")
    if abs(yaw) > cfg.max_yaw_deg:
        reasons.append("yaw")
    if abs(roll) > cfg.max_roll_deg:
        reasons.append("roll")
    if score < cfg.min_quality:
        reasons.append("low_quality")
    return QualityReport(score=score, det_score=det.score, face_px=face_px, sharpness=sharp, yaw_deg=yaw,
                         roll_deg=roll, passed=not reasons, reasons=tuple(reasons))
