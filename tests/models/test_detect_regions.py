"""Small-face paths on real photos: borderline faces confirmed in full-resolution crops."""

from __future__ import annotations

import csv
import json

import numpy as np

from namus_edge.core.config import load_config
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.boxes import iou_matrix
from namus_edge.models.detect_regions import detect_verified
from namus_edge.models.imagefile import read_image

PHOTO = "fddb/2002_08_11_img_258.jpg"  # a group photo with several small faces scored 0.3-0.5 at 640


def _found(gts, dets):
    if not dets:
        return 0
    return int((iou_matrix(gts, np.stack([d.bbox for d in dets])).max(axis=1) >= 0.4).sum())


def test_verification_in_crops_recovers_borderline_faces_without_false_ones(data_dir, model_cache):
    root = data_dir / "detection"
    row = next(r for r in csv.DictReader((root / "manifest.csv").open(newline="")) if r["path"] == PHOTO)
    gts = np.asarray(json.loads(row["bboxes_xywh"]), np.float64).reshape(-1, 4)
    gts[:, 2:] += gts[:, :2]
    analyzer = FaceAnalyzer(load_config(), model_cache, with_age=False)
    image = read_image(root / PHOTO)
    plain = analyzer.detect(image)
    verified = detect_verified(analyzer.detector, image, 0.3)
    assert _found(gts, verified) > _found(gts, plain)
    # every face kept by verification that the plain pass did not keep is an annotated face
    assert len(verified) - len(plain) == _found(gts, verified) - _found(gts, plain)
    assert all(d.score >= analyzer.config.detection.score_threshold for d in verified)
