"""TensorRT engines on a real GPU: build, load through the native backend, parity, refusals.

Run with ``pytest -m gpu tests/export/test_trt_gpu.py`` on a machine with an NVIDIA GPU,
TensorRT (>= 8.5) and pycuda; elsewhere every test is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from namus_edge.core.config import BackendConfig, DetectionConfig
from namus_edge.core.errors import ModelLoadError
from namus_edge.export.onnx_prep import default_batch, prepare_model
from namus_edge.export.parity import format_table, run_parity
from namus_edge.models.backends.engine_cache import BatchProfile, EngineManifest, EngineMismatchError, read_manifest
from namus_edge.models.registry import get_spec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> str:
    """Name of CUDA device 0; skips (with the reason) where TensorRT, pycuda or a GPU is missing."""
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs tensorrt and pycuda ({exc})")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
        return str(cuda.Device(0).name())
    except cuda.Error as exc:
        pytest.skip(f"CUDA not usable: {exc}")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def photos(test_images: Path) -> list[tuple[str, np.ndarray]]:
    return [(p.name, cv2.imread(str(p))) for p in sorted(test_images.glob("*.jpg"))]


@pytest.fixture(scope="module")
def cpu_detector(model_cache: Path):
    from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend
    from namus_edge.models.detector import FaceDetector

    spec = get_spec("det_500m")
    return FaceDetector(OnnxRuntimeBackend(model_cache / spec.filename, BackendConfig()), spec, DetectionConfig())


def _build(model_cache: Path, engine_dir: Path, name: str, precision: str, size=None, batch=None, calib=None):
    from namus_edge.export.trt_build import build_engine, plan_build

    spec = get_spec(name)
    plan = plan_build(spec, precision=precision, out_dir=engine_dir, size=size, batch=batch, calib_dir=calib)
    model, _ = prepare_model(model_cache / spec.filename, spec, plan.size, batch=default_batch(spec))
    return build_engine(plan, model.SerializeToString())


def _ref(model_cache: Path, name: str):
    from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_cache / get_spec(name).filename, BackendConfig())


def _cfg(engine_dir: Path, precision: str) -> BackendConfig:
    return BackendConfig(kind="tensorrt", engine_dir=str(engine_dir), engine_precision=precision)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_embedder_engine_parity(gpu, model_cache, engine_dir, photos, cpu_detector, precision):
    from namus_edge.models.backends.factory import create_backend

    path, manifest = _build(model_cache, engine_dir, "edgeface_xs", precision, batch=BatchProfile(1, 4, 8))
    assert manifest.key.gpu_name == gpu and path.is_file() and (engine_dir / "timing.cache").is_file()
    backend = create_backend(model_cache / get_spec("edgeface_xs").filename, _cfg(engine_dir, precision))
    assert backend.engine.startswith(f"tensorrt:{precision}")
    out = backend.run({"input": np.zeros((5, 3, 112, 112), np.float32)})
    assert out[0].shape == (5, 512)  # dynamic batch inside the profile
    rows = run_parity(get_spec("edgeface_xs"), _ref(model_cache, "edgeface_xs"), backend, photos, precision,
                      detector=cpu_detector)
    print(format_table(rows))
    assert len(rows) == len(photos) and all(r.ok for r in rows), format_table(rows)
    backend.close()


def test_int8_embedder_with_calibration(gpu, model_cache, engine_dir, data_dir, photos, cpu_detector):
    from namus_edge.models.backends.tensorrt_backend import TensorRTBackend

    calib = data_dir / "verification" / "bbt"  # 40 real face crops
    path, manifest = _build(model_cache, engine_dir, "edgeface_xs", "int8", batch=BatchProfile(1, 8, 8), calib=calib)
    assert manifest.calibration["images"] == "40"
    assert (engine_dir / manifest.calibration["cache"]).is_file()
    backend = TensorRTBackend.from_engine(path, _cfg(engine_dir, "int8"))
    rows = run_parity(get_spec("edgeface_xs"), _ref(model_cache, "edgeface_xs"), backend, photos, "int8",
                      detector=cpu_detector)
    print(format_table(rows))
    assert all(r.ok for r in rows), format_table(rows)


def test_detector_engines_per_size(gpu, model_cache, engine_dir, photos):
    from namus_edge.models.backends.factory import create_backend

    for size in ((640, 640), (320, 320)):
        _build(model_cache, engine_dir, "det_500m", "fp16", size=size)
    backend = create_backend(model_cache / get_spec("det_500m").filename, _cfg(engine_dir, "fp16"))
    ref = _ref(model_cache, "det_500m")
    for size in ((640, 640), (320, 320)):
        rows = run_parity(get_spec("det_500m"), ref, backend, photos, "fp16", size=size)
        print(format_table(rows))
        assert all(r.ok for r in rows), format_table(rows)
    with pytest.raises(ModelLoadError, match=r"no TensorRT engine for input 480x480 \(built: "):
        backend.run({"input.1": np.zeros((1, 3, 480, 480), np.float32)})


def test_age_engine_parity(gpu, model_cache, engine_dir, photos, cpu_detector):
    from namus_edge.models.backends.factory import create_backend

    _build(model_cache, engine_dir, "age_v1", "fp16")
    backend = create_backend(model_cache / get_spec("age_v1").filename, _cfg(engine_dir, "fp16"))
    rows = run_parity(get_spec("age_v1"), _ref(model_cache, "age_v1"), backend, photos, "fp16", detector=cpu_detector)
    print(format_table(rows))
    assert all(r.ok for r in rows), format_table(rows)


def test_engine_for_other_gpu_or_tampered_refused(gpu, model_cache, engine_dir, tmp_path):
    from namus_edge.models.backends.tensorrt_backend import TensorRTBackend

    path, manifest = _build(model_cache, engine_dir, "age_v1", "fp32")
    other = tmp_path / path.name
    shutil.copy(path, other)
    moved = dataclasses.replace(manifest, key=dataclasses.replace(manifest.key, gpu_name="Orin"))
    other.with_suffix(".json").write_text(moved.to_json())
    with pytest.raises(EngineMismatchError, match=r"built for GPU 'Orin'"):
        TensorRTBackend.from_engine(other, BackendConfig(kind="tensorrt"))
    other.with_suffix(".json").write_text(manifest.to_json())
    other.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(EngineMismatchError, match="manifest says"):
        TensorRTBackend.from_engine(other, BackendConfig(kind="tensorrt"))
    assert isinstance(read_manifest(path), EngineManifest)
