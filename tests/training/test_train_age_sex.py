"""`namus-edge train age-sex`: the backbone rebuild, the missing-extra message, reproducibility."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest

from namus_edge.cli import main

BACKBONE = "genderage_2018_112.onnx"


def test_without_torch_the_command_says_how_to_install(monkeypatch, capsys, tmp_path):
    for mod in ("namus_edge.training.run", "namus_edge.training.agesex", "namus_edge.training.backbone"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError
    rc = main(["train", "age-sex", "--manifest", str(tmp_path / "m.csv"), "--root", str(tmp_path),
               "--backbone", str(tmp_path / "b.onnx"), "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == ['namus-edge: error: training needs PyTorch: pip install "namus-edge[training]"']


def test_backbone_rebuilt_in_torch_equals_the_onnx_graph(shared_dir, test_images, model_cache):
    import cv2
    import torch

    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.training.agesex import to_tensor
    from namus_edge.training.backbone import frozen_features, load_backbone

    path = shared_dir / "models" / BACKBONE
    analyzer = FaceAnalyzer(load_config(), model_cache, with_age=False)
    crops = []
    for name in ("obama_2012", "biden_2010", "astronaut"):
        img = cv2.imread(str(test_images / f"{name}.jpg"))
        crops.append(analyzer.prepare(img, analyzer.detect(img)[0]).aligned)
    batch = np.stack(crops)
    features, fc, fc_bn, names = load_backbone(path)
    features.eval()
    fc_bn.eval()
    with torch.no_grad():
        ours = fc_bn(fc(features(to_tensor(batch)))).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"data": to_tensor(batch).numpy()})[0]
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # sex logits of the original head: all three are men except the astronaut (Eileen Collins)
    assert (ref[:, 1] > ref[:, 0]).tolist() == [True, True, False]
    pooled = frozen_features(path, batch, "flatten0").astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(features(to_tensor(batch)).numpy(), pooled, atol=2e-3)
    assert names[-1] == "flatten0"


def _train(tmp_path, data_dir, shared_dir, tag, *, limit=80, mode="last1", epochs=3, name="agesex_test", extra=()):
    out = tmp_path / f"out-{tag}"
    argv = ["train", "age-sex", "--manifest", str(data_dir / "identification" / "manifest.csv"),
            "--root", str(data_dir / "identification"), "--dataset", "utkface",
            "--backbone", str(shared_dir / "models" / BACKBONE), "--out", str(out),
            "--work-dir", str(tmp_path / f"work-{tag}"), "--limit", str(limit), "--val-fraction", "0.25",
            "--mode", mode, "--epochs", str(epochs), "--threads", "1", "--name", name, *extra]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text()), out


def _assert_onnx_matches_the_run(model, out, data_dir, model_cache):
    """The exported graph reproduces the PyTorch outputs the run saved (parity.json) on runtime crops."""
    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.imagefile import read_image
    from namus_edge.training.agesex import to_tensor

    parity = json.loads((out / "parity.json").read_text())
    analyzer = FaceAnalyzer(load_config(), model_cache, with_age=False)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for face in parity["faces"]:
        img = read_image(data_dir / "identification" / face["path"])
        crop = analyzer.prepare(img, analyzer.detect(img, photo=True)[0]).aligned
        age, p_male = sess.run(None, {"data": to_tensor(crop[None]).numpy()})
        assert float(age[0]) == pytest.approx(face["age"], abs=0.02)
        assert float(p_male[0]) == pytest.approx(face["p_male"], abs=1e-3)


@pytest.mark.slow
def test_training_twice_gives_the_same_metrics_and_an_onnx_matching_torch(tmp_path, data_dir, shared_dir,
                                                                         model_cache, monkeypatch, capsys):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    first, out1 = _train(tmp_path, data_dir, shared_dir, "a")
    second, _ = _train(tmp_path, data_dir, shared_dir, "b")
    capsys.readouterr()
    assert first["data"]["manifest_sha256"] == second["data"]["manifest_sha256"]
    assert first["data"]["validation"] == second["data"]["validation"] == 20
    for part in ("age_model", "age_mixed"):
        assert first["validation"][part]["mae"] == pytest.approx(second["validation"][part]["mae"], abs=0.05)
    assert first["validation"]["sex_accuracy"] == second["validation"]["sex_accuracy"]
    assert first["loss_history"] == pytest.approx(second["loss_history"], rel=1e-4)
    assert first["loss_history"][-1] < first["loss_history"][0]  # it learns
    # the exported graph reproduces the PyTorch outputs the run saved
    _assert_onnx_matches_the_run(out1 / "agesex_test.onnx", out1, data_dir, model_cache)


def test_folding_batchnorm_keeps_the_function(shared_dir):
    import torch

    from namus_edge.training.agesex import build, fold_batchnorm

    net, _ = build(shared_dir / "models" / BACKBONE)
    net.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32))
    with torch.no_grad():
        sex, pairs = net(x)
        bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features)
        fold_batchnorm(net.features)
        sex2, pairs2 = net(x)
    # every conv's BN is gone; the one after the last block (bn1, after a ReLU) stays
    assert bns == 28
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 1
    np.testing.assert_allclose(sex2.numpy(), sex.numpy(), atol=1e-4)
    np.testing.assert_allclose(pairs2.numpy(), pairs.numpy(), atol=1e-4)


def test_augment_is_seeded_bounded_and_changes_the_crop():
    import torch

    from namus_edge.training.agesex import augment

    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (6, 3, 112, 112)).astype(np.float32))
    a = augment(x, np.random.default_rng(7))
    b = augment(x, np.random.default_rng(7))
    c = augment(x, np.random.default_rng(8))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0
    assert float((a - x).abs().mean()) > 1.0  # it does jitter


@pytest.mark.slow
def test_full_fine_tuning_trains_every_layer_and_exports_a_matching_onnx(tmp_path, data_dir, shared_dir,
                                                                        model_cache, monkeypatch, capsys):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    report, out = _train(tmp_path, data_dir, shared_dir, "full", limit=40, mode="full", epochs=2, name="agesex_full",
                         extra=("--batch-size", "16"))
    capsys.readouterr()
    assert report["settings"]["mode"] == "full" and report["settings"]["augment"] is True
    assert report["data"]["validation"] == 10
    assert len(report["loss_history"]) == 2
    # the first convolution changed: every layer was trained (compared with the original, folded the same way)
    import onnx
    from onnx import numpy_helper

    from namus_edge.training.agesex import build, fold_batchnorm

    original, _ = build(shared_dir / "models" / BACKBONE)
    fold_batchnorm(original.features)
    first = next(m for m in original.features if m.__class__.__name__ == "Conv2d").weight.detach().numpy()
    trained = onnx.load(str(out / "agesex_full.onnx"))
    conv1 = [numpy_helper.to_array(i) for i in trained.graph.initializer if tuple(i.dims) == first.shape]
    assert len(conv1) == 1
    assert float(np.abs(conv1[0] - first).max()) > 1e-4
    # the exported graph reproduces the PyTorch outputs on runtime crops
    _assert_onnx_matches_the_run(out / "agesex_full.onnx", out, data_dir, model_cache)


def test_bad_backbone_lr_scale_is_named(tmp_path, capsys):
    rc = main(["train", "age-sex", "--manifest", str(tmp_path / "m.csv"), "--root", str(tmp_path),
               "--backbone", str(tmp_path / "b.onnx"), "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path),
               "--mode", "full", "--backbone-lr-scale", "0"])
    assert rc == 1
    assert "--backbone-lr-scale must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
