"""Detection interval (issue 14): how right are the faces between full passes? ROI re-detection vs motion prediction.

For every frame ``k`` of a case, the full-frame detector's faces are the reference. Tracks are
followed on the reference detections (:class:`edge.tracker.Tracker`) and fed to the constant-velocity
:class:`edge.motion.MotionModel`. For each face tracked at ``k - 1`` and found again at ``k``:

* ``predict+h``: the motion prediction made from frames ``<= k - h`` for frame ``k`` (h = 1..3: what the
  tracker carries h frames after the last measurement);
* ``roi``: the face re-detected in the crop of frame ``k`` around its 1-frame prediction
  (:func:`models.detect_regions.detect_crop` at ``detection.roi_input``, as the schedule does).

Per method: share of faces found (IoU >= 0.5 with the reference; prediction always "finds"), median and
95th percentile of the largest landmark error in pixels and as a share of the inter-ocular distance,
and the cosine between the EdgeFace embedding of the face aligned on those landmarks and on the
reference's (what the matcher would see). Counts are ``faces``.

Usage::

    nice -n 10 python -m bench.interval --json /tmp/interval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, markdown_table
from bench.pipeline import VIDEO_FPS, all_cases, iter_frames, shared_dir

log = logging.getLogger("bench.interval")


def _stats(err_px: list[float], err_rel: list[float], cos: list[float], found: int, total: int) -> dict[str, Any]:
    def q(v: list[float], p: float) -> float | None:
        return float(np.percentile(v, p)) if v else None

    return {"faces": total, "found": found / total if total else None,
            "lm_err_px_p50": q(err_px, 50), "lm_err_px_p95": q(err_px, 95),
            "lm_err_iod_p50": q(err_rel, 50), "lm_err_iod_p95": q(err_rel, 95),
            "cos_min": min(cos) if cos else None, "cos_p05": q(cos, 5), "cos_p50": q(cos, 50)}


def measure(case_name: str, frames: int, data_dir: Path, roi_input: int, roi_scale: float) -> list[dict[str, Any]]:
    """Rows (one per method) for one case."""
    from namus_edge.core.config import load_config
    from namus_edge.edge.motion import MotionModel
    from namus_edge.edge.tracker import Tracker
    from namus_edge.models.aligner import align_arcface
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.boxes import iou_matrix
    from namus_edge.models.detect_regions import detect_crop, square_region

    config = load_config()
    analyzer = FaceAnalyzer(config, with_age=False)
    tracker = Tracker(config.matching)
    history: dict[int, list[tuple[float, Any]]] = {}  # track id -> [(t, det)]
    acc: dict[str, dict[str, Any]] = {m: {"px": [], "rel": [], "cos": [], "src_ref": [], "src_est": [], "found": 0,
                                          "total": 0}
                                      for m in ("roi", "predict+1", "predict+2", "predict+3")}
    case = all_cases(frames)[case_name]
    sources = _source_embeddings(analyzer, case, data_dir)
    for k, image in enumerate(iter_frames(case, data_dir)):
        t = k / VIDEO_FPS
        dets = analyzer.detect(image)
        tracked = tracker.update("c", dets, t)
        ref_emb: dict[int, np.ndarray] = {}
        jobs: list[tuple[str, Any, Any]] = []  # (method, ref det, estimate landmarks)
        for tf in tracked:
            hist = history.setdefault(tf.track_id, [])
            if hist and abs(hist[-1][0] - (t - 1 / VIDEO_FPS)) < 1e-6:
                for h in (1, 2, 3):
                    past = [(ts, d) for ts, d in hist if ts <= t - h / VIDEO_FPS + 1e-9][-3:]
                    if len(past) < 1:
                        continue
                    mm = MotionModel()
                    for ts, d in past:
                        mm.update(0, d, ts)
                    jobs.append((f"predict+{h}", tf.detection, mm.predict(0, t)))
                mm = MotionModel()
                for ts, d in hist[-3:]:
                    mm.update(0, d, ts)
                pred = mm.predict(0, t)
                region = square_region(pred.bbox, roi_scale, image.shape)
                found = detect_crop(analyzer.detector, image, region, roi_input, config.detection.roi_score_threshold)
                best = None
                if found:
                    ious = iou_matrix(tf.detection.bbox[None], np.stack([d.bbox for d in found]))[0]
                    if ious.max() >= 0.5:
                        best = found[int(ious.argmax())]
                jobs.append(("roi", tf.detection, best))
            hist.append((t, tf.detection))
            del hist[:-6]
        if not jobs:
            continue
        crops_ref = np.stack([align_arcface(image, ref.landmarks) for _, ref, _ in jobs])
        emb_ref = analyzer.embedder.embed(crops_ref)
        est_idx = [i for i, (_, _, e) in enumerate(jobs) if e is not None]
        emb_est = analyzer.embedder.embed(np.stack([align_arcface(image, jobs[i][2].landmarks) for i in est_idx])) \
            if est_idx else np.zeros((0, emb_ref.shape[1]), np.float32)
        est_of = dict(zip(est_idx, emb_est, strict=True))
        for i, (method, ref, est) in enumerate(jobs):
            a = acc[method]
            a["total"] += 1
            if est is None:
                continue
            a["found"] += 1
            err = float(np.abs(est.landmarks - ref.landmarks).max())
            iod = float(np.linalg.norm(ref.landmarks[1] - ref.landmarks[0])) or 1.0
            a["px"].append(err)
            a["rel"].append(err / iod)
            a["cos"].append(float(emb_ref[i] @ est_of[i]))
            if sources is not None:
                a["src_ref"].append(float((sources @ emb_ref[i]).max()))
                a["src_est"].append(float((sources @ est_of[i]).max()))
        del ref_emb
    return [{"case": case_name, "method": m, **_stats(a["px"], a["rel"], a["cos"], a["found"], a["total"]),
             "src_cos_full": float(np.mean(a["src_ref"])) if a["src_ref"] else None,
             "src_cos_method": float(np.mean(a["src_est"])) if a["src_est"] else None}
            for m, a in acc.items()]


def _source_embeddings(analyzer: Any, case: Any, data_dir: Path) -> np.ndarray | None:
    """Synthetic cases: float32 (F, D) embeddings of the original LFW photos pasted in the frames (the truth)."""
    from bench.pipeline import lfw_photos
    from namus_edge.models.imagefile import read_image

    if case.kind != "synthetic":
        return None
    out = []
    for p in lfw_photos(data_dir, case.faces, 7):
        faces = analyzer.analyze(read_image(p))
        if faces:
            out.append(faces[0].embedding)
    return np.stack(out) if out else None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (benchmarks never fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.interval")
    ap.add_argument("--cases", default="synthetic-1080p-5faces,synthetic-720p-1face,video-hamilton")
    ap.add_argument("--frames", type=int, default=40, help="frames per synthetic case (videos: all frames)")
    ap.add_argument("--roi-input", type=int, default=192)
    ap.add_argument("--roi-scale", type=float, default=2.0)
    ap.add_argument("--json", default=None, help="also write the rows (JSON) to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    data_dir = shared_dir() / "data"
    rows: list[dict[str, Any]] = []
    for c in args.cases.split(","):
        rows += measure(c, args.frames, data_dir, args.roi_input, args.roi_scale)
    info = machine_info()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "argv": sys.argv, "rows": rows}, indent=1),
                                   encoding="utf-8")
    print(f"load average at end: {info.get('load_avg')}")
    print(markdown_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
