"""Golden tests for SCRFD/YuNet decoding, NMS and letterboxing (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from namus_edge.models.detector import (
    FaceDetector,
    anchor_centers,
    distance2bbox,
    distance2kps,
    letterbox,
    nms,
)


@pytest.mark.parametrize(
    ("h", "w", "stride", "anchors", "expected_first", "expected_len"),
    [
        (2, 3, 8, 2, [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0], [0, 8]], 12),
        (2, 2, 16, 1, [[0, 0], [16, 0], [0, 16], [16, 16]], 4),
        (80, 80, 8, 2, [[0, 0], [0, 0], [8, 0]], 12800),
    ],
)
def test_anchor_centers_row_major_repeated(h, w, stride, anchors, expected_first, expected_len):
    c = anchor_centers(h, w, stride, anchors)
    assert c.shape == (expected_len, 2)
    np.testing.assert_array_equal(c[: len(expected_first)], np.asarray(expected_first, np.float32))


@pytest.mark.parametrize(
    ("point", "dist", "expected"),
    [
        ([16, 16], [1, 2, 3, 4], [15, 14, 19, 20]),
        ([0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
        ([100, 50], [10, 5, 10, 5], [90, 45, 110, 55]),
    ],
)
def test_distance2bbox(point, dist, expected):
    out = distance2bbox(np.asarray([point], np.float32), np.asarray([dist], np.float32))
    np.testing.assert_allclose(out[0], expected)


def test_distance2kps_offsets_per_point():
    kps = distance2kps(np.asarray([[10, 20]], np.float32), np.arange(10, dtype=np.float32)[None])
    np.testing.assert_allclose(kps[0], [[10, 21], [12, 23], [14, 25], [16, 27], [18, 29]])


@pytest.mark.parametrize(
    ("boxes", "scores", "thr", "keep"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.4, [0, 2]),
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.7, 0.8, 0.9], 0.4, [2, 1]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.4, [0, 1]),  # IoU 1/3 < 0.4: both kept
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.3, [0]),  # IoU 1/3 > 0.3: suppressed
        ([], [], 0.4, []),
    ],
)
def test_nms_table(boxes, scores, thr, keep):
    out = nms(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), thr)
    assert out.tolist() == keep


@pytest.mark.parametrize(
    ("shape", "size", "scale", "content"),
    [
        ((100, 200, 3), (640, 640), 3.2, (320, 640)),
        ((480, 640, 3), (320, 320), 0.5, (240, 320)),
        ((1080, 1920, 3), (640, 384), 1 / 3, (360, 640)),
    ],
)
def test_letterbox_top_left(shape, size, scale, content):
    img = np.full(shape, 200, np.uint8)
    lb = letterbox(img, size)
    assert lb.canvas.shape == (size[1], size[0], 3)
    assert lb.scale == pytest.approx(scale)
    h, w = content
    assert lb.canvas[:h, :w].min() == 200
    for pad in (lb.canvas[h:, :], lb.canvas[:, w:]):
        assert pad.size == 0 or pad.max() == 0


def _scrfd_outputs(size, cells):
    """Synthetic SCRFD outputs with one confident anchor per (stride_index, anchor_index, dist, kps)."""
    w, h = size
    outs = []
    for kind, cols in (("score", 1), ("box", 4), ("kps", 10)):
        for s in (8, 16, 32):
            n = (h // s) * (w // s) * 2
            arr = np.zeros((n, cols), np.float32)
            outs.append((kind, s, arr))
    for stride, idx, dist, kps in cells:
        for kind, s, arr in outs:
            if s != stride:
                continue
            if kind == "score":
                arr[idx, 0] = 0.9
            elif kind == "box":
                arr[idx] = dist
            else:
                arr[idx] = kps
    return [a for _, _, a in outs]


def test_decode_scrfd_golden():
    size = (64, 64)
    # stride 16, anchor index 5 -> cell 2 (row 0, col 2) -> centre (32, 0)
    outs = _scrfd_outputs(size, [(16, 5, [1, 0, 1, 2], [0, 0, 1, 1, 0.5, 0.5, 0, 1, 1, 1])])
    det = FaceDetector.__new__(FaceDetector)
    det._centers = {}

    class _Spec:
        filename = "synthetic"

    det.spec = _Spec()
    boxes, kps, scores = det.decode_scrfd(outs, size, 0.5)
    np.testing.assert_allclose(boxes, [[16, 0, 48, 32]])
    np.testing.assert_allclose(kps[0], [[32, 0], [48, 16], [40, 8], [32, 16], [48, 16]])
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)


def test_decode_yunet_golden():
    size = (64, 64)
    outs = []
    for _ in range(4):
        for s in (8, 16, 32):
            n = (64 // s) ** 2
            outs.append(np.zeros((1, n, 1), np.float32))
    # reshape bbox/kps outputs
    for i in range(6, 9):
        outs[i] = np.zeros((1, outs[i].shape[1], 4), np.float32)
    for i in range(9, 12):
        outs[i] = np.zeros((1, outs[i].shape[1], 10), np.float32)
    # stride 32: 2x2 cells; cell index 3 = (col 1, row 1)
    outs[2][0, 3, 0] = 0.81  # cls
    outs[5][0, 3, 0] = 1.0  # obj -> score sqrt(0.81) = 0.9
    outs[8][0, 3] = [0.5, 0.25, 0.0, np.log(2)]  # cx=(1.5)*32=48, cy=1.25*32=40, w=32, h=64
    outs[11][0, 3] = [0, 0, 1, 0, 0.5, 0.5, 0, 1, 1, 1]
    boxes, kps, scores = FaceDetector.decode_yunet(outs, size, 0.5)
    np.testing.assert_allclose(boxes, [[32, 8, 64, 72]], rtol=1e-5)
    np.testing.assert_allclose(kps[0], [[32, 32], [64, 32], [48, 48], [32, 64], [64, 64]])
    np.testing.assert_allclose(scores, [0.9], rtol=1e-5)
