"""`namus-edge train age-head`: reproducibility, the exported two-input graph against the training run."""

from __future__ import annotations

import json
import sys

import onnxruntime as ort
import pytest

from namus_edge.cli import main
from namus_edge.models.registry import BUNDLED_DIR

BACKBONE = "genderage_2018_112.onnx"


def _argv(tmp_path, data_dir, shared_dir, base, tag):
    return ["train", "age-head", "--manifest", str(data_dir / "identification" / "manifest.csv"),
            "--root", str(data_dir / "identification"), "--dataset", "utkface",
            "--backbone", str(shared_dir / "models" / BACKBONE), "--base-model", str(base),
            "--out", str(tmp_path / f"out-{tag}"), "--work-dir", str(tmp_path / "work"), "--limit", "80",
            "--val-fraction", "0.25", "--epochs", "5", "--hidden", "16", "--threads", "1", "--name", "head_test"]


def test_without_torch_the_command_says_how_to_install(monkeypatch, capsys, tmp_path):
    for mod in ("namus_edge.training.run_head", "namus_edge.training.agehead", "namus_edge.training.run",
                "namus_edge.training.agesex", "namus_edge.training.backbone"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError
    rc = main(["train", "age-head", "--manifest", str(tmp_path / "m.csv"), "--root", str(tmp_path),
               "--backbone", str(tmp_path / "b.onnx"), "--base-model", str(tmp_path / "m.onnx"),
               "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path)])
    assert rc == 1
    assert 'pip install "namus-edge[training]"' in capsys.readouterr().err


def test_missing_base_model_is_named(tmp_path, data_dir, shared_dir, capsys):
    argv = _argv(tmp_path, data_dir, shared_dir, tmp_path / "absent.onnx", "x")
    assert main(argv) == 1
    assert f"--base-model {tmp_path / 'absent.onnx'}: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_training_twice_gives_the_same_metrics_and_an_onnx_matching_torch(tmp_path, data_dir, shared_dir,
                                                                         model_cache, monkeypatch, capsys):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    base = BUNDLED_DIR / "agesex_utk_v1.onnx"
    assert main(_argv(tmp_path, data_dir, shared_dir, base, "a")) == 0
    assert main(_argv(tmp_path, data_dir, shared_dir, base, "b")) == 0
    capsys.readouterr()
    first, second = (json.loads((tmp_path / f"out-{t}" / "report.json").read_text()) for t in "ab")
    assert first["data"]["validation"] == second["data"]["validation"] == 20
    for part in ("head", "model", "shipped"):
        assert first["validation"][part]["mae"] == pytest.approx(second["validation"][part]["mae"], abs=0.05)
    assert first["loss_history"] == pytest.approx(second["loss_history"], rel=1e-4)
    assert first["loss_history"][-1] < first["loss_history"][0]  # it learns
    assert first["inputs"]["embedder"] == "edgeface_xs"
    # the exported two-input graph reproduces the outputs the run saved, on runtime crops and embeddings
    parity = json.loads((tmp_path / "out-a" / "parity.json").read_text())
    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.imagefile import read_image
    from namus_edge.training.agesex import to_tensor

    analyzer = FaceAnalyzer(load_config(), model_cache, with_age=False)
    sess = ort.InferenceSession(str(tmp_path / "out-a" / "head_test.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data", "embedding"]
    for face in parity["faces"]:
        img = read_image(data_dir / "identification" / face["path"])
        prepared = analyzer.prepare(img, analyzer.detect(img, photo=True)[0])
        age, p_male = sess.run(None, {"data": to_tensor(prepared.aligned[None]).numpy(),
                                      "embedding": analyzer.embed([prepared])})
        assert float(age[0]) == pytest.approx(face["age"], abs=0.02)
        assert float(p_male[0]) == pytest.approx(face["p_male"], abs=1e-3)
