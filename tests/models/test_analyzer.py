"""Integration: the real models on the real test photos (../shared/models/testimages)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from namus_edge.core.config import load_config
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.face import Face


@pytest.fixture(scope="module")
def analyzer(model_cache):
    return FaceAnalyzer(load_config(), model_cache)


@pytest.fixture(scope="module")
def faces(analyzer, test_images):
    out = {}
    for name in ("astronaut", "obama_2012", "obama_2009", "obama_2010", "biden_2010"):
        img = cv2.imread(str(test_images / f"{name}.jpg"))
        out[name] = analyzer.analyze(img)
    return out


def test_one_face_per_portrait_with_contract(faces):
    for name, fs in faces.items():
        assert len(fs) == 1, name
        f = fs[0]
        assert isinstance(f, Face)
        assert f.bbox.shape == (4,) and f.landmarks.shape == (5, 2)
        assert f.embedding.dtype == np.float32 and f.embedding.shape == (512,)
        assert np.linalg.norm(f.embedding) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 < f.quality <= 1.0
        assert f.age is not None and 15 < f.age < 85


def test_astronaut_box_matches_models_md(faces):
    # MODELS.md 5: det_500m astronaut box (180,60)-(272,180), score 0.80
    f = faces["astronaut"][0]
    np.testing.assert_allclose(f.bbox, [180, 60, 272, 180], atol=3)
    assert f.det_score == pytest.approx(0.80, abs=0.02)


def test_same_person_scores_higher_than_different(faces):
    e = {k: v[0].embedding for k, v in faces.items()}
    same = [e["obama_2012"] @ e["obama_2009"], e["obama_2012"] @ e["obama_2010"], e["obama_2009"] @ e["obama_2010"]]
    diff = [e["obama_2012"] @ e["biden_2010"], e["obama_2010"] @ e["biden_2010"], e["astronaut"] @ e["biden_2010"]]
    assert min(same) > 0.6
    assert max(diff) < 0.25


def test_landmarks_inside_box(faces):
    for fs in faces.values():
        f = fs[0]
        x1, y1, x2, y2 = f.bbox
        assert (f.landmarks[:, 0] > x1).all() and (f.landmarks[:, 0] < x2).all()
        assert (f.landmarks[:, 1] > y1).all() and (f.landmarks[:, 1] < y2).all()
        # image-left eye is left of image-right eye
        assert f.landmarks[0, 0] < f.landmarks[1, 0]


def test_multi_face_group_photo(analyzer, test_images):
    img = cv2.imread(str(test_images / "solvay_1927.jpg"))
    dets = analyzer.detect(img)
    assert len(dets) == 29  # MODELS.md: 29 people, det_500m finds 29
    areas = [d.area for d in dets]
    assert areas == sorted(areas, reverse=True)


def test_batch_equals_single(analyzer, test_images):
    imgs = [cv2.imread(str(test_images / f"{n}.jpg")) for n in ("obama_2012", "biden_2010")]
    batch = analyzer.analyze_batch(imgs)
    for img, fs in zip(imgs, batch, strict=True):
        single = analyzer.analyze(img)
        np.testing.assert_allclose(fs[0].embedding, single[0].embedding, atol=1e-5)
        assert fs[0].age == pytest.approx(single[0].age, abs=1e-3)


def test_quality_gate_skips_embedding_of_tiny_face(analyzer, test_images):
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    small = cv2.resize(img, None, fx=0.07, fy=0.07, interpolation=cv2.INTER_AREA)
    gated = analyzer.analyze(small, gate=True)
    assert gated, "the small face should still be detected"
    f = gated[0]
    assert f.quality_report is not None and not f.quality_report.passed
    assert "too_small" in f.quality_report.reasons
    assert not f.has_embedding and f.age is None


def test_tight_crop_found_by_padded_retry(analyzer, test_images):
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    f = analyzer.analyze(img)[0]
    x1, y1, x2, y2 = f.bbox.astype(int)
    crop = img[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10]  # face fills the whole frame
    assert analyzer.detect(crop) == []  # SCRFD misses faces that fill the frame
    found = analyzer.detect(crop, photo=True)
    assert len(found) >= 1
    emb = analyzer.analyze(crop, photo=True)[0].embedding
    assert float(emb @ f.embedding) > 0.5


def test_licence_clean_set(model_cache, test_images):
    cfg = load_config(overrides=["models.set=licence_clean"])
    a = FaceAnalyzer(cfg, model_cache)
    assert a.detector_spec.name.startswith("yunet") and a.embedder_spec.name == "sface" and a.dim == 128
    e = {n: a.analyze(cv2.imread(str(test_images / f"{n}.jpg")))[0].embedding
         for n in ("obama_2012", "obama_2009", "biden_2010")}
    assert e["obama_2012"] @ e["obama_2009"] > e["obama_2012"] @ e["biden_2010"] + 0.3
