"""Calibration / verification inputs from real photos, per the registry contracts (CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from namus_edge.core.config import BackendConfig, DetectionConfig
from namus_edge.core.errors import ImageReadError
from namus_edge.export.calibration import (
    CalibrationError,
    aligned_face,
    batches,
    image_set_digest,
    list_images,
    load_calibration_set,
    load_inputs,
    model_input,
)
from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend
from namus_edge.models.detector import FaceDetector
from namus_edge.models.registry import get_spec


@pytest.fixture(scope="module")
def bbt(data_dir: Path) -> Path:
    return data_dir / "verification" / "bbt"


@pytest.fixture(scope="module")
def detector(model_cache: Path) -> FaceDetector:
    spec = get_spec("det_500m")
    return FaceDetector(OnnxRuntimeBackend(model_cache / spec.filename, BackendConfig()), spec, DetectionConfig())


def test_calibration_set_from_face_folder(bbt):
    spec = get_spec("edgeface_xs")
    data, digest = load_calibration_set(bbt, spec, (112, 112))
    assert data.shape == (40, 3, 112, 112) and data.dtype == np.float32
    assert data.flags.c_contiguous
    # EdgeFace contract: RGB, (x - 127.5) / 127.5 -> values in [-1, 1]
    assert -1.0 <= data.min() < -0.9 and 0.9 < data.max() <= 1.0
    first = sorted(bbt.rglob("*.png"))[0]
    img = cv2.resize(cv2.imread(str(first)), (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(data[0, 0], (img[:, :, 2].astype(np.float32) - 127.5) / 127.5)  # R channel first
    assert len(digest) == 64 and digest == load_calibration_set(bbt, spec, (112, 112))[1]


def test_contracts_differ_per_model(bbt):
    path = sorted(bbt.rglob("*.png"))[0]
    img = cv2.imread(str(path))
    sface = model_input(img, get_spec("sface"), (112, 112))  # RGB raw 0..255
    age = model_input(img, get_spec("age_v1"), (64, 64))  # RGB, dlib mean / 256
    small = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(sface[0], small[:, :, 2].astype(np.float32))
    chip = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(age[2], (chip[:, :, 0].astype(np.float32) - 104.298) / 256.0, rtol=1e-6)


def test_detector_input_is_letterboxed_bgr(test_images):
    spec = get_spec("yunet_dynamic")  # BGR, raw 0..255
    img = cv2.imread(str(test_images / "obama_2012.jpg"))  # portrait: taller than wide
    x = model_input(img, spec, (640, 384))
    assert x.shape == (3, 384, 640)
    h, w = img.shape[:2]
    scale = min(640 / w, 384 / h)
    nw = round(w * scale)
    assert np.all(x[:, :, nw:] == 0) and x[:, :, : nw - 1].max() > 0  # right border padded with zeros
    assert x.max() > 200  # not normalised: raw BGR pixels


def test_digest_changes_with_content(bbt, tmp_path):
    for p in sorted(bbt.rglob("*.png"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    paths = list_images(tmp_path)
    d1 = image_set_digest(paths, tmp_path)
    shutil.copy(sorted(bbt.rglob("*.png"))[5], paths[0])
    assert image_set_digest(paths, tmp_path) != d1


def test_too_few_images(test_images):
    with pytest.raises(CalibrationError, match=r"at least 32 face images in .*testimages, found 6"):
        load_calibration_set(test_images, get_spec("edgeface_xs"), (112, 112))


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_unreadable_image_named(bbt, tmp_path):
    for p in sorted(bbt.rglob("*.png"))[:2]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match=r"broken.jpg: cannot decode"):
        load_inputs(list_images(tmp_path), get_spec("age_v1"), (64, 64))


def test_batches_are_full_and_contiguous():
    data = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    out = list(batches(data, 4))
    assert [b.shape[0] for b in out] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(out), data[:8])
    with pytest.raises(CalibrationError, match="between 1 and 10"):
        list(batches(data, 11))


def test_align_mode_uses_runtime_alignment(bbt, detector):
    paths = sorted(bbt.rglob("*.png"))[:6]
    emb, used = load_inputs(paths, get_spec("edgeface_xs"), (112, 112), crop="align", detector=detector)
    assert emb.shape == (len(used), 3, 112, 112) and len(used) >= 5  # tight crops: found with the padded retry
    age, used_age = load_inputs(paths, get_spec("age_v1"), (64, 64), crop="align", detector=detector)
    assert age.shape == (len(used_age), 3, 64, 64)
    crop = aligned_face(cv2.imread(str(paths[0])), get_spec("edgeface_xs"), detector)
    assert crop is not None and crop.shape == (112, 112, 3)
    # the aligned crop differs from a plain resize (it is a similarity warp onto the template)
    plain = model_input(cv2.imread(str(paths[0])), get_spec("edgeface_xs"), (112, 112))
    assert np.abs(emb[0] - plain).mean() > 0.05


def test_align_mode_refused_for_detector(bbt, detector):
    with pytest.raises(CalibrationError, match="crop=align needs an embedder or age model"):
        load_inputs(list_images(bbt)[:1], get_spec("det_500m"), (640, 640), crop="align", detector=detector)
