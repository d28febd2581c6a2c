"""Parity of an exported model against the original ONNX on real face images.

The reference is always the registry ONNX run by onnxruntime on the CPU; the model under test
is any :class:`~models.backends.base.Backend` (a TensorRT engine via ``export check``, or a
prepared ONNX). Both run through the runtime's own model classes (``FaceDetector``,
``FaceEmbedder``, ``AgeEstimator``) on the same inputs, so the comparison covers what the
device actually computes:

* detector: same number of faces per image, and every reference face matched by a test face
  with IoU >= 0.95;
* embedder: cosine of the L2-normalised embeddings >= 0.999 (FP32), 0.995 (FP16), 0.98 (INT8)
  on aligned faces;
* age: expected age within 1 year.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from namus_edge.core.config import DetectionConfig
from namus_edge.core.errors import ModelError
from namus_edge.export.calibration import aligned_face
from namus_edge.models.age import AgeEstimator
from namus_edge.models.backends.base import Backend
from namus_edge.models.backends.engine_cache import Precision
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.detector import FaceDetector
from namus_edge.models.embedder import FaceEmbedder
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)

Op = Literal[">=", "<=", "=="]


@dataclass(frozen=True)
class Thresholds:
    """Pass limits of one precision: min cosine, min IoU of matched boxes, max age difference (years)."""

    cosine: float
    iou: float
    age_years: float


THRESHOLDS: dict[Precision, Thresholds] = {
    "fp32": Thresholds(cosine=0.999, iou=0.95, age_years=1.0),
    "fp16": Thresholds(cosine=0.995, iou=0.95, age_years=1.0),
    "int8": Thresholds(cosine=0.98, iou=0.95, age_years=1.0),
}


@dataclass(frozen=True)
class ParityRow:
    """One compared quantity: ``value op limit`` must hold."""

    model: str
    item: str
    metric: str
    value: float
    op: Op
    limit: float

    @property
    def ok(self) -> bool:
        """Whether the value is within the limit."""
        if self.op == ">=":
            return self.value >= self.limit
        if self.op == "<=":
            return self.value <= self.limit
        return self.value == self.limit


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows.

    Args:
        a: float (N, D).
        b: float (N, D).

    Returns:
        float64 (N,).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"row_cosine needs two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def match_boxes(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching by highest IoU.

    Args:
        ref: float (N, 4) xyxy reference boxes.
        test: float (M, 4) xyxy boxes under test.

    Returns:
        float64 (N,): IoU of each reference box with its matched test box (0 when unmatched).
    """
    ious = iou_matrix(ref, test)
    out = np.zeros(ious.shape[0])
    if ious.size == 0:
        return out
    work = ious.copy()
    for _ in range(min(work.shape)):
        i, j = np.unravel_index(int(np.argmax(work)), work.shape)
        if work[i, j] <= 0:
            break
        out[i] = ious[i, j]
        work[i, :] = -1
        work[:, j] = -1
    return out


def check_detector(
    spec: ModelSpec,
    ref: Backend,
    test: Backend,
    images: Sequence[tuple[str, np.ndarray]],
    size: tuple[int, int],
    limits: Thresholds,
) -> list[ParityRow]:
    """Detector parity: face count and matched-box IoU per image.

    Args:
        spec: detector registry entry.
        ref: reference backend (original ONNX, onnxruntime CPU).
        test: backend under test.
        images: (name, uint8 (H, W, 3) BGR photo) pairs.
        size: detector input (width, height) of the model under test.
        limits: pass limits.
    """
    cfg = DetectionConfig(input_size=size)
    ref_det, test_det = FaceDetector(ref, spec, cfg), FaceDetector(test, spec, cfg)
    rows = []
    for name, image in images:
        a, b = ref_det.detect(image), test_det.detect(image)
        rows.append(ParityRow(spec.name, name, "faces", float(len(b)), "==", float(len(a))))
        if a:
            ious = match_boxes(np.stack([d.bbox for d in a]), np.stack([d.bbox for d in b]) if b else np.zeros((0, 4)))
            rows.append(ParityRow(spec.name, name, "min IoU", float(ious.min()), ">=", limits.iou))
    return rows


