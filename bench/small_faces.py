"""Small-face study (issue 14): which crop-verification rule, fitted on one half of FDDB, reported on the other.

The full pass (det_500m at ``detection.input_size``) keeps faces scoring >= ``detection.score_threshold``.
A face it scores in ``[low, score_threshold)`` is re-detected in a square crop of the full-resolution
image and kept when the evidence is enough (:class:`models.detect_regions.VerifyRule`). This study
measures, on the FDDB images of ``detection/manifest.csv``:

* the verifier (``det_500m`` itself or the larger ``det_2.5g``), the crop side (2x or 3x the box), the crop
  input (192 or 256), with or without mirror averaging (:func:`models.detect_regions.crop_evidence`);
* the rule: the crop score alone against a threshold, or ``w * full + (1 - w) * crop`` against a threshold;
* the low full-pass score sent to verification (0.2 or 0.3);
* as the baseline, no crop at all: the full pass alone at a lower score threshold, fitted the same way.

Per image it caches the full pass at the lowest ``low`` and every candidate's crop evidence for every
verifier setting (``--cache``, default /tmp, never in the repository), then replays the rules exactly as
:func:`models.detect_regions.detect_verified` combines them (same NMS, same ``max_faces``).

Protocol: the images are split in two seeded halves (``eval detect --split a:SEED`` / ``b:SEED`` selects the
same halves). On the fitting half the rule with the highest recall at IoU 0.4 among those keeping
precision at IoU 0.5 >= ``--min-precision`` is chosen (ties: higher precision, then the cheaper verifier);
it is reported on the other half. Each seed is run both ways. Benchmarks measure; they never assert.

``--timing REPS`` instead times one 1080p full pass against one verification crop (what each borderline
face costs), interleaved in one process.

Usage::

    nice -n 10 python -m bench.small_faces --seeds 0,1,2,3,4 --json /tmp/small_faces.json
    nice -n 10 python -m bench.small_faces --timing 30
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import load_average, markdown_table
from bench.pipeline import shared_dir

log = logging.getLogger("bench.small_faces")

LOWS = (0.2, 0.3)
VERIFIERS = ("det_500m", "det_2.5g")
SCALES = (2.0, 3.0)
INPUTS = (192, 256)
#: Relative cost of one crop run (verifier GFLOPs x input area), for tie-breaks only.
COST = {"det_500m": 0.5, "det_2.5g": 2.5, "none": 0.0}
BUCKETS = (("<32", 0.0, 31.999), ("32-63", 32.0, 63.999), ("64-127", 64.0, 127.999), ("128+", 128.0, 1e9))


@dataclass(frozen=True)
class Setting:
    """One verification setting: verifier crops and the rule combining the evidence."""

    verifier: str
    scale: float
    input_size: int
    flip: bool
    low: float
    full_weight: float
    threshold: float

    def cost(self) -> float:
        return COST[self.verifier] * self.input_size**2 * (2 if self.flip else 1)

    def label(self) -> str:
        if self.verifier == "none":
            return f"full pass alone, score >= {self.threshold:g}"
        rule = (f"crop >= {self.threshold:g}" if self.full_weight == 0 else
                f"{self.full_weight:g} * full + {1 - self.full_weight:g} * crop >= {self.threshold:g}")
        return (f"{self.verifier} x{self.scale:g} @{self.input_size}{' flip' if self.flip else ''}, "
                f"full >= {self.low:g}, {rule}")


def _crop_key(verifier: str, scale: float, size: int, flip: bool) -> str:
    return f"{verifier}|{scale:g}|{size}|{int(flip)}"


def gather(root: Path, cache: Path) -> list[dict[str, Any]]:
    """Per FDDB image: annotations, the full pass at min(LOWS) and each candidate's crop evidence (cached)."""
    if cache.exists():
        with cache.open("rb") as fh:
            cached: list[dict[str, Any]] = pickle.load(fh)  # our own cache file
        return cached
    from namus_edge.core.config import load_config
    from namus_edge.models.backends.factory import create_backend
    from namus_edge.models.detect_regions import VerifyRule, crop_evidence
    from namus_edge.models.detector import FaceDetector
    from namus_edge.models.imagefile import read_image
    from namus_edge.models.registry import get_spec, resolve

    config = load_config()
    models = config.models.resolved_cache_dir()
    dets = {name: FaceDetector(create_backend(resolve(name, models), config.models.backend), get_spec(name),
                               config.detection) for name in VERIFIERS}
    full_det = dets[config.models.selected()[0]]
    threshold = config.detection.score_threshold
    rows = [r for r in csv.DictReader((root / "manifest.csv").open(newline=""))
            if r.get("dataset") == "fddb" and r.get("labeled", "1") != "0" and (r.get("bboxes_xywh") or "").strip()]
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for n, r in enumerate(rows):
        xywh = np.asarray(json.loads(r["bboxes_xywh"]), np.float64).reshape(-1, 4)
        gts = xywh.copy()
        gts[:, 2:] += gts[:, :2]
        image = read_image(root / r["path"])
        found = full_det.detect(image, score_threshold=min(LOWS))
        cands = []
        for d in found:
            if d.score >= threshold:
                continue
            ev = {}
            for name, scale, size, flip in itertools.product(VERIFIERS, SCALES, INPUTS, (False, True)):
                rule = VerifyRule(min(LOWS), size, scale, flip=flip)
                score, det = crop_evidence(dets[name], image, d.bbox, rule)
                ev[_crop_key(name, scale, size, flip)] = (score, None if det is None else det.bbox.astype(np.float64))
            cands.append({"bbox": d.bbox.astype(np.float64), "score": d.score, "evidence": ev})
        out.append({"path": r["path"], "gts": gts, "heights": xywh[:, 3],
                    "kept": [(d.bbox.astype(np.float64), d.score) for d in found if d.score >= threshold],
                    "candidates": cands})
        if n % 20 == 0:
            log.info("%d / %d images, %.0f s", n, len(rows), time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as fh:
        pickle.dump(out, fh)
    return out


def _apply(img: dict[str, Any], s: Setting | None, nms_thr: float, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """The detections :func:`detect_verified` would return for one image under ``s`` (None: plain pass)."""
    from namus_edge.models.detector import nms

    boxes = [b for b, _ in img["kept"]]
    scores = [sc for _, sc in img["kept"]]
    if s is not None:
        key = "" if s.verifier == "none" else _crop_key(s.verifier, s.scale, s.input_size, s.flip)
        for c in img["candidates"]:
            if c["score"] < s.low:
                continue
            if s.verifier == "none":  # a lower full-pass score threshold, no crop
                if c["score"] >= s.threshold:
                    boxes.append(c["bbox"])
                    scores.append(c["score"])
                continue
            crop, box = c["evidence"][key]
            combined = s.full_weight * c["score"] + (1 - s.full_weight) * crop
            if box is not None and combined >= s.threshold:
                boxes.append(box)
                scores.append(combined)
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    b, sc = np.asarray(boxes), np.asarray(scores)
    keep = nms(b.astype(np.float32), sc.astype(np.float32), nms_thr)
    b, sc = b[keep], sc[keep]
    order = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), kind="stable")[:max_faces]
    return b[order], sc[order]


