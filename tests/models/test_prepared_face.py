"""The age chip is cut only for faces that get an age (the pipeline ages only the faces it embeds)."""

from __future__ import annotations

import cv2
import numpy as np
from namus_edge_testing.namus_factory import lfw_identities

from namus_edge.core.config import load_config
from namus_edge.models.aligner import align_age_chip
from namus_edge.models.analyzer import FaceAnalyzer


def test_age_chip_is_lazy_and_equals_the_aligned_chip(data_dir, model_cache):
    analyzer = FaceAnalyzer(load_config(), model_cache)
    lfw = lfw_identities(data_dir)
    image = cv2.imread(str(next(iter(lfw.values()))[0]))
    det = analyzer.detect(image)[0]
    prepared = analyzer.prepare(image, det)
    assert "age_chip" not in prepared.__dict__  # not cut by prepare
    ages = analyzer.estimate_ages([prepared])
    assert ages is not None and ages.shape == (1,)
    assert "age_chip" in prepared.__dict__
    np.testing.assert_array_equal(prepared.age_chip, align_age_chip(image, det.landmarks))
