"""onnxruntime static INT8 quantisation of the detector and embedder: parity with fp32, and speed (issue 14).

Calibration and parity use disjoint real data from ../shared/data:

* **embedder** (EdgeFace-XS by default): faces aligned as the runtime aligns them (det_500m landmarks,
  ArcFace 112x112) from the LFW photos of ``verification/manifest.csv``, split by identity (sha256 of the
  name, even = calibration, odd = parity). Parity: cosine between the INT8 and fp32 embedding of each
  parity face (target >= 0.99 on every face) and the LFW fold-5 official pairs' verification accuracy at
  the fp32 model's threshold.
* **detector** (det_500m): calibrated on letterboxed 640x640 frames of the LFW calibration photos plus the
  ``identification`` photos (no FDDB image), parity: FDDB recall at IoU 0.4 (``eval detect``'s
  matching), target within 0.5 point of fp32.

Quantisation: ``onnxruntime.quantization.quantize_static``, QDQ format, per-channel int8 weights, uint8
activations, MinMax calibration, after ``quant_pre_process`` (shape inference + graph optimisation).
Speed: single-input latency of the fp32 and INT8 files side by side in one process (1 intra-op thread).
The INT8 files are written under ``--work`` (never in the repository).

Usage::

    nice -n 10 python -m bench.quantize --json /tmp/quantize.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info
from bench.pipeline import shared_dir

log = logging.getLogger("bench.quantize")


def _split(identity: str) -> bool:
    return hashlib.sha256(identity.encode()).digest()[0] % 2 == 0


def _lfw(data_dir: Path) -> tuple[list[Path], list[Path]]:
    cal, par = [], []
    with (data_dir / "verification" / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["dataset"] == "lfw":
                (cal if _split(r["identity"]) else par).append(data_dir / "verification" / r["path"])
    return cal, par


class _Reader:
    """onnxruntime CalibrationDataReader over an (N, 3, H, W) float32 array, one input at a time."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data, self.i = name, data, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.data):
            return None
        self.i += 1
        return {self.name: self.data[self.i - 1:self.i]}


