"""Evaluation metrics for verification, age and detection (pure NumPy, golden-tested).

Verification scores are cosine similarities of L2-normalised embeddings. A pair whose image
had no face is a *failed comparison*: it counts as wrong at every threshold (a miss for a
positive pair, a false accept for a negative pair), so a detector that drops hard images
cannot look better by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from namus_edge.models.boxes import iou_matrix

AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-15", 0, 15),
    ("16-30", 16, 30),
    ("31-45", 31, 45),
    ("46-60", 46, 60),
    ("61-75", 61, 75),
    ("76+", 76, 1e9),
)
AGE_GAP_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-4", 0, 4),
    ("5-9", 5, 9),
    ("10-19", 10, 19),
    ("20+", 20, 1e9),
)


def _arrays(
    scores: Sequence[float], labels: Sequence[int], failed: Sequence[bool] | None
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    f = np.zeros_like(y, dtype=bool) if failed is None else np.asarray(failed, dtype=bool)
    if not (s.shape == y.shape == f.shape) or s.ndim != 1:
        raise ValueError(f"scores, labels and failed must be equal-length 1-D, got {s.shape}, {y.shape}, {f.shape}")
    # failed comparisons are wrong at every threshold
    s = np.where(f, np.where(y == 1, -np.inf, np.inf), s)
    return s, y


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified right by ``score > threshold`` (same person)."""
    if labels.size == 0:
        return float("nan")
    return float(((scores > threshold) == (labels == 1)).mean())


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy: (threshold, accuracy).

    Candidate thresholds are midpoints between consecutive distinct finite scores (plus the
    extremes), so the result does not depend on the score scale.
    """
    finite = np.unique(scores[np.isfinite(scores)])
    if finite.size == 0:
        return 0.0, accuracy_at(scores, labels, 0.0)
    cands = np.concatenate([[finite[0] - 1e-6], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1e-6]])
    # vectorised: for each candidate, accuracy = (#pos > t + #neg <= t) / n
    pos = np.sort(scores[labels == 1])
    neg = np.sort(scores[labels == 0])
    tp = pos.size - np.searchsorted(pos, cands, side="right")
    tn = np.searchsorted(neg, cands, side="right")
    acc = (tp + tn) / max(labels.size, 1)
    i = int(np.argmax(acc))
    return float(cands[i]), float(acc[i])


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: int = 10, seed: int = 0) -> tuple[float, float]:
    """Stratified k-fold accuracy: threshold chosen on k-1 folds, tested on the held-out fold.

    Returns:
        (mean accuracy, standard deviation over folds).
    """
    rng = np.random.default_rng(seed)
    fold_of = np.empty(labels.size, dtype=np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(idx.size) % folds
    accs = []
    for k in range(folds):
        test = fold_of == k
        if not test.any():
            continue
        thr, _ = best_threshold(scores[~test], labels[~test])
        accs.append(accuracy_at(scores[test], labels[test], thr))
    return float(np.mean(accs)), float(np.std(accs))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, float]:
    """True-accept rate at a false-accept rate: (TAR, threshold).

    The threshold is the smallest score with at most ``far`` of the negatives above it.
    """
    neg = np.sort(scores[labels == 0])[::-1]
    pos = scores[labels == 1]
    if neg.size == 0 or pos.size == 0:
        return float("nan"), float("nan")
    k = int(np.floor(far * neg.size))  # negatives allowed above the threshold
    thr = float(neg[k]) if k < neg.size else float(neg[-1]) - 1e-6
    if not np.isfinite(thr):
        thr = float(np.max(pos[np.isfinite(pos)], initial=0.0)) + 1.0
    return float((pos > thr).mean()), thr


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count 1/2)."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    lower = np.searchsorted(neg_sorted, pos, side="left")
    upper = np.searchsorted(neg_sorted, pos, side="right")
    return float((lower + 0.5 * (upper - lower)).sum() / (pos.size * neg.size))


def verification_metrics(
    scores: Sequence[float], labels: Sequence[int], failed: Sequence[bool] | None = None, *, cross_validate: bool
) -> dict:
    """All verification numbers for one set of pairs.

    Args:
        scores: cosine similarity per pair.
        labels: 1 same person, 0 different.
        failed: pairs where an image had no face.
        cross_validate: report 10-fold cross-validated accuracy as ``accuracy`` (LFW View-2
            protocol) instead of the best-threshold accuracy.
    """
    s, y = _arrays(scores, labels, failed)
    thr, acc_best = best_threshold(s, y)
    out: dict = {
        "pairs": int(y.size),
        "positives": int((y == 1).sum()),
        "failed_pairs": int(np.asarray(failed, bool).sum()) if failed is not None else 0,
        "accuracy_best": acc_best,
        "threshold": thr,
        "auc": auc(s, y),
        "tar_at_far": {},
        "far_thresholds": {},
    }
    if cross_validate and y.size >= 20:
        mean, std = kfold_accuracy(s, y)
        out["accuracy"], out["accuracy_std"], out["accuracy_protocol"] = mean, std, "10-fold"
    else:
        out["accuracy"], out["accuracy_protocol"] = acc_best, "best-threshold"
    for key, far in (("1e-2", 1e-2), ("1e-3", 1e-3)):
        tar, t = tar_at_far(s, y, far)
        out["tar_at_far"][key] = tar
        out["far_thresholds"][key] = t
    return out


def bucket_of(value: float, buckets: Sequence[tuple[str, float, float]]) -> str | None:
    """Name of the bucket ``lo <= value <= hi`` holding ``value`` (None if outside all)."""
    for name, lo, hi in buckets:
        if lo <= value <= hi:
            return name
    return None


def mae(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean absolute error."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    return float(np.abs(p - t).mean()) if p.size else float("nan")


# -- detection ----------------------------------------------------------------------------------


def match_detections(
    dets: np.ndarray, scores: np.ndarray, gts: np.ndarray, iou_thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by decreasing score.

    Args:
        dets: (N, 4) xyxy detections.
        scores: (N,) detection scores.
        gts: (M, 4) xyxy ground truth.
        iou_thr: minimum IoU for a match.

    Returns:
        (det_is_tp bool (N,), gt_matched bool (M,)).
    """
    ious = iou_matrix(dets, gts)
    tp = np.zeros(dets.shape[0], bool)
    used = np.zeros(gts.shape[0], bool)
    for i in np.argsort(-scores, kind="stable"):
        if gts.shape[0] == 0:
            break
        cand = np.where(used, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_thr:
            tp[i] = True
            used[j] = True
    return tp, used


def average_precision(tp_flags: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """VOC-style all-point interpolated AP from per-detection TP flags and scores."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = tp_flags[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


#: Age bands for sex accuracy (sex is hard to see before puberty): name, lowest, highest age.
SEX_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-12", 0, 12.999),
    ("13-17", 13, 17.999),
    ("adult", 18, 1e9),
)


def sex_accuracy(p_male: Sequence[float] | np.ndarray, male: Sequence[int] | np.ndarray,
                 ages: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Fraction of correct sex labels overall and per :data:`SEX_BANDS` band of the true age.

    Args:
        p_male: (N,) probability that each face is male; the label is male iff ``p_male >= 0.5``.
        male: (N,) true label, 1 male, 0 female, -1 unknown (ignored).
        ages: (N,) true ages in years (band of each face).

    Returns:
        ``{"overall", "0-12", "13-17", "adult"}`` -> accuracy in [0, 1], ``None`` for no labelled face.
    """
    p = np.asarray(p_male, dtype=np.float64)
    y = np.asarray(male, dtype=np.int64)
    a = np.asarray(ages, dtype=np.float64)
    if not (p.shape == y.shape == a.shape) or p.ndim != 1:
        raise ValueError(f"p_male, male and ages must be equal-length 1-D, got {p.shape}, {y.shape}, {a.shape}")
    known = y >= 0
    correct = (p >= 0.5).astype(np.int64) == y

    def acc(mask: np.ndarray) -> float | None:
        m = mask & known
        return float(correct[m].mean()) if m.any() else None

    out: dict[str, float | None] = {"overall": acc(np.ones_like(known))}
    for name, lo, hi in SEX_BANDS:
        out[name] = acc((a >= lo) & (a <= hi))
    return out


def sex_confidence_for_precision(p_male: Sequence[float] | np.ndarray, male: Sequence[int] | np.ndarray,
                                 precision: float = 0.99, min_support: int = 20) -> dict[str, float | None]:
    """Smallest confidence ``max(p, 1 - p)`` at which the sex label reaches ``precision``.

    Scans thresholds over the observed confidences (highest first) and returns the lowest one at
    which the labels of all faces at or above it are correct at least ``precision`` of the time
    with at least ``min_support`` faces. Unknown labels (-1) are ignored.

    Returns:
        ``{"threshold", "coverage", "precision", "support"}``: threshold in [0.5, 1] (``None`` when
        no threshold reaches the precision), the fraction of labelled faces it keeps, their precision,
        and how many faces that is.
    """
    p = np.asarray(p_male, dtype=np.float64)
    y = np.asarray(male, dtype=np.int64)
    keep = y >= 0
    p, y = p[keep], y[keep]
    conf = np.maximum(p, 1 - p)
    right = ((p >= 0.5).astype(np.int64) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(right[order]) / np.arange(1, order.size + 1)
    best: dict[str, float | None] = {"threshold": None, "coverage": 0.0, "precision": None, "support": 0}
    for k in range(order.size):
        # only cut between distinct confidences
        if k + 1 < order.size and conf[order[k + 1]] == conf[order[k]]:
            continue
        if k + 1 >= min_support and cum[k] >= precision:
            best = {"threshold": float(conf[order[k]]), "coverage": float((k + 1) / order.size),
                    "precision": float(cum[k]), "support": k + 1}
    return best
