"""Session cache of prepared (TensorRT-ready) models, each verified once on real images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from namus_edge.export.calibration import list_images, load_inputs
from namus_edge.export.onnx_prep import PrepReport, prepare_and_verify
from namus_edge.models.registry import get_spec

Prepared = Callable[[str, tuple[int, int]], PrepReport]


@pytest.fixture(scope="session")
def prepared(model_cache: Path, test_images: Path, data_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """``prepared(name, size)`` -> report of the model prepared at ``size`` and verified against the
    original with onnxruntime: detectors on the letterboxed test photos, embedders and the age
    model on every 4th BBT face crop (10 real faces, one batch). ``report.path`` is the file."""
    out = tmp_path_factory.mktemp("prepared")
    cache: dict[tuple[str, tuple[int, int]], PrepReport] = {}
    photos = sorted(test_images.glob("*.jpg"))
    faces = list_images(data_dir / "verification" / "bbt")[::4]

    def get(name: str, size: tuple[int, int]) -> PrepReport:
        if (name, size) not in cache:
            spec = get_spec(name)
            inputs, _ = load_inputs(photos if spec.role == "detector" else faces, spec, size)
            _, report = prepare_and_verify(model_cache / spec.filename, spec, size, inputs, out)
            cache[(name, size)] = report
        return cache[(name, size)]

    return get
