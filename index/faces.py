"""The face of a case photo: which detected face is the person, plus an operator thumbnail.

Rule when a photo holds several faces (flyers, family photos, group pictures): take the
largest face; every other face whose box area is at least ``center_margin`` of the largest
(default 0.8) is a rival, and among the rivals the face nearest the photo centre wins. A
photo with rivals is recorded as *ambiguous* so operators can review which face was chosen.
Faces smaller than ``min_face_px`` (box side) are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from namus_edge.models.face import Detection

THUMB_PAD = 0.2


@dataclass(frozen=True)
class FaceChoice:
    """The chosen face of a photo.

    Attributes:
        index: position of the chosen face in the detection list.
        ambiguous: another face of similar size competed for it.
        rivals: how many faces were within the size margin (including the chosen one).
    """

    index: int
    ambiguous: bool
    rivals: int


def choose_face(dets: list[Detection], image_shape: tuple[int, ...], *, center_margin: float = 0.8,
                min_face_px: float = 20.0) -> FaceChoice | None:
    """Pick the case's face among a photo's detections (see the module docstring).

    Args:
        dets: detections in image pixels.
        image_shape: (H, W, ...) of the photo.
        center_margin: rivals are faces with area >= this fraction of the largest.
        min_face_px: faces whose shorter box side is below this are ignored.

    Returns:
        The choice, or None when no face is large enough.
    """
    usable = [(i, d) for i, d in enumerate(dets) if min(d.width, d.height) >= min_face_px]
    if not usable:
        return None
    largest = max(d.area for _, d in usable)
    rivals = [(i, d) for i, d in usable if d.area >= center_margin * largest]
    h, w = image_shape[:2]
    cx, cy = w / 2, h / 2

    def off_centre(d: Detection) -> float:
        fx, fy = (d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2
        return math.hypot(fx - cx, fy - cy)

    idx, _ = min(rivals, key=lambda item: off_centre(item[1]))
    return FaceChoice(index=idx, ambiguous=len(rivals) > 1, rivals=len(rivals))


def face_thumbnail(image_bgr: np.ndarray, bbox: np.ndarray, size: int = 160, quality: int = 90) -> bytes:
    """JPEG of the face box grown by 20% on every side (clipped), longer side ``size`` pixels.

    Args:
        image_bgr: uint8 (H, W, 3) BGR photo.
        bbox: (4,) x1, y1, x2, y2 in photo pixels.
        size: longer side of the thumbnail in pixels (smaller crops are not upscaled).
        quality: JPEG quality.
    """
    h, w = image_bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    px, py = (x2 - x1) * THUMB_PAD, (y2 - y1) * THUMB_PAD
    xa, ya = max(0, int(x1 - px)), max(0, int(y1 - py))
    xb, yb = min(w, math.ceil(x2 + px)), min(h, math.ceil(y2 + py))
    crop = image_bgr[ya:yb, xa:xb]
    scale = size / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the face thumbnail")
    return buf.tobytes()