def check_embedder(
    spec: ModelSpec, ref: Backend, test: Backend, faces: Sequence[tuple[str, np.ndarray]], limits: Thresholds
) -> list[ParityRow]:
    """Embedder parity: cosine of reference and test embeddings per aligned face.

    Args:
        spec: embedder registry entry.
        ref: reference backend.
        test: backend under test.
        faces: (name, uint8 (112, 112, 3) BGR aligned face) pairs.
        limits: pass limits.
    """
    crops = np.stack([f for _, f in faces])
    cos = row_cosine(FaceEmbedder(ref, spec).embed(crops), FaceEmbedder(test, spec).embed(crops))
    return [ParityRow(spec.name, n, "cosine", float(c), ">=", limits.cosine) for (n, _), c in zip(faces, cos,
                                                                                                  strict=True)]


def check_age(
    spec: ModelSpec, ref: Backend, test: Backend, chips: Sequence[tuple[str, np.ndarray]], limits: Thresholds
) -> list[ParityRow]:
    """Age parity: |reference age - test age| in years per 64x64 chip (no flip averaging).

    Args:
        spec: age model registry entry.
        ref: reference backend.
        test: backend under test.
        chips: (name, uint8 (64, 64, 3) BGR chip) pairs.
        limits: pass limits.
    """
    stack = np.stack([c for _, c in chips])
    a = AgeEstimator(ref, spec, flip=False).estimate(stack)
    b = AgeEstimator(test, spec, flip=False).estimate(stack)
    return [ParityRow(spec.name, n, "|age diff| y", float(abs(x - y)), "<=", limits.age_years)
            for (n, _), x, y in zip(chips, a, b, strict=True)]


def run_parity(
    spec: ModelSpec,
    ref: Backend,
    test: Backend,
    images: Sequence[tuple[str, np.ndarray]],
    precision: Precision,
    *,
    size: tuple[int, int] | None = None,
    detector: FaceDetector | None = None,
) -> list[ParityRow]:
    """Compare ``test`` against ``ref`` on real photos with the limits of ``precision``.

    Args:
        spec: registry entry of the model.
        ref: reference backend (registry ONNX, onnxruntime CPU).
        test: backend under test.
        images: (name, uint8 (H, W, 3) BGR photo) pairs.
        precision: precision of the model under test (selects :data:`THRESHOLDS`).
        size: detector input (width, height); detectors only.
        detector: a ``FaceDetector`` that finds the faces to align (embedders and age only).

    Raises:
        ModelError: missing ``size``/``detector``, or no face found in any image.
    """
    limits = THRESHOLDS[precision]
    if spec.role == "detector":
        if size is None:
            raise ModelError(f"{spec.name}: detector parity needs the input size")
        return check_detector(spec, ref, test, images, size, limits)
    if detector is None:
        raise ModelError(f"{spec.name}: parity needs a FaceDetector to align faces")
    faces = []
    for name, image in images:
        crop = aligned_face(image, spec, detector)
        if crop is None:
            logger.info("%s: no face, skipped", name)
            continue
        faces.append((name, crop))
    if not faces:
        raise ModelError(f"{spec.name}: no face found in any of the {len(images)} images")
    if spec.role == "embedder":
        return check_embedder(spec, ref, test, faces, limits)
    return check_age(spec, ref, test, faces, limits)


def format_table(rows: Sequence[ParityRow]) -> str:
    """Plain-text table of the rows with a pass/fail column and a summary line."""
    header = ("model", "item", "metric", "value", "limit", "result")
    body = [
        (r.model, r.item, r.metric, f"{r.value:.4f}" if r.metric != "faces" else f"{r.value:.0f}",
         f"{r.op} {r.limit:.4g}", "ok" if r.ok else "FAIL")
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(not r.ok for r in rows)
    lines.append(f"{len(rows)} checks, {failed} failed")
    return "\n".join(lines)
