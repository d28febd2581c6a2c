"""Age estimation with ``age-v1`` (dlib/Cydral, 81 bins, expectation decoding).

The network outputs softmax probabilities over 81 classes whose ages are 0.25, 1, 2, ..., 80
years; the estimate is the expected value. Optional horizontal-flip averaging runs both the
chip and its mirror image and averages the probabilities.
"""

from __future__ import annotations

import numpy as np

from namus_edge.core.errors import ModelError
from namus_edge.models.backends.base import Backend
from namus_edge.models.preprocess import to_blob
from namus_edge.models.registry import ModelSpec

#: Age in years of each output class.
AGE_BINS = np.concatenate([[0.25], np.arange(1, 81)]).astype(np.float32)


def expected_age(probabilities: np.ndarray) -> np.ndarray:
    """Expected age of (N, 81) class probabilities; returns float32 (N,) years."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != AGE_BINS.size:
        raise ValueError(f"age probabilities must be (N, {AGE_BINS.size}), got {p.shape}")
    return (p @ AGE_BINS) / np.maximum(p.sum(axis=1), 1e-12)


def calibrate(ages: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map raw age estimates through a piecewise-linear calibration.

    Args:
        ages: float (N,) raw estimates in years.
        points: float (K, 2) ``(raw, calibrated)`` knots, K >= 2, raw strictly increasing.
            Estimates outside ``[raw_0, raw_K-1]`` get the end value (np.interp clipping).

    Returns:
        float32 (N,) calibrated ages in years.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 2:
        raise ValueError(f"age calibration must be (K>=2, 2) points, got shape {pts.shape}")
    if not np.all(np.diff(pts[:, 0]) > 0):
        raise ValueError(f"age calibration raw values must be strictly increasing, got {pts[:, 0].tolist()}")
    return np.interp(np.asarray(ages, dtype=np.float64), pts[:, 0], pts[:, 1]).astype(np.float32)


class AgeEstimator:
    """Batched age estimates from 64x64 chips.

    Args:
        backend: loaded age model.
        spec: its registry entry.
        flip: average the probabilities of the chip and its mirror image.
        calibration: optional (K, 2) piecewise-linear map of raw estimate -> calibrated age
            (x ascending), fitted by ``python -m bench.age_study`` (docs/age.md).
        max_batch: chips per forward pass.
    """

    def __init__(self, backend: Backend, spec: ModelSpec, *, flip: bool = True,
                 calibration: np.ndarray | None = None, max_batch: int = 64) -> None:
        if spec.role != "age":
            raise ModelError(f"{spec.name} is a {spec.role}, not an age model")
        self.backend = backend
        self.spec = spec
        self.flip = flip
        self.calibration = None if calibration is None else np.asarray(calibration, np.float64)
        if self.calibration is not None:
            calibrate(np.zeros(1), self.calibration)  # validate now, not on the first face
        self.max_batch = max_batch
        self._input = backend.inputs[0].name

    def warmup(self, runs: int) -> None:
        """Forward passes on zeros (batch 1)."""
        self.backend.warmup({self._input: (1, 3, 64, 64)}, runs)

    def probabilities(self, chips_bgr: np.ndarray) -> np.ndarray:
        """Class probabilities of uint8 (N, 64, 64, 3) BGR chips; float32 (N, 81)."""
        out = []
        for start in range(0, chips_bgr.shape[0], self.max_batch):
            batch = chips_bgr[start : start + self.max_batch]
            p = self.backend.run({self._input: to_blob(batch, self.spec.contract)})[0]
            if self.flip:
                p = 0.5 * (p + self.backend.run({self._input: to_blob(batch[:, :, ::-1], self.spec.contract)})[0])
            out.append(p)
        return np.concatenate(out, axis=0) if out else np.zeros((0, AGE_BINS.size), np.float32)

    def estimate(self, chips_bgr: np.ndarray) -> np.ndarray:
        """Ages in years of uint8 (N, 64, 64, 3) BGR chips; float32 (N,)."""
        if chips_bgr.shape[0] == 0:
            return np.zeros((0,), np.float32)
        ages = expected_age(self.probabilities(chips_bgr))
        if self.calibration is not None:
            ages = calibrate(ages, self.calibration)
        return ages
