"""FAISS index benchmark for the NamUs face gallery (issue 7): exact flat (fp32/fp16) versus IVF, HNSW and PQ.

For each gallery size it builds every index family, then measures build time, memory (serialised size and
RSS delta), single-query latency p50/p99 with 1 and 2 threads, batched latency (8 and 32 faces = all faces
of a frame), and recall@1 on two query difficulties:

* synthetic (default): gallery = random unit vectors; a query is a planted match
  ``q = normalise(c*g + sqrt(1-c^2)*u)`` with ``u`` a unit vector orthogonal to gallery item ``g``, so
  ``cos(q, g) = c`` exactly, for c = 0.85 (easy) and c = 0.5 (weak but real, the usual old-photo case).
  Random 512-D distractors reach cosine ~0.25 at 1M, so the exact answer is ``g``;
* ``--real``: embeddings of real faces from ../shared/data (+ augmentations) enrolled in a gallery padded
  with random unit vectors; queries are other photos of enrolled identities (see real_workload below);
  difficulty is split by the true (best same-identity) cosine.

Every index is wrapped in ``IndexIDMap2`` with int64 ids, as in the bundle, except IVF-Flat/IVF-SQ8 which
store ids natively (``add_with_ids``); the IDMap overhead is measured on flat fp32.

Benchmarks never fail: they print a markdown table (and ``--json PATH`` writes every number).

Usage::

    python -m bench.search --quick
    nice -n 10 python -m bench.search --sizes 10000,100000,1000000 --json /tmp/search.json
    python -m bench.search --real --sizes 100000,1000000
    python -m bench.search --stream --sizes 10M --queries 300   # pqfs at 10M without a 20 GiB gallery
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from bench.common import (
    current_rss_mb,
    latency_stats,
    machine_info,
    machine_markdown,
    markdown_table,
    peak_rss_mb,
    release_freed_memory,
)
from namus_edge.index.faiss_index import apply_search_params, build_index, choose_index
from namus_edge.models.registry import get_spec

log = logging.getLogger("bench.search")

K = 5  # neighbours asked per query (the matcher looks at a few candidates); recall uses the first.
DIFFICULTIES = {"easy": 0.85, "hard": 0.5}
FAMILIES = ("flat", "flat16", "flat16x2", "ivf", "ivfsq8", "ivfpq", "hnsw", "pqfs")


# --------------------------------------------------------------------------------------------- data


def random_unit(n: int, dim: int, rng: np.random.Generator, chunk: int = 131_072) -> np.ndarray:
    """(n, dim) float32 rows drawn N(0, 1) then L2-normalised, generated in chunks to bound memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s:s + len(block)] = block
    return out


def planted_queries(targets: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """Queries at exactly cosine `cos` from each row of `targets` ((n, d) float32 unit rows) -> (n, d) float32."""
    u = rng.standard_normal(targets.shape, dtype=np.float32)
    u -= np.sum(u * targets, axis=1, keepdims=True) * targets  # orthogonal to its target
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    q = cos * targets + math.sqrt(1.0 - cos * cos) * u
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def gallery_ids(n: int) -> np.ndarray:
    """Non-contiguous int64 ids (as face ids in a bundle are), so an id bug cannot pass as a position."""
    return np.arange(n, dtype=np.int64) * 7 + 1_000_003


@dataclass
class Workload:
    """A gallery plus labelled query sets.

    Attributes:
        name: "synthetic" or "real".
        gallery: (N, D) float32 unit rows.
        ids: (N,) int64 ids returned by the indexes.
        queries: difficulty name -> (Q, D) float32 unit rows.
        correct: difficulty name -> (Q,) object array of sets of ids counted as a correct top-1.
        latency_queries: (L, D) float32 queries used for timing (a mix of all difficulties).
    """

    name: str
    gallery: np.ndarray
    ids: np.ndarray
    queries: dict[str, np.ndarray]
    correct: dict[str, list[frozenset[int]]]
    latency_queries: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)


