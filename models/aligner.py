"""Face alignment: similarity transforms to the ArcFace 112x112 template and the age chip.

All transforms are 2x3 float64 matrices mapping image pixels to crop pixels, estimated with
Umeyama's least-squares similarity (rotation + uniform scale + translation) from the five
detector landmarks, and applied with bilinear ``cv2.warpAffine`` and a black border.
"""

from __future__ import annotations

import cv2
import numpy as np

#: ArcFace 112x112 destination points in detector landmark order (MODELS.md section 4).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: dlib's mean-face positions (unit square) for eye centres and mouth corners, used to place
#: the age model's 64x64 chip with padding 0.2 (MODELS.md section 2).
AGE_CHIP_UNIT = np.array(
    [
        [0.22733, 0.22140],
        [0.75281, 0.22123],
        [0.25415, 0.78023],
        [0.72610, 0.78023],
    ],
    dtype=np.float64,
)
AGE_CHIP_SIZE = 64
AGE_CHIP_PADDING = 0.2
#: Detector landmarks used for the age chip: eyes and mouth corners (the nose tip of SCRFD/YuNet
#: is not dlib's nose base).
AGE_CHIP_LANDMARKS = (0, 1, 3, 4)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping ``src`` onto ``dst``.

    Args:
        src: float (N, 2) source points.
        dst: float (N, 2) destination points, N >= 2.

    Returns:
        float64 (2, 3) matrix M with ``dst ~= M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two (N>=2, 2) arrays of equal shape, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / n
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    m = np.zeros((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = t
    return m


def arcface_transform(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity (2, 3) from five image landmarks to the ArcFace template at ``size`` pixels."""
    return umeyama(landmarks, ARCFACE_TEMPLATE * (size / 112.0))


def align_arcface(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a face to the ArcFace template.

    Args:
        image: uint8 (H, W, 3), any colour order (kept).
        landmarks: float (5, 2) image pixels, detector order.
        size: output side; 112 for every embedder here.

    Returns:
        uint8 (size, size, 3) aligned crop, same colour order as ``image``.
    """
    m = arcface_transform(landmarks, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def age_chip_transform(landmarks: np.ndarray, size: int = AGE_CHIP_SIZE, padding: float = AGE_CHIP_PADDING) -> np.ndarray:
    """Similarity (2, 3) from image landmarks to the dlib-style age chip (eyes + mouth corners)."""
    dst = (AGE_CHIP_UNIT + padding) / (1 + 2 * padding) * size
    src = np.asarray(landmarks, dtype=np.float64)[list(AGE_CHIP_LANDMARKS)]
    return umeyama(src, dst)


def align_age_chip(image: np.ndarray, landmarks: np.ndarray, size: int = AGE_CHIP_SIZE,
                   padding: float = AGE_CHIP_PADDING) -> np.ndarray:
    """Warp a face to the age model's chip.

    Args:
        image: uint8 (H, W, 3), any colour order (kept).
        landmarks: float (5, 2) image pixels, detector order.

    Returns:
        uint8 (size, size, 3) chip.
    """
    m = age_chip_transform(landmarks, size, padding)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points; returns float64 (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
