"""Which FAISS index a bundle uses, building it, and applying its search parameters.

Every index searches inner product over L2-normalised vectors (= cosine similarity) and is
wrapped in ``IndexIDMap2`` so that the ids FAISS returns are the bundle's ``face_id`` values.

Size thresholds, from ``bench/search.py`` (docs/benchmarks.md, "Index search"): exact flat fp16
search up to ``config.index.flat_max`` = 80k vectors (NamUs holds about 55k face images, so every
real bundle today is exact). Above it, ``pq_refine``: a 4-bit product-quantiser fast-scan pass
over the whole gallery (64 sub-quantisers: 32 bytes per vector) proposes
``k_factor * k`` candidates and an exact fp16 re-rank orders them, so the scores a bundle returns
are true cosines (to fp16 precision), never PQ estimates. It scans every vector, unlike IVF or HNSW,
which is why it keeps the weak (cosine 0.5) true matches that both of those lost in the benchmark:
recall@1 1.00 on both query difficulties at 1M with p99 about 3 ms on one core. Memory is the fp16
copy plus the codes (1,056 bytes per 512-D vector: ~1 GiB at 1M). Change the numbers here and in
``config.index.flat_max`` only from that benchmark's results.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexType = Literal["flat", "flat_fp16", "pq_refine"]

#: Sub-quantisers of the fast-scan PQ (4 bits each: 32-byte codes). 64 kept every weak match at
#: 512-D (8 dims per code) and at 128-D (2 dims per code); 16 at 128-D lost a third of them.
PQ_M = 64
#: Candidates re-ranked exactly per neighbour asked (tune from bench/search.py).
PQ_K_FACTOR = 16
#: Fewest vectors to train the 16-centroid sub-quantisers on (FAISS asks 39 points per centroid);
#: a smaller gallery stays exact whatever flat_max says.
PQ_MIN_TRAIN = 16 * 39

#: Search-time parameters per index type, applied on load from the manifest's ``index.params``.
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {"pq_refine": ("k_factor",)}


@dataclass(frozen=True)
class IndexChoice:
    """The index picked for a bundle.

    Attributes:
        type: ``flat``, ``flat_fp16`` or ``pq_refine``.
        factory: FAISS ``index_factory`` string of the inner index (wrapped in ``IndexIDMap2``).
        params: build and search parameters (``pq_m``, ``k_factor``).
        reason: one sentence explaining the choice, stored in the manifest.
    """

    type: IndexType
    factory: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _pq_subquantizers(dim: int) -> int:
    """Sub-quantiser count: the largest even divisor of ``dim`` up to :data:`PQ_M` and dim/2; 1 if none."""
    for m in range(min(PQ_M, dim // 2), 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return 1


def choose_index(n: int, dim: int, flat_max: int, fp16: bool) -> IndexChoice:
    """Pick the index type for ``n`` vectors of dimension ``dim``.

    Args:
        n: number of vectors.
        dim: vector dimension.
        flat_max: exact search up to this many vectors (``config.index.flat_max``).
        fp16: store flat vectors as fp16 (``config.index.flat_fp16``).

    Raises:
        ValueError: negative ``n`` or non-positive ``dim``/``flat_max``.
    """
    if n < 0 or dim <= 0 or flat_max <= 0:
        raise ValueError(f"choose_index: need n >= 0, dim > 0, flat_max > 0 (got {n}, {dim}, {flat_max})")
    if n > flat_max and n >= PQ_MIN_TRAIN:
        m = _pq_subquantizers(dim)
        return IndexChoice(
            "pq_refine",
            f"PQ{m}x4fs,Refine(SQfp16)",
            {"pq_m": m, "k_factor": PQ_K_FACTOR},
            f"{n} vectors > flat_max {flat_max}: PQ{m}x4 fast scan of all vectors, exact fp16 re-rank of "
            f"{PQ_K_FACTOR}x the neighbours asked",
        )
    why = f"{n} vectors <= flat_max {flat_max}" if n <= flat_max else f"{n} vectors, too few to train a PQ"
    if fp16:
        return IndexChoice("flat_fp16", "SQfp16", {}, f"{why}: exact search, fp16 storage")
    return IndexChoice("flat", "Flat", {}, f"{why}: exact search")


def build_index(vectors: np.ndarray, ids: np.ndarray, choice: IndexChoice) -> faiss.Index:
    """Build an ``IndexIDMap2`` over inner product holding ``vectors`` under ``ids``.

    Args:
        vectors: float32 (N, D), each row L2-normalised.
        ids: int64 (N,) unique ids (the bundle's face_id).
        choice: from :func:`choose_index`.

    Returns:
        The populated index, search parameters already applied.

    Raises:
        ValueError: shapes or dtypes are wrong, ids repeat, or a PQ index has too few vectors to train.
    """
    vectors = np.asarray(vectors)
    ids = np.asarray(ids)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"vectors must have shape (N, D) with D > 0, got {vectors.shape}")
    if vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32, got {vectors.dtype}")
    if ids.shape != (vectors.shape[0],) or ids.dtype != np.int64:
        raise ValueError(f"ids must be int64 of shape ({vectors.shape[0]},), got {ids.dtype} {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    n, dim = vectors.shape
    inner = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not inner.is_trained:
        if n < PQ_MIN_TRAIN:
            raise ValueError(f"{choice.factory} needs at least {PQ_MIN_TRAIN} vectors to train, got {n}")
        inner.train(np.ascontiguousarray(vectors))
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(ids))
    apply_search_params(index, choice.type, choice.params)
    logger.info("built %s index (%s) with %d vectors of dim %d", choice.type, choice.factory, n, dim)
    return index


def _inner(index: faiss.Index) -> Any:
    """The concrete index under an ``IndexIDMap``/``IndexIDMap2`` wrapper."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return index


def apply_search_params(index: faiss.Index, index_type: str, params: Mapping[str, Any]) -> None:
    """Set the search-time parameters (``k_factor``) recorded in a manifest.

    Raises:
        ValueError: the index is not of the type the manifest claims.
    """
    names = SEARCH_PARAMS.get(index_type, ())
    if not names:
        return
    inner = _inner(index)
    for name in names:
        if name not in params:
            continue
        if not hasattr(inner, name):
            raise ValueError(f"index type {index_type} but the FAISS index is {type(inner).__name__}")
        setattr(inner, name, type(getattr(inner, name))(params[name]))


def search_param(index: faiss.Index, name: str) -> float | None:
    """Read back a search parameter (``k_factor``) from an index, or None if it has none."""
    inner = _inner(index)
    return float(getattr(inner, name)) if name in ("k_factor",) and hasattr(inner, name) else None