def synthetic_workload(n: int, dim: int, n_queries: int, seed: int) -> Workload:
    """Random unit gallery of n rows with planted easy (0.85) and hard (0.5) queries."""
    rng = np.random.default_rng(seed)
    gallery = random_unit(n, dim, rng)
    ids = gallery_ids(n)
    queries, correct = {}, {}
    for name, c in DIFFICULTIES.items():
        pos = rng.choice(n, size=n_queries, replace=n_queries > n)
        queries[name] = planted_queries(gallery[pos], c, rng)
        correct[name] = [frozenset((int(i),)) for i in ids[pos]]
    lat = np.concatenate([q for q in queries.values()])[rng.permutation(n_queries * len(queries))]
    return Workload("synthetic", gallery, ids, queries, correct, np.ascontiguousarray(lat))


# --------------------------------------------------------------------------------------------- real embeddings

AUGMENTATIONS = ("flip", "rot+8", "blur", "jpeg30")  # also available: "bright", "dark", "rot-8"


def _augment(img: np.ndarray, kind: str) -> np.ndarray:
    """One augmentation of a uint8 (H, W, 3) BGR image (same shape and dtype)."""
    import cv2

    if kind == "flip":
        return np.ascontiguousarray(img[:, ::-1])
    if kind in ("bright", "dark"):
        return cv2.convertScaleAbs(img, alpha=1.0, beta=40 if kind == "bright" else -40)
    if kind.startswith("rot"):
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(kind[3:]), 1.0)
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), 2.0)
    if kind == "jpeg30":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img
    raise ValueError(f"unknown augmentation {kind!r}")


