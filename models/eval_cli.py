"""``namus-edge eval verify|age|detect``: accuracy of the configured models on labelled data.

Later checks depend on exactly these flags and JSON keys: keep them stable.

Handlers import the modules that load OpenCV and onnxruntime when they run: every ``namus-edge``
command builds this parser, and ``config show`` or ``--help`` should not pay for them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.config import Config
from namus_edge.core.errors import ImageReadError, NamusEdgeError
from namus_edge.models.evaluation import (
    AGE_GAP_BUCKETS,
    AGE_GROUPS,
    SEX_BANDS,
    average_precision,
    bucket_of,
    mae,
    match_detections,
    sex_accuracy,
    sex_confidence_for_precision,
    verification_metrics,
)
from namus_edge.models.registry import get_spec, resolve

logger = logging.getLogger(__name__)

DETECT_SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<32", 0, 31.999),
    ("32-63", 32, 63.999),
    ("64-127", 64, 127.999),
    ("128+", 128, 1e9),
)


_GENDER_CODES = {"male": 1, "female": 0}


class EvalInputError(NamusEdgeError):
    """A manifest or pairs file is missing a column or has a bad value."""


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``eval`` command group."""
    p = sub.add_parser("eval", help="evaluate models on labelled data", parents=[parent])
    esub = p.add_subparsers(dest="eval_command", metavar="TASK")
    esub.required = True

    v = esub.add_parser("verify", help="face verification on pairs", parents=[parent])
    v.add_argument("--pairs", required=True, type=Path, help="CSV: path_a, path_b, label [, protocol, age_gap]")
    v.add_argument("--root", required=True, type=Path, help="directory the CSV paths are relative to")
    v.add_argument("--protocol", help="evaluate only pairs of this protocol")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_verify)

    a = esub.add_parser("age", help="age estimation MAE", parents=[parent])
    a.add_argument("--manifest", required=True, type=Path, help="CSV: path, age [, gender, race]")
    a.add_argument("--root", required=True, type=Path)
    a.add_argument("--dataset", help="evaluate only rows whose `dataset` column equals this (e.g. utkface)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=run_age)

    d = esub.add_parser("detect", help="face detection recall / precision / AP", parents=[parent])
    d.add_argument("--manifest", required=True, type=Path, help="CSV: path, bboxes_xywh (JSON list)")
    d.add_argument("--root", required=True, type=Path)
    d.add_argument("--dataset", help="evaluate only rows whose `dataset` column equals this (e.g. fddb)")
    d.add_argument("--tiles", default=None, metavar="COLSxROWS",
                   help="small-face path: add a pass over COLSxROWS overlapping tiles, merged by NMS (e.g. 2x2; "
                   "1x1 with --tile-input = one upscaled second pass)")
    d.add_argument("--tile-input", type=int, default=None, help="square detector input of each tile (multiple of 32)")
    d.add_argument("--verify-low", type=float, default=None, metavar="SCORE",
                   help="small-face path: also keep faces scoring in [SCORE, detection.score_threshold) that "
                   "models.verifier confirms in their full-resolution crop (detection.verify_*, roi_input); "
                   "default detection.verify_low (off when null)")
    d.add_argument("--canvas", default=None, metavar="WxH",
                   help="far-face check: place each image at native resolution in the middle of a WxH grey frame "
                   "(e.g. 1920x1080: its faces keep their pixels, the full pass sees them 3x smaller)")
    d.add_argument("--split", default=None, metavar="HALF:SEED",
                   help="evaluate only one seeded half of the images (HALF a or b), e.g. a:0 to fit parameters "
                   "on half a and b:0 to report on the other")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_detect)

    i = esub.add_parser("identify", help="open-set 1:N identification (FPIR / FNIR, NIST FRTE 1:N terms)",
                        parents=[parent])
    i.add_argument("--gallery", required=True, type=Path,
                   help="CSV: path, identity [, age, sex, race]: the faces a bundle would hold")
    i.add_argument("--probes", required=True, type=Path,
                   help="CSV: path, identity [, age, sex, race, age_gap]; a probe whose path is a gallery row "
                   "is a non-mated search with its own identity left out")
    i.add_argument("--root", required=True, type=Path, help="directory the CSV paths are relative to")
    i.add_argument("--exclude", type=Path, help="CSV: path_a, path_b [, reason, evidence]: label-noise pairs")
    i.add_argument("--seed", type=int, default=0, help="fit/report split and gallery sampling seed (default 0)")
    i.add_argument("--sizes", default="1000,3000,10000", help="measured gallery sizes besides all (comma list)")
    i.add_argument("--cache-dir", type=Path, help="embedding cache root (default $NAMUS_EDGE_EMBED_CACHE or "
                   "~/.cache/namus-edge/embeddings)")
    i.add_argument("--hub-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="score searches with per-face hub offsets, as a bundle built with offsets does, and measure "
                   "the normalised tails (default: matching.hub_norm when the embedder has a normalised tail)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_identify_cmd)


# -- shared ---------------------------------------------------------------------------------------


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise EvalInputError(f"{path}: missing column(s) {', '.join(missing)}; has {reader.fieldnames}")
            return list(reader)
    except OSError as exc:
        raise EvalInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _filter_dataset(rows: list[dict[str, str]], args: argparse.Namespace) -> list[dict[str, str]]:
    if not args.dataset:
        return rows
    kept = [r for r in rows if r.get("dataset") == args.dataset]
    if not kept:
        raise EvalInputError(f"{args.manifest}: no rows with dataset {args.dataset!r}")
    return kept


def _analyzer(config: Config, with_age: bool) -> Any:
    from namus_edge.models.analyzer import FaceAnalyzer


    return FaceAnalyzer(config, with_age=with_age)


def _largest_face(analyzer: Any, path: Path, *, need_age: bool) -> tuple[Any | None, str | None]:
    """(face, problem): the largest face of an image as (embedding, age, p_male), or why none.

    With ``need_age`` the face is not embedded (embedding None): age evaluation does not use it.
    """
    from namus_edge.models.imagefile import read_image

    try:
        image = read_image(path)
    except ImageReadError as exc:
        return None, f"unreadable: {exc}"
    dets = analyzer.detect(image, photo=True)
    if not dets:
        return None, "no face"
    prepared = analyzer.prepare(image, dets[0])
    emb = None if need_age else analyzer.embed([prepared])[0]
    age = p_male = None
    if need_age:
        ages, pm = analyzer.estimate_age_sex([prepared])
        age = None if ages is None else float(ages[0])
        p_male = None if pm is None else float(pm[0])
    return (emb, age, p_male), None


def _progress(items: list, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="img", disable=None, leave=False)


def _emit(result: dict, as_json: bool, render: Callable[[dict], str]) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False, default=_json_default))
    else:
        print(render(result))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


