"""Parity metrics and the parity run on real photos (CPU: prepared ONNX as the model under test)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from namus_edge.core.config import BackendConfig, DetectionConfig
from namus_edge.core.errors import ModelError
from namus_edge.export.parity import THRESHOLDS, ParityRow, format_table, match_boxes, row_cosine, run_parity
from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend
from namus_edge.models.detector import FaceDetector
from namus_edge.models.registry import get_spec


@pytest.mark.parametrize(
    ("ref", "test", "expected"),
    [
        ([[0, 0, 10, 10]], [[0, 0, 10, 10]], [1.0]),
        ([[0, 0, 10, 10]], [[5, 0, 15, 10]], [1 / 3]),
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [[20, 20, 30, 30]], [0.0, 1.0]),  # one reference unmatched
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [[1, 1, 11, 11], [0, 0, 10, 10]], [1.0, 1.0]),  # one-to-one
        ([[0, 0, 10, 10]], np.zeros((0, 4)), [0.0]),
    ],
)
def test_match_boxes(ref, test, expected):
    np.testing.assert_allclose(match_boxes(np.array(ref, float), np.array(test, float)), expected)


def test_row_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [4.0, -3.0]])
    np.testing.assert_allclose(row_cosine(a, b), [1.0, -1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        row_cosine(a, b[:2])


@pytest.mark.parametrize(
    ("row", "ok"),
    [
        (ParityRow("m", "i", "cosine", 0.9951, ">=", 0.995), True),
        (ParityRow("m", "i", "cosine", 0.9949, ">=", 0.995), False),
        (ParityRow("m", "i", "|age diff| y", 1.2, "<=", 1.0), False),
        (ParityRow("m", "i", "faces", 3, "==", 3), True),
        (ParityRow("m", "i", "faces", 2, "==", 3), False),
    ],
)
def test_row_ok(row, ok):
    assert row.ok is ok


def test_table_reports_failures():
    rows = [ParityRow("edgeface_xs", "a.jpg", "cosine", 0.999, ">=", 0.995),
            ParityRow("edgeface_xs", "b.jpg", "cosine", 0.97, ">=", 0.995)]
    table = format_table(rows)
    assert "FAIL" in table.splitlines()[3] and "ok" in table.splitlines()[2]
    assert table.endswith("2 checks, 1 failed")


def test_issue_thresholds():
    assert THRESHOLDS["fp16"].cosine == 0.995 and THRESHOLDS["int8"].cosine == 0.98
    assert all(t.iou == 0.95 and t.age_years == 1.0 for t in THRESHOLDS.values())


def _backends(model_cache: Path, prepared, name: str, size: tuple[int, int]):
    spec = get_spec(name)
    path = prepared(name, size).path
    return spec, OnnxRuntimeBackend(model_cache / spec.filename, BackendConfig()), OnnxRuntimeBackend(
        path, BackendConfig())


@pytest.fixture(scope="module")
def photos(test_images: Path) -> list[tuple[str, np.ndarray]]:
    return [(p.name, cv2.imread(str(p))) for p in sorted(test_images.glob("*.jpg"))]


def test_detector_parity_prepared_vs_original(model_cache, prepared, photos):
    spec, ref, test = _backends(model_cache, prepared, "det_500m", (640, 384))
    rows = run_parity(spec, ref, test, photos, "fp32", size=(640, 384))
    assert all(r.ok for r in rows), format_table(rows)
    faces = {r.item: r.value for r in rows if r.metric == "faces"}
    assert faces["solvay_1927.jpg"] >= 20 and faces["obama_2012.jpg"] == 1
    assert all(r.value > 0.999 for r in rows if r.metric == "min IoU")


def test_detector_parity_fails_on_different_input_size(model_cache, photos):
    """The check can fail: the same detector at 320x320 does not reproduce 640x640 boxes/counts."""
    spec = get_spec("det_500m")
    ref = OnnxRuntimeBackend(model_cache / spec.filename, BackendConfig())

    class _SmallerInput(OnnxRuntimeBackend):
        def run(self, feeds):  # runs the model on a half-size copy of the frame, like a wrongly built engine
            x = feeds["input.1"][0].transpose(1, 2, 0)
            small = cv2.resize(cv2.resize(x, (320, 320)), (640, 640))
            return super().run({"input.1": np.ascontiguousarray(small.transpose(2, 0, 1)[None])})

    rows = run_parity(spec, ref, _SmallerInput(model_cache / spec.filename, BackendConfig()), photos, "fp16",
                      size=(640, 640))
    assert any(not r.ok for r in rows)


def test_embedder_and_age_parity_on_aligned_real_faces(model_cache, prepared, photos):
    det_spec = get_spec("det_500m")
    detector = FaceDetector(OnnxRuntimeBackend(model_cache / det_spec.filename, BackendConfig()), det_spec,
                            DetectionConfig())
    for name, size in (("edgeface_xs", (112, 112)), ("age_v1", (64, 64))):
        spec, ref, test = _backends(model_cache, prepared, name, size)
        rows = run_parity(spec, ref, test, photos, "fp32", detector=detector)
        assert len(rows) == 6 and all(r.ok for r in rows), format_table(rows)
        if name == "edgeface_xs":
            assert min(r.value for r in rows) > 0.9999
        else:
            assert max(r.value for r in rows) < 0.01


def test_parity_needs_detector_for_faces(model_cache, photos):
    spec = get_spec("age_v1")
    b = OnnxRuntimeBackend(model_cache / spec.filename, BackendConfig())
    with pytest.raises(ModelError, match="needs a FaceDetector"):
        run_parity(spec, b, b, photos, "fp16")