def _read_manifest(path: Any) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def compute_real_embeddings(data_dir: Any, cache: Any) -> dict[str, np.ndarray]:
    """Embed real faces once (cached in an .npz outside the repo) with the project's FaceAnalyzer.

    Gallery: for every identity of verification/ (LFW fold 5, FG-NET, BBT) with two or more photos, its
    first photo plus AUGMENTATIONS; for single-photo identities the photo and its mirror image; UTKFace
    photos (no identity labels) as single-photo distractors. Queries: the other photos of the
    identities with two or more photos (true match at a natural, unplanted cosine).

    Returns:
        gallery (G, D) float32, gallery_label (G,) int64 (identity index; UTKFace rows get unique
        negative labels), query (Q, D) float32, query_label (Q,) int64, model name array.
    """
    from pathlib import Path

    import cv2

    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer

    cache = Path(cache)
    if cache.exists():
        with np.load(cache) as z:
            log.info("real embeddings from cache %s", cache)
            return {k: z[k] for k in z.files}
    data_dir = Path(data_dir)
    config = load_config()
    analyzer = FaceAnalyzer(config, with_age=False)

    def embed(img: np.ndarray | None) -> np.ndarray | None:
        if img is None:
            return None
        faces = [f for f in analyzer.analyze(img, photo=True) if f.embedding.size]
        return faces[0].embedding.astype(np.float32) if faces else None  # largest face

    by_id: dict[str, list[Path]] = {}
    for row in _read_manifest(data_dir / "verification" / "manifest.csv"):
        by_id.setdefault(row["identity"], []).append(data_dir / "verification" / row["path"])
    gal, gal_lab, qry, qry_lab = [], [], [], []
    t0 = time.perf_counter()
    for label, identity in enumerate(sorted(by_id)):
        paths = sorted(by_id[identity])
        first = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)
        augs = AUGMENTATIONS if len(paths) > 1 else ("flip",)
        for img in [first, *(_augment(first, a) for a in augs)] if first is not None else []:
            v = embed(img)
            if v is not None:
                gal.append(v)
                gal_lab.append(label)
        for p in paths[1:]:
            v = embed(cv2.imread(str(p), cv2.IMREAD_COLOR))
            if v is not None:
                qry.append(v)
                qry_lab.append(label)
        if label % 50 == 0:
            log.info("real embeddings: %d/%d identities, %.0fs", label, len(by_id), time.perf_counter() - t0)
    for j, row in enumerate(_read_manifest(data_dir / "age" / "manifest.csv")):
        if row["dataset"] != "utkface":
            continue  # FG-NET rows point at verification/ images already used above
        v = embed(cv2.imread(str(data_dir / "age" / row["path"]), cv2.IMREAD_COLOR))
        if v is not None:
            gal.append(v)
            gal_lab.append(-1 - j)
    out = {"gallery": np.stack(gal), "gallery_label": np.asarray(gal_lab, np.int64), "query": np.stack(qry),
           "query_label": np.asarray(qry_lab, np.int64), "model": np.asarray(config.models.selected()[1])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    log.info("real embeddings: %d gallery, %d queries in %.0fs -> %s", len(gal), len(qry),
             time.perf_counter() - t0, cache)
    return out


def real_workload(n: int, seed: int, data_dir: str | None, cache: str | None) -> Workload:
    """Real face embeddings enrolled among random unit padding vectors up to n rows (positions shuffled).

    Query difficulty is the true cosine (best same-identity gallery row): "easy" >= 0.5, "hard" < 0.5.
    """
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    data = Path(data_dir) if data_dir else repo.parent / "shared" / "data"
    cache_path = Path(cache) if cache else Path.home() / ".cache" / "namus-edge" / "bench" / "real_embeddings.npz"
    emb = compute_real_embeddings(data, cache_path)
    real, real_lab = emb["gallery"], emb["gallery_label"]
    dim = real.shape[1]
    rng = np.random.default_rng(seed)
    n = max(n, len(real))
    gallery = random_unit(n, dim, rng)
    pos = rng.choice(n, size=len(real), replace=False)
    gallery[pos] = real
    ids = gallery_ids(n)
    ids_of: dict[int, set[int]] = {}
    for p, lab in zip(pos, real_lab, strict=True):
        ids_of.setdefault(int(lab), set()).add(int(ids[p]))
    q, q_lab = emb["query"], emb["query_label"]
    true_cos = np.array([float(np.max(real[real_lab == lab] @ v)) for v, lab in zip(q, q_lab, strict=True)])
    queries, correct = {}, {}
    for name, mask in (("easy", true_cos >= 0.5), ("hard", true_cos < 0.5)):
        queries[name] = np.ascontiguousarray(q[mask])
        correct[name] = [frozenset(ids_of[int(lab)]) for lab in q_lab[mask]]
    lat = np.ascontiguousarray(q[rng.permutation(len(q))])
    notes = {"real_gallery": len(real), "queries_easy": int((true_cos >= 0.5).sum()),
             "queries_hard": int((true_cos < 0.5).sum()), "true_cos_median": float(np.median(true_cos)),
             "model": str(emb["model"])}
    log.info("real workload N=%d: %s", n, notes)
    return Workload("real", gallery, ids, queries, correct, lat, notes)


# --------------------------------------------------------------------------------------------- indexes


@dataclass
class Built:
    """A built index with its tunable parameter sweep.

    Attributes:
        index: the searchable index (ids = workload ids).
        sweep: list of (label, setter) applied in turn before measuring.
        keep: python references that must outlive `index` (quantizers, inner indexes).
    """

    index: faiss.Index
    sweep: list[tuple[str, Callable[[], None]]]
    keep: list[Any] = field(default_factory=list)
    build_note: str = ""
    size_parts: list[Any] | None = None  # serialised instead of `index` when that type cannot be written


def ivf_nlist(n: int, factor: float = 4.0) -> int:
    """IVF list count ~ factor*sqrt(N) (FAISS rule of thumb: factor 4 to 16), at least 16."""
    return max(16, round(factor * math.sqrt(n)))


@dataclass
class BuildContext:
    """Shared state across the builds of one size (the IVF coarse centroids are trained once)."""

    dim: int
    seed: int
    quick: bool
    hnsw_m: int
    hnsw_efc: int
    nprobes: Sequence[int]
    efsearches: Sequence[int]
    k_factors: Sequence[int] = (16,)
    nlist_factor: float = 4.0
    centroids: np.ndarray | None = None
    centroid_train_s: float = 0.0


def _coarse_quantizer(ctx: BuildContext, x: np.ndarray) -> tuple[faiss.IndexFlatIP, float]:
    """A flat IP quantizer holding spherical k-means centroids trained on a sample of x (trained once per size)."""
    nlist = ivf_nlist(len(x), ctx.nlist_factor)
    if ctx.centroids is None or len(ctx.centroids) != nlist:
        t0 = time.perf_counter()
        rng = np.random.default_rng(ctx.seed + 1)
        n_train = min(len(x), 30 * nlist)
        sample = x[np.sort(rng.choice(len(x), size=n_train, replace=False))]
        km = faiss.Kmeans(ctx.dim, nlist, niter=10, spherical=True, seed=ctx.seed, verbose=False,
                          max_points_per_centroid=30)
        km.train(sample)
        ctx.centroids = km.centroids.astype(np.float32)
        ctx.centroid_train_s = time.perf_counter() - t0
    q = faiss.IndexFlatIP(ctx.dim)
    q.add(ctx.centroids)
    return q, ctx.centroid_train_s


def _train_sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 2)
    return x[np.sort(rng.choice(len(x), size=min(n, len(x)), replace=False))]


