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

#: Points of dlib's 68-point mean face (``get_face_chip_details`` in dlib
#: ``image_transforms/interpolation.h``; unit square, x right, y down) that correspond to the
#: detector's five landmarks: the six contour points of each eye (36-41 image-left, 42-47
#: image-right), the nose tip (30) and the mouth corners (48, 54). dlib's 5-point chip (eye corners
#: + nose base) lives in the same frame, so these place SCRFD/YuNet landmarks where dlib's chip
#: puts the corresponding face parts.
DLIB_MEAN_FACE_EYE_LEFT = np.array(
    [[0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],
     [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077]], dtype=np.float64)
DLIB_MEAN_FACE_EYE_RIGHT = np.array(
    [[0.645647, 0.231733], [0.714428, 0.179852], [0.793132, 0.178758],
     [0.858516, 0.216423], [0.797510, 0.244077], [0.719335, 0.245099]], dtype=np.float64)
DLIB_MEAN_FACE_NOSE_TIP = np.array([0.490127, 0.515625], dtype=np.float64)
DLIB_MEAN_FACE_MOUTH_LEFT = np.array([0.254149, 0.780233], dtype=np.float64)
DLIB_MEAN_FACE_MOUTH_RIGHT = np.array([0.726104, 0.780233], dtype=np.float64)

#: The five detector landmarks (detector order: image-left eye centre, image-right eye centre,
#: nose tip, image-left mouth corner, image-right mouth corner) on dlib's unit mean face.
AGE_CHIP_UNIT = np.stack(
    [
        DLIB_MEAN_FACE_EYE_LEFT.mean(axis=0),
        DLIB_MEAN_FACE_EYE_RIGHT.mean(axis=0),
        DLIB_MEAN_FACE_NOSE_TIP,
        DLIB_MEAN_FACE_MOUTH_LEFT,
        DLIB_MEAN_FACE_MOUTH_RIGHT,
    ]
)
AGE_CHIP_SIZE = 64
AGE_CHIP_PADDING = 0.2
#: Detector landmarks used to place the age chip (indices into AGE_CHIP_UNIT / detector order):
#: eye centres and mouth corners, chosen by MAE on a UTKFace dev half (docs/age.md); the nose
#: tip did not help.
AGE_CHIP_LANDMARKS = (0, 1, 3, 4)
#: Halve the face region (Gaussian pyramid) only while more than this many image pixels fall on
#: one chip pixel. dlib uses 2; on UTKFace (scale ~3.3) the sharper chip is 0.25 y MAE better,
#: while large faces (FG-NET, scale ~5) still need the pre-filter (docs/age.md).
AGE_CHIP_PYRAMID_ABOVE = 4.0


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


def dlib_chip_transform(landmarks: np.ndarray, unit_points: np.ndarray, size: int, padding: float) -> np.ndarray:
    """Image -> chip similarity of dlib's ``get_face_chip_details`` + ``extract_image_chip``.

    dlib fits a similarity from the chip points ``(unit + padding) / (1 + 2 padding) * size`` to
    the image landmarks (least squares in image space), then samples chip pixel ``u`` (0 ..
    size-1) at ``centre + R (size*s - 1) / (size - 1) (u - (size-1)/2)``, where ``centre`` is the
    image of chip point ``size/2`` and ``s``/``R`` are the fitted scale/rotation. This returns the
    inverse of that sampling map, so ``cv2.warpAffine`` reproduces dlib's geometry.

    Args:
        landmarks: float (N, 2) image pixels (x, y), N >= 2.
        unit_points: float (N, 2) the same points on the unit mean face.
        size: chip side in pixels.
        padding: border around the unit square, as a fraction of it.

    Returns:
        float64 (2, 3) matrix mapping image pixels to chip pixels.
    """
    chip_pts = (np.asarray(unit_points, np.float64) + padding) / (1 + 2 * padding) * size
    t = umeyama(chip_pts, landmarks)  # chip -> image
    scale = float(np.hypot(t[0, 0], t[1, 0]))
    k = (size * scale - 1) / ((size - 1) * scale)
    a = np.array([[k, 0.0, size / 2 - k * (size - 1) / 2], [0.0, k, size / 2 - k * (size - 1) / 2]])
    g = np.vstack([t, [0.0, 0.0, 1.0]]) @ np.vstack([a, [0.0, 0.0, 1.0]])  # chip pixel -> image
    return np.linalg.inv(g)[:2]


