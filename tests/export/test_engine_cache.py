"""Engine cache keys, manifests and refusals; build-request validation (all CPU).

A real TensorRT engine can only be built on a GPU; these tests store arbitrary bytes as the
"engine" because everything checked here (names, manifests, hashes, refusals) is file-level.
The GPU path is tested in test_trt_gpu.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from namus_edge.core.config import BackendConfig
from namus_edge.core.errors import ModelLoadError
from namus_edge.core.extras import MissingExtraError
from namus_edge.export.calibration import CalibrationError
from namus_edge.export.trt_build import DEFAULT_BATCH, FIXED_BATCH, TrtBuildError, is_jetson, plan_build
from namus_edge.models.backends.engine_cache import (
    BatchProfile,
    EngineKey,
    EngineManifest,
    EngineMismatchError,
    ManifestError,
    TensorSpec,
    check_runtime,
    find_engines,
    gpu_slug,
    read_manifest,
    sha256_bytes,
    verify_engine_bytes,
    write_engine,
)
from namus_edge.models.backends.factory import create_backend
from namus_edge.models.registry import get_spec

SHA = get_spec("edgeface_xs").sha256
ORIN = "Orin"
TRT85 = "8.5.2.2"


def _key(**kw) -> EngineKey:
    base = dict(model="edgeface_xs", source_sha256=SHA, input_size=(112, 112), batch=BatchProfile(1, 8, 32),
                precision="fp16", trt_version=TRT85, gpu_name=ORIN)
    base.update(kw)
    return EngineKey(**base)


def _manifest(key: EngineKey, engine: bytes) -> EngineManifest:
    shapes = [(n, 3, *key.input_size[::-1]) for n in (key.batch.min, key.batch.opt, key.batch.max)]
    return EngineManifest(
        key=key, engine_sha256=sha256_bytes(engine), engine_bytes=len(engine), prepared_onnx_sha256="0" * 64,
        inputs=(TensorSpec("input", *shapes),), outputs=("embedding",), workspace_mib=1024, build_seconds=12.5,
        compute_capability="8.7", calibration={}, tools={"tensorrt": key.trt_version}, built_at="2025-01-01T00:00:00",
    )


@pytest.mark.parametrize(
    ("name", "slug"),
    [("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"), ("Orin", "orin"), ("Xavier (nvgpu)", "xavier-nvgpu")],
)
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


@pytest.mark.parametrize(
    ("text", "expected", "error"),
    [
        ("1:8:32", BatchProfile(1, 8, 32), None),
        ("4", BatchProfile(4, 4, 4), None),
        ("8:4:32", None, "1 <= min <= opt <= max"),
        ("0:1:2", None, "1 <= min <= opt <= max"),
        ("1:8", None, "MIN:OPT:MAX"),
        ("a:b:c", None, "MIN:OPT:MAX"),
    ],
)
def test_batch_profile_parse(text, expected, error):
    if error:
        with pytest.raises(ValueError, match=error):
            BatchProfile.parse(text)
    else:
        assert BatchProfile.parse(text) == expected


def test_key_names_every_dependency():
    key = _key()
    assert key.engine_name == f"edgeface_xs-{SHA[:12]}-112x112-b1-8-32-fp16-trt8.5.2.2-orin.engine"
    assert key.manifest_name.endswith(".json") and key.manifest_name[:-5] == key.engine_name[:-7]
    variants = [_key(precision="int8"), _key(trt_version="10.3.0"), _key(gpu_name="NVIDIA H100 80GB HBM3"),
                _key(source_sha256=get_spec("sface").sha256), _key(batch=BatchProfile(1, 4, 8)),
                _key(dla_core=0)]
    names = {v.engine_name for v in variants} | {key.engine_name}
    assert len(names) == len(variants) + 1


@pytest.mark.parametrize(
    ("kw", "error"),
    [({"source_sha256": "abc"}, "64 lowercase hex"), ({"precision": "int4"}, "precision must be"),
     ({"trt_version": "../x"}, "not a version")],
)
def test_key_validation(kw, error):
    with pytest.raises(ValueError, match=error):
        _key(**kw)


def test_manifest_roundtrip_and_write(tmp_path):
    engine = b"serialized-engine-bytes" * 100
    manifest = _manifest(_key(), engine)
    assert EngineManifest.from_json(manifest.to_json()) == manifest
    path = write_engine(tmp_path / "engines", manifest, engine)
    assert path.read_bytes() == engine
    assert read_manifest(path) == manifest
    assert not list((tmp_path / "engines").glob("*.part"))
    with pytest.raises(ValueError, match="do not match"):
        write_engine(tmp_path, manifest, engine + b"x")


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d.pop("engine_sha256"), "missing field 'engine_sha256'"),
        (lambda d: d.update(format=99), "manifest format 99"),
        (lambda d: d["key"].update(precision="fp8"), "invalid field value"),
    ],
)
def test_manifest_errors_name_the_problem(mutate, error):
    data = json.loads(_manifest(_key(), b"e").to_json())
    mutate(data)
    with pytest.raises(ManifestError, match=error):
        EngineManifest.from_json(json.dumps(data), source="m.json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        EngineManifest.from_json("{", source="m.json")


def test_engine_without_manifest_refused(tmp_path):
    (tmp_path / "x.engine").write_bytes(b"e")
    with pytest.raises(ManifestError, match=r"no manifest x.json beside it"):
        read_manifest(tmp_path / "x.engine")


def test_check_runtime_refuses_other_trt_and_gpu():
    manifest = _manifest(_key(), b"e")
    check_runtime(manifest, TRT85, "orin")  # same GPU, name case differs: accepted
    with pytest.raises(EngineMismatchError) as err:
        check_runtime(manifest, "8.6.1", "NVIDIA H100 80GB HBM3", source="a.engine")
    msg = str(err.value)
    assert "TensorRT 8.5.2.2 (this system runs TensorRT 8.6.1)" in msg
    assert "GPU 'Orin' (this device is 'NVIDIA H100 80GB HBM3')" in msg
    assert "namus-edge export trt --model edgeface_xs --precision fp16" in msg
    assert isinstance(err.value, ModelLoadError)


def test_verify_engine_bytes_detects_truncation():
    engine = b"0123456789" * 10
    manifest = _manifest(_key(), engine)
    verify_engine_bytes(manifest, engine)
    with pytest.raises(EngineMismatchError, match="99 bytes"):
        verify_engine_bytes(manifest, engine[:-1])


def test_find_engines_selects_by_model_precision_runtime(tmp_path):
    here = _key()
    others = [_key(precision="int8"), _key(source_sha256=get_spec("sface").sha256, model="sface"),
              _key(gpu_name="Xavier"), _key(trt_version="8.6.1")]
    for i, k in enumerate([here, *others]):
        write_engine(tmp_path, _manifest(k, bytes([i]) * 10), bytes([i]) * 10)
    found = find_engines(tmp_path, SHA, precision="fp16", trt_version=TRT85, gpu_name=ORIN)
    assert [p.name for p, _ in found] == [here.engine_name]
    assert find_engines(tmp_path, SHA, precision="int8", trt_version=TRT85, gpu_name=ORIN)[0][1].key.precision == "int8"
    assert find_engines(tmp_path, SHA, precision="fp32", trt_version=TRT85, gpu_name=ORIN) == []
    # only engines for another device: refused with the reason, not silently ignored
    with pytest.raises(EngineMismatchError, match=r"built for TensorRT 8.5.2.2 .*this system runs TensorRT 10.3"):
        find_engines(tmp_path, SHA, precision="fp16", trt_version="10.3", gpu_name=ORIN)
    with pytest.raises(ManifestError, match="does not exist"):
        find_engines(tmp_path / "nope", SHA, precision="fp16", trt_version=TRT85, gpu_name=ORIN)


def test_find_engines_skips_manifest_without_engine(tmp_path):
    key = _key()
    write_engine(tmp_path, _manifest(key, b"e"), b"e")
    (tmp_path / key.engine_name).unlink()
    assert find_engines(tmp_path, SHA, precision="fp16", trt_version=TRT85, gpu_name=ORIN) == []


# -- build requests (validated before TensorRT is imported) ------------------------------------


def test_plan_defaults(tmp_path):
    emb = plan_build(get_spec("edgeface_xs"), precision="fp16", out_dir=tmp_path)
    assert emb.batch == DEFAULT_BATCH and emb.size == (112, 112)
    assert emb.timing_cache == tmp_path / "timing.cache"
    det = plan_build(get_spec("det_500m"), precision="fp32", out_dir=tmp_path, size=(640, 384))
    assert det.batch == FIXED_BATCH and det.size == (640, 384)
    age = plan_build(get_spec("age_v1"), precision="fp16", out_dir=tmp_path, batch=BatchProfile(1, 4, 16))
    assert age.batch.tag == "b1-4-16" and age.size == (64, 64)


@pytest.mark.parametrize(
    ("model", "kw", "error"),
    [
        ("edgeface_xs", {"precision": "int8"}, r"INT8 for edgeface_xs needs calibration data: pass --calib DIR"),
        ("edgeface_xs", {"precision": "fp16", "calib_dir": Path(".")}, "--calib is only used for --precision int8"),
        ("edgeface_xs", {"precision": "fp16", "dla_core": 0}, "DLA cores exist only on Jetson"),
        ("edgeface_xs", {"precision": "bf16"}, "precision 'bf16' is not one of fp32, fp16, int8"),
        ("det_500m", {"precision": "fp16"}, "dynamic input: pass --size WxH"),
        ("det_500m", {"precision": "fp16", "size": (640, 640), "batch": BatchProfile(1, 4, 8)},
         "one frame at a time"),
        ("det_500m", {"precision": "fp16", "size": (600, 600)}, "multiples of 32"),
        ("yunet_2023mar", {"precision": "fp16", "size": (320, 320)}, "fixed 640x640 input"),
        ("age_v1", {"precision": "fp16", "workspace_mib": 4}, "at least 16"),
        ("det_500m", {"precision": "int8", "size": (640, 640), "calib_dir": Path("."), "calib_crop": "align"},
         "not the detector"),
    ],
)
def test_impossible_requests_fail_clearly(tmp_path, model, kw, error):
    kw = {"jetson": False, **kw}
    with pytest.raises(TrtBuildError, match=error):
        plan_build(get_spec(model), out_dir=tmp_path, **kw)


def test_dla_accepted_on_jetson_but_not_fp32(tmp_path):
    plan = plan_build(get_spec("age_v1"), precision="fp16", out_dir=tmp_path, dla_core=1, jetson=True)
    assert plan.dla_core == 1
    with pytest.raises(TrtBuildError, match="DLA runs FP16 or INT8 only"):
        plan_build(get_spec("age_v1"), precision="fp32", out_dir=tmp_path, dla_core=0, jetson=True)


def test_int8_calibration_folder_checked_before_gpu(tmp_path, test_images):
    with pytest.raises(TrtBuildError, match=r"at least 32 face images in .*testimages, found 6"):
        plan_build(get_spec("edgeface_xs"), precision="int8", out_dir=tmp_path, calib_dir=test_images)
    with pytest.raises(CalibrationError, match="does not exist"):
        plan_build(get_spec("edgeface_xs"), precision="int8", out_dir=tmp_path, calib_dir=tmp_path / "none")


def test_is_jetson_from_l4t_files(tmp_path):
    assert not is_jetson(tmp_path)
    dt = tmp_path / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert is_jetson(tmp_path)
    other = tmp_path / "x"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1")
    assert is_jetson(other)


# -- backend selection -------------------------------------------------------------------------


def test_tensorrt_backend_needs_engine_dir(model_cache):
    cfg = BackendConfig(kind="tensorrt")
    with pytest.raises(ModelLoadError, match=r"needs models\.backend\.engine_dir"):
        create_backend(model_cache / get_spec("age_v1").filename, cfg)


def test_tensorrt_backend_without_tensorrt_says_what_to_do(model_cache, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here: this test checks the message on machines without it")
    cfg = BackendConfig(kind="tensorrt", engine_dir=str(tmp_path))
    with pytest.raises(MissingExtraError, match=r'tensorrt.*pip install "namus-edge\[gpu\]"'):
        create_backend(model_cache / get_spec("age_v1").filename, cfg)