def build(family: str, x: np.ndarray, ids: np.ndarray, ctx: BuildContext) -> Built:
    """Build index `family` over x ((N, D) float32 unit rows) with int64 `ids`; returns it with its sweep."""
    d = ctx.dim
    ip = faiss.METRIC_INNER_PRODUCT
    if family in ("flat", "flat_noidmap"):
        inner = faiss.IndexFlatIP(d)
        if family == "flat_noidmap":
            inner.add(x)
            return Built(inner, [("-", lambda: None)], build_note="no IDMap: returns positions")
        idx = faiss.IndexIDMap2(inner)
        idx.add_with_ids(x, ids)
        return Built(idx, [("-", lambda: None)], [inner])
    if family == "flat16":
        inner = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)
        idx = faiss.IndexIDMap2(inner)
        idx.add_with_ids(x, ids)
        return Built(idx, [("-", lambda: None)], [inner])
    if family == "flat16x2":
        # Flat fp16 split into two shards searched in parallel threads: a single query uses both cores.
        shards = faiss.IndexShards(d, True, True)
        parts = [faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip) for _ in range(2)]
        for p in parts:
            shards.add_shard(p)
        idx = faiss.IndexIDMap2(shards)
        idx.add_with_ids(x, ids)
        return Built(idx, [("-", lambda: None)], [shards, *parts], "2 threaded shards (size: shards + ids)",
                     size_parts=parts)
    if family in ("ivf", "ivfsq8"):
        quant, t_coarse = _coarse_quantizer(ctx, x)
        nlist = quant.ntotal
        if family == "ivf":
            ivf = faiss.IndexIVFFlat(quant, d, nlist, ip)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(quant, d, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
            ivf.train(_train_sample(x, 30 * nlist, ctx.seed))
        ivf.add_with_ids(x, ids)  # IVF stores int64 ids natively
        sweep = [(f"nprobe={p}", _setter(ivf, "nprobe", p)) for p in ctx.nprobes if p <= nlist]
        return Built(ivf, sweep, [quant], f"nlist={nlist}, coarse k-means {t_coarse:.1f}s (shared, included)")
    if family == "ivfpq":
        quant, t_coarse = _coarse_quantizer(ctx, x)
        nlist = quant.ntotal
        m = d // 8  # 8 dims per sub-quantizer, 8 bits: 64 bytes/vector at 512-D
        ivf = faiss.IndexIVFPQ(quant, d, nlist, m, 8, ip)
        ivf.train(_train_sample(x, max(30 * nlist, 256 * 40), ctx.seed))
        refine = faiss.IndexRefineFlat(ivf)
        refine.k_factor = 16
        idx = faiss.IndexIDMap2(refine)
        idx.add_with_ids(x, ids)
        sweep = [(f"nprobe={p},kf=16", _setter(ivf, "nprobe", p)) for p in ctx.nprobes if p <= nlist]
        return Built(idx, sweep, [quant, ivf, refine], f"nlist={nlist}, PQ{m}x8 + flat refine k_factor 16")
    if family == "hnsw":
        inner = faiss.IndexHNSWFlat(d, ctx.hnsw_m, ip)
        inner.hnsw.efConstruction = ctx.hnsw_efc
        idx = faiss.IndexIDMap2(inner)
        idx.add_with_ids(x, ids)
        hnsw = inner.hnsw
        sweep = [(f"ef={e}", _setter(hnsw, "efSearch", e)) for e in ctx.efsearches]
        return Built(idx, sweep, [inner], f"M={ctx.hnsw_m}, efConstruction={ctx.hnsw_efc}")
    if family == "pqfs":
        # Exactly what the bundle builder makes above flat_max (index/faiss_index.py): 4-bit PQ fast scan of
        # every vector, then an exact fp16 re-rank of k_factor * k candidates.
        choice = choose_index(len(x), d, flat_max=1, fp16=True)
        idx = build_index(x, ids, choice)
        sweep = [(f"kf={kf}", _params_setter(idx, choice.type, {"k_factor": kf})) for kf in ctx.k_factors]
        return Built(idx, sweep, [], f"{choice.factory} (index/faiss_index.py)")
    raise ValueError(f"unknown index family {family!r}; expected one of {FAMILIES}")


def _setter(obj: Any, attr: str, value: int) -> Callable[[], None]:
    def apply() -> None:
        setattr(obj, attr, value)

    return apply


def _params_setter(index: faiss.Index, index_type: str, params: dict[str, Any]) -> Callable[[], None]:
    def apply() -> None:
        apply_search_params(index, index_type, params)

    return apply


def serialized_mb(index: faiss.Index) -> float:
    """Size of the index written by faiss.write_index, MiB (written to a temp file: no extra RAM)."""
    with tempfile.NamedTemporaryFile(prefix="bench_search_", suffix=".faiss", dir="/tmp", delete=True) as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name) / 2**20


