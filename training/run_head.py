"""``namus-edge train age-head``: cached features -> head -> choose -> export -> report (PyTorch).

The head's split is the age+sex model's split (same seed and validation share), so the base
model's validation estimates are honest; every choice (head weight, mix with age-v1, the age
below which age-v1 is kept) is made on that validation split, never on the evaluation set.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from namus_edge.core.config import Config
from namus_edge.core.fsutil import sha256_file, write_atomic
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.evaluation import sex_accuracy
from namus_edge.models.sex import mix_ages
from namus_edge.training.agehead import (
    HeadDeployed,
    HeadSettings,
    backbone_features,
    export_combined,
    head_inputs,
    predict_deployed,
    predict_head,
    train_head,
)
from namus_edge.training.agesex import age_balance_weights, cached_features
from namus_edge.training.crops import FaceSet, calibrated_age_v1, load_faces
from namus_edge.training.run import MIN_AGE_CHOICES, MIX_CHOICES, PARITY_FACES, _git_commit, _round, age_report, split

logger = logging.getLogger(__name__)

#: Weights of the head in the model's age (the rest: the base age+sex model), tried on validation.
HEAD_WEIGHT_CHOICES = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class HeadRunInputs:
    """Where the data, the backbone and the base model are."""

    manifest: Path
    root: Path
    dataset: str | None
    backbone: Path
    base_model: Path
    work_dir: Path
    out_dir: Path
    name: str
    val_fraction: float = 0.1
    limit: int | None = None
    eval_manifest: Path | None = None
    eval_root: Path | None = None
    workers: int = 1


def cached_embeddings(faces: FaceSet, config: Config, work_dir: Path) -> tuple[np.ndarray, str]:
    """The runtime embedder's float32 (N, D) embeddings of the crops (cached), and the embedder's name."""
    analyzer = FaceAnalyzer(config, with_age=False)
    spec = analyzer.embedder_spec
    path = work_dir / f"emb-{faces.manifest_sha256[:16]}-{spec.name}-{spec.sha256[:12]}-{len(faces)}.npy"
    if path.is_file():
        return np.load(path), spec.name
    parts = [analyzer.embedder.embed(faces.aligned[i:i + 64]) for i in range(0, len(faces), 64)]
    emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, analyzer.dim), np.float32)
    buf = io.BytesIO()
    np.save(buf, emb)
    write_atomic(path, buf.getvalue())
    return emb, spec.name


def base_estimates(model: Path, aligned_bgr: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(age, p_male) float32 (N,) of an age+sex ONNX model (input RGB 0-255) with onnxruntime."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    ages, ps = [], []
    for i in range(0, aligned_bgr.shape[0], 128):
        blob = np.ascontiguousarray(aligned_bgr[i:i + 128, :, :, ::-1].transpose(0, 3, 1, 2)).astype(np.float32)
        a, p = sess.run(["age", "p_male"], {"data": blob})
        ages.append(np.asarray(a, np.float32).reshape(-1))
        ps.append(np.asarray(p, np.float32).reshape(-1))
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ages), np.concatenate(ps)


def _features(inputs: HeadRunInputs, faces: FaceSet, config: Config, threads: int) -> tuple[np.ndarray, ...]:
    feat, feat_flip = cached_features(inputs.backbone, faces.aligned, "head", inputs.work_dir, faces.manifest_sha256)
    emb, emb_name = cached_embeddings(faces, config, inputs.work_dir)
    base_age, base_p = base_estimates(inputs.base_model, faces.aligned, threads)
    return head_inputs(emb, feat, feat_flip), emb, base_age, base_p, np.asarray(emb_name)


def run_age_head(inputs: HeadRunInputs, settings: HeadSettings, config: Config, command: str) -> dict[str, Any]:
    """Train the head, choose on validation, export the combined model; returns the report.

    Writes ``<out_dir>/<name>.onnx``, ``report.json``, ``parity.json`` (outputs of the full
    deployed network on the first validation crops) and, with an evaluation manifest,
    ``eval_predictions.npz``.
    """
    pool = load_faces(inputs.manifest, inputs.root, inputs.work_dir, config, dataset=inputs.dataset,
                      limit=inputs.limit, workers=inputs.workers)
    tr_idx, va_idx = split(pool.age, inputs.val_fraction, settings.seed)
    va = pool.subset(va_idx)
    x, emb, base_age, base_p, emb_name = _features(inputs, pool, config, settings.threads)
    head, history = train_head(x[tr_idx], pool.age[tr_idx], settings)
    head_va = predict_head(head, x[va_idx])
    v1_va = calibrated_age_v1(va, config)
    bw = age_balance_weights(va.age)
    choices: dict[str, float] = {}
    best: tuple[float, float, float, float] | None = None
    for hw in HEAD_WEIGHT_CHOICES:
        own = hw * head_va + (1.0 - hw) * base_age[va_idx]
        for w in MIX_CHOICES:
            for lo in MIN_AGE_CHOICES:
                est = mix_ages(v1_va, own, w, lo)
                assert est is not None
                score = float(np.average(np.abs(est - va.age), weights=bw))
                choices[f"head={hw},mix={w},min_age={lo}"] = score
                if best is None or score < best[0] - 1e-9:
                    best = (score, hw, w, lo)
    assert best is not None
    _, hw, mix, min_age = best

    def scored(f: FaceSet, head_age: np.ndarray, b_age: np.ndarray, b_p: np.ndarray, v1: np.ndarray) -> dict:
        own = (hw * head_age + (1.0 - hw) * b_age).astype(np.float32)
        shipped = mix_ages(v1, own, mix, min_age)
        assert shipped is not None
        return {"head": age_report(head_age, f), "model": age_report(own, f), "shipped": age_report(shipped, f),
                "base_model": age_report(b_age, f), "age_v1": age_report(v1, f),
                "base_shipped": age_report(mix_ages(v1, b_age, 0.75, 16.0), f),  # type: ignore[arg-type]
                "sex_accuracy_base": sex_accuracy(b_p, f.male, f.age)}

    report: dict[str, Any] = {
        "name": inputs.name, "command": command, "settings": asdict(settings),
        "data": {"manifest": str(inputs.manifest), "dataset": inputs.dataset, "manifest_sha256": pool.manifest_sha256,
                 "faces": len(pool), "train": int(tr_idx.size), "validation": int(va_idx.size),
                 "limit": inputs.limit},
        "inputs": {"embedder": str(emb_name), "backbone": str(inputs.backbone),
                   "base_model": str(inputs.base_model), "base_model_sha256": sha256_file(inputs.base_model)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit()},
        "loss_history": history,
        "validation": {"choices_balanced_mae": choices, "head_weight": hw, "age_mix": mix, "age_mix_min_age": min_age,
                       **scored(va, head_va, base_age[va_idx], base_p[va_idx], v1_va)},
    }
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    if inputs.eval_manifest is not None:
        ev = load_faces(inputs.eval_manifest, inputs.eval_root or inputs.eval_manifest.parent, inputs.work_dir,
                        config, workers=inputs.workers)
        ev_x, _, ev_base, ev_p, _ = _features(inputs, ev, config, settings.threads)
        ev_head = predict_head(head, ev_x)
        v1_ev = calibrated_age_v1(ev, config)
        own_ev = (hw * ev_head + (1.0 - hw) * ev_base).astype(np.float32)
        shipped_ev = mix_ages(v1_ev, own_ev, mix, min_age)
        assert shipped_ev is not None
        buf = io.BytesIO()
        np.savez(buf, paths=ev.paths, dataset=ev.dataset, age=ev.age, male=ev.male, race=ev.race, head=ev_head,
                 base_model=ev_base, model=own_ev, shipped=shipped_ev, p_male=ev_p,
                 age_v1=v1_ev, age_v1_raw=ev.age_v1)
        write_atomic(inputs.out_dir / "eval_predictions.npz", buf.getvalue())
        report["evaluation"] = {}
        for ds in sorted(set(ev.dataset.tolist())):
            m = ev.dataset == ds
            report["evaluation"][ds or "all"] = scored(ev.subset(m), ev_head[m], ev_base[m], ev_p[m], v1_ev[m])
    metadata = {
        "name": inputs.name,
        "description": "namus-edge age + sex model: agesex_utk_v1 beside an age head over the face embedding and "
                       "the InsightFace 2018 gender-age pooled feature (ArcFace 112 crop RGB 0-255 and the "
                       "embedding in; age years and p_male out)",
        "licence": "non-commercial research only (UTKFace terms; InsightFace pretrained weights)",
        "training_manifest_sha256": pool.manifest_sha256,
        "command": command,
        "embedder": str(emb_name),
        "base_model_sha256": report["inputs"]["base_model_sha256"],
        "head_weight": str(hw),
        "age_mix": str(mix),
        "age_mix_min_age": str(min_age),
        "git_commit": report["environment"]["git_commit"],
    }
    dep = HeadDeployed(backbone_features(inputs.backbone), head)
    model_bytes = export_combined(inputs.base_model, dep, hw, emb.shape[1], metadata)
    model_path = inputs.out_dir / f"{inputs.name}.onnx"
    write_atomic(model_path, model_bytes)
    report["model"] = {"path": str(model_path), "bytes": len(model_bytes),
                       "sha256": hashlib.sha256(model_bytes).hexdigest()}
    # parity fixture: the full deployed head (PyTorch) on validation crops, mixed with the base model
    k = min(PARITY_FACES, len(va))
    par_head = predict_deployed(dep, va.aligned[:k], emb[va_idx[:k]])
    par_age = hw * par_head + (1.0 - hw) * base_age[va_idx[:k]]
    parity = {"model_sha256": report["model"]["sha256"], "manifest": str(inputs.manifest), "embedder": str(emb_name),
              "faces": [{"path": str(va.paths[i]), "age": float(par_age[i]), "p_male": float(base_p[va_idx[i]])}
                        for i in range(k)]}
    write_atomic(inputs.out_dir / "parity.json", (json.dumps(parity, indent=2) + "\n").encode())
    report = _round(report)
    write_atomic(inputs.out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    logger.info("wrote %s (%d bytes) and report.json in %s", model_path.name, len(model_bytes), inputs.out_dir)
    return report