# -- verify ---------------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``eval verify``."""
    rows = _read_csv(args.pairs, ("path_a", "path_b", "label"))
    if args.protocol:
        rows = [r for r in rows if r.get("protocol") == args.protocol]
        if not rows:
            raise EvalInputError(f"{args.pairs}: no pairs with protocol {args.protocol!r}")
    analyzer = _analyzer(config, with_age=False)
    paths = sorted({r[k] for r in rows for k in ("path_a", "path_b")})
    emb: dict[str, np.ndarray | None] = {}
    problems: dict[str, str] = {}
    for rel in _progress(paths, "embedding"):
        face, problem = _largest_face(analyzer, args.root / rel, need_age=False)
        emb[rel] = None if face is None else face[0]
        if problem:
            problems[rel] = problem
    scores, labels, failed, protocols, gaps, datasets = [], [], [], [], [], []
    for i, r in enumerate(rows):
        try:
            label = int(r["label"])
        except ValueError as exc:
            raise EvalInputError(f"{args.pairs}: row {i + 2}: label {r['label']!r} is not 0/1") from exc
        if label not in (0, 1):
            raise EvalInputError(f"{args.pairs}: row {i + 2}: label {label} is not 0/1")
        a, b = emb[r["path_a"]], emb[r["path_b"]]
        failed.append(a is None or b is None)
        scores.append(0.0 if a is None or b is None else float(a @ b))
        labels.append(label)
        protocols.append(r.get("protocol") or "unspecified")
        datasets.append(r.get("dataset") or "unspecified")
        gap = (r.get("age_gap") or "").strip()
        gaps.append(float(gap) if gap else None)
    s, y, f = np.asarray(scores), np.asarray(labels), np.asarray(failed)

    def metrics(mask: np.ndarray, protocol: str | None) -> dict:
        cv = protocol == "lfw_view2_official"
        return verification_metrics(s[mask], y[mask], f[mask], cross_validate=cv)

    all_official = all(p == "lfw_view2_official" for p in protocols)
    overall = metrics(np.ones(y.size, bool), "lfw_view2_official" if all_official else None)
    by_protocol = {p: metrics(np.asarray([q == p for q in protocols]), p) for p in sorted(set(protocols))}
    # one-class protocols (e.g. FG-NET positives vs age-matched negatives) only make sense together
    by_dataset = {d: metrics(np.asarray([q == d for q in datasets]), None) for d in sorted(set(datasets))}
    by_gap = {}
    for name, _, _ in AGE_GAP_BUCKETS:
        mask = np.asarray([g is not None and bucket_of(g, AGE_GAP_BUCKETS) == name for g in gaps])
        if mask.any():
            by_gap[name] = metrics(mask, None)
    result = {
        "model": {"detector": analyzer.detector_spec.name, "embedder": analyzer.embedder_spec.name},
        "pairs": int(y.size),
        "accuracy": overall["accuracy"],
        "accuracy_protocol": overall["accuracy_protocol"],
        "accuracy_best": overall["accuracy_best"],
        "tar_at_far": overall["tar_at_far"],
        "auc": overall["auc"],
        "threshold": overall["threshold"],
        "far_thresholds": overall["far_thresholds"],
        "no_face": {"images": len(problems), "failed_pairs": int(f.sum()), "files": problems},
        "by_protocol": by_protocol,
        "by_dataset": by_dataset,
        "by_age_gap": by_gap,
    }
    _emit(_nan_to_none(result), args.json, _render_verify)
    return 0


