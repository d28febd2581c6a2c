"""``namus-edge train age-sex``: data -> split -> train -> choose -> export -> report (PyTorch).

Selection (flip averaging, mixing with age-v1, sex confidence per band) is made on a validation
split of the *training* pool, never on the evaluation set; the evaluation manifest (e.g.
``shared/data/age``) is only scored.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from namus_edge.core.config import Config
from namus_edge.core.fsutil import write_atomic
from namus_edge.models.evaluation import (
    AGE_GROUPS,
    SEX_BANDS,
    bucket_of,
    mae,
    sex_accuracy,
    sex_confidence_for_precision,
)
from namus_edge.models.sex import mix_ages
from namus_edge.training.agesex import (
    TrainSettings,
    age_balance_weights,
    build,
    cached_features,
    crop_inputs,
    cut_index,
    export_onnx,
    fold_batchnorm,
    predict,
    predict_features,
    train,
)
from namus_edge.training.crops import FaceSet, calibrated_age_v1, load_faces

logger = logging.getLogger(__name__)

#: Weights of the trained model's age in the final age tried on the validation split
#: (1 = trained model alone, 0.5 = mean with calibrated age-v1).
MIX_CHOICES = (1.0, 0.75, 0.5, 0.25)
#: Ages (by calibrated age-v1) below which age-v1 alone is kept, tried on the validation split.
MIN_AGE_CHOICES = (0.0, 13.0, 16.0, 20.0)
#: Faces whose outputs go into the parity fixture.
PARITY_FACES = 8


@dataclass(frozen=True)
class RunInputs:
    """Where the data and the starting weights are."""

    manifest: Path
    root: Path
    dataset: str | None
    backbone: Path
    work_dir: Path
    out_dir: Path
    name: str
    val_fraction: float = 0.1
    limit: int | None = None
    eval_manifest: Path | None = None
    eval_root: Path | None = None
    workers: int = 1


def split(age: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation indices, stratified by 5-year age bin, seeded."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    bins = np.minimum(age // 5, 20).astype(np.int64)
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        idx = idx[rng.permutation(idx.size)]
        k = round(idx.size * val_fraction)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def age_report(pred: np.ndarray, faces: FaceSet) -> dict[str, Any]:
    """MAE overall, per age group, per sex and per race."""
    out: dict[str, Any] = {"count": len(faces), "mae": mae(pred, faces.age), "groups": {}, "by_sex": {}, "by_race": {}}
    groups = np.asarray([bucket_of(float(a), AGE_GROUPS) or "" for a in faces.age])
    for name, _, _ in AGE_GROUPS:
        m = groups == name
        out["groups"][name] = {"count": int(m.sum()), "mae": mae(pred[m], faces.age[m]) if m.any() else None}
    for code, label in ((1, "male"), (0, "female")):
        m = faces.male == code
        if m.any():
            out["by_sex"][label] = {"count": int(m.sum()), "mae": mae(pred[m], faces.age[m])}
    for race in sorted(set(faces.race.tolist()) - {""}):
        m = faces.race == race
        out["by_race"][race] = {"count": int(m.sum()), "mae": mae(pred[m], faces.age[m])}
    return out


def sex_thresholds(p_male: np.ndarray, faces: FaceSet, precision: float = 0.99) -> dict[str, Any]:
    """Per sex band: the confidence giving ``precision`` (see ``sex_confidence_for_precision``)."""
    out = {}
    for name, lo, hi in SEX_BANDS:
        m = (faces.age >= lo) & (faces.age <= hi)
        out[name] = sex_confidence_for_precision(p_male[m], faces.male[m], precision)
    return out


def _mixed(age_v1: np.ndarray, age: np.ndarray, mix: float, min_age: float) -> np.ndarray:
    out = mix_ages(age_v1, age, mix, min_age)
    assert out is not None
    return out


def _round(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, float):
        return round(x, 4) if np.isfinite(x) else None
    return x


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_age_sex(inputs: RunInputs, settings: TrainSettings, config: Config, command: str) -> dict[str, Any]:
    """Train, choose on validation, export; returns the report (also written to ``out_dir``).

    Writes ``<out_dir>/<name>.onnx``, ``<out_dir>/report.json``, ``<out_dir>/parity.json``
    (the torch outputs of the first validation faces, for the ONNX parity test) and, with an
    evaluation manifest, ``<out_dir>/eval_predictions.npz`` (per-face estimates for analysis).
    """
    pool = load_faces(inputs.manifest, inputs.root, inputs.work_dir, config, dataset=inputs.dataset,
                      limit=inputs.limit, workers=inputs.workers)
    tr_idx, va_idx = split(pool.age, inputs.val_fraction, settings.seed)
    tr, va = pool.subset(tr_idx), pool.subset(va_idx)
    logger.info("training pool %d faces: %d train, %d validation", len(pool), len(tr), len(va))
    net, names = build(inputs.backbone)
    cut = cut_index(names, settings.mode)
    if settings.mode == "full":
        fold_batchnorm(net.features)
        feats, feats_flip = crop_inputs(pool.aligned)
    else:
        feats, feats_flip = cached_features(inputs.backbone, pool.aligned, settings.mode, inputs.work_dir,
                                            pool.manifest_sha256)
    history = train(net, cut, feats[tr_idx], feats_flip[tr_idx], tr.age, tr.male, settings)

    # choices on validation
    v1_va = calibrated_age_v1(va, config)
    choices: dict[str, float] = {}
    best: tuple[float, bool, float, float] | None = None
    # criterion: MAE with every 5-year bin weighted equally (the evaluation set is age-stratified,
    # and missing persons are of every age), not the natural UTKFace mix of young adults
    bw = age_balance_weights(va.age)
    for flip in (False, True):
        age, _ = predict_features(net, cut, feats[va_idx], feats_flip[va_idx] if flip else None)
        for w in MIX_CHOICES:
            for lo in MIN_AGE_CHOICES:
                est = mix_ages(v1_va, age, w, lo)
                assert est is not None
                score = float(np.average(np.abs(est - va.age), weights=bw))
                choices[f"flip={flip},mix={w},min_age={lo}"] = score
                if best is None or score < best[0] - 1e-9:
                    best = (score, flip, w, lo)
    assert best is not None
    _, flip, mix, min_age = best
    va_age, va_p = predict_features(net, cut, feats[va_idx], feats_flip[va_idx] if flip else None)
    report: dict[str, Any] = {
        "name": inputs.name,
        "command": command,
        "settings": asdict(settings),
        "data": {"manifest": str(inputs.manifest), "dataset": inputs.dataset, "manifest_sha256": pool.manifest_sha256,
                 "faces": len(pool), "train": len(tr), "validation": len(va), "limit": inputs.limit},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit()},
        "loss_history": history,
        "validation": {"choices_balanced_mae": choices, "flip": flip, "age_mix": mix, "age_mix_min_age": min_age,
                       "age_model": age_report(va_age, va),
                       "age_mixed": age_report(_mixed(v1_va, va_age, mix, min_age), va),
                       "age_v1": age_report(v1_va, va),
                       "sex_accuracy": sex_accuracy(va_p, va.male, va.age),
                       "sex_confidence_99": sex_thresholds(va_p, va)},
    }
    if inputs.eval_manifest is not None:
        ev = load_faces(inputs.eval_manifest, inputs.eval_root or inputs.eval_manifest.parent, inputs.work_dir, config,
                        workers=inputs.workers)
        if settings.mode == "full":
            ev_f, ev_ff = crop_inputs(ev.aligned)
        else:
            ev_f, ev_ff = cached_features(inputs.backbone, ev.aligned, settings.mode, inputs.work_dir,
                                          ev.manifest_sha256)
        ev_age, ev_p = predict_features(net, cut, ev_f, ev_ff if flip else None)
        v1_ev = calibrated_age_v1(ev, config)
        report["evaluation"] = {}
        inputs.out_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, paths=ev.paths, dataset=ev.dataset, age=ev.age, male=ev.male, race=ev.race,
                 age_model=ev_age, p_male=ev_p, age_v1=v1_ev, age_v1_raw=ev.age_v1)
        write_atomic(inputs.out_dir / "eval_predictions.npz", buf.getvalue())
        for ds in sorted(set(ev.dataset.tolist())):
            sub = ev.subset(ev.dataset == ds)
            m = ev.dataset == ds
            report["evaluation"][ds or "all"] = {
                "age_model": age_report(ev_age[m], sub),
                "age_mixed": age_report(_mixed(v1_ev[m], ev_age[m], mix, min_age), sub),
                "age_v1": age_report(v1_ev[m], sub),
                "age_v1_raw": age_report(sub.age_v1, sub),
                "sex_accuracy": sex_accuracy(ev_p[m], sub.male, sub.age),
                "sex_confidence_99": sex_thresholds(ev_p[m], sub),
            }
    metadata = {
        "name": inputs.name,
        "description": "namus-edge age + sex model: InsightFace 2018 gender-age backbone fine-tuned on UTKFace "
                       "(ArcFace 112 crop, RGB 0-255 in; age years and p_male out)",
        "licence": "non-commercial research only (UTKFace terms; InsightFace pretrained weights)",
        "training_manifest_sha256": pool.manifest_sha256,
        "command": command,
        "flip": str(flip),
        "age_mix": str(mix),
        "age_mix_min_age": str(min_age),
        "git_commit": report["environment"]["git_commit"],
    }
    model_bytes = export_onnx(net, flip, metadata)
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = inputs.out_dir / f"{inputs.name}.onnx"
    write_atomic(model_path, model_bytes)
    report["model"] = {"path": str(model_path), "bytes": len(model_bytes),
                       "sha256": hashlib.sha256(model_bytes).hexdigest()}
    # parity fixture: the full PyTorch network (not the cached activations) on a few validation crops
    k = min(PARITY_FACES, len(va))
    par_age, par_p = predict(net, va.aligned[:k], flip=flip)
    parity = {"model_sha256": report["model"]["sha256"], "flip": flip, "manifest": str(inputs.manifest),
              "faces": [{"path": str(va.paths[i]), "age": float(par_age[i]), "p_male": float(par_p[i])}
                        for i in range(k)]}
    write_atomic(inputs.out_dir / "parity.json", (json.dumps(parity, indent=2) + "\n").encode())
    report = _round(report)
    write_atomic(inputs.out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    logger.info("wrote %s (%d bytes) and report.json in %s", model_path.name, len(model_bytes), inputs.out_dir)
    return report


def command_line() -> str:
    """The command as typed (for the model card)."""
    return " ".join(["namus-edge", *sys.argv[1:]]) if sys.argv else "namus-edge"