def quantize(src: Path, dst: Path, data: np.ndarray, op_types: Sequence[str] | None = None) -> None:
    """Static QDQ INT8 quantisation of ``src`` calibrated on ``data`` (float32 (N, 3, H, W) model inputs).

    Per-channel weights need opset >= 13 (``DequantizeLinear`` ``axis``); older graphs get per-tensor weights.
    ``op_types``: quantise only these operator types (None: onnxruntime's default set).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    opset = max((o.version for o in onnx.load(str(pre), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx")), default=0)
    quantize_static(str(pre), str(dst), _Reader(name, data), quant_format=QuantFormat.QDQ, per_channel=opset >= 13,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=list(op_types) if op_types else None)


def _latency_ms(path: Path, x: np.ndarray, runs: int = 30) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def study(data_dir: Path, work: Path, n_cal: int, n_par: int,
          parts: Sequence[str] = ("embedder", "detector")) -> dict[str, Any]:
    """Quantise both models, measure parity and speed; returns every number."""
    from namus_edge.core.config import load_config
    from namus_edge.export.calibration import load_inputs, model_input
    from namus_edge.models.aligner import align_arcface
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.backends.factory import create_backend
    from namus_edge.models.detector import FaceDetector, letterbox
    from namus_edge.models.embedder import FaceEmbedder
    from namus_edge.models.eval_cli import DETECT_SIZE_BUCKETS
    from namus_edge.models.evaluation import match_detections
    from namus_edge.models.imagefile import read_image
    from namus_edge.models.registry import resolve

    config = load_config()
    analyzer = FaceAnalyzer(config, with_age=False)
    cache = config.models.resolved_cache_dir()
    det_spec, emb_spec = analyzer.detector_spec, analyzer.embedder_spec
    work.mkdir(parents=True, exist_ok=True)
    cal_paths, par_paths = _lfw(data_dir)
    rng = np.random.default_rng(14)
    cal_paths = [cal_paths[i] for i in sorted(rng.choice(len(cal_paths), min(n_cal, len(cal_paths)), replace=False))]
    par_paths = [par_paths[i] for i in sorted(rng.choice(len(par_paths), min(n_par, len(par_paths)), replace=False))]
    out: dict[str, Any] = {"calibration_photos": len(cal_paths), "parity_photos": len(par_paths)}

    # -- embedder: every quantisable op, then convolutions and matrix products only
    if "embedder" in parts:
        emb_cal, _ = load_inputs(cal_paths, emb_spec, emb_spec.contract.size or (112, 112), crop="align",
                                 detector=analyzer.detector)
        emb_src = resolve(emb_spec.name, cache)
        crops = []
        for p in par_paths:
            img = read_image(p)
            faces = analyzer.detect(img, photo=True)
            if faces:
                crops.append(align_arcface(img, faces[0].landmarks))
        batch = np.stack(crops)
        e32 = analyzer.embedder.embed(batch)
        x = model_input(crops[0], emb_spec, emb_spec.contract.size or (112, 112))[None]
        out["embedder"] = {"model": emb_spec.name, "calibration_faces": len(emb_cal), "parity_faces": len(crops),
                           "latency_ms_fp32": _latency_ms(emb_src, x), "variants": {}}
        for variant, ops in (("all_ops", None), ("conv_matmul", ("Conv", "MatMul"))):
            emb_q = work / f"{emb_src.stem}.int8.{variant}.onnx"
            t0 = time.perf_counter()
            quantize(emb_src, emb_q, emb_cal, ops)
            q_embedder = FaceEmbedder(create_backend(emb_q, config.models.backend), emb_spec)
            cos = np.sum(e32 * q_embedder.embed(batch), axis=1)
            out["embedder"]["variants"][variant] = {
                "quantize_s": time.perf_counter() - t0, "cos_min": float(cos.min()),
                "cos_p01": float(np.percentile(cos, 1)), "cos_median": float(np.median(cos)),
                "share_ge_099": float(np.mean(cos >= 0.99)), "latency_ms_int8": _latency_ms(emb_q, x)}
            log.info("embedder %s: %s", variant, out["embedder"]["variants"][variant])

    # -- detector
    if "detector" not in parts:
        return out
    size = tuple(config.detection.input_size)
    ident = sorted((data_dir / "identification").rglob("*.jpg"))[:100]
    det_imgs = [letterbox(read_image(p), size).canvas for p in [*cal_paths[:100], *ident]]
    det_cal = np.stack([model_input(c, det_spec, size) for c in det_imgs]).astype(np.float32)
    det_src = resolve(det_spec.name, cache)
    det_q = work / f"{det_src.stem}.int8.onnx"
    t0 = time.perf_counter()
    quantize(det_src, det_q, det_cal)
    out["detector_quantize_s"] = time.perf_counter() - t0
    detectors = {"fp32": analyzer.detector,
                 "int8": FaceDetector(create_backend(det_q, config.models.backend), det_spec, config.detection)}
    root = data_dir / "detection"
    rows = [r for r in csv.DictReader((root / "manifest.csv").open(newline="", encoding="utf-8"))
            if r["dataset"] == "fddb" and r.get("labeled", "1") != "0" and r["bboxes_xywh"].strip()]
    det_out: dict[str, Any] = {"model": det_spec.name, "calibration_frames": len(det_cal), "fddb_images": len(rows)}
    for key, det in detectors.items():
        hits: list[tuple[float, bool]] = []
        for r in rows:
            boxes = np.asarray(json.loads(r["bboxes_xywh"]), np.float64).reshape(-1, 4)
            gts = boxes.copy()
            gts[:, 2:] += gts[:, :2]
            dets = det.detect(read_image(root / r["path"]))
            d = np.asarray([x.bbox for x in dets], np.float64).reshape(-1, 4)
            sc = np.asarray([x.score for x in dets], np.float64)
            _, matched = match_detections(d, sc, gts, 0.4)
            hits += list(zip(boxes[:, 3].tolist(), matched.tolist(), strict=True))
        det_out[f"recall_{key}"] = float(np.mean([h for _, h in hits]))
        det_out[f"by_size_{key}"] = {n: float(np.mean([h for s, h in hits if lo <= s <= hi]))
                                     for n, lo, hi in DETECT_SIZE_BUCKETS}
    x = model_input(det_imgs[0], det_spec, size)[None].astype(np.float32)
    det_out["latency_ms_fp32"] = _latency_ms(det_src, x)
    det_out["latency_ms_int8"] = _latency_ms(det_q, x)
    out["detector"] = det_out
    log.info("detector: %s", det_out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (benchmarks never fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.quantize")
    ap.add_argument("--work", default="/tmp/namus-edge-quantize", help="where the INT8 files are written")
    ap.add_argument("--calibration", type=int, default=200, help="LFW calibration photos")
    ap.add_argument("--parity", type=int, default=300, help="LFW parity photos")
    ap.add_argument("--parts", default="embedder,detector", help="comma list: embedder, detector")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    info = machine_info()
    res = study(shared_dir() / "data", Path(args.work), args.calibration, args.parity, args.parts.split(","))
    res["machine"] = {**info, "load_avg_end": machine_info()["load_avg"]}
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
