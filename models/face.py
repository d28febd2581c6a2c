"""Value objects that cross module boundaries: detections and analysed faces.

Coordinates are pixels of the original image, x to the right and y down, origin at the
top-left corner of the top-left pixel. Boxes are ``(x1, y1, x2, y2)``. Landmarks are five
``(x, y)`` points in detector order: image-left eye, image-right eye, nose tip, image-left
mouth corner, image-right mouth corner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _check(name: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape, strict=True)):
        want = "x".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({want}), got {arr.shape}")


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        bbox: float32 (4,) ``x1, y1, x2, y2`` in image pixels.
        landmarks: float32 (5, 2) ``(x, y)`` image pixels, detector order.
        score: detector confidence in [0, 1].
    """

    bbox: np.ndarray
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        _check("bbox", self.bbox, (4,))
        _check("landmarks", self.landmarks, (5, 2))

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True)
class QualityReport:
    """The parts of the face quality score.

    Attributes:
        score: combined quality in [0, 1] (geometric mean of the terms below).
        det_score: detector confidence.
        face_px: sqrt of the box area (pixels).
        sharpness: variance of the Laplacian on the aligned 112x112 grey crop.
        yaw_deg: estimated yaw from landmark geometry (positive: nose to image right).
        roll_deg: eye-line angle in degrees.
        passed: whether every gate in ``QualityConfig`` passed.
        reasons: the gates that failed, e.g. ``["too_small", "blurry"]``.
    """

    score: float
    det_score: float
    face_px: float
    sharpness: float
    yaw_deg: float
    roll_deg: float
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Face:
    """An analysed face: detection plus embedding, age and quality.

    Attributes:
        bbox: float32 (4,) ``x1, y1, x2, y2`` in image pixels.
        landmarks: float32 (5, 2) image pixels, detector order.
        det_score: detector confidence in [0, 1].
        quality: combined quality score in [0, 1] (details in ``quality_report``).
        embedding: float32 (D,) L2-normalised; empty (0,) when the face failed the quality gate
            and was not embedded.
        age: estimated age in years, or ``None`` when no age model runs.
        quality_report: the terms behind ``quality``.
        p_male: estimated probability in [0, 1] that the face is male (1 - p_male: female), or
            ``None`` when no sex model runs. Confidence is ``max(p_male, 1 - p_male)``; sex is
            unreliable for young children, so consumers threshold it per age band.
    """

    bbox: np.ndarray
    landmarks: np.ndarray
    det_score: float
    quality: float
    embedding: np.ndarray
    age: float | None
    quality_report: QualityReport | None = field(default=None, compare=False)
    p_male: float | None = None

    def __post_init__(self) -> None:
        _check("bbox", self.bbox, (4,))
        _check("landmarks", self.landmarks, (5, 2))
        _check("embedding", self.embedding, (None,))

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return max(0.0, float(self.bbox[2] - self.bbox[0])) * max(0.0, float(self.bbox[3] - self.bbox[1]))

    @property
    def has_embedding(self) -> bool:
        """Whether the face was embedded (passed the quality gate)."""
        return self.embedding.size > 0
