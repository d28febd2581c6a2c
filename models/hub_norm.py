"""Hub normalisation: how strongly a gallery face, and a searched face, attract faces of other people.

Some gallery photos (blurry, small, young children, heavy make-up, scans) score high against
many unrelated faces: they are *hubs*, and a fixed threshold lets them raise most of the false
alerts. Searched faces are no different: a blurred camera face scores high against every
gallery face. Both sides are normalised the same way (symmetric, in the spirit of the adaptive
s-norm of speaker verification, with the mean of the best scores only):

* a gallery face's **hub value** is the mean of its ``k`` highest cosine similarities to faces
  of *other* cases of the same gallery (faces of one case are mated, not impostors); its
  **offset** is the hub value minus the gallery's **median** hub value. Offsets are computed
  when a bundle is built and travel in the bundle (:mod:`namus_edge.index.bundle_writer`; the
  median in the signed manifest);
* a searched face's **probe offset** is the mean of its ``k`` highest similarities to the
  bundle's faces, leaving out the faces of the case being judged, minus the same median
  (:func:`probe_offsets`): the searched face is treated like one more gallery face.

A search then thresholds ``similarity - offset - probe offset``. Ranking the cases of one search
depends on the gallery offsets only (the probe offset is the same for every case). The threshold
on the normalised score comes from the embedder's impostor tail of this score (registry
``hub_impostor_tail``), measured by ``namus-edge eval identify`` (docs/accuracy.md section 6).

Cost at build time: one pass of the gallery against itself, ``N x N x D`` multiply-adds plus a
partial sort of each row, in chunks of :data:`CHUNK` rows. Measured (``python -m bench.hub_norm``,
2 shared cores under load): 12 s for 14,000 faces, 218 s for 55,000 (the build without offsets:
0.9 s / 5.9 s). Peak memory about ``CHUNK x N x 20`` bytes (similarities, their negation, int64
partition indices): ~280 MB at 55,000 faces. Cost per search: the ``k`` best similarities, which
the search has already (it asks FAISS for at least ``k`` + the largest case's faces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Neighbours averaged per face (measured: docs/accuracy.md section 6).
HUB_K = 50
#: Rows of the gallery compared with the whole gallery at once.
CHUNK = 256


@dataclass(frozen=True)
class HubNeighbours:
    """Each gallery face's best-scoring faces of other groups (cases or identities).

    Attributes:
        scores: float32 (N, M) cosine similarities, best first; ``-inf`` pads rows with fewer than
            ``M`` other-group faces.
        groups: int64 (N, M) group code of each neighbour (``-1`` for padding).
        k: how many neighbours a hub value averages (``M >= k``; the extra columns let
            :meth:`values` drop a group and still average ``k``).
    """

    scores: np.ndarray
    groups: np.ndarray
    k: int

    def values(self, drop_group: int | np.ndarray | None = None) -> np.ndarray:
        """Hub values, float32 (N,): mean of the ``k`` best finite scores, optionally ignoring a group.

        ``drop_group``: one group code for every row, or int64 (N,) a code per row. Rows with no
        finite score get 0.
        """
        s = self.scores
        if drop_group is not None:
            drop = np.asarray(drop_group)
            s = np.where(self.groups == (drop[:, None] if drop.ndim else drop), -np.inf, s)
            s = -np.sort(-s, axis=1)
        top = s[:, : self.k]
        finite = np.isfinite(top)
        n = finite.sum(axis=1)
        total = np.where(finite, top, 0.0).sum(axis=1)
        return np.where(n > 0, total / np.maximum(n, 1), 0.0).astype(np.float32)


def group_codes(groups: Sequence[str]) -> np.ndarray:
    """int64 (N,) code per row, equal codes for equal group names (first-seen order)."""
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(g, len(codes)) for g in groups], np.int64)


def hub_neighbours(embeddings: np.ndarray, groups: np.ndarray, k: int = HUB_K, extra: int = 0) -> HubNeighbours:
    """The ``k + extra`` best other-group scores of every row.

    Args:
        embeddings: float32 (N, D) L2-normalised.
        groups: int64 (N,) group code per row (see :func:`group_codes`); rows of one group are
            never each other's neighbours.
        k: neighbours per hub value.
        extra: additional neighbours kept so that a group can later be dropped
            (:meth:`HubNeighbours.values`).

    Raises:
        ValueError: shapes disagree, or ``k`` < 1.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(groups) != len(emb):
        raise ValueError(f"embeddings must be (N, D) with N = len(groups) = {len(groups)}, got {emb.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(emb)
    m = min(k + extra, max(n - 1, 1))
    scores = np.full((n, m), -np.inf, np.float32)
    nb_groups = np.full((n, m), -1, np.int64)
    for s in range(0, n, CHUNK):
        sims = emb[s:s + CHUNK] @ emb.T
        sims[groups[s:s + CHUNK][:, None] == groups[None, :]] = -np.inf
        psc, pgr = best_first(sims, groups, m)
        scores[s:s + len(sims), : psc.shape[1]] = psc
        nb_groups[s:s + len(sims), : pgr.shape[1]] = pgr
    return HubNeighbours(scores, nb_groups, k)


def best_first(sims: np.ndarray, col_groups: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` highest scores of each row, best first, with the group of each one's column.

    Args:
        sims: float32 (R, C) scores; ``-inf`` marks columns left out.
        col_groups: int64 (C,) group code of each column.
        m: how many per row (at most ``C`` are returned).

    Returns:
        ``(scores, groups)``: float32 and int64 (R, min(m, C)); group ``-1`` where the score is not finite.
    """
    n = sims.shape[1]
    cols = min(m, n)
    part = np.argpartition(-sims, cols - 1, axis=1)[:, :cols] if cols < n else np.tile(np.arange(n), (len(sims), 1))
    psc = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-psc, axis=1)
    part = np.take_along_axis(part, order, axis=1)
    psc = np.take_along_axis(psc, order, axis=1)
    return psc, np.where(np.isfinite(psc), col_groups[part], -1)


def hub_offsets(embeddings: np.ndarray, groups: Sequence[str], k: int = HUB_K) -> tuple[np.ndarray, float]:
    """Offset of every gallery face (its hub value minus the gallery's median hub value) and that median.

    Args:
        embeddings: float32 (N, D) L2-normalised gallery embeddings.
        groups: the case (``id_formatted``) of each row.
        k: neighbours averaged (:data:`HUB_K`).

    Returns:
        ``(offsets, median)``: float32 (N,) and the median hub value; zeros and 0.0 for a gallery
        with fewer than two cases.
    """
    codes = group_codes(groups)
    if len(set(codes.tolist())) < 2:
        return np.zeros(len(codes), np.float32), 0.0
    values = hub_neighbours(embeddings, codes, k).values()
    median = float(np.median(values))
    return (values - np.float32(median)).astype(np.float32), median


def probe_offsets(scores: np.ndarray, groups: np.ndarray, judged: np.ndarray, median: float,
                  k: int = HUB_K) -> np.ndarray:
    """Probe offset of each searched face, to subtract from its scores against the judged case.

    The mean of its ``k`` best similarities to faces of cases other than the judged one, minus
    the gallery's median hub value.

    Args:
        scores: float32 (N, M) raw cosine similarities of each query to gallery faces, best first
            (``-inf`` pads); ``M`` should be at least ``k`` plus the largest case's faces, so that
            ``k`` remain once the judged case is left out.
        groups: int64 (N, M) case code of each of those faces (``-1`` for padding).
        judged: int64 (N,) case code of the case being judged per query (its faces are left out:
            they are the candidate, not the cohort); ``-1`` leaves nothing out.
        median: the gallery's median hub value (:func:`hub_offsets`).
        k: neighbours averaged (the gallery's ``k``).

    Returns:
        float32 (N,); 0 for a query with no face of another case (nothing to compare with).
    """
    s = np.asarray(scores, np.float32)
    g = np.asarray(groups, np.int64)
    if s.ndim != 2 or g.shape != s.shape or np.asarray(judged).shape != (len(s),):
        raise ValueError(f"scores and groups must be (N, M) and judged (N,), got {s.shape}, {g.shape}, "
                         f"{np.asarray(judged).shape}")
    values = HubNeighbours(s, g, k).values(drop_group=np.asarray(judged, np.int64))
    has = np.any(np.isfinite(s) & (g >= 0) & (g != np.asarray(judged)[:, None]), axis=1)
    return np.where(has, values - np.float32(median), 0.0).astype(np.float32)
