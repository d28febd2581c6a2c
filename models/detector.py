"""Face detectors: SCRFD (InsightFace det_500m / det_2.5g) and YuNet, boxes plus 5 landmarks.

Both run on a letterboxed copy of the image: resized keeping the aspect ratio to fit the
detector input and placed at the top-left of a zero canvas; decoded coordinates are divided
by the resize scale. Decoding follows the contracts in ../shared/models/MODELS.md (sections
1a-1d) and is pinned by golden tests.

Coordinates are pixels of the input image (x right, y down); boxes ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from namus_edge.core.config import DetectionConfig
from namus_edge.core.errors import ModelError
from namus_edge.models.backends.base import Backend
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.face import Detection
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)

SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
YUNET_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Letterbox:
    """A resized image on a detector canvas.

    Attributes:
        canvas: uint8 (H_in, W_in, 3), same colour order as the input image.
        scale: resize factor applied to the original image (canvas px = image px * scale).
    """

    canvas: np.ndarray
    scale: float


def letterbox(image: np.ndarray, size: tuple[int, int]) -> Letterbox:
    """Resize ``image`` to fit ``size`` keeping its aspect ratio; pad right/bottom with zeros.

    Follows InsightFace's SCRFD preprocessing exactly (the reference behaviour): the side that
    limits is set to the input size, the other is truncated, the resize is bilinear, and the
    scale is ``new_height / height``. Matching it makes our detections (and so the aligned
    faces and embeddings) identical to InsightFace's on the same frames (bench/pipeline.py).

    Args:
        image: uint8 (H, W, 3) in any colour order.
        size: detector input (width, height).
    """
    w_in, h_in = size
    h, w = image.shape[:2]
    if h / w > h_in / w_in:
        nh, nw = h_in, max(1, int(h_in / (h / w)))
    else:
        nw, nh = w_in, max(1, int(w_in * (h / w)))
    canvas = np.zeros((h_in, w_in, 3), dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh))
    return Letterbox(canvas, nh / h)


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """Anchor centres of a feature map: float32 (h*w*num_anchors, 2) of (x, y) input pixels.

    Row-major over cells, each centre repeated ``num_anchors`` times consecutively.
    """
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    if num_anchors > 1:
        centers = np.repeat(centers, num_anchors, axis=0)
    return centers


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes from anchor points and (left, top, right, bottom) distances: (N, 4) xyxy."""
    return np.stack(
        [
            points[:, 0] - distance[:, 0],
            points[:, 1] - distance[:, 1],
            points[:, 0] + distance[:, 2],
            points[:, 1] + distance[:, 3],
        ],
        axis=-1,
    )


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Landmarks from anchor points and offsets: (N, 10) -> (N, 5, 2)."""
    out = distance.reshape(-1, 5, 2) + points[:, None, :]
    return out.astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) against many (N, 4); returns float (N,)."""
    return iou_matrix(box[None], boxes)[0]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: float (N, 4) xyxy.
        scores: float (N,).
        iou_threshold: a box overlapping a kept, higher-scoring box by more than this is dropped.

    Returns:
        int64 indices of kept boxes, by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i], boxes[order[1:]])
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class FaceDetector:
    """SCRFD or YuNet face detector on any :class:`Backend`.

    Args:
        backend: the loaded model.
        spec: its registry entry (family and input contract).
        cfg: input size, thresholds, NMS, max faces.
    """

    def __init__(self, backend: Backend, spec: ModelSpec, cfg: DetectionConfig) -> None:
        if spec.role != "detector":
            raise ModelError(f"{spec.name} is a {spec.role}, not a detector")
        self.backend = backend
        self.spec = spec
        self.cfg = cfg
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}
        self.input_size = self._effective_size(cfg.input_size)
        self._input_name = backend.inputs[0].name
        expected_outputs = 9 if spec.family == "scrfd" else 12
        if len(backend.outputs) != expected_outputs:
            raise ModelError(
                f"{spec.filename}: a {spec.family} detector has {expected_outputs} outputs, "
                f"this graph has {len(backend.outputs)}"
            )

    def _effective_size(self, size: tuple[int, int]) -> tuple[int, int]:
        fixed = self.spec.contract.size
        if fixed is not None and tuple(size) != fixed:
            logger.warning("%s has a fixed %dx%d input; detection.input_size %dx%d is ignored",
                           self.spec.name, fixed[0], fixed[1], size[0], size[1])
            return fixed
        return (int(size[0]), int(size[1]))

    def warmup(self, runs: int) -> None:
        """Run the model on zeros at the configured input size."""
        w, h = self.input_size
        self.backend.warmup({self._input_name: (1, 3, h, w)}, runs)

    # -- preprocessing -----------------------------------------------------------------------

    def _blob(self, canvas_bgr: np.ndarray) -> np.ndarray:
        """float32 (1, 3, H, W) input; OpenCV's blobFromImage (one fused pass) when std is uniform."""
        c = self.spec.contract
        if len(set(c.std)) == 1:
            # blobFromImage subtracts the mean given in the *input's* (BGR) order, then swaps
            mean_bgr = tuple(reversed(c.mean)) if c.color == "RGB" else c.mean
            return cv2.dnn.blobFromImage(canvas_bgr, 1.0 / c.std[0], (canvas_bgr.shape[1], canvas_bgr.shape[0]),
                                         mean_bgr, swapRB=c.color == "RGB")
        img = canvas_bgr[:, :, ::-1] if c.color == "RGB" else canvas_bgr
        blob = (img.astype(np.float32) - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])

    # -- public API ---------------------------------------------------------------------------

    def detect(
        self,
        image_bgr: np.ndarray,
        *,
        input_size: tuple[int, int] | None = None,
        score_threshold: float | None = None,
    ) -> list[Detection]:
        """Detect faces.

        Args:
            image_bgr: uint8 (H, W, 3) BGR.
            input_size: override of the detector input (width, height), multiples of 32.
            score_threshold: override of ``detection.score_threshold``.

        Returns:
            Detections sorted by decreasing box area, at most ``detection.max_faces``.
        """
        size = self._effective_size(input_size) if input_size else self.input_size
        lb = letterbox(image_bgr, size)
        outputs = self.backend.run({self._input_name: self._blob(lb.canvas)})
        thr = self.cfg.score_threshold if score_threshold is None else score_threshold
        if self.spec.family == "scrfd":
            boxes, kps, scores = self.decode_scrfd(outputs, size, thr)
        else:
            boxes, kps, scores = self.decode_yunet(outputs, size, thr, self.spec.filename)
        if scores.size == 0:
            return []
        keep = nms(boxes, scores, self.cfg.nms_threshold)
        boxes, kps, scores = boxes[keep] / lb.scale, kps[keep] / lb.scale, scores[keep]
        h, w = image_bgr.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = np.argsort(-areas, kind="stable")[: self.cfg.max_faces]
        return [
            Detection(boxes[i].astype(np.float32), kps[i].astype(np.float32), float(scores[i]))
            for i in order
            if areas[i] > 0
        ]

    def detect_photo(self, image_bgr: np.ndarray, pad_fraction: float = 0.3) -> tuple[list[Detection], bool]:
        """Detect faces in a still photo, retrying on a padded canvas when none is found.

        SCRFD misses faces that fill more than ~40% of the frame (tight portraits, face crops):
        the retry places the photo inside a black border of ``pad_fraction`` of its larger side
        on every side, tries the configured input size and 320x320 at
        ``detection.pad_retry_score``, and maps the results back to photo coordinates.

        Args:
            image_bgr: uint8 (H, W, 3) BGR.
            pad_fraction: border on each side, as a fraction of max(H, W).

        Returns:
            (detections in photo pixels, whether the padded retry found them).
        """
        found = self.detect(image_bgr)
        if found or not self.cfg.pad_retry:
            return found, False
        h, w = image_bgr.shape[:2]
        pad = round(max(h, w) * pad_fraction)
        canvas = cv2.copyMakeBorder(image_bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        sizes = [self.input_size] + ([] if self.spec.contract.size else [(320, 320)])
        for size in sizes:
            dets = self.detect(canvas, input_size=size, score_threshold=self.cfg.pad_retry_score)
            if dets:
                shift = np.float32(pad)
                out = []
                for d in dets:
                    bbox = d.bbox - shift
                    bbox[[0, 2]] = bbox[[0, 2]].clip(0, w)
                    bbox[[1, 3]] = bbox[[1, 3]].clip(0, h)
                    out.append(Detection(bbox.astype(np.float32), (d.landmarks - shift).astype(np.float32), d.score))
                return out, True
        return [], False

    # -- decoding (pure functions, golden-tested) ----------------------------------------------

    def _centers_for(self, h: int, w: int, stride: int, anchors: int) -> np.ndarray:
        key = (h, w, stride * 10 + anchors)
        if key not in self._centers:
            self._centers[key] = anchor_centers(h, w, stride, anchors)
        return self._centers[key]

    def decode_scrfd(
        self, outputs: list[np.ndarray], size: tuple[int, int], threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode SCRFD outputs (scores x3, box distances x3, landmark offsets x3, strides 8/16/32).

        Returns:
            boxes float32 (N, 4) xyxy, landmarks float32 (N, 5, 2), scores float32 (N,) in
            letterbox-canvas pixels, before NMS.
        """
        w_in, h_in = size
        all_boxes, all_kps, all_scores = [], [], []
        for idx, stride in enumerate(SCRFD_STRIDES):
            scores = outputs[idx].reshape(-1)
            dist = outputs[idx + 3].reshape(-1, 4) * stride
            kps = outputs[idx + 6].reshape(-1, 10) * stride
            fh, fw = h_in // stride, w_in // stride
            centers = self._centers_for(fh, fw, stride, SCRFD_ANCHORS)
            if centers.shape[0] != scores.shape[0]:
                raise ModelError(
                    f"{self.spec.filename}: stride {stride} has {scores.shape[0]} scores, expected "
                    f"{centers.shape[0]} for a {w_in}x{h_in} input"
                )
            mask = scores >= threshold
            if not mask.any():
                continue
            all_boxes.append(distance2bbox(centers[mask], dist[mask]))
            all_kps.append(distance2kps(centers[mask], kps[mask]))
            all_scores.append(scores[mask])
        return _concat(all_boxes, all_kps, all_scores)

    @staticmethod
    def decode_yunet(
        outputs: list[np.ndarray], size: tuple[int, int], threshold: float, name: str = "yunet"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode YuNet outputs (cls x3, obj x3, bbox x3, kps x3 for strides 8/16/32).

        score = sqrt(cls * obj); cell (col, row): cx = (col + b0) * s, cy = (row + b1) * s,
        w = exp(b2) * s, h = exp(b3) * s; landmark i = ((col + k[2i]) * s, (row + k[2i+1]) * s).

        Returns:
            boxes float32 (N, 4) xyxy, landmarks float32 (N, 5, 2), scores float32 (N,) in
            letterbox-canvas pixels, before NMS.
        """
        w_in, h_in = size
        all_boxes, all_kps, all_scores = [], [], []
        for idx, stride in enumerate(YUNET_STRIDES):
            cls = outputs[idx].reshape(-1)
            obj = outputs[idx + 3].reshape(-1)
            bbox = outputs[idx + 6].reshape(-1, 4)
            kps = outputs[idx + 9].reshape(-1, 10)
            fh, fw = h_in // stride, w_in // stride
            if cls.shape[0] != fh * fw:
                raise ModelError(f"{name}: stride {stride} has {cls.shape[0]} cells, expected {fh * fw}")
            scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            mask = scores >= threshold
            if not mask.any():
                continue
            cells = anchor_centers(fh, fw, 1, 1)[mask]  # (col, row)
            b = bbox[mask]
            cx = (cells[:, 0] + b[:, 0]) * stride
            cy = (cells[:, 1] + b[:, 1]) * stride
            bw = np.exp(b[:, 2]) * stride
            bh = np.exp(b[:, 3]) * stride
            all_boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1))
            k = kps[mask].reshape(-1, 5, 2)
            all_kps.append(((k + cells[:, None, :]) * stride).astype(np.float32))
            all_scores.append(scores[mask])
        return _concat(all_boxes, all_kps, all_scores)


def _concat(
    boxes: list[np.ndarray], kps: list[np.ndarray], scores: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(kps).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
    )
