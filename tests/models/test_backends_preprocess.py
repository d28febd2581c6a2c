"""Backends (explicit provider, no silent fallback) and input normalisation goldens."""

from __future__ import annotations

import numpy as np
import pytest

from namus_edge.core.config import BackendConfig, load_config
from namus_edge.core.errors import ModelLoadError
from namus_edge.models.backends.factory import create_backend
from namus_edge.models.backends.onnxruntime_backend import provider_list
from namus_edge.models.preprocess import to_blob
from namus_edge.models.registry import get_spec, resolve


@pytest.mark.parametrize(
    ("model", "pixel_bgr", "expected_rgb_values"),
    [
        # ArcFace-style (EdgeFace): RGB, (x - 127.5) / 127.5
        ("edgeface_xs", (0, 127.5, 255), (1.0, 0.0, -1.0)),
        # SFace: raw RGB 0-255 (normalisation inside the graph)
        ("sface", (10, 20, 30), (30.0, 20.0, 10.0)),
        # age-v1: RGB, (x - mean) / 256
        ("age_v1", (104.298, 117.001, 122.782), (0.0, 0.0, 0.0)),
        # YuNet: BGR raw
        ("yunet_dynamic", (1, 2, 3), (1.0, 2.0, 3.0)),
        # SCRFD: RGB, (x - 127.5) / 128
        ("det_500m", (127.5, 127.5, 255.5), (1.0, 0.0, 0.0)),
    ],
)
def test_to_blob_contract_table(model, pixel_bgr, expected_rgb_values):
    contract = get_spec(model).contract
    img = np.zeros((2, 4, 4, 3), np.float32)
    img[...] = pixel_bgr
    blob = to_blob(img, contract)
    assert blob.shape == (2, 3, 4, 4) and blob.dtype == np.float32
    np.testing.assert_allclose(blob[0, :, 0, 0], expected_rgb_values, atol=1e-5)


def test_to_blob_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        to_blob(np.zeros((4, 4, 3), np.uint8), get_spec("edgeface_xs").contract)


def test_provider_lists():
    assert provider_list(BackendConfig()) == ["CPUExecutionProvider"]
    trt = provider_list(BackendConfig(provider="tensorrt", trt_engine_cache_dir="/x", trt_fp16=True))
    assert trt[0][0] == "TensorrtExecutionProvider" and trt[0][1]["trt_engine_cache_path"] == "/x"
    assert trt[-1] == "CPUExecutionProvider"


def test_unavailable_provider_is_refused_not_silently_cpu(model_cache):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal path needs a CPU-only build")
    path = resolve("yunet_dynamic", model_cache)
    with pytest.raises(ModelLoadError, match="provider=cuda needs CUDAExecutionProvider"):
        create_backend(path, BackendConfig(provider="cuda"))


def test_backend_reports_engine_and_threads(model_cache, caplog):
    caplog.set_level("INFO")
    b = create_backend(resolve("yunet_dynamic", model_cache), BackendConfig(intra_op_threads=2))
    assert b.engine == "onnxruntime:CPUExecutionProvider"
    assert "CPUExecutionProvider (threads intra=2" in caplog.text
    assert [i.name for i in b.inputs] == ["input"] and len(b.outputs) == 12


@pytest.mark.parametrize("size", [(640, 640), (640, 384), (320, 320)])
@pytest.mark.parametrize("detector", ["det_500m", "yunet_dynamic"])
def test_detector_input_sizes_agree(detector, size, model_cache, test_images):
    import cv2

    from namus_edge.models.analyzer import FaceAnalyzer

    cfg = load_config(overrides=["models.set=custom", f"models.detector={detector}",
                                 f"detection.input_size=[{size[0]},{size[1]}]", "models.age=null"])
    a = FaceAnalyzer(cfg, model_cache, with_age=False)
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    dets = a.detect(img)
    assert len(dets) == 1
    # same face box at every input size (a few pixels of the 232x344 box)
    np.testing.assert_allclose(dets[0].bbox, [378, 83, 610, 427], atol=25)


@pytest.mark.parametrize("detector", ["det_500m", "yunet_dynamic"])
def test_detector_blob_equals_contract_formula(detector, model_cache):
    from namus_edge.models.detector import FaceDetector

    spec = get_spec(detector)
    det = FaceDetector(create_backend(resolve(detector, model_cache), BackendConfig()), spec, load_config().detection)
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    c = spec.contract
    ref = (img[:, :, ::-1] if c.color == "RGB" else img).astype(np.float32)
    ref = ((ref - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(det._blob(img), ref, atol=1e-6)


def test_letterbox_follows_insightface_rounding():
    from namus_edge.models.detector import letterbox

    lb = letterbox(np.zeros((1080, 1920, 3), np.uint8), (640, 640))
    # width limits: 640 x int(640 * 1080 / 1920) = 640 x 360, scale = 360 / 1080
    assert lb.scale == pytest.approx(360 / 1080)
    lb = letterbox(np.zeros((700, 300, 3), np.uint8), (640, 640))
    assert lb.scale == pytest.approx(640 / 700)  # height limits: width int(640 / (700 / 300)) = 274