# --------------------------------------------------------------------------------------------- measuring


def time_searches(index: faiss.Index, queries: np.ndarray, batch: int, max_reps: int, budget_s: float) -> dict:
    """Latency of index.search on consecutive batches of `batch` queries, ms per call (p50/p99/mean/n)."""
    index.search(queries[:batch], K)  # warm-up
    samples: list[float] = []
    n_batches = len(queries) // batch
    t_start = time.perf_counter()
    for r in range(max_reps):
        s = (r % n_batches) * batch
        q = queries[s:s + batch]
        t0 = time.perf_counter()
        index.search(q, K)
        samples.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - t_start > budget_s and len(samples) >= (20 if batch == 1 else 3):
            break
    return latency_stats(samples)


def recall(index: faiss.Index, wl: Workload, flat_top1: dict[str, np.ndarray],
           flat_score: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """recall@1 per difficulty (top-1 id in the correct set) and agreement of top-1 with exact flat fp32.

    ``agree_thr_<difficulty>`` is the agreement on the queries whose exact top-1 score reaches the match
    threshold (the ones that can vote for a case; NaN when there are none). When `flat_top1` is empty (the
    index is the exact flat one) it and `flat_score` are filled with this index's top-1 ids and scores.
    """
    out: dict[str, float] = {}
    fill = not flat_top1
    for name, q in wl.queries.items():
        scores, labels = index.search(q, K)
        top1 = labels[:, 0]
        out[f"r1_{name}"] = float(np.mean([int(t) in ok for t, ok in zip(top1, wl.correct[name], strict=True)]))
        if fill:
            flat_top1[name], flat_score[name] = top1, scores[:, 0]
        agree = top1 == flat_top1[name]
        out[f"agree_{name}"] = float(np.mean(agree))
        above = flat_score[name] >= threshold
        out[f"agree_thr_{name}"] = float(np.mean(agree[above])) if above.any() else float("nan")
        out[f"n_thr_{name}"] = int(above.sum())
    return out


@dataclass
class Settings:
    """Measurement knobs."""

    threads: Sequence[int]
    single_reps: int
    batch_reps: int
    budget_s: float
    batches: Sequence[int] = (8, 32)
    batch_threads: Sequence[int] = (1,)
    threshold: float = 0.40


def latency_columns(index: faiss.Index, queries: np.ndarray, st: Settings) -> dict[str, float]:
    """Single-query p50/p99 per thread count and batched p50/p99 (``p50_t1``, ``b8_p99_t1``, ...), ms."""
    row: dict[str, float] = {}
    for t in st.threads:
        faiss.omp_set_num_threads(t)
        single = time_searches(index, queries, 1, st.single_reps, st.budget_s)
        row[f"p50_t{t}"], row[f"p99_t{t}"], row[f"n_t{t}"] = single["p50"], single["p99"], single["n"]
        for b in st.batches if t in st.batch_threads else ():
            bs = time_searches(index, queries, b, st.batch_reps, st.budget_s)
            row[f"b{b}_p50_t{t}"], row[f"b{b}_p99_t{t}"] = bs["p50"], bs["p99"]
    return row


def measure_size(wl: Workload, families: Sequence[str], ctx: BuildContext, st: Settings,
                 rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """Build and measure every family over one workload, appending one row per (family, parameter) to `rows`.

    `save` is called after each row so that an interrupted long run keeps what it measured.
    """
    n = len(wl.gallery)
    flat_top1: dict[str, np.ndarray] = {}
    flat_score: dict[str, np.ndarray] = {}
    order = ["flat"] + [f for f in families if f != "flat"]  # flat first: it is the ground truth
    for family in order:
        if family not in families and family != "flat":
            continue
        gc.collect()
        release_freed_memory()
        rss0 = current_rss_mb()
        faiss.omp_set_num_threads(max(st.threads))
        t0 = time.perf_counter()
        try:
            built = build(family, wl.gallery, wl.ids, ctx)
        except MemoryError:
            log.warning("%s at N=%d: out of memory, skipped", family, n)
            continue
        build_s = time.perf_counter() - t0
        rss_delta = current_rss_mb() - rss0
        if built.size_parts is None:
            size_mb = serialized_mb(built.index)
        else:
            size_mb = sum(serialized_mb(p) for p in built.size_parts) + n * 8 / 2**20
        log.info("N=%d %s built in %.1fs (%.0f MiB serialised, RSS +%.0f MiB) %s", n, family, build_s, size_mb,
                 rss_delta, built.build_note)
        for label, apply in built.sweep:
            apply()
            faiss.omp_set_num_threads(max(st.threads))
            rec = recall(built.index, wl, flat_top1, flat_score, st.threshold)
            row: dict[str, Any] = {"workload": wl.name, "N": n, "dim": wl.gallery.shape[1], "index": family,
                                   "params": label, "build_s": build_s, "size_mb": size_mb,
                                   "rss_delta_mb": rss_delta, "note": built.build_note, **rec}
            row.update(latency_columns(built.index, wl.latency_queries, st))
            rows.append(row)
            save()
            log.info("  %s: %s", label, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                                         if k.startswith(("r1", "agree", "p50", "p99", "b"))})
        if family == "flat":
            # The IDMap2 overhead: same search without the wrapper.
            inner = faiss.IndexFlatIP(ctx.dim)
            inner.add(wl.gallery)
            faiss.omp_set_num_threads(1)
            bare = time_searches(inner, wl.latency_queries, 1, st.single_reps, st.budget_s)
            rows[-1]["p50_t1_noidmap"], rows[-1]["p99_t1_noidmap"] = bare["p50"], bare["p99"]
            save()
            del inner
        del built
        gc.collect()


def measure_streamed(n: int, dim: int, n_queries: int, seed: int, st: Settings, k_factors: Sequence[int],
                     rows: list[dict[str, Any]], save: Callable[[], None], chunk: int = 262_144) -> None:
    """The bundle's approximate index (``pqfs``) at a size whose fp32 gallery does not fit in memory (10M).

    The gallery is generated and added chunk by chunk, never held whole; exact top-1 (the ground truth for
    ``agree``) is kept per query while streaming, by a matrix product with each chunk. The planted query
    targets are drawn from the first chunk (gallery rows are i.i.d., so their position changes nothing), and
    the PQ is trained on that chunk too. ``size_mb`` is computed (codes + fp16 copy + ids), not written out;
    ``rss_delta_mb`` is not measured (chunks come and go during the build; see the run's peak RSS).
    """
    rng = np.random.default_rng(seed)
    choice = choose_index(n, dim, flat_max=1, fp16=True)
    first = random_unit(min(chunk, n), dim, rng)
    queries, correct, targets = {}, {}, {}
    for name, c in DIFFICULTIES.items():
        pos = rng.choice(len(first), size=n_queries, replace=False)
        targets[name] = pos
        queries[name] = planted_queries(first[pos], c, rng)
    allq = np.concatenate(list(queries.values()))
    best_s = np.full(len(allq), -np.inf, dtype=np.float32)
    best_i = np.zeros(len(allq), dtype=np.int64)
    ids_all = gallery_ids(n)
    faiss.omp_set_num_threads(max(st.threads))
    t0 = time.perf_counter()
    inner = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    inner.train(first)
    index = faiss.IndexIDMap2(inner)
    apply_search_params(index, choice.type, choice.params)
    build_s, block, start = 0.0, first, 0
    while True:
        t1 = time.perf_counter()
        index.add_with_ids(block, ids_all[start:start + len(block)])
        build_s += time.perf_counter() - t1 + (t1 - t0 if start == 0 else 0.0)
        scores = allq @ block.T  # exact ground truth, one chunk at a time
        top = scores.argmax(axis=1)
        better = scores[np.arange(len(allq)), top] > best_s
        best_s[better] = scores[np.arange(len(allq)), top][better]
        best_i[better] = ids_all[start + top[better]]
        start += len(block)
        if start >= n:
            break
        block = random_unit(min(chunk, n - start), dim, rng)
        log.info("streamed %d / %d vectors", start, n)
    del block, first
    gc.collect()
    size_mb = n * (choice.params["pq_m"] / 2 + 2 * dim + 8) / 2**20
    log.info("N=%d pqfs streamed in %.1fs (RSS now %.0f MiB)", n, build_s, current_rss_mb())
    flat_top1, flat_score, offset = {}, {}, 0
    for name in DIFFICULTIES:
        flat_top1[name] = best_i[offset:offset + n_queries]
        flat_score[name] = best_s[offset:offset + n_queries]
        correct[name] = [frozenset((int(i),)) for i in ids_all[targets[name]]]
        offset += n_queries
    lat = np.ascontiguousarray(allq[rng.permutation(len(allq))])
    wl = Workload("synthetic-streamed", np.zeros((0, dim), np.float32), ids_all[:0], queries, correct, lat)
    for kf in k_factors:
        apply_search_params(index, choice.type, {"k_factor": kf})
        faiss.omp_set_num_threads(max(st.threads))
        row: dict[str, Any] = {"workload": wl.name, "N": n, "dim": dim, "index": "pqfs", "params": f"kf={kf}",
                               "build_s": build_s, "size_mb": size_mb, "rss_delta_mb": float("nan"),
                               "note": f"{choice.factory}, streamed",
                               **recall(index, wl, flat_top1, flat_score, st.threshold)}
        row.update(latency_columns(index, lat, st))
        rows.append(row)
        save()
        log.info("  kf=%d: %s", kf, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                                     if k.startswith(("r1", "agree", "p50", "p99", "b"))})


