"""Age study: MAE of age-v1 on the dev age set for each pipeline step (chip, flip, calibration).

Runs the real pipeline (``FaceAnalyzer.detect(photo=True)`` with SCRFD landmarks, largest face,
as ``namus-edge eval age`` does) over ``age/manifest.csv`` and reports the MAE overall and per
age group for each variant:

* chip variants: the published approximate chip (MODELS.md section 2, plain bilinear) and dlib
  chips (:func:`models.aligner.dlib_chip_transform` + :func:`models.aligner.extract_chip`) with
  different landmark subsets, paddings, with or without the pyramid anti-aliasing;
* each without and with horizontal-flip averaging;
* a monotone piecewise-linear calibration raw -> age fitted on one seeded, age-stratified half
  of UTKFace and evaluated on the other half (and the reverse), never on the data it was fitted on.

The chip variant and the calibration's hyper-parameters are chosen on the fitting half only.
Detections and per-variant probabilities are cached under ``--cache`` (default /tmp), never in
the repository. Benchmarks measure; they never assert.

Usage::

    nice -n 10 python -m bench.age_study --json /tmp/namus_age_study/report.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from namus_edge.core.config import load_config
from namus_edge.models.age import AGE_BINS, AgeEstimator
from namus_edge.models.aligner import (
    AGE_CHIP_SIZE,
    AGE_CHIP_UNIT,
    dlib_chip_transform,
    extract_chip,
    umeyama,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "age"
GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-15", 0, 15), ("16-30", 16, 30), ("31-45", 31, 45), ("46-60", 46, 60), ("61-75", 61, 75), ("76+", 76, 1e9),
)
#: Published reference (a custom age CNN on UTKFace), MAE per group.
REFERENCE_CNN = {"0-15": 6.65, "16-30": 8.05, "31-45": 7.71, "46-60": 9.04, "61-75": 9.59, "76+": 14.10}

#: The approximate chip published in MODELS.md section 2 (before this study): eye centres and
#: mouth corners on these unit points, plain least-squares similarity, bilinear warp.
PUBLISHED_UNIT = np.array([[0.22733, 0.22140], [0.75281, 0.22123], [0.25415, 0.78023], [0.72610, 0.78023]])


# -- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One manifest row."""

    path: str
    dataset: str
    age: float


