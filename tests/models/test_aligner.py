"""Golden tests for the similarity estimate and the ArcFace alignment."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from namus_edge.models.aligner import ARCFACE_TEMPLATE, align_arcface, arcface_transform, transform_points, umeyama


@pytest.mark.parametrize(
    ("scale", "angle_deg", "tx", "ty"),
    [(1.0, 0.0, 0.0, 0.0), (2.0, 0.0, 10.0, -5.0), (0.5, 30.0, 3.0, 4.0), (1.7, -75.0, -20.0, 11.0)],
)
def test_umeyama_recovers_exact_similarity(scale, angle_deg, tx, ty):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    dst = scale * src @ rot.T + [tx, ty]
    m = umeyama(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], [tx, ty], atol=1e-9)


def test_umeyama_rejects_bad_shapes():
    with pytest.raises(ValueError, match="umeyama"):
        umeyama(np.zeros((5, 2)), np.zeros((4, 2)))


def test_landmarks_on_template_map_to_template():
    # a face whose landmarks are the template scaled by 3 and shifted lands exactly on the template
    lm = ARCFACE_TEMPLATE * 3 + [40, 25]
    m = arcface_transform(lm)
    np.testing.assert_allclose(transform_points(m, lm), ARCFACE_TEMPLATE, atol=1e-9)


def test_align_arcface_moves_marked_pixels_to_template():
    img = np.zeros((400, 400, 3), np.uint8)
    lm = ARCFACE_TEMPLATE * 2.5 + [60, 30]
    for x, y in lm:
        cv2.circle(img, (round(x), round(y)), 4, (255, 255, 255), -1)
    crop = align_arcface(img, lm)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[round(y), round(x)].min() > 200
    assert crop[5, 5].max() == 0  # black border / background