def _render_verify(r: dict) -> str:
    lines = [
        f"models: {r['model']['detector']} + {r['model']['embedder']}; {r['pairs']} pairs",
        f"accuracy {r['accuracy']:.4f} ({r['accuracy_protocol']}), best-threshold {r['accuracy_best']:.4f} "
        f"at {r['threshold']:.3f}; AUC {r['auc']:.4f}",
        f"TAR@FAR1e-2 {r['tar_at_far']['1e-2']:.4f}  TAR@FAR1e-3 {r['tar_at_far']['1e-3']:.4f}",
        f"no face: {r['no_face']['images']} images, {r['no_face']['failed_pairs']} failed pairs",
        "",
        f"{'group':<28}{'pairs':>6}{'acc':>9}{'AUC':>8}{'TAR@1e-2':>10}{'TAR@1e-3':>10}",
    ]
    groups = [("protocol " + k, v) for k, v in r["by_protocol"].items()]
    groups += [("dataset " + k, v) for k, v in r["by_dataset"].items()]
    groups += [("age gap " + k, v) for k, v in r["by_age_gap"].items()]
    for name, m in groups:
        lines.append(f"{name:<28}{m['pairs']:>6}{_f(m['accuracy']):>9}{_f(m['auc']):>8}"
                     f"{_f(m['tar_at_far']['1e-2']):>10}{_f(m['tar_at_far']['1e-3']):>10}")
    return "\n".join(lines)


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# -- age ------------------------------------------------------------------------------------------