def evaluate(images: list[dict[str, Any]], s: Setting | None, nms_thr: float = 0.4,
             max_faces: int = 50) -> dict[str, Any]:
    """Recall at IoU 0.4 (overall, by face height), precision and AP at IoU 0.5, as ``eval detect``."""
    from namus_edge.models.evaluation import average_precision, match_detections

    tps, scs, hits = [], [], []
    for img in images:
        b, sc = _apply(img, s, nms_thr, max_faces)
        tp, _ = match_detections(b, sc, img["gts"], 0.5)
        _, matched = match_detections(b, sc, img["gts"], 0.4)
        tps.append(tp)
        scs.append(sc)
        hits.extend(zip(img["heights"].tolist(), matched.tolist(), strict=True))
    tp_all, sc_all = np.concatenate(tps), np.concatenate(scs)
    found = sum(h for _, h in hits)
    row: dict[str, Any] = {"faces": len(hits), "found": found, "recall": found / max(len(hits), 1),
                           "detections": int(tp_all.size), "precision": float(tp_all.mean()) if tp_all.size else 0.0,
                           "ap": average_precision(tp_all, sc_all, len(hits))}
    for name, lo, hi in BUCKETS:
        sel = [h for z, h in hits if lo <= z <= hi]
        row[name] = float(np.mean(sel)) if sel else None
    return row


