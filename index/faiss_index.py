"""Which FAISS index a bundle uses, building it, and applying its search parameters.

Every index searches inner product over L2-normalised vectors (= cosine similarity) and is
wrapped in ``IndexIDMap2`` so that the ids FAISS returns are the bundle's ``face_id`` values.

Size thresholds, from ``bench/search.py`` (docs/benchmarks.md, "Index search"): exact flat fp16
search up to ``config.index.flat_max`` = 80k vectors (NamUs holds about 55k face images, so every
real bundle today is exact; flat at 100k already costs ~14 ms per query on one core); HNSW32
above it with efSearch 512, the only approximate index that kept the weak (cosine 0.5) true
matches: recall@1 0.98 at 100k synthetic, 1.00 agreement with flat on real embeddings; every
IVF variant lost 12-60 % of them. IVF-PQ only beyond :data:`IVF_PQ_MIN` vectors, where HNSW's
float vectors plus graph no longer fit a Jetson's memory (not measured at that size). Change the
numbers here and in ``config.index.flat_max`` only from that benchmark's results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexType = Literal["flat", "flat_fp16", "hnsw", "ivf_pq"]

#: Above this many vectors HNSW gives way to IVF-PQ (memory, see module docstring).
IVF_PQ_MIN = 5_000_000
#: HNSW graph degree and build/search breadth (tune from bench/search.py).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 512
#: IVF-PQ probes per query.
IVF_NPROBE = 32
#: FAISS needs about this many training points per IVF list (it warns below 39).
_IVF_MIN_POINTS_PER_LIST = 39

#: Search-time parameters per index type, applied on load from the manifest's ``index.params``.
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {"hnsw": ("efSearch",), "ivf_pq": ("nprobe",)}


@dataclass(frozen=True)
class IndexChoice:
    """The index picked for a bundle.

    Attributes:
        type: ``flat``, ``flat_fp16``, ``hnsw`` or ``ivf_pq``.
        factory: FAISS ``index_factory`` string of the inner index (wrapped in ``IndexIDMap2``).
        params: build and search parameters (``efConstruction``, ``efSearch``, ``nprobe``, ...).
        reason: one sentence explaining the choice, stored in the manifest.
    """

    type: IndexType
    factory: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of ``dim`` that is at most dim/8 (8 dims per 1-byte code), at least 1."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def _ivf_lists(n: int) -> int:
    """IVF list count: ~4*sqrt(n) as a power of two, at most n/39 (FAISS's minimum training points per list)."""
    want = round(math.log2(max(1.0, 4.0 * math.sqrt(n))))
    cap = math.floor(math.log2(max(1, n // _IVF_MIN_POINTS_PER_LIST)))
    return int(2 ** max(0, min(want, cap)))


def choose_index(n: int, dim: int, flat_max: int, fp16: bool, *, ivf_pq_min: int = IVF_PQ_MIN) -> IndexChoice:
    """Pick the index type for ``n`` vectors of dimension ``dim``.

    Args:
        n: number of vectors.
        dim: vector dimension.
        flat_max: exact search up to this many vectors (``config.index.flat_max``).
        fp16: store flat vectors as fp16 (``config.index.flat_fp16``).
        ivf_pq_min: IVF-PQ above this many vectors (only tests lower it).

    Raises:
        ValueError: negative ``n`` or non-positive ``dim``/``flat_max``.
    """
    if n < 0 or dim <= 0 or flat_max <= 0:
        raise ValueError(f"choose_index: need n >= 0, dim > 0, flat_max > 0 (got {n}, {dim}, {flat_max})")
    if n <= flat_max:
        if fp16:
            return IndexChoice(
                "flat_fp16", "SQfp16", {}, f"{n} vectors <= flat_max {flat_max}: exact search, fp16 storage"
            )
        return IndexChoice("flat", "Flat", {}, f"{n} vectors <= flat_max {flat_max}: exact search")
    if n <= ivf_pq_min:
        return IndexChoice(
            "hnsw",
            f"HNSW{HNSW_M},Flat",
            {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH},
            f"{n} vectors > flat_max {flat_max}: HNSW graph (approximate, ~log N search)",
        )
    nlist = _ivf_lists(n)
    m = _pq_subquantizers(dim)
    return IndexChoice(
        "ivf_pq",
        f"IVF{nlist},PQ{m}",
        {"nlist": nlist, "pq_m": m, "nprobe": min(IVF_NPROBE, nlist)},
        f"{n} vectors > {ivf_pq_min}: IVF-PQ ({m}-byte codes) to fit device memory",
    )


def build_index(vectors: np.ndarray, ids: np.ndarray, choice: IndexChoice) -> faiss.Index:
    """Build an ``IndexIDMap2`` over inner product holding ``vectors`` under ``ids``.

    Args:
        vectors: float32 (N, D), each row L2-normalised.
        ids: int64 (N,) unique ids (the bundle's face_id).
        choice: from :func:`choose_index`.

    Returns:
        The populated index, search parameters already applied.

    Raises:
        ValueError: shapes or dtypes are wrong, ids repeat, or IVF-PQ has too few vectors to train.
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
    if choice.type == "hnsw":
        hnsw: Any = faiss.downcast_index(inner)
        hnsw.hnsw.efConstruction = int(choice.params.get("efConstruction", HNSW_EF_CONSTRUCTION))
    if not inner.is_trained:
        nlist = int(choice.params.get("nlist", 1))
        if n < nlist * _IVF_MIN_POINTS_PER_LIST:
            need = nlist * _IVF_MIN_POINTS_PER_LIST
            raise ValueError(f"{choice.factory} needs at least {need} vectors to train, got {n}")
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
    """Set the search-time parameters (``efSearch``, ``nprobe``) recorded in a manifest.

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
        value = int(params[name])
        if name == "efSearch":
            if not hasattr(inner, "hnsw"):
                raise ValueError(f"index type {index_type} but the FAISS index is {type(inner).__name__}")
            inner.hnsw.efSearch = value
        elif name == "nprobe":
            if not hasattr(inner, "nprobe"):
                raise ValueError(f"index type {index_type} but the FAISS index is {type(inner).__name__}")
            inner.nprobe = value


def search_param(index: faiss.Index, name: str) -> int | None:
    """Read back a search parameter (``efSearch`` or ``nprobe``) from an index, or None."""
    inner = _inner(index)
    if name == "efSearch" and hasattr(inner, "hnsw"):
        return int(inner.hnsw.efSearch)
    if name == "nprobe" and hasattr(inner, "nprobe"):
        return int(inner.nprobe)
    return None