def read_manifest(path: Path) -> list[Sample]:
    """Rows of an age manifest (columns path, dataset, age)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [Sample(r["path"], r.get("dataset", ""), float(r["age"])) for r in csv.DictReader(fh)]


def stratified_halves(ages: np.ndarray, seed: int) -> np.ndarray:
    """Boolean (N,) mask of half A of a split stratified by 5-year age bins (seeded)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(ages.size, dtype=bool)
    bins = np.floor(ages / 5).astype(int)
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        idx = idx[rng.permutation(idx.size)]
        mask[idx[: (idx.size + rng.integers(0, 2)) // 2]] = True
    return mask


# -- detection cache ----------------------------------------------------------------------------


def detect_all(samples: Sequence[Sample], root: Path, cache: Path, analyzer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of the largest face of each image (cached in ``cache/detections.npz``).

    Returns:
        float32 (N, 5, 2) landmarks in image pixels (NaN where no face) and bool (N,) found.
    """
    from namus_edge.models.imagefile import read_image

    f = cache / "detections.npz"
    paths = np.array([s.path for s in samples])
    if f.is_file():
        z = np.load(f)
        if z["paths"].shape == paths.shape and (z["paths"] == paths).all():
            return z["landmarks"], z["found"]
    lms = np.full((len(samples), 5, 2), np.nan, np.float32)
    found = np.zeros(len(samples), bool)
    t0 = time.perf_counter()
    for i, s in enumerate(samples):
        dets = analyzer.detect(read_image(root / s.path), photo=True)
        if dets:
            lms[i] = dets[0].landmarks
            found[i] = True
        if i % 200 == 0:
            logger.info("detect %d/%d (%.0f s)", i, len(samples), time.perf_counter() - t0)
    np.savez(f, paths=paths, landmarks=lms, found=found)
    return lms, found


# -- chip variants ------------------------------------------------------------------------------

ChipFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def published_chip(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Variant (a): the approximate chip of MODELS.md section 2 (before this study)."""
    dst = (PUBLISHED_UNIT + 0.2) / 1.4 * AGE_CHIP_SIZE
    m = umeyama(lm[[0, 1, 3, 4]], dst)
    return cv2.warpAffine(image, m, (AGE_CHIP_SIZE, AGE_CHIP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def dlib_chip(points: Sequence[int], padding: float = 0.2, pyramid_above: float | None = 2.0) -> ChipFn:
    """A dlib-geometry chip from the given detector landmarks on dlib's 68-point mean face."""
    idx = list(points)

    def fn(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
        m = dlib_chip_transform(lm[idx].astype(np.float64), AGE_CHIP_UNIT[idx], AGE_CHIP_SIZE, padding)
        return extract_chip(image, m, AGE_CHIP_SIZE, pyramid_above=pyramid_above)

    return fn


#: name -> (description, chip function). The first is the baseline.
VARIANTS: dict[str, tuple[str, ChipFn]] = {
    "published": ("published approximate chip (4 pts, bilinear)", published_chip),
    "dlib4": ("dlib geometry, eyes + mouth corners, pyramid", dlib_chip((0, 1, 3, 4))),
    "dlib5": ("dlib geometry, 5 pts (+ nose tip), pyramid", dlib_chip((0, 1, 2, 3, 4))),
    "dlib3": ("dlib geometry, eyes + nose tip, pyramid", dlib_chip((0, 1, 2))),
    # Listed before the *_noaa variants: on UTKFace (scale ~3.3 image px per chip px) they give
    # identical chips, and min() keeps the first of equal MAEs.
    "dlib4_aa4": ("dlib4, halve only while the scale exceeds 4", dlib_chip((0, 1, 3, 4), pyramid_above=4.0)),
    "dlib5_aa4": ("dlib5, halve only while the scale exceeds 4", dlib_chip((0, 1, 2, 3, 4), pyramid_above=4.0)),
    "dlib5_noaa": ("dlib5 without pyramid (plain bilinear)", dlib_chip((0, 1, 2, 3, 4), pyramid_above=None)),
    "dlib4_noaa": ("dlib4 without pyramid (plain bilinear)", dlib_chip((0, 1, 3, 4), pyramid_above=None)),
    "dlib5_p015": ("dlib5, padding 0.15", dlib_chip((0, 1, 2, 3, 4), padding=0.15)),
    "dlib5_p025": ("dlib5, padding 0.25", dlib_chip((0, 1, 2, 3, 4), padding=0.25)),
    "dlib4_p025": ("dlib4, padding 0.25", dlib_chip((0, 1, 3, 4), padding=0.25)),
}


def variant_probabilities(
    samples: Sequence[Sample], root: Path, lms: np.ndarray, found: np.ndarray, cache: Path,
    estimator: AgeEstimator, names: Sequence[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per variant: float32 (N, 81) probabilities of the chip and of its mirror (cached)."""
    from namus_edge.models.imagefile import read_image

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    todo = []
    for name in names:
        f = cache / f"probs_{name}.npz"
        if f.is_file():
            z = np.load(f)
            if z["p"].shape[0] == len(samples):
                out[name] = (z["p"], z["p_mirror"])
                continue
        todo.append(name)
    if not todo:
        return out
    chips = {name: np.zeros((len(samples), AGE_CHIP_SIZE, AGE_CHIP_SIZE, 3), np.uint8) for name in todo}
    for i, s in enumerate(samples):
        if not found[i]:
            continue
        image = read_image(root / s.path)
        for name in todo:
            chips[name][i] = VARIANTS[name][1](image, lms[i])
    for name in todo:
        p = estimator.probabilities(chips[name])
        pm = estimator.probabilities(np.ascontiguousarray(chips[name][:, :, ::-1]))
        np.savez(cache / f"probs_{name}.npz", p=p, p_mirror=pm)
        if name in ("published", "dlib5", "dlib4"):
            np.save(cache / f"chips_{name}.npy", chips[name][:64])  # a few chips for visual checks
        out[name] = (p, pm)
        logger.info("variant %s done", name)
    return out


# -- metrics ------------------------------------------------------------------------------------


def report(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """MAE overall and per age group, with counts, mean signed error and the MAE's standard error."""
    err = pred - true
    groups = {}
    for name, lo, hi in GROUPS:
        m = (true >= lo) & (true <= hi)
        groups[name] = {"n": int(m.sum()), "mae": float(np.abs(err[m]).mean()) if m.any() else None,
                        "bias": float(err[m].mean()) if m.any() else None}
    se = float(np.abs(err).std(ddof=1) / np.sqrt(err.size)) if err.size > 1 else None
    return {"n": int(true.size), "mae": float(np.abs(err).mean()), "mae_se": se, "bias": float(err.mean()),
            "groups": groups}


# -- calibration --------------------------------------------------------------------------------


def pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of ``y`` (pool adjacent violators)."""
    vals: list[float] = []
    wts: list[float] = []
    cnt: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        cnt.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, c2 = vals.pop(), wts.pop(), cnt.pop()
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / (wts[-1] + w2)
            wts[-1] += w2
            cnt[-1] += c2
    return np.repeat(vals, cnt)


def fit_calibration(raw: np.ndarray, true: np.ndarray, knots: int, stat: str = "median") -> np.ndarray:
    """Monotone piecewise-linear map raw -> age: (K, 2) float64 (raw ascending, calibrated).

    ``knots`` equal-count bins of the sorted raw estimates; each gives a knot at the bin's median
    raw value and the bin's median (or mean) true age; the knot values are made non-decreasing
    with weighted PAV. Two end knots at raw 0 and 80 extend the first/last segment (slope
    clipped to [0, 3]) so np.interp's clipping only acts outside the model's range.
    """
    order = np.argsort(raw, kind="stable")
    xs, ys, ws = [], [], []
    for part in np.array_split(order, knots):
        xs.append(float(np.median(raw[part])))
        ys.append(float(np.median(true[part]) if stat == "median" else np.mean(true[part])))
        ws.append(float(part.size))
    x = np.array(xs)
    y = pav(np.array(ys), np.array(ws))
    keep = np.concatenate([[True], np.diff(x) > 1e-6])
    x, y = x[keep], y[keep]

    def slope(i: int, j: int) -> float:
        return float(np.clip((y[j] - y[i]) / max(x[j] - x[i], 1e-6), 0.0, 3.0))

    lo = y[0] - slope(0, 1) * (x[0] - 0.0)
    hi = y[-1] + slope(-2, -1) * (80.0 - x[-1])
    pts = np.round(np.column_stack([np.concatenate([[0.0], x, [80.0]]),
                                    np.concatenate([[max(lo, 0.0)], y, [hi]])]), 2)
    keep = np.concatenate([[True], np.diff(pts[:, 0]) >= 0.1])  # strictly increasing after rounding
    return pts[keep]


def apply_calibration(raw: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (K, 2) map the way :class:`models.age.AgeEstimator` does (np.interp, clipped)."""
    return np.interp(raw, pts[:, 0], pts[:, 1])


CAL_GRID = [(k, s) for k in (6, 8, 10, 12, 16, 20) for s in ("median", "mean")]


def choose_and_fit(raw: np.ndarray, true: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Pick (knots, stat) by 2-fold CV inside the fitting data only, then fit on all of it."""
    inner = stratified_halves(true, seed + 1)
    scores = {}
    for k, s in CAL_GRID:
        e = 0.0
        for fit_mask in (inner, ~inner):
            pts = fit_calibration(raw[fit_mask], true[fit_mask], k, s)
            e += np.abs(apply_calibration(raw[~fit_mask], pts) - true[~fit_mask]).sum()
        scores[f"{k}/{s}"] = float(e / true.size)
    best = min(scores, key=lambda key: scores[key])
    knots, stat = best.split("/")
    return fit_calibration(raw, true, int(knots), stat), {"inner_cv_mae": scores, "chosen": best}


# -- main ---------------------------------------------------------------------------------------


def _fmt(r: dict[str, Any]) -> str:
    g = r["groups"]
    cells = [f"{g[n]['mae']:5.2f}" if g[n]["mae"] is not None else "  -  " for n, _, _ in GROUPS]
    return f"{r['mae']:5.2f} ± {r['mae_se']:.2f} | " + " | ".join(cells)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and print markdown tables; write the full numbers as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="age data folder (manifest paths are relative)")
    ap.add_argument("--manifest", type=Path, default=None, help="default: <root>/manifest.csv")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/namus_age_study"), help="cache folder (not the repo)")
    ap.add_argument("--seed", type=int, default=20250601, help="seed of the UTKFace half split")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    samples = read_manifest(args.manifest or args.root / "manifest.csv")

    from namus_edge.models.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer(load_config())
    assert analyzer.age is not None and analyzer.age_spec is not None
    estimator = AgeEstimator(analyzer.age.backend, analyzer.age_spec, flip=False, calibration=None)
    lms, found = detect_all(samples, args.root, args.cache, analyzer)
    probs = variant_probabilities(samples, args.root, lms, found, args.cache, estimator, args.variants)

    ds = np.array([s.dataset for s in samples])
    ages = np.array([s.age for s in samples])
    utk = (ds == "utkface") & found
    fg = (ds == "fgnet") & found
    half_a = np.zeros(len(samples), bool)
    utk_all = np.flatnonzero(ds == "utkface")
    half_a[utk_all] = stratified_halves(ages[utk_all], args.seed)
    a, b = utk & half_a, utk & ~half_a
    out: dict[str, Any] = {
        "seed": args.seed, "images": {"utkface": int((ds == "utkface").sum()), "fgnet": int((ds == "fgnet").sum())},
        "no_face": {"utkface": int(((ds == "utkface") & ~found).sum()), "fgnet": int(((ds == "fgnet") & ~found).sum())},
        "half_sizes": {"A": int(a.sum()), "B": int(b.sum())}, "variants": {}, "reference_cnn": REFERENCE_CNN,
    }
    raw: dict[tuple[str, bool], np.ndarray] = {}
    for name in args.variants:
        p, pm = probs[name]
        for flip in (False, True):
            pp = 0.5 * (p + pm) if flip else p
            r = (pp @ AGE_BINS) / np.maximum(pp.sum(1), 1e-12)
            raw[(name, flip)] = r
            out["variants"][f"{name}{'+flip' if flip else ''}"] = {
                "desc": VARIANTS[name][0], "flip": flip,
                "utk_all": report(r[utk], ages[utk]), "utk_A": report(r[a], ages[a]),
                "utk_B": report(r[b], ages[b]), "fgnet": report(r[fg], ages[fg]),
            }

    header = "| variant | MAE | " + " | ".join(n for n, _, _ in GROUPS) + " |"
    sep = "|---" * (len(GROUPS) + 2) + "|"
    for half in ("utk_A", "utk_B", "utk_all", "fgnet"):
        print(f"\n### raw variants on {half}\n\n{header}\n{sep}")
        for key, v in out["variants"].items():
            print(f"| {key} | {_fmt(v[half])} |")

    # Calibration: choose the chip + flip on the fitting half, fit there, evaluate on the other half.
    out["calibration"] = {}
    for fit_name, fit_mask, test_mask in (("fit A -> test B", a, b), ("fit B -> test A", b, a)):
        fit_half = "utk_A" if fit_mask is a else "utk_B"
        best = min(out["variants"], key=lambda k: out["variants"][k][fit_half]["mae"])
        name, flip = best.removesuffix("+flip"), best.endswith("+flip")
        r = raw[(name, flip)]
        pts, info = choose_and_fit(r[fit_mask], ages[fit_mask], args.seed)
        cal_eval = report(apply_calibration(r[test_mask], pts), ages[test_mask])
        entry = {"chip": best, "points": pts.tolist(), **info,
                 "raw_on_test": report(r[test_mask], ages[test_mask]), "calibrated_on_test": cal_eval,
                 "calibrated_on_fit (not a result)": report(apply_calibration(r[fit_mask], pts), ages[fit_mask]),
                 "fgnet_raw": report(r[fg], ages[fg]), "fgnet_calibrated": report(apply_calibration(r[fg], pts),
                                                                                   ages[fg])}
        # The same calibration procedure on every variant, for the step table.
        entry["per_variant_on_test"] = {}
        for key in out["variants"]:
            n2, f2 = key.removesuffix("+flip"), key.endswith("+flip")
            r2 = raw[(n2, f2)]
            pts2, _ = choose_and_fit(r2[fit_mask], ages[fit_mask], args.seed)
            entry["per_variant_on_test"][key] = report(apply_calibration(r2[test_mask], pts2), ages[test_mask])
        out["calibration"][fit_name] = entry
        print(f"\n### {fit_name}: chip {best}, calibration {info['chosen']} ({len(pts)} points)\n")
        print(f"{header}\n{sep}")
        print(f"| raw (test half) | {_fmt(entry['raw_on_test'])} |")
        print(f"| calibrated (test half) | {_fmt(cal_eval)} |")
        print(f"| FG-NET raw | {_fmt(entry['fgnet_raw'])} |")
        print(f"| FG-NET calibrated | {_fmt(entry['fgnet_calibrated'])} |")
        for key, v in entry["per_variant_on_test"].items():
            print(f"| {key} + cal | {_fmt(v)} |")
        print("points:", json.dumps(entry["points"]))
    ab, ba = out["calibration"]["fit A -> test B"], out["calibration"]["fit B -> test A"]
    na, nb = ab["calibrated_on_test"]["n"], ba["calibrated_on_test"]["n"]
    cv = (ab["calibrated_on_test"]["mae"] * na + ba["calibrated_on_test"]["mae"] * nb) / (na + nb)
    out["calibration"]["2fold_cv_mae"] = cv
    print(f"\n2-fold CV MAE (each half scored by the calibration fitted on the other): {cv:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
