"""`index build` throughput benchmark (issue 7): images per second and seconds per stage.

Two NamUs-format sources, built in a temporary folder for each run:

* ``samples``: the real Prepager-layout sample records of ../shared/namus/samples with the real face
  crops (samples/face_crops) filed as their photos, as the acceptance test does (crop n of a case becomes
  its n-th face-worthy image; photos without a crop stay missing and are counted, not decoded);
* ``lfw``: a NamUs-format case set (MP and UP cases, 1-3 photos each) written by tests/namus_factory.py
  from LFW identities in ../shared/data/verification, about ``--lfw-photos`` photos.

Each source is built with ``index.build.build_bundle`` with ``--workers`` decode threads (1 and 2 by
default); the numbers come from its ``BuildSummary``: images per second of wall time and
``stage_seconds`` (decode = summed in the decode threads, so it overlaps the other stages when it runs
in parallel; detect = detection with the padded retry + alignment + quality; embed; write = FAISS index,
SQLite, signing). "other" is the rest of the wall time (scanning the source, choosing faces,
thumbnails). The models are loaded once, before any timing (``FaceAnalyzer``, no age model, as the
build uses), and a small warm-up build runs first.

Benchmarks never fail: they print a markdown table (``--json`` prints one JSON object instead).

Usage::

    python -m bench.ingest --quick
    nice -n 10 python -m bench.ingest --workers 1,2 --json
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import emit_summary, machine_info, machine_markdown, markdown_table, peak_rss_mb

log = logging.getLogger("bench.ingest")

REPO = Path(__file__).resolve().parents[1]
TODAY = date(2026, 11, 23)  # fixed so current ages (and the bundle) do not depend on the run date
FACE_CATEGORIES = ("FacialCaseId", "ActualPhoto", "AgeProgression", "Composite", "ArtistRendering")


def shared_dir() -> Path:
    """../shared beside the checkout, or $NAMUS_EDGE_SHARED."""
    env = os.environ.get("NAMUS_EDGE_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def samples_source(shared: Path, dst: Path) -> Path:
    """The real sample records with the real face crops filed as their photos (tests/namus_factory.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from namus_edge_testing.namus_factory import samples_with_crops
    finally:
        sys.path.remove(str(REPO / "tests"))
    return samples_with_crops(shared, dst)


def lfw_source(data_dir: Path, dst: Path, photos: int) -> Path:
    """Write a NamUs-format case set of about `photos` LFW photos (MP and UP cases, 1-3 photos each) to `dst`."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from namus_edge_testing.namus_factory import SyntheticCase, lfw_identities, write_prepager
    finally:
        sys.path.remove(str(REPO / "tests"))

    cases = []
    total = 0
    for i, (name, paths) in enumerate(lfw_identities(data_dir).items()):
        if total >= photos:
            break
        chosen = paths[: 1 + i % 3]
        first, _, last = name.split(":", 1)[1].partition("_")
        cases.append(SyntheticCase("MP" if i % 4 else "UP", 5000 + i, first, last or "X", chosen,
                                   age_at_last=20 + i % 50))
        total += len(chosen)
    return write_prepager(dst, cases)


def run_build(config: Any, analyzer: Any, source: Path, key: Path, workers: int, out: Path) -> dict[str, Any]:
    """One build; returns the summary numbers plus CPU use (process CPU time / wall)."""
    from namus_edge.index.build import build_bundle

    c0, t0 = time.process_time(), time.perf_counter()
    s = build_bundle(config, str(source), out, key, workers=workers, today=TODAY, progress=False, analyzer=analyzer)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = dict(s.stage_seconds)
    decoded = s.images - s.no_face.get("file_missing", 0)
    return {
        "images": s.images, "decoded": decoded, "faces": s.faces, "no_face": dict(s.no_face),
        "padded_retry": s.padded_retry, "elapsed_s": s.elapsed_s, "images_per_s": s.images_per_s,
        "decoded_per_s": decoded / s.elapsed_s if s.elapsed_s > 0 else 0.0,
        **{f"{k}_s": v for k, v in stages.items()},
        "other_s": max(0.0, s.elapsed_s - sum(v for k, v in stages.items() if k != "decode")),
        "cpu_pct": 100.0 * cpu / wall if wall > 0 else float("nan"),
    }


COLUMNS = ["source", "workers", "images", "decoded", "faces", "elapsed_s", "images_per_s", "decoded_per_s",
           "decode_s", "detect_s", "embed_s", "write_s", "other_s", "cpu_pct"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (benchmarks never fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.ingest")
    ap.add_argument("--sources", default="samples,lfw", help="comma list from samples,lfw")
    ap.add_argument("--workers", default="1,2", help="decode threads (build_bundle workers=)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: config)")
    ap.add_argument("--lfw-photos", type=int, default=300, help="photos in the LFW case set")
    ap.add_argument("--repeats", type=int, default=1, help="builds per (source, workers); the fastest is kept")
    ap.add_argument("--quick", action="store_true", help="60 LFW photos, workers 1 only (< 1 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    ap.add_argument("--out", default=None, help="also write every number (JSON) to this file")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from namus_edge.core.config import load_config
    from namus_edge.index.signing import generate_keypair
    from namus_edge.models.analyzer import FaceAnalyzer

    if args.quick:
        args.lfw_photos = min(args.lfw_photos, 60)
        if args.workers == ap.get_default("workers"):
            args.workers = "1"
    overrides = [] if args.threads is None else [f"models.backend.intra_op_threads={args.threads}"]
    config = load_config(overrides=overrides)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if any(s not in ("samples", "lfw") for s in sources):
        ap.error("--sources: choose from samples,lfw")
    workers = [int(w) for w in args.workers.split(",")]
    info = machine_info()
    info["intra_op_threads"] = config.models.backend.intra_op_threads
    t_load = time.perf_counter()
    analyzer = FaceAnalyzer(config, with_age=False)
    info["model_load_s"] = round(time.perf_counter() - t_load, 2)
    shared = shared_dir()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "keys").mkdir()
        key, _ = generate_keypair(tmp / "keys" / "operator.key")
        made = {"samples": lambda: samples_source(shared, tmp / "src-samples"),
                "lfw": lambda: lfw_source(shared / "data", tmp / "src-lfw", args.lfw_photos)}
        paths = {s: made[s]() for s in sources}
        run_build(config, analyzer, paths[sources[0]], key, 1, tmp / "warmup")  # warm-up: caches, first-call costs
        n = 0
        for s in sources:
            for w in workers:
                runs = []
                for _ in range(max(1, args.repeats)):
                    n += 1
                    runs.append(run_build(config, analyzer, paths[s], key, w, tmp / f"bundle-{n}"))
                    shutil.rmtree(tmp / f"bundle-{n}", ignore_errors=True)
                best = min(runs, key=lambda r: r["elapsed_s"])
                row = {"source": s, "workers": w, **best, "load_avg": os.getloadavg()}
                rows.append(row)
                log.warning("%s workers=%d: %.1f images/s (%d images, %d faces, %.1f s)", s, w,
                            row["images_per_s"], row["images"], row["faces"], row["elapsed_s"])
    info["load_avg_end"] = tuple(round(v, 2) for v in os.getloadavg())
    info["peak_rss_mb"] = round(peak_rss_mb())
    summary = {"machine": info, "argv": sys.argv, "results": rows}
    if emit_summary(summary, args.out, args.json):
        return 0
    print(machine_markdown(info))
    print(f"- Load average at end: {info['load_avg_end']}; peak RSS {info['peak_rss_mb']} MiB; "
          f"onnxruntime intra-op threads {info['intra_op_threads']}")
    print()
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
