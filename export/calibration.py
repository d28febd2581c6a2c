"""Real images -> model input tensors, for INT8 calibration, export verification and parity checks.

Preprocessing follows each model's declared contract in :mod:`models.registry` (size, colour
order, mean/std), never the graph: detectors get the letterboxed frame the runtime detector
feeds (``models.detector.letterbox``); embedders and the age model get either the face as given
(``crop="resize"``: a folder of face crops is resized to the model input) or the runtime's own
alignment of the largest detected face (``crop="align"``: ArcFace 112x112 template or the age
chip), which is what the models see on the device.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from namus_edge.core.errors import ImageReadError, NamusEdgeError
from namus_edge.models.aligner import align_age_chip, align_arcface
from namus_edge.models.detector import FaceDetector, letterbox
from namus_edge.models.preprocess import to_blob
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: INT8 calibration with fewer images gives unstable activation ranges.
MIN_CALIBRATION_IMAGES = 32
CropMode = Literal["resize", "align"]


class CalibrationError(NamusEdgeError):
    """Calibration data is missing, too small or unusable."""


def list_images(directory: Path, limit: int | None = None) -> list[Path]:
    """Image files under ``directory`` (recursive, sorted by path), at most ``limit``.

    Raises:
        CalibrationError: ``directory`` is not a directory.
    """
    if not directory.is_dir():
        raise CalibrationError(f"calibration folder {directory} does not exist or is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit is not None else paths


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) BGR.

    Raises:
        ImageReadError: unreadable or not an image (names the file).
    """
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise ImageReadError(f"{path}: cannot decode as an image")
    return image


