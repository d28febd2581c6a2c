"""TensorRT-ready ONNX: shapes, opset, metadata, checker, and output equality on real faces (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from namus_edge.export.calibration import list_images, load_inputs
from namus_edge.export.onnx_prep import (
    META_PREFIX,
    PrepError,
    default_sizes,
    lower_opset,
    prepare_model,
    read_metadata,
)
from namus_edge.models.registry import get_spec


@pytest.fixture(scope="module")
def photos(test_images: Path) -> list[Path]:
    return sorted(test_images.glob("*.jpg"))


@pytest.fixture(scope="module")
def face_crops(data_dir: Path) -> list[Path]:
    """Real face crops (BBT, 150x150): every 4th of the 40 photos of 8 people."""
    return list_images(data_dir / "verification" / "bbt")[::4]


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape)


# (model, size, expected per-stride output rows for detectors)
DETECTOR_CASES = [
    ("det_500m", (640, 640), (12800, 3200, 800)),
    ("det_500m", (320, 320), (3200, 800, 200)),  # original declares 640x640 sizes for every input
    ("det_2.5g", (640, 384), (7680, 1920, 480)),  # original output dims are 0
    ("yunet_dynamic", (640, 384), (3840, 960, 240)),
    ("yunet_2023mar", (640, 640), (6400, 1600, 400)),
]


@pytest.mark.parametrize(("name", "size", "rows"), DETECTOR_CASES)
def test_detector_fixed_shapes_equal_original_on_real_photos(prepared, name, size, rows):
    report = prepared(name, size)  # letterboxed real photos, contract normalisation, verified in prepare_and_verify
    assert report.diffs and all(d.ok for d in report.diffs), report.diffs
    assert max(d.max_abs for d in report.diffs) < 1e-4
    w, h = size
    assert report.path is not None and report.path.name == f"{name}_{w}x{h}.onnx"
    model = onnx.load(str(report.path))
    inp = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in inp] == [1, 3, h, w]
    shapes = list(report.output_shapes.values())
    assert all(_static(s) for s in shapes), shapes
    per_stride = [s[-2] for s in shapes[:3]]  # SCRFD (N, 1) / YuNet (1, N, 1) score outputs
    assert tuple(per_stride) == rows
    assert report.opset[1] <= 17 and report.ir_version[1] <= 8
    onnx.checker.check_model(model, full_check=True)


def test_scrfd_declared_output_shapes_match_a_run(model_cache, photos):
    spec = get_spec("det_500m")
    model, report = prepare_model(model_cache / spec.filename, spec, (320, 320), batch=1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, _ = load_inputs(photos[:1], spec, (320, 320))
    outs = sess.run(None, {spec.contract.name: x})
    assert [o.shape for o in outs] == list(report.output_shapes.values())


def test_age_opset_18_lowered_to_17_equal_on_real_faces_with_dynamic_batch(prepared, face_crops):
    report = prepared("age_v1", (64, 64))
    assert report.opset == (18, 17)
    assert report.ir_version == (10, 8)
    assert any("opset 18 -> 17" in c for c in report.changes)
    assert max(d.max_abs for d in report.diffs) < 1e-5
    # one run over the whole batch of real faces: the batch axis stayed dynamic
    assert report.diffs[0].shape == (len(face_crops), 81)
    model = onnx.load(str(report.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert all(n.op_type != "Pad" or len(n.input) <= 3 for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)


def test_embedder_simplified_equal_on_real_faces(prepared, face_crops):
    report = prepared("edgeface_xs", (112, 112))
    assert report.simplified and report.nodes[1] < report.nodes[0]
    assert report.output_shapes["embedding"] == ("batch", 512)
    assert report.diffs[0].shape == (len(face_crops), 512)
    assert max(d.max_abs for d in report.diffs) < 1e-4


def test_metadata_written_and_read_back(model_cache, tmp_path):
    spec = get_spec("yunet_dynamic")
    model, _ = prepare_model(model_cache / spec.filename, spec, (320, 320), batch=1)
    path = tmp_path / "y.onnx"
    path.write_bytes(model.SerializeToString())
    meta = read_metadata(path)
    assert meta["source_sha256"] == spec.sha256
    assert meta["model"] == "yunet_dynamic"
    assert meta["input_size"] == "320x320"
    assert meta["input_shape"] == "1x3x320x320"
    assert meta["color"] == "BGR"
    assert meta["mean"] == "0,0,0" and meta["std"] == "1,1,1"
    assert meta["tool.onnx"] == onnx.__version__
    # keys carry the namespace prefix in the file itself
    assert all(p.key.startswith(META_PREFIX) for p in model.metadata_props)


def test_existing_metadata_is_kept(model_cache):
    spec = get_spec("edgeface_xs")
    model, _ = prepare_model(model_cache / spec.filename, spec, (112, 112), simplify=False)
    keys = {p.key for p in model.metadata_props}
    assert "license" in keys and f"{META_PREFIX}color" in keys


def test_prepared_files_are_deterministic(model_cache):
    spec = get_spec("det_500m")
    a, _ = prepare_model(model_cache / spec.filename, spec, (320, 320), batch=1)
    b, _ = prepare_model(model_cache / spec.filename, spec, (320, 320), batch=1)
    assert a.SerializeToString() == b.SerializeToString()


def test_fixed_size_model_refuses_other_size(model_cache):
    spec = get_spec("yunet_2023mar")
    with pytest.raises(PrepError, match=r"fixed 640x640 input; 320x320 is not supported"):
        prepare_model(model_cache / spec.filename, spec, (320, 320), batch=1)
    assert default_sizes(spec, [(320, 320)]) == [(640, 640)]


def test_detector_size_must_be_multiple_of_32(model_cache):
    spec = get_spec("det_500m")
    with pytest.raises(PrepError, match=r"640x600 must be positive multiples of 32"):
        prepare_model(model_cache / spec.filename, spec, (640, 600), batch=1)


def test_wrong_file_refused(model_cache):
    spec = get_spec("det_500m")
    with pytest.raises(PrepError, match=r"yunet_s_dynamic.onnx: sha256 .* is not the registered det_500m"):
        prepare_model(model_cache / "yunet_s_dynamic.onnx", spec, (640, 640), batch=1)


def _opset18_model(node: onnx.NodeProto, inits: list[TensorProto], out_shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_lower_reduce_mean_axes_input_to_attribute():
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 3])
    model = _opset18_model(helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1), [axes], [2, 1, 4, 1])
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float32)
    before = _run(model, x)
    changes = lower_opset(model, 17)
    assert changes and model.opset_import[0].version == 17
    node = model.graph.node[0]
    assert list(node.input) == ["x"] and helper.get_attribute_value(node.attribute[-1]) == [1, 3]
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_run(model, x), before)


def test_lower_refuses_pad_with_axes_input():
    inits = [
        helper.make_tensor("pads", TensorProto.INT64, [2], [1, 1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [3]),
    ]
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="pad_w")
    model = _opset18_model(node, inits, [2, 3, 4, 7])
    with pytest.raises(PrepError, match=r"cannot lower opset 18 -> 17: Pad \(pad_w\): uses the opset-18 'axes'"):
        lower_opset(model, 17)


def test_lower_noop_when_opset_already_low(model_cache):
    model = onnx.load(str(model_cache / get_spec("det_500m").filename))
    assert lower_opset(model, 17) == []
    assert model.opset_import[0].version == 11
