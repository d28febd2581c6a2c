"""Refusing embeddings that cannot be searched: non-finite values or a zero vector.

An fp16 overflow on a GPU (or a corrupted engine) yields NaN or infinite embedding values; FAISS
would rank them arbitrarily and the tracker cannot normalise them. The pipeline drops such a face
(counted in the status as ``nonfinite_dropped``) instead of letting it reach search or tracking.
"""

from __future__ import annotations

import numpy as np


def usable_rows(embeddings: np.ndarray) -> np.ndarray:
    """Which rows of a batch of embeddings can be searched.

    Args:
        embeddings: float (N, D) embeddings.

    Returns:
        bool (N,): True where every value is finite and the L2 norm is non-zero.
    """
    e = np.asarray(embeddings)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {e.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(e).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], e, 0.0).astype(np.float64), axis=1)
    return np.asarray(finite & (norms > 0.0), dtype=bool)