def run_age(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``eval age``."""
    rows = _filter_dataset(_read_csv(args.manifest, ("path", "age")), args)
    analyzer = _analyzer(config, with_age=True)
    if analyzer.age is None and analyzer.age2 is None:
        raise EvalInputError("no age model configured (models.age is null)")
    preds: list[tuple[dict[str, str], float, float]] = []
    sex_rows: list[tuple[float, int, float]] = []  # (p_male, 1 male / 0 female / -1 unknown, true age)
    problems: dict[str, str] = {}
    for i, r in enumerate(_progress(rows, "age")):
        try:
            true_age = float(r["age"])
        except ValueError as exc:
            raise EvalInputError(f"{args.manifest}: row {i + 2}: age {r['age']!r} is not a number") from exc
        face, problem = _largest_face(analyzer, args.root / r["path"], need_age=True)
        if face is None:
            problems[r["path"]] = problem or "no face"
            continue
        preds.append((r, float(face[1]), true_age))
        if face[2] is not None:
            sex_rows.append((face[2], _GENDER_CODES.get((r.get("gender") or "").strip().lower(), -1), true_age))

    def summary(items: list[tuple[dict[str, str], float, float]]) -> dict:
        return {"count": len(items), "mae": mae([p for _, p, _ in items], [t for _, _, t in items])}

    groups: dict[str, list] = {name: [] for name, _, _ in AGE_GROUPS}
    by_gender: dict[str, list] = defaultdict(list)
    by_race: dict[str, list] = defaultdict(list)
    by_gender_race: dict[str, list] = defaultdict(list)
    for item in preds:
        r, _, t = item
        g = bucket_of(t, AGE_GROUPS)
        if g:
            groups[g].append(item)
        if r.get("gender"):
            by_gender[r["gender"]].append(item)
        if r.get("race"):
            by_race[r["race"]].append(item)
        if r.get("gender") and r.get("race"):
            by_gender_race[f"{r['gender']}/{r['race']}"].append(item)
    p_m = np.asarray([s[0] for s in sex_rows], np.float64)
    y_m = np.asarray([s[1] for s in sex_rows], np.int64)
    a_m = np.asarray([s[2] for s in sex_rows], np.float64)
    confidence = {}
    for band, lo, hi in SEX_BANDS:
        in_band = (a_m >= lo) & (a_m <= hi)
        confidence[band] = sex_confidence_for_precision(p_m[in_band], y_m[in_band], 0.99)
    result = {
        "model": analyzer.age_spec.name if analyzer.age_spec else None,
        "images": len(rows),
        "mae": summary(preds)["mae"],
        "groups": {k: summary(v) for k, v in groups.items()},
        "by_gender": {k: summary(v) for k, v in sorted(by_gender.items())},
        "by_race": {k: summary(v) for k, v in sorted(by_race.items())},
        "by_gender_race": {k: summary(v) for k, v in sorted(by_gender_race.items())},
        "sex_model": analyzer.sex.spec.name if analyzer.sex is not None else None,
        "sex_accuracy": sex_accuracy(p_m, y_m, a_m),
        "sex_confidence_99": confidence,
        "age2_model": analyzer.age2.spec.name if analyzer.age2 is not None else None,
        "age_sex_mix": config.models.age_sex_mix if analyzer.age2 is not None else None,
        "no_face": {"images": len(problems), "files": problems},
        "flip": config.models.age_flip,
        "calibrated": bool(config.models.age_calibration),
    }
    _emit(_nan_to_none(result), args.json, _render_age)
    return 0


def _render_age(r: dict) -> str:
    lines = [f"age model {r['model']} (flip={r['flip']}, calibrated={r['calibrated']}): MAE {_f(r['mae'])} years "
             f"over {r['images'] - r['no_face']['images']} faces; no face: {r['no_face']['images']}",
             f"{'group':<12}{'count':>7}{'MAE':>8}"]
    for title, key in (("age", "groups"), ("gender", "by_gender"), ("race", "by_race"), ("", "by_gender_race")):
        for k, v in r[key].items():
            lines.append(f"{(title + ' ' + k).strip():<12}{v['count']:>7}{_f(v['mae']):>8}")
    if r["age2_model"]:
        lines.append(f"second age model {r['age2_model']}: weight {r['age_sex_mix']}")
    if r["sex_model"]:
        acc = r["sex_accuracy"]
        lines.append(f"sex model {r['sex_model']}: accuracy " + ", ".join(f"{k} {_f(v)}" for k, v in acc.items()))
    return "\n".join(lines)


# -- detect ---------------------------------------------------------------------------------------


def run_detect(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``eval detect``."""
    from namus_edge.models.backends.factory import create_backend
    from namus_edge.models.detect_regions import VerifyRule, detect_tiled, detect_verified, merge_detections
    from namus_edge.models.detector import FaceDetector
    from namus_edge.models.imagefile import read_image

    rows = _filter_dataset(_read_csv(args.manifest, ("path", "bboxes_xywh")), args)
    rows = [r for r in rows if (r.get("bboxes_xywh") or "").strip() and r.get("labeled", "1") != "0"]
    if args.split:
        rows = _half(rows, args.split)
    grid = _parse_grid(args.tiles) if args.tiles else None
    canvas = _parse_size(args.canvas) if args.canvas else None
    if args.tile_input is not None and (args.tile_input <= 0 or args.tile_input % 32):
        raise EvalInputError(f"--tile-input must be a positive multiple of 32, got {args.tile_input}")
    det_name = config.models.selected()[0]
    spec = get_spec(det_name)
    cache = config.models.resolved_cache_dir()
    detector = FaceDetector(create_backend(resolve(det_name, cache), config.models.backend), spec, config.detection)
    verify_low = args.verify_low if args.verify_low is not None else config.detection.verify_low
    rule = VerifyRule.from_config(config.detection, verify_low) if verify_low is not None else None
    ver_name = config.models.selected_verifier() if rule is not None else None
    verifier = None if ver_name in (None, det_name) else FaceDetector(
        create_backend(resolve(ver_name, cache), config.models.backend), get_spec(ver_name), config.detection)
    all_tp: dict[str, list] = {"0.4": [], "0.5": []}
    all_scores: list[np.ndarray] = []
    n_gt = 0
    gt_hit: dict[str, list[tuple[float, bool]]] = {"0.4": [], "0.5": []}
    unreadable: dict[str, str] = {}
    n_images = 0
    for r in _progress(rows, "detect"):
        raw = r["bboxes_xywh"].strip()
        try:
            boxes = np.asarray(json.loads(raw), dtype=np.float64).reshape(-1, 4)
        except (ValueError, json.JSONDecodeError) as exc:
            raise EvalInputError(
                f"{args.manifest}: row of {r['path']!r}: bboxes_xywh {raw[:60]!r} is not a JSON list") from exc
        gts = boxes.copy()
        gts[:, 2:] += gts[:, :2]
        try:
            image = read_image(args.root / r["path"])
        except ImageReadError as exc:
            unreadable[r["path"]] = str(exc)
            continue
        if canvas is not None:
            image, (dx, dy) = _on_canvas(image, canvas, r["path"])
            gts += [dx, dy, dx, dy]
        n_images += 1
        if rule is not None:
            dets = detect_verified(detector, image, rule, verifier)
            if grid is not None:
                tiled = detect_tiled(detector, image, grid, upscale_to=args.tile_input)
                dets = merge_detections([dets, tiled], config.detection.nms_threshold, config.detection.max_faces)
        elif grid is not None:
            dets = detect_tiled(detector, image, grid, upscale_to=args.tile_input)
        else:
            dets = detector.detect(image)
        d = np.asarray([x.bbox for x in dets], np.float64).reshape(-1, 4)
        sc = np.asarray([x.score for x in dets], np.float64)
        all_scores.append(sc)
        n_gt += gts.shape[0]
        for key, thr in (("0.4", 0.4), ("0.5", 0.5)):
            tp, matched = match_detections(d, sc, gts, thr)
            all_tp[key].append(tp)
            gt_hit[key].extend(zip(boxes[:, 3].tolist(), matched.tolist(), strict=True))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp5 = np.concatenate(all_tp["0.5"]) if all_tp["0.5"] else np.zeros(0, bool)
    recall = {k: (float(np.mean([h for _, h in v])) if v else float("nan")) for k, v in gt_hit.items()}
    by_size: dict[str, dict[str, Any]] = {}
    for name, lo, hi in DETECT_SIZE_BUCKETS:
        for key in ("0.4", "0.5"):
            hits = [h for size, h in gt_hit[key] if lo <= size <= hi]
            entry = by_size.setdefault(name, {"faces": len(hits), "recall": {}})
            entry["recall"][key] = float(np.mean(hits)) if hits else None
    result = {
        "detector": spec.name,
        "input_size": list(detector.input_size),
        "score_threshold": config.detection.score_threshold,
        "split": args.split,
        "canvas": None if canvas is None else list(canvas),
        "small_faces": None if grid is None and rule is None else {
            "tiles": None if grid is None else list(grid), "tile_input": args.tile_input,
            "verify": None if rule is None else {**dataclasses.asdict(rule), "verifier": ver_name or det_name}},
        "images": n_images,
        "faces": n_gt,
        "detections": int(scores.size),
        "recall": recall,
        "precision": float(tp5.mean()) if tp5.size else float("nan"),
        "precision_iou": 0.5,
        "ap": average_precision(tp5, scores, n_gt),
        "ap_iou": 0.5,
        "by_size": by_size,
        "unreadable": unreadable,
    }
    _emit(_nan_to_none(result), args.json, _render_detect)
    return 0


def _half(rows: list[dict[str, str]], spec: str) -> list[dict[str, str]]:
    """Half ``a`` or ``b`` of ``rows`` (a seeded random permutation, first or second half), in file order."""
    half, _, seed = spec.partition(":")
    if half not in ("a", "b") or not seed.isdigit():
        raise EvalInputError(f"--split expects a:SEED or b:SEED such as a:0, got {spec!r}")
    order = np.random.default_rng(int(seed)).permutation(len(rows))
    chosen = order[: len(rows) // 2] if half == "a" else order[len(rows) // 2:]
    return [rows[i] for i in sorted(chosen.tolist())]


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise EvalInputError(f"--canvas expects WIDTHxHEIGHT such as 1920x1080, got {text!r}") from exc
    if not (32 <= w <= 8192 and 32 <= h <= 8192):
        raise EvalInputError(f"--canvas: sides 32..8192, got {text!r}")
    return w, h


#: Grey of the --canvas frame (BGR).
CANVAS_GREY = (114, 114, 114)


def _on_canvas(image: np.ndarray, size: tuple[int, int], name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` (uint8 H, W, 3 BGR) pasted unscaled in the middle of a grey ``size`` (W, H) frame, and its offset."""
    w, h = size
    ih, iw = image.shape[:2]
    if ih > h or iw > w:
        raise EvalInputError(f"--canvas {w}x{h}: image {name} is {iw}x{ih}, larger than the canvas")
    out = np.empty((h, w, 3), np.uint8)
    out[:] = CANVAS_GREY
    dx, dy = (w - iw) // 2, (h - ih) // 2
    out[dy:dy + ih, dx:dx + iw] = image
    return out, (dx, dy)


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise EvalInputError(f"--tiles expects COLSxROWS such as 2x2, got {text!r}") from exc
    if not (1 <= cols <= 8 and 1 <= rows <= 8):
        raise EvalInputError(f"--tiles: 1..8 columns and rows, got {text!r}")
    return cols, rows


def _render_detect(r: dict) -> str:
    lines = [
        f"detector {r['detector']} @ {r['input_size'][0]}x{r['input_size'][1]}, score >= {r['score_threshold']}: "
        f"{r['images']} images, {r['faces']} faces, {r['detections']} detections",
        f"recall@IoU0.4 {_f(r['recall']['0.4'])}  recall@IoU0.5 {_f(r['recall']['0.5'])}  "
        f"precision@0.5 {_f(r['precision'])}  AP@0.5 {_f(r['ap'])}",
        f"{'face height':<12}{'faces':>7}{'R@0.4':>8}{'R@0.5':>8}",
    ]
    ver = (r.get("small_faces") or {}).get("verify")
    if ver:
        lines.insert(1, f"verification: {ver['verifier']} crops x{ver['scale']} at {ver['input_size']}, full scores "
                     f">= {ver['low']}, {ver['full_weight']} * full + {1 - ver['full_weight']:.3g} * crop >= "
                     f"{ver['threshold']}{' (flip-averaged)' if ver['flip'] else ''}")
    if r.get("split"):
        lines.insert(1, f"images: half {r['split']} only")
    if r.get("canvas"):
        lines.insert(1, f"each image unscaled in the middle of a {r['canvas'][0]}x{r['canvas'][1]} grey frame")
    for k, v in r["by_size"].items():
        lines.append(f"{k:<12}{v['faces']:>7}{_f(v['recall']['0.4']):>8}{_f(v['recall']['0.5']):>8}")
    return "\n".join(lines)


# -- identify -------------------------------------------------------------------------------------


def run_identify_cmd(args: argparse.Namespace, config: Config) -> int:
    """``eval identify``: see :mod:`namus_edge.models.identify_eval`."""
    from namus_edge.models import identify_eval as ie

    sizes = ie.parse_sizes(args.sizes)
    gallery = ie.read_rows(args.gallery, args.root)
    probes = ie.read_rows(args.probes, args.root)
    excl = ie.read_exclusions(args.exclude, args.root) if args.exclude else None
    hub = args.hub_norm
    if hub is None:
        embedder = config.models.selected()[1]
        hub = config.matching.hub_norm and get_spec(embedder).hub_impostor_tail is not None
    result = ie.run_identify(config, gallery, probes, seed=args.seed, exclusions=excl, cache_root=args.cache_dir,
                             sizes=sizes, hub_norm=hub)
    emit_identify(result, args.json)
    return 0


def emit_identify(result: dict[str, Any], as_json: bool) -> None:
    """Print an identification result (``eval identify``, ``index evaluate``): JSON, or the markdown tables."""
    _emit(result, as_json, _render_identify)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _render_identify(r: dict) -> str:
    d = r["data"]
    lines = [
        f"open-set identification: {r['models']['detector']} + {r['models']['embedder']}; "
        f"gallery {d['gallery_faces']} faces ({d['gallery_identities']} identities, {d['enrolled_identities']} "
        f"enrolled); {d['mated_probes']} mated, {d['nonmated_probes']} non-mated (report half) probes; "
        f"{d['no_face']} photos without a face; {d['excluded_pairs']} excluded pairs",
        "",
        "| gallery | rule | threshold (adult / child face) | FPIR | FNIR | rank-1 | rank-5 | FNIR@FPIR 1e-2 | "
        "FNIR@FPIR 1e-3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["by_gallery_size"]:
        fo = e["face_only"]
        lines.append(f"| {e['gallery_size']} | {e['rule']} | {e['threshold']:.3f} / {e['child_threshold']} | "
                     f"{_pct(e['fpir'])} "
                     f"({e['false_alerts']}) | {_pct(e['fnir'])} | {_pct(e['rank1'])} | {_pct(e['rank5'])} | "
                     f"{_pct(fo['1e-02']['fnir'])} | {_pct(fo['1e-03']['fnir'])} |")
    for e in r["predicted"]:
        lo, hi = e["fpir_ci95"]
        lines.append(f"| {e['gallery_size']} (predicted) | {e['rule']} | {e['threshold']:.3f} / "
                     f"{e['child_threshold']} | adult {_pct(e['fpir'])} [{_pct(lo)}, {_pct(hi)}] | "
                     f"{_pct(e['fnir_face_only'])} (face only) | | | | |")
    if r["by_age_gap"]:
        lines += ["", "| age gap | mated | FNIR | rank-1 | rank-5 |", "|---|---|---|---|---|"]
        for k, v in r["by_age_gap"].items():
            lines.append(f"| {k} | {v['mated']} | {_pct(v['fnir'])} | {_pct(v['rank1'])} | {_pct(v['rank5'])} |")
    for key, groups in r["bias"].items():
        lines += ["", f"| {key} | non-mated | FPIR | mated | FNIR |", "|---|---|---|---|---|"]
        for g, v in groups.items():
            lines.append(f"| {g} | {v['nonmated']} | {_pct(v['fpir'])} | {v['mated']} | {_pct(v['fnir'])} |")
    return "\n".join(lines)