def extract_chip(image: np.ndarray, m: np.ndarray, size: int, *, pyramid_above: float | None = 2.0) -> np.ndarray:
    """Warp ``image`` to a ``size`` x ``size`` chip, halving large faces first (anti-aliasing).

    While the scale (image pixels per chip pixel) left to cover exceeds ``pyramid_above``, the
    image region is halved with a 5-tap Gaussian pyramid (``cv2.pyrDown``); the rest is sampled
    bilinearly; outside pixels are black. ``pyramid_above=2`` is dlib's ``extract_image_chip``.

    Args:
        image: uint8 (H, W, C) any colour order (kept).
        m: float (2, 3) image -> chip matrix.
        size: chip side in pixels.
        pyramid_above: remaining scale above which to halve first; None: plain bilinear always.

    Returns:
        uint8 (size, size, C) chip.
    """
    m = np.asarray(m, dtype=np.float64)
    scale = 1.0 / float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # image pixels per chip pixel
    levels = 0
    while pyramid_above is not None and scale > pyramid_above * 2.0**levels:
        levels += 1
    if levels == 0:
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0))
    inv = cv2.invertAffineTransform(m)
    corners = transform_points(inv, np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float))
    grow = 2 ** (levels + 2) + 2
    h, w = image.shape[:2]
    x0, y0 = (max(0, int(np.floor(v)) - grow) for v in corners.min(axis=0))
    x1, y1 = (int(np.ceil(v)) + grow + 1 for v in corners.max(axis=0))
    x1, y1 = min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, *image.shape[2:]), dtype=np.uint8)
    region = image[y0:y1, x0:x1]
    for _ in range(levels):
        region = cv2.pyrDown(region)
    f = float(2**levels)
    ml = np.empty((2, 3), dtype=np.float64)
    ml[:, :2] = m[:, :2] * f  # level pixel l = (p - (x0, y0)) / f
    ml[:, 2] = m[:, :2] @ np.array([x0, y0], dtype=np.float64) + m[:, 2]
    return cv2.warpAffine(region, ml, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def age_chip_transform(landmarks: np.ndarray, size: int = AGE_CHIP_SIZE,
                       padding: float = AGE_CHIP_PADDING) -> np.ndarray:
    """Image -> age-chip similarity (2, 3) from (5, 2) detector landmarks (dlib chip geometry)."""
    idx = list(AGE_CHIP_LANDMARKS)
    return dlib_chip_transform(np.asarray(landmarks, dtype=np.float64)[idx], AGE_CHIP_UNIT[idx], size, padding)


def align_age_chip(image: np.ndarray, landmarks: np.ndarray, size: int = AGE_CHIP_SIZE,
                   padding: float = AGE_CHIP_PADDING) -> np.ndarray:
    """Warp a face to the age model's chip: dlib's ``get_face_chip_details(shape, 64, 0.2)`` chip.

    The detector landmarks are placed on dlib's 68-point mean face (:data:`AGE_CHIP_UNIT`) and
    the chip is sampled with dlib's geometry (:func:`dlib_chip_transform`); the pyramid
    pre-filter starts above scale :data:`AGE_CHIP_PYRAMID_ABOVE` (:func:`extract_chip`).

    Args:
        image: uint8 (H, W, 3), any colour order (kept).
        landmarks: float (5, 2) image pixels, detector order.
        size: chip side in pixels.
        padding: dlib chip padding.

    Returns:
        uint8 (size, size, 3) chip.
    """
    return extract_chip(image, age_chip_transform(landmarks, size, padding), size,
                        pyramid_above=AGE_CHIP_PYRAMID_ABOVE)


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points; returns float64 (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
