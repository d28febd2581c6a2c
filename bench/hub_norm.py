"""Cost of hub normalisation: offsets at bundle build, and the normalised search against the raw one.

For each gallery size it writes two real bundles (:class:`namus_edge.index.bundle_writer.BundleWriter`)
from the same vectors, one without offsets (``hub_k=None``) and one with them (``hub_k=50``), and
times ``finish`` (index, SQLite, offsets, manifest, signature). It then loads the bundle with
offsets and times ``Bundle.search`` raw and normalised, side by side in the same process, for
single faces and batches of 8 (the faces of a frame), and reports the ratios: normalised *exact*
(all top 5 cases exact) and normalised *floor* (``exact_above`` = 0.35, what a device with
threshold 0.40 and margin 0.05 asks for: exact wherever a verdict could change).

Synthetic gallery: 512-D unit vectors with a shared "mean face" component of random strength
(``g = normalise(u + a * m)``, ``a ~ |N(0, s)|``, ``s = --hub-strength``, default 0.2: offsets
p01 / p99 about -0.035 / +0.12), so that some faces attract many others as real
hubs do (the offset spread is printed next to the numbers; real EdgeFace offsets are in
docs/accuracy.md section 6). 1-3 faces per case. Queries are built the same way; a third are
planted matches (cosine 0.5 to a gallery face). The widening of the normalised search (it asks
FAISS for 3x more faces, more while a face left out could still rank) depends on that spread.

Benchmarks never fail: they print a markdown table (``--json PATH`` writes every number).

Usage::

    nice -n 10 python -m bench.hub_norm --sizes 14k,55k
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import latency_stats, machine_info, machine_markdown, markdown_table
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.models.hub_norm import HUB_K

log = logging.getLogger("bench.hub_norm")

DIM = 512
#: ``exact_above`` of a device with threshold 0.40 and margin 0.05 (policy.decision_floor).
DEVICE_FLOOR = 0.35
MODEL = ModelIdentity("edgeface_xs", "f64d05c10d84919122df8e2c72d1ba1e8d9a54b1855a802d9a3d7458c16d48a9", DIM)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery(n: int, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(vectors float32 (n, 512), case id per row, the shared direction m)``."""
    m = _unit(rng.standard_normal((1, DIM)))[0]
    u = _unit(rng.standard_normal((n, DIM)))
    a = np.abs(rng.normal(0.0, strength, size=(n, 1))).astype(np.float32)
    vectors = _unit(u + a * m)
    cases: list[str] = []
    case = 0
    while len(cases) < n:
        cases += [f"MP{100000 + case}"] * int(rng.integers(1, 4))
        case += 1
    return vectors, cases[:n], m


def queries(vectors: np.ndarray, m: np.ndarray, count: int, rng: np.random.Generator,
            strength: float) -> np.ndarray:
    u = _unit(rng.standard_normal((count, DIM)))
    b = np.abs(rng.normal(0.0, strength, size=(count, 1))).astype(np.float32)
    q = _unit(u + b * m)
    planted = rng.choice(len(vectors), size=count // 3, replace=False)
    g = vectors[planted]
    orth = q[: len(planted)] - (q[: len(planted)] * g).sum(axis=1, keepdims=True) * g
    q[: len(planted)] = _unit(0.5 * g + np.sqrt(0.75) * _unit(orth))
    return q


def write(out: Path, key: Path, vectors: np.ndarray, cases: list[str], hub_k: int | None) -> float:
    """Seconds spent in ``finish`` (everything after the faces are collected)."""
    writer = BundleWriter(out, MODEL, {"name": "bench"}, hub_k=hub_k)
    for cid in dict.fromkeys(cases):
        writer.add_case({"id_formatted": cid})
    sha = "0" * 64
    for i, (vec, cid) in enumerate(zip(vectors, cases, strict=True)):
        writer.add_face(cid, f"k{i}", vec, quality=1.0, det_score=1.0, bbox=[0, 0, 1, 1], category="FacialCaseId",
                        is_rendering=False, file_sha256=sha)
    t0 = time.perf_counter()
    writer.finish(key)
    return time.perf_counter() - t0


def time_search(bundle: Bundle, q: np.ndarray, batch: int, hub_norm: bool, budget_s: float,
                exact_above: float | None = None) -> dict[str, float]:
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < budget_s and i + batch <= len(q):
        t0 = time.perf_counter()
        bundle.search(q[i:i + batch], 5, hub_norm=hub_norm, exact_above=exact_above)
        samples.append((time.perf_counter() - t0) * 1000)
        i += batch
    return latency_stats(samples)


def measure(n: int, n_queries: int, budget_s: float, seed: int, work: Path, key: Path,
            strength: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vectors, cases, m = gallery(n, rng, strength)
    q = queries(vectors, m, n_queries, rng, strength)
    t_raw = write(work / f"raw-{n}", key, vectors, cases, None)
    t_hub = write(work / f"hub-{n}", key, vectors, cases, HUB_K)
    row: dict[str, Any] = {"faces": n, "finish_raw_s": t_raw, "finish_hub_s": t_hub, "finish_ratio": t_hub / t_raw,
                           "offsets_mib": 4 * n / 2**20}
    with Bundle.load(work / f"hub-{n}") as b:
        off = b.hub_offsets()
        assert off is not None
        row["offset_p01"], row["offset_p99"] = float(np.percentile(off, 1)), float(np.percentile(off, 99))
        top_raw = [r[0].id_formatted for r in b.search(q, 1)]
        top_hub = [r[0].id_formatted for r in b.search(q, 1, hub_norm=True)]
        row["top1_changed_pct"] = 100.0 * float(np.mean([a != c for a, c in zip(top_raw, top_hub, strict=True)]))
        for batch in (1, 8):
            raw = time_search(b, q, batch, False, budget_s)
            exact = time_search(b, q, batch, True, budget_s)
            device = time_search(b, q, batch, True, budget_s, DEVICE_FLOOR)
            row[f"b{batch}_raw_p50_ms"] = raw["p50"]
            row[f"b{batch}_exact_ratio"] = exact["p50"] / raw["p50"]
            row[f"b{batch}_floor_ratio"] = device["p50"] / raw["p50"]
            row[f"b{batch}_floor_p99_ms"] = device["p99"]
    return row


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        mult = 1_000_000 if p.endswith("m") else 1_000 if p.endswith("k") else 1
        out.append(int(float(p.rstrip("mk")) * mult))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.hub_norm")
    ap.add_argument("--sizes", default="14k,55k", help="gallery sizes, e.g. 14k,55k")
    ap.add_argument("--queries", type=int, default=600, help="query faces")
    ap.add_argument("--budget-s", type=float, default=6.0, help="max seconds per latency measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hub-strength", type=float, default=0.2, help="spread of the shared component (hubness)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        work = Path(tmp)
        key, _ = generate_keypair(work / "op.key")
        for n in parse_sizes(args.sizes):
            rows.append(measure(n, args.queries, args.budget_s, args.seed, work, key, args.hub_strength))
            print(f"done {n}", flush=True)
    cols = ["faces", "finish_raw_s", "finish_hub_s", "finish_ratio", "offsets_mib", "offset_p01", "offset_p99",
            "top1_changed_pct", "b1_raw_p50_ms", "b1_exact_ratio", "b1_floor_ratio", "b1_floor_p99_ms",
            "b8_raw_p50_ms", "b8_exact_ratio", "b8_floor_ratio", "b8_floor_p99_ms"]
    print(machine_markdown(info))
    print()
    print(markdown_table(rows, cols))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
