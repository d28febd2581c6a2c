"""An embedder's measured impostor tail: how often two different people score at least a threshold.

The alert policy (:mod:`namus_edge.models.policy`) turns a target false-positive identification
rate (FPIR, per unknown face) and a gallery size N into a threshold through this curve: an
unknown face meets N unrelated gallery faces, so with a per-pair false-accept rate ``FAR(t)``
its chance of at least one score >= t is ``1 - (1 - FAR(t)) ** N``. The curve is measured on
all-vs-all different-identity pairs (``namus-edge eval identify --json``, key ``tail``) and
recorded per embedder in :mod:`namus_edge.models.registry`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Smallest FAR the curve is ever asked for (1 in 10^12 pairs); below it thresholds stop moving.
MIN_FAR = 1e-12


@dataclass(frozen=True)
class ImpostorTail:
    """Per-pair false-accept rate as a function of the cosine threshold.

    Attributes:
        points: ``(threshold, far)`` pairs, thresholds strictly increasing, FAR strictly
            decreasing and in (0, 1]: the share of different-identity pairs scoring >= threshold.
        pairs: number of impostor pairs measured.
        measured: how and on what it was measured (command, data, date).

    Between points ``log(FAR)`` is interpolated linearly in the threshold; beyond the last point
    it is extrapolated with the slope of the last ``tail_fit`` points (a straight line in
    log-FAR, i.e. an exponential tail, fitted by least squares).
    """

    points: tuple[tuple[float, float], ...]
    pairs: int
    measured: str
    tail_fit: int = 4

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("an impostor tail needs at least two (threshold, far) points")
        for (t0, f0), (t1, f1) in zip(self.points, self.points[1:], strict=False):
            if not (t1 > t0 and 0 < f1 < f0 <= 1):
                raise ValueError(f"impostor tail points must rise in threshold and fall in FAR: "
                                 f"{(t0, f0)} -> {(t1, f1)}")

    def _slope(self) -> float:
        pts = self.points[-max(2, self.tail_fit):]
        xs = [t for t, _ in pts]
        ys = [math.log(f) for _, f in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return min(slope, -1e-6)

    def far_at(self, threshold: float) -> float:
        """Per-pair FAR at ``threshold`` (interpolated / extrapolated as described above)."""
        pts = self.points
        if threshold <= pts[0][0]:
            (t0, f0), (t1, f1) = pts[0], pts[1]
        elif threshold >= pts[-1][0]:
            t_last, f_last = pts[-1]
            return max(MIN_FAR, f_last * math.exp(self._slope() * (threshold - t_last)))
        else:
            i = next(k for k in range(1, len(pts)) if pts[k][0] >= threshold)
            (t0, f0), (t1, f1) = pts[i - 1], pts[i]
        w = (threshold - t0) / (t1 - t0)
        return min(1.0, math.exp(math.log(f0) + w * (math.log(f1) - math.log(f0))))

    def threshold_for_far(self, far: float) -> float:
        """The threshold at which the per-pair FAR equals ``far`` (inverse of :meth:`far_at`)."""
        far = min(1.0, max(MIN_FAR, far))
        pts = self.points
        if far >= pts[0][1]:
            (t0, f0), (t1, f1) = pts[0], pts[1]
        elif far <= pts[-1][1]:
            t_last, f_last = pts[-1]
            return t_last + (math.log(far) - math.log(f_last)) / self._slope()
        else:
            i = next(k for k in range(1, len(pts)) if pts[k][1] <= far)
            (t0, f0), (t1, f1) = pts[i - 1], pts[i]
        return t0 + (math.log(far) - math.log(f0)) / (math.log(f1) - math.log(f0)) * (t1 - t0)


def fpir_from_far(far: float, gallery_size: int) -> float:
    """Chance that an unknown face scores >= the threshold against at least one of N faces."""
    if gallery_size <= 0:
        return 0.0
    return -math.expm1(gallery_size * math.log1p(-min(far, 1.0 - 1e-16)))


def far_for_fpir(fpir: float, gallery_size: int) -> float:
    """Per-pair FAR that gives ``fpir`` against ``gallery_size`` faces (inverse of :func:`fpir_from_far`)."""
    if not 0 < fpir < 1:
        raise ValueError(f"target FPIR must be in (0, 1), got {fpir}")
    n = max(1, gallery_size)
    return -math.expm1(math.log1p(-fpir) / n)


def tail_from_scores(scores_desc: Sequence[float], pairs: int, thresholds: Sequence[float],
                     measured: str) -> ImpostorTail:
    """Build a tail from the impostor scores above the lowest threshold.

    Args:
        scores_desc: every impostor score >= min(thresholds), sorted descending.
        pairs: total number of impostor pairs (the FAR denominator).
        thresholds: increasing thresholds at which to record the FAR; those with no pair
            at or above them are dropped (the curve is then extrapolated).
        measured: provenance text.
    """
    neg = [-s for s in scores_desc]  # ascending
    pts: list[tuple[float, float]] = []
    for t in sorted(thresholds):
        n = bisect.bisect_right(neg, -t)
        if n == 0:
            break
        far = n / pairs
        if pts and far >= pts[-1][1]:
            continue
        pts.append((round(float(t), 4), float(far)))
    return ImpostorTail(tuple(pts), int(pairs), measured)
