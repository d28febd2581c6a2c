"""Detection in parts of an image at native resolution: one crop (a tracked face's region) or tiles.

A 1080p frame letterboxed to 640x640 is shrunk 3x: a face 60 px tall becomes 20 px at the
detector input, where SCRFD starts to miss it. Running the same detector on a crop of the
full-resolution frame keeps (or enlarges) the face's pixels:

* :func:`detect_crop` - the region around one tracked face, resized to a small square input
  (e.g. 192x192), so the face fills a fixed share of the input whatever its size in the frame.
  Used by the edge's detection interval (``edge/detect_schedule.py``) between full passes.
* :func:`detect_verified` - borderline faces of the full pass (score between a low threshold and
  the configured one) confirmed by re-detection in their full-resolution crop.
* :func:`detect_tiled` - a small-face pass: overlapping tiles of the image, each letterboxed to
  the detector input, merged with the full-image pass by NMS. Used by ``eval detect
  --small-faces`` and, budgeted, by the detection schedule.

Coordinates are pixels of the input image (x right, y down); boxes ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import numpy as np

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


def detect_verified(detector: FaceDetector, image_bgr: np.ndarray, low_threshold: float, roi_input: int = 192,
                    roi_scale: float = 2.0) -> list[Detection]:
    """Full-image detection that also keeps borderline faces confirmed in a full-resolution crop.

    Faces scoring at or above ``detection.score_threshold`` are kept as they are. Each face scoring in
    ``[low_threshold, score_threshold)`` is re-detected in a square crop around it (side ``roi_scale`` times
    its box, at a ``roi_input`` square input: the face at native pixels, larger than in the letterbox); it
    is kept, as the crop measured it, when the crop finds a face overlapping it (IoU >= 0.4) that reaches
    ``score_threshold``. Small and blurred faces that the 640 letterbox scores low are confirmed; most
    false positives are not.

    Args:
        detector: a loaded detector.
        image_bgr: uint8 (H, W, 3) BGR.
        low_threshold: lowest score sent to verification (< ``detection.score_threshold``).
        roi_input: square detector input of a verification crop (multiple of 32).
        roi_scale: crop side over the face box's larger side.

    Returns:
        Detections in image pixels, largest first, at most ``detection.max_faces``.
    """
    threshold = detector.cfg.score_threshold
    found = detector.detect(image_bgr, score_threshold=min(low_threshold, threshold))
    kept = [d for d in found if d.score >= threshold]
    for cand in (d for d in found if d.score < threshold):
        region = square_region(cand.bbox, roi_scale, image_bgr.shape)
        dets = [d for d in detect_crop(detector, image_bgr, region, roi_input) if d.score >= threshold]
        if not dets:
            continue
        ious = iou_matrix(cand.bbox[None], np.stack([d.bbox for d in dets]))[0]
        if ious.max() >= 0.4:
            kept.append(dets[int(ious.argmax())])
    return merge_detections([kept], detector.cfg.nms_threshold, detector.cfg.max_faces)
