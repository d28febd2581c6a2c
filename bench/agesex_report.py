"""Tables for docs/age.md from a ``namus-edge train age-sex`` run (report.json + eval_predictions.npz).

Reads the per-face estimates the training command saved for the evaluation set (``shared/data/age``,
never trained on) and prints: MAE per age group on all UTKFace rows and on the half-B rows that the
age-v1 calibration never saw (bench.age_study split), FG-NET, sex accuracy per finer child band, and
how the p_male confidence thresholds chosen on the training pool's validation split hold on the
evaluation set. Usage: ``python -m bench.agesex_report OUT_DIR [--json FILE]``.

For a ``namus-edge train age-head`` run (its report has ``head_weight``) the age tables compare
age-v1, the previous default (agesex_utk_v1 mixed), the head, the new model and the shipped mix,
with the bias table (MAE per sex and race); the p_male there is the base model's, which the
presets no longer use for sex.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.age_study import stratified_halves
from namus_edge.models.evaluation import AGE_GROUPS, SEX_BANDS, bucket_of, mae, sex_accuracy
from namus_edge.models.sex import mix_ages

FINE_BANDS = (("0-4", 0, 4), ("5-8", 5, 8), ("9-12", 9, 12), ("13-15", 13, 15), ("16-17", 16, 17), ("18+", 18, 999))


def _groups(pred: np.ndarray, true: np.ndarray) -> dict[str, float | None]:
    names = np.asarray([bucket_of(float(a), AGE_GROUPS) or "" for a in true])
    out: dict[str, float | None] = {"all": mae(pred, true)}
    for g, _, _ in AGE_GROUPS:
        m = names == g
        out[g] = mae(pred[m], true[m]) if m.any() else None
    return out


def build_head(out_dir: Path, report: dict) -> dict:
    """Age tables of a ``train age-head`` run: all UTKFace rows, half B, FG-NET, bias by sex and race."""
    z = np.load(out_dir / "eval_predictions.npz")
    ds, age, male, race = z["dataset"], z["age"].astype(np.float64), z["male"], z["race"]
    previous = mix_ages(z["age_v1"], z["base_model"], 0.75, 16.0)
    variants = {"age_v1_calibrated": z["age_v1"], "age_v1_raw": z["age_v1_raw"], "agesex_utk_v1": z["base_model"],
                "previous_mix_v1": previous, "head": z["head"], "agesex_utk_v2": z["model"], "shipped": z["shipped"]}
    v = report["validation"]
    out: dict = {"head_weight": v["head_weight"], "mix": v["age_mix"], "min_age": v["age_mix_min_age"],
                 "utkface_all": {}, "utkface_half_b": {}, "fgnet": {}, "bias": {}}
    utk = np.flatnonzero(ds == "utkface")
    half_b = utk[~stratified_halves(age[utk], 20250601)]
    fg = np.flatnonzero(ds == "fgnet")
    for name, pred in variants.items():
        assert pred is not None
        out["utkface_all"][name] = _groups(pred[utk], age[utk])
        out["utkface_half_b"][name] = _groups(pred[half_b], age[half_b])
        out["fgnet"][name] = _groups(pred[fg], age[fg])
    for name in ("age_v1_calibrated", "previous_mix_v1", "shipped"):
        pred = variants[name]
        assert pred is not None
        cols = {"male": utk[male[utk] == 1], "female": utk[male[utk] == 0]}
        cols.update({r: utk[race[utk] == r] for r in sorted(set(race[utk].tolist()) - {""})})
        out["bias"][name] = {k: mae(pred[m], age[m]) for k, m in cols.items()}
    return out


def build(out_dir: Path) -> dict:
    """All tables as one dict."""
    report = json.loads((out_dir / "report.json").read_text())
    if "head_weight" in report["validation"]:
        return build_head(out_dir, report)
    z = np.load(out_dir / "eval_predictions.npz")
    mix = float(report["validation"]["age_mix"])
    min_age = float(report["validation"].get("age_mix_min_age", 0.0))
    ds, age, male = z["dataset"], z["age"].astype(np.float64), z["male"]
    mixed = mix_ages(z["age_v1"], z["age_model"], mix, min_age)
    variants = {"age_v1_calibrated": z["age_v1"], "age_v1_raw": z["age_v1_raw"], "agesex": z["age_model"],
                f"mix_{mix}_from_{min_age}": mixed}
    out: dict = {"mix": mix, "min_age": min_age, "utkface_all": {}, "utkface_half_b": {}, "fgnet": {}}
    utk = np.flatnonzero(ds == "utkface")
    half_a = stratified_halves(age[utk], 20250601)
    half_b = utk[~half_a]
    fg = np.flatnonzero(ds == "fgnet")
    for name, pred in variants.items():
        out["utkface_all"][name] = _groups(pred[utk], age[utk])
        out["utkface_half_b"][name] = _groups(pred[half_b], age[half_b])
        out["fgnet"][name] = _groups(pred[fg], age[fg])
    p = z["p_male"]
    out["sex_accuracy"] = sex_accuracy(p[utk], male[utk], age[utk])
    fine = {}
    for name, lo, hi in FINE_BANDS:
        m = utk[(age[utk] >= lo) & (age[utk] <= hi) & (male[utk] >= 0)]
        right = (p[m] >= 0.5) == (male[m] == 1)
        fine[name] = {"count": int(m.size), "accuracy": float(right.mean()) if m.size else None}
    out["sex_accuracy_fine"] = fine
    transfer = {}
    for band, lo, hi in SEX_BANDS:
        thr = report["validation"]["sex_confidence_99"][band]["threshold"]
        m = utk[(age[utk] >= lo) & (age[utk] <= hi) & (male[utk] >= 0)]
        conf = np.maximum(p[m], 1 - p[m])
        keep = m[conf >= thr] if thr is not None else m[:0]
        transfer[band] = {"threshold_from_validation": thr, "faces": int(m.size), "kept": int(keep.size),
                          "precision": float(((p[keep] >= 0.5) == (male[keep] == 1)).mean()) if keep.size else None}
    out["sex_threshold_on_evaluation"] = transfer
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir", type=Path,
                    help="--out folder of `namus-edge train age-sex` or `age-head` (with --eval-manifest)")
    ap.add_argument("--json", type=Path, help="also write the tables here")
    args = ap.parse_args()
    tables = build(args.out_dir)
    text = json.dumps(tables, indent=2, default=lambda o: round(o, 4))
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