# --------------------------------------------------------------------------------------------- output

COLUMNS = ["N", "index", "params", "build_s", "size_mb", "rss_delta_mb", "r1_easy", "r1_hard", "agree_easy",
           "agree_hard", "agree_thr_hard", "p50_t1", "p99_t1", "p50_t2", "p99_t2", "b8_p99_t1", "b32_p99_t1"]


def table(rows: Sequence[dict[str, Any]], threads: Sequence[int]) -> str:
    """Markdown table of the result rows (columns for thread counts that were not run are dropped)."""
    cols = [c for c in COLUMNS if not any(c.endswith(f"_t{t}") for t in (1, 2) if t not in threads)]
    return markdown_table(rows, cols)


def parse_ints(text: str) -> list[int]:
    """'10000,100k,1M' -> [10000, 100000, 1000000]."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        mult = 1_000_000 if p.endswith("m") else 1000 if p.endswith("k") else 1
        out.append(int(float(p.rstrip("mk")) * mult))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (benchmarks never fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.search")
    ap.add_argument("--sizes", default="10k,100k,1M", help="gallery sizes, e.g. 10k,100k,1M")
    ap.add_argument("--dim", type=int, default=512,
                    help="embedding size (512 EdgeFace, 128 SFace); --real uses the model's")
    ap.add_argument("--queries", type=int, default=1000, help="queries per difficulty for recall")
    ap.add_argument("--indexes", default=",".join(FAMILIES), help=f"families to run, from {','.join(FAMILIES)}")
    ap.add_argument("--threshold", type=float, default=get_spec("edgeface_xs").match_threshold,
                    help="match threshold for agree_thr (default: EdgeFace's, models/registry.py)")
    ap.add_argument("--threads", default="1,2", help="FAISS thread counts for the latency runs")
    ap.add_argument("--nprobe", default="16,64,256", help="IVF nprobe sweep")
    ap.add_argument("--ef-search", default="64,128,256,512", help="HNSW efSearch sweep")
    ap.add_argument("--k-factor", default="8,16,64", help="pqfs re-rank k_factor sweep")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-efc", type=int, default=80, help="HNSW efConstruction")
    ap.add_argument("--budget-s", type=float, default=8.0, help="max seconds per latency measurement")
    ap.add_argument("--nlist-factor", type=float, default=4.0, help="IVF nlist = factor * sqrt(N)")
    ap.add_argument("--quick", action="store_true", help="10k+100k, fewer queries and settings, HNSW at 10k only")
    ap.add_argument("--stream", action="store_true",
                    help="pqfs only, gallery generated chunk by chunk (sizes whose fp32 gallery does not fit, 10M)")
    ap.add_argument("--real", action="store_true", help="real face embeddings from ../shared/data (+ padding)")
    ap.add_argument("--data-dir", default=None, help="--real: shared data folder (default ../shared/data)")
    ap.add_argument("--cache", default=None, help="--real: embedding cache file (default ~/.cache/namus-edge/...)")
    ap.add_argument("--seed", type=int, default=20250601)
    ap.add_argument("--json", default=None, help="write all results and the machine description here")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)

    sizes = parse_ints(args.sizes)
    families = [f.strip() for f in args.indexes.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown --indexes {unknown}; choose from {','.join(FAMILIES)}")
    threads = parse_ints(args.threads)
    nprobes, efs, kfs = parse_ints(args.nprobe), parse_ints(args.ef_search), parse_ints(args.k_factor)
    st = Settings(threads=threads, single_reps=1000, batch_reps=100, budget_s=args.budget_s,
                  threshold=args.threshold)
    n_queries = args.queries
    if args.quick:
        if args.sizes == ap.get_default("sizes"):
            sizes = [10_000, 100_000]
        n_queries = min(n_queries, 200)
        nprobes, efs, kfs = [16, 64], [64, 256], [16]
        families = [f for f in families if f not in ("ivfpq", "flat16x2")]
        st = Settings(threads=threads, single_reps=200, batch_reps=10, budget_s=0.5, batches=(8,),
                      batch_threads=(1,), threshold=args.threshold)
    info = machine_info()
    log.info("machine: %s", info)
    results: list[dict[str, Any]] = []
    t_all = time.perf_counter()

    def save() -> None:
        if args.json:
            info["load_avg_now"] = tuple(round(v, 2) for v in os.getloadavg())
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"machine": info, "argv": sys.argv, "results": results}, f, indent=1)

    for n in sizes if args.stream else ():
        measure_streamed(n, args.dim, n_queries, args.seed, st, kfs, results, save)
        log.info("N=%d done; peak RSS %.0f MiB; load %s", n, peak_rss_mb(), os.getloadavg())
    for n in sizes if not args.stream else ():
        ctx = BuildContext(dim=args.dim, seed=args.seed, quick=args.quick, hnsw_m=args.hnsw_m,
                           hnsw_efc=40 if args.quick else args.hnsw_efc, nprobes=nprobes, efsearches=efs,
                           k_factors=kfs, nlist_factor=args.nlist_factor)
        if args.real:
            wl = real_workload(n, args.seed, args.data_dir, args.cache)
        else:
            wl = synthetic_workload(n, args.dim, n_queries, args.seed)
        if wl.notes:
            info.setdefault("workload_notes", {})[str(n)] = wl.notes
        fams = [f for f in families if not (args.quick and f == "hnsw" and n > 20_000)]  # HNSW build: minutes
        measure_size(wl, fams, ctx, st, results, save)
        log.info("N=%d done; peak RSS %.0f MiB; load %s", n, peak_rss_mb(), os.getloadavg())
        del wl
        gc.collect()
    info["load_avg_end"] = tuple(round(v, 2) for v in os.getloadavg())
    info["total_s"] = round(time.perf_counter() - t_all, 1)
    info["peak_rss_mb"] = round(peak_rss_mb())
    print(machine_markdown(info))
    print(f"- Load average at end: {info['load_avg_end']}; total {info['total_s']} s; "
          f"peak RSS {info['peak_rss_mb']} MiB")
    print()
    print(table(results, threads))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