def normalise(image_bgr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Apply the contract's colour order and ``(pixel - mean) / std`` (``models.preprocess.to_blob``).

    Args:
        image_bgr: uint8 (H, W, 3) BGR, already at the model input size.
        spec: the model's registry entry.

    Returns:
        float32 (3, H, W) in the model's colour order.
    """
    return to_blob(image_bgr[None], spec.contract)[0]


def model_input(image_bgr: np.ndarray, spec: ModelSpec, size: tuple[int, int]) -> np.ndarray:
    """One real image as a model input (no detection): letterbox for detectors, resize otherwise.

    Args:
        image_bgr: uint8 (H, W, 3) BGR; for embedders/age a face crop.
        spec: the model's registry entry.
        size: model input (width, height).

    Returns:
        float32 (3, H, W).
    """
    if spec.role == "detector":

        canvas = letterbox(image_bgr, size).canvas
    else:
        h, w = image_bgr.shape[:2]
        interp = cv2.INTER_AREA if w > size[0] or h > size[1] else cv2.INTER_LINEAR
        canvas = cv2.resize(image_bgr, size, interpolation=interp)
    return normalise(canvas, spec)


def aligned_face(image_bgr: np.ndarray, spec: ModelSpec, detector: FaceDetector) -> np.ndarray | None:
    """The largest detected face aligned as the runtime aligns it for ``spec``.

    Args:
        image_bgr: uint8 (H, W, 3) BGR photo.
        spec: an embedder (ArcFace 112x112 template) or age model (64x64 chip).
        detector: a loaded face detector.

    Returns:
        uint8 (h, w, 3) BGR crop at the model input size, or ``None`` when no face is found.
    """
    faces, _ = detector.detect_photo(image_bgr)
    if not faces:
        return None
    size = _fixed_size(spec)
    if spec.role == "age":
        return align_age_chip(image_bgr, faces[0].landmarks, size=size[0])
    return align_arcface(image_bgr, faces[0].landmarks, size=size[0])


def _fixed_size(spec: ModelSpec) -> tuple[int, int]:
    if spec.contract.size is None:
        raise CalibrationError(f"{spec.name} has no fixed input size; pass the detector input size")
    return spec.contract.size


def load_inputs(
    paths: Sequence[Path],
    spec: ModelSpec,
    size: tuple[int, int],
    *,
    crop: CropMode = "resize",
    detector: FaceDetector | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Real images as one input array.

    Args:
        paths: image files.
        spec: the model's registry entry.
        size: model input (width, height).
        crop: ``resize`` (images used as given) or ``align`` (largest face, runtime alignment;
            embedders and age only).
        detector: needed for ``crop="align"``.

    Returns:
        (float32 (N, 3, H, W), the paths used); with ``align``, photos without a face are left
        out and logged.

    Raises:
        ImageReadError: an image cannot be decoded (named).
        CalibrationError: ``align`` asked for a detector model or without a detector.
    """
    if crop == "align" and (spec.role == "detector" or detector is None):
        raise CalibrationError(f"crop=align needs an embedder or age model and a detector (model {spec.name})")
    tensors: list[np.ndarray] = []
    used: list[Path] = []
    for path in paths:
        image = read_image(path)
        if crop == "align" and detector is not None:  # detector presence checked above
            face = aligned_face(image, spec, detector)
            if face is None:
                logger.info("%s: no face found, not used", path.name)
                continue
            image = face
        tensors.append(model_input(image, spec, size))
        used.append(path)
    w, h = size
    data = np.stack(tensors) if tensors else np.zeros((0, 3, h, w), np.float32)
    return data.astype(np.float32, copy=False), used


def load_calibration_set(
    directory: Path,
    spec: ModelSpec,
    size: tuple[int, int],
    *,
    crop: CropMode = "resize",
    detector: FaceDetector | None = None,
    min_images: int = MIN_CALIBRATION_IMAGES,
    max_images: int = 1000,
) -> tuple[np.ndarray, str]:
    """Load an INT8 calibration set from a folder of face photos.

    Args:
        directory: folder searched recursively for .jpg/.jpeg/.png/.bmp/.webp.
        spec: the model's registry entry.
        size: model input (width, height).
        crop: see :func:`load_inputs`.
        detector: needed for ``crop="align"``.
        min_images: fewer usable images is an error.
        max_images: use at most this many (first by sorted path).

    Returns:
        (float32 (N, 3, H, W) preprocessed inputs, sha256 digest of the image set used).

    Raises:
        CalibrationError: folder missing, or fewer than ``min_images`` usable images.
        ImageReadError: an image cannot be decoded.
    """
    paths = list_images(directory, limit=max_images)
    if len(paths) < min_images:
        raise CalibrationError(
            f"INT8 calibration needs at least {min_images} face images in {directory}, found {len(paths)} "
            f"(suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    data, used = load_inputs(paths, spec, size, crop=crop, detector=detector)
    if len(used) < min_images:
        raise CalibrationError(
            f"INT8 calibration needs at least {min_images} usable face images in {directory}; "
            f"{len(used)} of {len(paths)} had a detectable face"
        )
    logger.info("calibration set for %s: %d images from %s (%s)", spec.name, len(used), directory, crop)
    return data, image_set_digest(used, directory)


def image_set_digest(paths: Sequence[Path], root: Path) -> str:
    """sha256 over (relative path, file sha256) of each image: identifies a calibration set."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def batches(data: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Full batches of ``data`` (N, ...) in order; a final partial batch is dropped (and logged).

    TensorRT calibrators are asked for a fixed batch size, so every batch has exactly
    ``batch_size`` rows (C-contiguous float32).

    Raises:
        CalibrationError: ``batch_size`` < 1 or larger than the data.
    """
    if batch_size < 1 or batch_size > len(data):
        raise CalibrationError(f"calibration batch size {batch_size} must be between 1 and {len(data)} (images)")
    full = len(data) // batch_size
    if len(data) % batch_size:
        logger.info("calibration: last %d images do not fill a batch of %d, not used",
                    len(data) % batch_size, batch_size)
    for i in range(full):
        yield np.ascontiguousarray(data[i * batch_size : (i + 1) * batch_size], dtype=np.float32)