def grid() -> list[Setting]:
    """Every setting the study compares."""
    out = []
    for name, scale, size, flip, low in itertools.product(VERIFIERS, SCALES, INPUTS, (False, True), LOWS):
        base = Setting(name, scale, size, flip, low, 0.0, 0.5)
        out += [replace(base, threshold=round(float(t), 3)) for t in np.arange(0.30, 0.651, 0.025)]
        for w in (0.25, 0.5):
            out += [replace(base, full_weight=w, threshold=round(float(t), 3)) for t in np.arange(0.30, 0.601, 0.025)]
    return out


def threshold_grid() -> list[Setting]:
    """The baseline: the full pass alone at a lower score threshold (0.2 .. 0.5)."""
    return [Setting("none", 0.0, 0, False, 0.2, 1.0, round(float(t), 3)) for t in np.arange(0.2, 0.501, 0.025)]


def fit(images: list[dict[str, Any]], settings: list[Setting], min_precision: float) -> tuple[Setting, dict[str, Any]]:
    """The setting with the highest recall among those at precision >= ``min_precision`` (ties: precision, cost)."""
    best: tuple[tuple[float, float, float], Setting, dict[str, Any]] | None = None
    for s in settings:
        r = evaluate(images, s)
        if r["precision"] < min_precision:
            continue
        key = (r["found"], r["precision"], -s.cost())
        if best is None or key > best[0]:
            best = (key, s, r)
    if best is None:
        raise ValueError(f"no setting reaches precision {min_precision} on the fitting half")
    return best[1], best[2]


def halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Image indices of halves a and b: the same split as ``eval detect --split a:SEED / b:SEED``."""
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[: n // 2].tolist()), sorted(order[n // 2:].tolist())


def timing(reps: int) -> list[dict[str, Any]]:
    """Median ms of one full pass on a 1080p frame and of one verification crop, interleaved in one process.

    The frame is an FDDB photo resized to 1920x1080; the crop is the 3x square around its largest face. Rows:
    det_500m full pass at ``detection.input_size``, and each verifier on the crop at 192 and 256, plain and
    with the mirror (two runs), as :func:`models.detect_regions.crop_evidence` does.
    """
    import cv2

    from namus_edge.core.config import load_config
    from namus_edge.models.backends.factory import create_backend
    from namus_edge.models.detect_regions import VerifyRule, crop_evidence, detect_verified
    from namus_edge.models.detector import FaceDetector
    from namus_edge.models.imagefile import read_image
    from namus_edge.models.registry import get_spec, resolve

    config = load_config()
    models = config.models.resolved_cache_dir()
    dets = {name: FaceDetector(create_backend(resolve(name, models), config.models.backend), get_spec(name),
                               config.detection) for name in VERIFIERS}
    full = dets[config.models.selected()[0]]
    frame = cv2.resize(read_image(shared_dir() / "data" / "detection" / "fddb" / "2002_08_11_img_258.jpg"),
                       (1920, 1080))
    box = max(full.detect(frame), key=lambda d: d.area).bbox
    jobs: dict[str, Any] = {"full pass det_500m @640 (1080p frame)": lambda: full.detect(frame)}
    for name, size, flip in itertools.product(VERIFIERS, INPUTS, (False, True)):
        rule = VerifyRule(0.2, size, 3.0, flip=flip)
        jobs[f"crop {name} @{size}{' + mirror' if flip else ''}"] = (
            lambda d=dets[name], r=rule: crop_evidence(d, frame, box, r))
    # a 1080p frame with six LFW photos 90 px wide: det_500m scores their faces 0.17-0.48 (far faces)
    far = np.full((1080, 1920, 3), (60, 70, 80), np.uint8)
    by_id: dict[str, list[str]] = {}
    for r in csv.DictReader((shared_dir() / "data" / "verification" / "manifest.csv").open(newline="")):
        if r["dataset"] == "lfw":
            by_id.setdefault(r["identity"], []).append(r["path"])
    for k, path in enumerate(min(by_id[i]) for i in sorted(by_id)[:6]):
        far[400:490, 100 + 300 * k:190 + 300 * k] = cv2.resize(
            read_image(shared_dir() / "data" / "verification" / path), (90, 90), interpolation=cv2.INTER_AREA)
    rule = VerifyRule.from_config(config.detection, 0.2)
    n_cand = sum(1 for d in full.detect(far, score_threshold=0.2) if d.score < config.detection.score_threshold)
    jobs[f"full pass, 1080p frame with six 90-px faces ({n_cand} borderline)"] = lambda: full.detect(far)
    jobs["same + verification (default rule, det_2.5g crops)"] = (
        lambda: detect_verified(full, far, rule, dets["det_2.5g"]))
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for job in jobs.values():
        job()  # warm-up
    for _ in range(reps):
        for k, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[k].append((time.perf_counter() - t0) * 1000)
    ref = float(np.median(times[next(iter(jobs))]))
    return [{"run": k, "median ms": float(np.median(v)), "of a full pass": float(np.median(v)) / ref}
            for k, v in times.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=None,
                    help="detection data folder (default: data/detection of ../shared or $NAMUS_EDGE_SHARED)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/namus_small_faces/evidence.pkl"))
    ap.add_argument("--seeds", default="0", help="comma list of split seeds (default 0)")
    ap.add_argument("--min-precision", type=float, default=0.85,
                    help="precision@0.5 a fitted rule must keep on the fitting half (default 0.85)")
    ap.add_argument("--timing", type=int, default=0, metavar="REPS",
                    help="only time a 1080p full pass against one verification crop, REPS interleaved runs each")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.timing:
        trows = timing(args.timing)
        print(f"load {load_average()}\n" + markdown_table(trows, ["run", "median ms", "of a full pass"]))
        if args.json:
            args.json.write_text(json.dumps({"timing": trows, "load": load_average()}, indent=1))
        return 0
    images = gather(args.root or shared_dir() / "data" / "detection", args.cache)
    settings = grid()
    log.info("%d images, %d settings; load %s", len(images), len(settings), load_average())
    rows: list[dict[str, Any]] = []
    for seed in (int(v) for v in args.seeds.split(",")):
        a, b = halves(len(images), seed)
        for fit_name, fit_idx, rep_name, rep_idx in (("a", a, "b", b), ("b", b, "a", a)):
            chosen, on_fit = fit([images[i] for i in fit_idx], settings, args.min_precision)
            thr, thr_fit = fit([images[i] for i in fit_idx], threshold_grid(), args.min_precision)
            held = [images[i] for i in rep_idx]
            for what, s, f in (("plain pass", None, None), ("fitted threshold", thr, thr_fit),
                               ("fitted rule", chosen, on_fit)):
                r = evaluate(held, s)
                rows.append({"seed": seed, "fit": fit_name, "report": rep_name, "path": what,
                             "setting": "-" if s is None else s.label(), "fit recall": f["recall"] if f else None,
                             **{k: r[k] for k in ("faces", "found", "recall", "precision", "ap", "32-63")}})
            log.info("seed %d fit %s: %s", seed, fit_name, chosen.label())
    cols = ["seed", "fit", "report", "path", "setting", "fit recall", "faces", "found", "recall", "precision", "ap",
            "32-63"]
    print(markdown_table(rows, cols))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "min_precision": args.min_precision,
                                         "images": len(images), "load": load_average()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
