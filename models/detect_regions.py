"""Detection in parts of an image at native resolution: one crop (a tracked face's region) or tiles.

A 1080p frame letterboxed to 640x640 is shrunk 3x: a face 60 px tall becomes 20 px at the
detector input, where SCRFD starts to miss it. Running the same detector on a crop of the
full-resolution frame keeps (or enlarges) the face's pixels:

* :func:`detect_crop` - the region around one tracked face, resized to a small square input
  (e.g. 192x192), so the face fills a fixed share of the input whatever its size in the frame.
  Used by the edge's detection interval (``edge/detect_schedule.py``) between full passes.
* :func:`detect_verified` - borderline faces of the full pass (score between a low threshold and
  the configured one) confirmed by a verifier detector (``models.verifier``, det_2.5g by default) in
  their full-resolution crop, full-pass and crop scores combined (:class:`VerifyRule`).
* :func:`detect_tiled` - a small-face pass: overlapping tiles of the image, each letterboxed to
  the detector input, merged with the full-image pass by NMS. Used by ``eval detect
  --small-faces`` and, budgeted, by the detection schedule.

Coordinates are pixels of the input image (x right, y down); boxes ``x1, y1, x2, y2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from namus_edge.core.config import DetectionConfig
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.detector import FaceDetector, nms
from namus_edge.models.face import Detection


def square_region(
    box: np.ndarray, scale: float, shape: tuple[int, ...], min_side: int = 32
) -> tuple[int, int, int, int]:
    """The square of side ``scale * max(box w, box h)`` centred on ``box``, shifted/clipped into the image.

    Args:
        box: float (4,) ``x1, y1, x2, y2`` pixels.
        scale: region side over the box's larger side (>= 1).
        shape: the image shape (H, W, ...).
        min_side: smallest region side in pixels.

    Returns:
        Integer ``(x1, y1, x2, y2)`` inside the image, non-empty.
    """
    h, w = int(shape[0]), int(shape[1])
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = max(float(min_side), scale * max(float(box[2] - box[0]), float(box[3] - box[1])))
    side = min(side, float(max(h, w)))
    x1 = round(min(max(cx - side / 2, 0.0), max(w - side, 0.0)))
    y1 = round(min(max(cy - side / 2, 0.0), max(h - side, 0.0)))
    x2, y2 = min(w, round(x1 + side)), min(h, round(y1 + side))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _shift(det: Detection, dx: float, dy: float) -> Detection:
    off = np.asarray([dx, dy], np.float32)
    return Detection((det.bbox + np.tile(off, 2)).astype(np.float32), (det.landmarks + off).astype(np.float32),
                     det.score)


def detect_crop(detector: FaceDetector, image_bgr: np.ndarray, region: tuple[int, int, int, int],
                input_size: int, score_threshold: float | None = None) -> list[Detection]:
    """Detect faces inside ``region`` of ``image_bgr`` at a square input of ``input_size``.

    Args:
        detector: a loaded detector (its model must accept the input size: SCRFD and YuNet dynamic do).
        image_bgr: uint8 (H, W, 3) BGR full-resolution frame.
        region: integer ``x1, y1, x2, y2`` (see :func:`square_region`).
        input_size: side of the square detector input, a multiple of 32.
        score_threshold: override of ``detection.score_threshold``.

    Returns:
        Detections in image pixels (boxes clipped to the region), largest first.
    """
    x1, y1, x2, y2 = region
    crop = image_bgr[y1:y2, x1:x2]
    if crop.shape[0] < 2 or crop.shape[1] < 2:
        return []
    dets = detector.detect(crop, input_size=(input_size, input_size), score_threshold=score_threshold)
    return [_shift(d, float(x1), float(y1)) for d in dets]


def tile_regions(
    shape: tuple[int, ...], grid: tuple[int, int], overlap: float = 0.15
) -> list[tuple[int, int, int, int]]:
    """``cols x rows`` overlapping tiles covering an image of ``shape`` (H, W, ...).

    Each tile is ``1/cols`` (``1/rows``) of the image plus ``overlap`` of that on each inner side,
    so a face cut by one tile edge is whole in its neighbour when it is smaller than the overlap.
    """
    h, w = int(shape[0]), int(shape[1])
    cols, rows = grid
    tw, th = w / cols, h / rows
    out = []
    for r in range(rows):
        for c in range(cols):
            x1 = max(0, int(c * tw - overlap * tw))
            y1 = max(0, int(r * th - overlap * th))
            x2 = min(w, int((c + 1) * tw + overlap * tw))
            y2 = min(h, int((r + 1) * th + overlap * th))
            out.append((x1, y1, x2, y2))
    return out


def merge_detections(groups: list[list[Detection]], iou_threshold: float, max_faces: int) -> list[Detection]:
    """Union of several detection lists with greedy NMS (higher score wins); largest first, at most ``max_faces``."""
    flat = [d for g in groups for d in g]
    if not flat:
        return []
    boxes = np.stack([d.bbox for d in flat]).astype(np.float32)
    scores = np.asarray([d.score for d in flat], np.float32)
    keep = [flat[i] for i in nms(boxes, scores, iou_threshold)]
    keep.sort(key=lambda d: -d.area)
    return keep[:max_faces]


def detect_tiled(detector: FaceDetector, image_bgr: np.ndarray, grid: tuple[int, int] = (2, 2),
                 overlap: float = 0.15, upscale_to: int | None = None) -> list[Detection]:
    """Full-image detection plus a tiled pass, merged (the small-face path).

    Args:
        detector: a loaded detector.
        image_bgr: uint8 (H, W, 3) BGR.
        grid: ``(cols, rows)`` tiles; ``(1, 1)`` with ``upscale_to`` is a plain upscaled second pass.
        overlap: tile overlap (see :func:`tile_regions`).
        upscale_to: when set, each tile is detected at a square input of this side (multiple of 32)
            instead of the configured input size.

    Returns:
        Detections in image pixels, largest first, at most ``detection.max_faces``.
    """
    groups = [detector.detect(image_bgr)]
    size = (upscale_to, upscale_to) if upscale_to else None
    for x1, y1, x2, y2 in tile_regions(image_bgr.shape, grid, overlap):
        crop = image_bgr[y1:y2, x1:x2]
        dets = detector.detect(crop, input_size=size)
        groups.append([_shift(d, float(x1), float(y1)) for d in dets])
    return merge_detections(groups, detector.cfg.nms_threshold, detector.cfg.max_faces)


#: Lowest verifier score read in a verification crop (below it the crop "found nothing").
CROP_MIN_SCORE = 0.05
#: A crop detection speaks for a candidate when it overlaps it by at least this IoU.
VERIFY_MIN_IOU = 0.4


@dataclass(frozen=True)
class VerifyRule:
    """How borderline faces of a full pass are confirmed in full-resolution crops (``detection.verify_*``).

    A face the full pass scores ``f`` in ``[low, score_threshold)`` is re-detected by the verifier in a
    square crop around it (side ``scale`` times its box, at a ``input_size`` square input). The crop score
    ``c`` is the verifier's best score among crop detections overlapping the face by IoU >= 0.4 (0 when none;
    with ``flip``, the mean over the crop and its mirror image). The face is kept, with the crop's box and
    landmarks and the score ``full_weight * f + (1 - full_weight) * c``, when that reaches ``threshold``.
    """

    low: float
    input_size: int = 192
    scale: float = 3.0
    full_weight: float = 0.25
    threshold: float = 0.375
    flip: bool = False

    @classmethod
    def from_config(cls, cfg: DetectionConfig, low: float | None = None) -> VerifyRule:
        """The rule of a ``detection`` section; ``low`` overrides ``verify_low`` (one of them must be set)."""
        value = cfg.verify_low if low is None else low
        if value is None:
            raise ValueError("detection.verify_low is not set: no verification rule")
        return cls(value, cfg.roi_input, cfg.verify_scale, cfg.verify_full_weight, cfg.verify_threshold,
                   cfg.verify_flip)


def mirror_detection(det: Detection, width: int) -> Detection:
    """A detection on a horizontally mirrored image of ``width`` mapped back (landmark left/right swapped)."""
    b = det.bbox
    bbox = np.asarray([width - b[2], b[1], width - b[0], b[3]], np.float32)
    lm = det.landmarks.copy()
    lm[:, 0] = width - lm[:, 0]
    lm = lm[[1, 0, 2, 4, 3]]  # eyes and mouth corners change sides
    return Detection(bbox, lm.astype(np.float32), det.score)


def crop_evidence(verifier: FaceDetector, image_bgr: np.ndarray, box: np.ndarray, rule: VerifyRule
                  ) -> tuple[float, Detection | None]:
    """The verifier's score for the face at ``box`` in its full-resolution crop, and the crop's detection of it.

    Args:
        verifier: the detector scoring crops (``models.verifier``).
        image_bgr: uint8 (H, W, 3) BGR full-resolution image.
        box: float (4,) ``x1, y1, x2, y2`` of the candidate face, image pixels.
        rule: crop size, input and flip.

    Returns:
        ``(score in [0, 1], detection in image pixels or None)``: 0 and None when no crop detection at
        score >= :data:`CROP_MIN_SCORE` overlaps ``box`` by IoU >= :data:`VERIFY_MIN_IOU`.
    """
    x1, y1, x2, y2 = square_region(box, rule.scale, image_bgr.shape)
    crop = image_bgr[y1:y2, x1:x2]
    if crop.shape[0] < 2 or crop.shape[1] < 2:
        return 0.0, None
    views = [crop] + ([np.ascontiguousarray(crop[:, ::-1])] if rule.flip else [])
    scores: list[float] = []
    best: Detection | None = None
    for k, view in enumerate(views):
        dets = verifier.detect(view, input_size=(rule.input_size, rule.input_size), score_threshold=CROP_MIN_SCORE)
        if k == 1:
            dets = [mirror_detection(d, view.shape[1]) for d in dets]
        dets = [_shift(d, float(x1), float(y1)) for d in dets]
        match = _best_overlapping(box, dets)
        scores.append(match.score if match is not None else 0.0)
        if best is None:
            best = match
    return float(np.mean(scores)), best


def _best_overlapping(box: np.ndarray, dets: list[Detection]) -> Detection | None:
    if not dets:
        return None
    ious = iou_matrix(box[None], np.stack([d.bbox for d in dets]))[0]
    ok = np.flatnonzero(ious >= VERIFY_MIN_IOU)
    if ok.size == 0:
        return None
    return dets[int(ok[int(np.argmax([dets[i].score for i in ok]))])]


def detect_verified(detector: FaceDetector, image_bgr: np.ndarray, rule: VerifyRule,
                    verifier: FaceDetector | None = None) -> list[Detection]:
    """Full-image detection that also keeps borderline faces confirmed in full-resolution crops.

    Faces scoring at or above ``detection.score_threshold`` are kept as they are; faces scoring in
    ``[rule.low, score_threshold)`` are kept when their combined evidence reaches ``rule.threshold``
    (see :class:`VerifyRule`), with the crop's box, landmarks and the combined score. Small and blurred faces
    the 640 letterbox scores low are confirmed at native pixels; most false positives are not.

    Args:
        detector: the full-frame detector.
        image_bgr: uint8 (H, W, 3) BGR.
        rule: the verification rule (:meth:`VerifyRule.from_config`).
        verifier: the crop detector (``models.verifier``); None = ``detector``.

    Returns:
        Detections in image pixels, largest first, at most ``detection.max_faces``.
    """
    threshold = detector.cfg.score_threshold
    found = detector.detect(image_bgr, score_threshold=min(rule.low, threshold))
    kept = [d for d in found if d.score >= threshold]
    for cand in (d for d in found if d.score < threshold):
        crop_score, det = crop_evidence(verifier or detector, image_bgr, cand.bbox, rule)
        combined = rule.full_weight * cand.score + (1.0 - rule.full_weight) * crop_score
        if det is not None and combined >= rule.threshold:
            kept.append(Detection(det.bbox, det.landmarks, float(combined)))
    return merge_detections([kept], detector.cfg.nms_threshold, detector.cfg.max_faces)
