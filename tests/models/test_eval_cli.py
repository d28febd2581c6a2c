"""`namus-edge eval` on small real subsets of ../shared/data (the interface later checks use)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from namus_edge.cli import main
from namus_edge.models.evaluation import auc, best_threshold, kfold_accuracy, tar_at_far, verification_metrics


def _subset(src, dst, n_per_label, where):
    with open(src, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if where(r)]
    out = [r for r in rows if r["label"] == "1"][:n_per_label] + [r for r in rows if r["label"] == "0"][:n_per_label]
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return out


def test_verify_json_contract_and_no_face_counting(tmp_path, data_dir, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    pairs = tmp_path / "pairs.csv"
    rows = _subset(data_dir / "verification" / "pairs.csv", pairs, 8,
                   lambda r: r["protocol"] in ("lfw_view2_official", "all_same_identity_pairs", "age_matched_negative"))
    # one unreadable image: the pair must count as failed, never dropped
    with pairs.open(newline="") as fh:
        header = next(csv.reader(fh))
    extra = dict.fromkeys(header, "")
    extra.update(path_a="broken/nothing.jpg", path_b=rows[0]["path_b"], label="1", protocol="lfw_view2_official")
    with pairs.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=header).writerow(extra)
    rc = main(["eval", "verify", "--pairs", str(pairs), "--root", str(data_dir / "verification"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "tar_at_far", "auc", "no_face", "threshold", "by_protocol", "by_age_gap"):
        assert key in out
    assert set(out["tar_at_far"]) == {"1e-2", "1e-3"}
    assert out["pairs"] == 17
    assert out["no_face"]["failed_pairs"] == 1 and "broken/nothing.jpg" in out["no_face"]["files"]
    # 16 clean pairs are easy for EdgeFace; the failed positive pair is the one error
    assert out["accuracy_best"] == pytest.approx(16 / 17, abs=1e-9)
    assert "lfw_view2_official" in out["by_protocol"]
    assert set(out["by_age_gap"]) <= {"0-4", "5-9", "10-19", "20+"}


def test_age_json_contract(tmp_path, data_dir, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    with open(data_dir / "age" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] == "utkface"]
    pick = []
    for lo, hi in ((1, 12), (20, 28), (35, 44), (50, 58), (63, 72), (78, 90)):
        pick += [r for r in rows if lo <= int(r["age"]) <= hi][:2]
    man = tmp_path / "age.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(pick)
    assert main(["eval", "age", "--manifest", str(man), "--root", str(data_dir / "age"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["groups"]) == {"0-15", "16-30", "31-45", "46-60", "61-75", "76+"}
    assert all(v["count"] == 2 for v in out["groups"].values())
    assert 0 < out["mae"] < 15
    assert set(out["by_gender"]) == {"male", "female"} or set(out["by_gender"]) <= {"male", "female"}
    assert out["no_face"]["images"] == 0
    # sex from gender_v1, the second age from the project's own age+sex model; sex bands by true age
    # (no 13-17 row picked: null)
    assert out["sex_model"] == "gender_v1" and out["age2_model"] == "agesex_utk_v2"
    assert out["age_sex_mix"] == 0.75
    acc = out["sex_accuracy"]
    assert set(acc) == {"overall", "0-12", "13-17", "adult"}
    assert acc["13-17"] is None
    assert all(0.0 <= acc[k] <= 1.0 for k in ("overall", "0-12", "adult"))
    assert acc["adult"] >= 0.7  # 10 labelled adults
    labelled = [r for r in pick if r["gender"] in ("male", "female")]
    assert acc["overall"] * len(labelled) == pytest.approx(round(acc["overall"] * len(labelled)))
    assert set(out["sex_confidence_99"]) == {"0-12", "13-17", "adult"}
    assert sum(v["count"] for v in out["by_gender_race"].values()) == len(labelled)


def test_age_json_licence_clean_uses_gender_v1(tmp_path, data_dir, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    with open(data_dir / "age" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] == "utkface" and int(r["age"]) >= 25][:6]
    man = tmp_path / "age.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["eval", "age", "--manifest", str(man), "--root", str(data_dir / "age"), "--json",
                 "--set", "models.set=licence_clean"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sex_model"] == "gender_v1" and out["age2_model"] is None and out["age_sex_mix"] is None
    assert out["sex_accuracy"]["0-12"] is None and out["sex_accuracy"]["13-17"] is None
    assert out["sex_accuracy"]["adult"] == out["sex_accuracy"]["overall"] >= 0.5


def test_detect_json_contract(tmp_path, data_dir, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    with open(data_dir / "detection" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] == "fddb"][:12]
    man = tmp_path / "det.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["eval", "detect", "--manifest", str(man), "--root", str(data_dir / "detection"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["recall"]) == {"0.4", "0.5"}
    assert out["faces"] == sum(int(r["n_faces"]) for r in rows)
    assert out["recall"]["0.4"] >= out["recall"]["0.5"] > 0.7
    assert 0 < out["precision"] <= 1 and 0 < out["ap"] <= 1
    assert sum(v["faces"] for v in out["by_size"].values()) == out["faces"]


def test_detect_split_halves_and_verification(tmp_path, data_dir, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    with open(data_dir / "detection" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] == "fddb"][:9]
    man = tmp_path / "det.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = ["eval", "detect", "--manifest", str(man), "--root", str(data_dir / "detection"), "--json"]
    outs = {}
    for half in ("a:3", "b:3"):
        assert main([*base, "--split", half, "--verify-low", "0.2"]) == 0
        outs[half] = json.loads(capsys.readouterr().out)
    # the halves partition the images (4 + 5) and their faces
    assert (outs["a:3"]["images"], outs["b:3"]["images"]) == (4, 5)
    assert outs["a:3"]["faces"] + outs["b:3"]["faces"] == sum(int(r["n_faces"]) for r in rows)
    ver = outs["a:3"]["small_faces"]["verify"]
    assert ver["verifier"] == "det_2.5g" and ver["low"] == 0.2 and ver["threshold"] == 0.375
    # detection.verify_low in the config turns verification on as --verify-low does
    assert main(["--set", "detection.verify_low=0.2", *base, "--split", "a:3"]) == 0
    assert json.loads(capsys.readouterr().out) == outs["a:3"]
    assert main([*base, "--split", "c:3"]) == 1
    assert "--split expects a:SEED or b:SEED" in capsys.readouterr().err
    # far-face check: the same images unscaled in a 1080p frame; annotations move with them, faces get harder
    assert main([*base, "--split", "a:3", "--canvas", "1920x1080"]) == 0
    far = json.loads(capsys.readouterr().out)
    assert far["canvas"] == [1920, 1080] and far["faces"] == outs["a:3"]["faces"]
    assert 0 < far["recall"]["0.4"] <= outs["a:3"]["recall"]["0.4"]
    assert main([*base, "--canvas", "200x200"]) == 1
    assert "larger than the canvas" in capsys.readouterr().err


def test_eval_missing_column_is_clear(tmp_path, capsys):
    bad = tmp_path / "p.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["eval", "verify", "--pairs", str(bad), "--root", str(tmp_path)]) == 1
    assert "missing column(s) path_a, path_b, label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scores", "labels", "thr", "acc"),
    [
        ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], (0.2, 0.8), 1.0),
        ([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0], None, 0.75),
        ([0.5, 0.5], [1, 0], None, 0.5),
    ],
)
def test_best_threshold_table(scores, labels, thr, acc):
    t, a = best_threshold(np.asarray(scores), np.asarray(labels))
    assert a == pytest.approx(acc)
    if thr:
        assert thr[0] < t < thr[1]


def test_auc_tar_and_failed_pairs():
    s = np.asarray([0.9, 0.7, 0.3, 0.6, 0.2, 0.1])
    y = np.asarray([1, 1, 1, 0, 0, 0])
    assert auc(s, y) == pytest.approx(8 / 9)
    tar, thr = tar_at_far(s, y, 0.0)
    assert thr == pytest.approx(0.6) and tar == pytest.approx(2 / 3)
    m = verification_metrics([0.9, 0.1], [1, 0], [True, True], cross_validate=False)
    assert m["accuracy"] == 0.0 and m["failed_pairs"] == 2  # failed comparisons are wrong at every threshold


def test_kfold_is_held_out():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 100)
    s = np.where(y == 1, rng.normal(0.6, 0.1, 200), rng.normal(0.0, 0.1, 200))
    mean, std = kfold_accuracy(s, y)
    assert 0.98 <= mean <= 1.0 and std >= 0
