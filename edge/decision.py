"""From per-face search results to match decisions: thresholds, votes, age check, cooldown.

For every searched face of a track the pipeline calls :meth:`DecisionEngine.observe` with the
index hits. The rules:

1. **Candidate.** Hits are grouped by case (a case may have several photos; its score is its
   best photo's). The face votes for its best case only when that score >= ``threshold``,
   the lead over the second-best *case* >= ``margin`` (with no second case the lead is
   measured against 0, the score of unrelated faces), and the age check passes.
2. **Votes.** A vote weighs ``quality * sqrt(face_area)`` (sharper, larger faces count more).
   Weights are compared as shares of the track's total vote weight, so their scale does not
   matter.
3. **Event.** A case fires when it has at least ``confirm_frames`` votes in the track *and*
   more than half of the track's vote weight, and no event for the same (camera, case) was
   emitted within ``cooldown_s``. A single lucky frame never fires (with ``confirm_frames``
   >= 2); a person standing in view gives one event per cooldown window.
4. **Age plausibility** (``matching.age_check``): the case's current age range is
   ``[current_age_min, current_age_max]`` (or age at last contact plus the years since
   ``date_last`` when the current range is missing). The tolerance is ``tolerance_years``,
   plus ``child_extra_years`` when the person was under 18 at last contact, plus
   ``per_gap_year`` per year since last contact, capped at ``max_tolerance_years``. A face
   passes when its estimated age lies within ``[min - tol, max + tol]``. A face without an
   age estimate, or a case without usable ages, passes: the check can only reject on
   evidence. ``enabled: false`` switches it off.

Privacy: faces that vote for nothing leave no trace - nothing is logged (not even at DEBUG)
and no state is created for them; :meth:`DecisionEngine.end_track` forgets a track's votes.

Not thread-safe: one inference loop owns an engine.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Protocol

import numpy as np

from namus_edge.core.config import AgeCheckConfig, MatchingConfig

logger = logging.getLogger(__name__)

#: Age estimates kept per (track, case) for the median reported in a decision.
MAX_AGES_PER_CASE = 256

#: Floor of a vote's weight, so a zero-quality face still counts towards ``confirm_frames``.
MIN_VOTE_WEIGHT = 1e-9

CHILD_AGE = 18.0
DAYS_PER_YEAR = 365.2425


class CaseMatchLike(Protocol):
    """One search hit: a case photo and its cosine similarity to the face."""

    @property
    def id_formatted(self) -> str:
        """The NamUs case id, e.g. ``MP12345``."""

    @property
    def score(self) -> float:
        """Cosine similarity in [-1, 1]."""

    @property
    def image_key(self) -> str:
        """The bundle key of the matched case photo."""


#: Looks up a case's facts in the bundle: ``current_age_min``, ``current_age_max``, ``age_min``
#: (age at last contact), ``age_max``, ``date_last`` (ISO date); ``None`` for an unknown case.
CaseInfo = Callable[[str], Mapping[str, Any] | None]


# --------------------------------------------------------------------------------------------
# age plausibility
# --------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_date(value: Any) -> date | None:
    """Parse an ISO date or datetime (``2009-06-15`` or ``2009-06-15T00:00:00``); ``None`` when unusable."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def years_between(start: date, end: date) -> float:
    """Years from ``start`` to ``end`` (fractional, >= 0)."""
    return max(0.0, (end - start).days / DAYS_PER_YEAR)


def age_tolerance(age_at_last_contact: float | None, years_since: float | None, cfg: AgeCheckConfig) -> float:
    """Half-width in years added on each side of the case's current age range.

    ``tolerance_years`` + ``child_extra_years`` (if last seen under 18) + ``per_gap_year`` *
    years since last contact, capped at ``max_tolerance_years``. Unknown inputs add nothing.
    """
    tol = cfg.tolerance_years
    if age_at_last_contact is not None and age_at_last_contact < CHILD_AGE:
        tol += cfg.child_extra_years
    if years_since is not None:
        tol += cfg.per_gap_year * max(0.0, years_since)
    return min(tol, cfg.max_tolerance_years)


@dataclass(frozen=True)
class AgeWindow:
    """The accepted estimated-age interval of a case.

    Attributes:
        low: lowest accepted estimate (years).
        high: highest accepted estimate (years).
        tolerance: the tolerance included on each side.
    """

    low: float
    high: float
    tolerance: float

    def __contains__(self, age: float) -> bool:
        return self.low <= age <= self.high


def age_window(case: Mapping[str, Any], cfg: AgeCheckConfig, today: date) -> AgeWindow | None:
    """The interval of plausible estimated ages for a case, or ``None`` when its ages are unknown.

    Args:
        case: case facts (``current_age_min``, ``current_age_max``, ``age_min``, ``age_max``,
            ``date_last``); missing or unparsable values are treated as unknown.
        cfg: the age-check settings.
        today: the date against which "years since last contact" is measured.
    """
    age_last = _number(case.get("age_min"))
    age_last_max = _number(case.get("age_max"))
    last = parse_date(case.get("date_last"))
    gap = years_between(last, today) if last is not None else None
    cur_min = _number(case.get("current_age_min"))
    cur_max = _number(case.get("current_age_max"))
    if cur_min is None and cur_max is None:
        if age_last is None or gap is None:
            return None
        cur_min = age_last + gap
        cur_max = (age_last_max if age_last_max is not None else age_last) + gap
    bounds = [v for v in (cur_min, cur_max) if v is not None]
    lo, hi = min(bounds), max(bounds)
    tol = age_tolerance(age_last, gap, cfg)
    return AgeWindow(lo - tol, hi + tol, tol)


def age_plausible(
    estimated_age: float | None, case: Mapping[str, Any] | None, cfg: AgeCheckConfig, today: date
) -> bool:
    """Whether a face's estimated age fits the case (see the module docstring).

    Returns ``True`` when the check is disabled, the face has no estimate, or the case has no
    usable ages.
    """
    if not cfg.enabled or estimated_age is None or case is None:
        return True
    window = age_window(case, cfg, today)
    return window is None or float(estimated_age) in window


# --------------------------------------------------------------------------------------------
# candidate ranking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A face's best case among its search hits.

    Attributes:
        id_formatted: the best case.
        score: its best photo's cosine similarity.
        image_key: that photo's bundle key.
        margin: lead over the second-best case (over 0 when there is none).
    """

    id_formatted: str
    score: float
    image_key: str
    margin: float


def best_candidate(matches: Sequence[CaseMatchLike]) -> Candidate | None:
    """Group hits by case (best photo per case) and return the top case with its margin.

    Returns ``None`` for no hits. Ties keep the first hit in the given order.
    """
    best_by_case: dict[str, CaseMatchLike] = {}
    for m in matches:
        cur = best_by_case.get(m.id_formatted)
        if cur is None or m.score > cur.score:
            best_by_case[m.id_formatted] = m
    if not best_by_case:
        return None
    ranked = sorted(best_by_case.values(), key=lambda m: -m.score)
    top = ranked[0]
    second = float(ranked[1].score) if len(ranked) > 1 else 0.0
    return Candidate(top.id_formatted, float(top.score), top.image_key, float(top.score) - second)


# --------------------------------------------------------------------------------------------
# decisions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchDecision:
    """A confirmed match of a track to a case (what an alert is built from).

    Attributes:
        camera_id: the camera.
        track_id: the track (per camera).
        id_formatted: the NamUs case id.
        similarity: vote-weighted mean cosine similarity of the track's faces to the case.
        best_similarity: the highest single-face similarity.
        margin: vote-weighted mean lead over the second-best case.
        estimated_age: median estimated age of the voting faces, or ``None``.
        quality: quality of the best voting face.
        bbox: float32 (4,) ``x1, y1, x2, y2`` of the best-quality voting face in its frame, or
            ``None`` when the caller gave no boxes.
        image_key: bundle key of the case photo with the highest similarity.
        frames: number of faces that voted for the case in this track.
        vote_share: the case's share of the track's vote weight, in (0.5, 1].
        timestamp: monotonic time of the observation that fired (s).
        best_timestamp: monotonic capture time of the best-quality voting face (s).
    """

    camera_id: str
    track_id: int
    id_formatted: str
    similarity: float
    best_similarity: float
    margin: float
    estimated_age: float | None
    quality: float
    bbox: np.ndarray | None
    image_key: str
    frames: int
    vote_share: float
    timestamp: float
    best_timestamp: float


@dataclass
class _CaseVotes:
    count: int = 0
    weight: float = 0.0
    score_weighted: float = 0.0
    margin_weighted: float = 0.0
    best_score: float = -math.inf
    image_key: str = ""
    best_quality: float = -math.inf
    best_bbox: np.ndarray | None = None
    best_time: float = 0.0
    ages: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_AGES_PER_CASE))


@dataclass
class _TrackVotes:
    total_weight: float = 0.0
    cases: dict[str, _CaseVotes] = field(default_factory=dict)


def _utc_today() -> date:
    return datetime.now(timezone.utc).date()


class DecisionEngine:
    """Turns per-face search hits into at most one :class:`MatchDecision` per (camera, case) per cooldown.

    Args:
        cfg: the matching rules.
        case_info: looks up a case's facts by id (see :data:`CaseInfo`); called only for the
            best case of a face that passed threshold and margin.
        today: returns the current date for the age check (default: today in UTC).
        suppressed: ``suppressed(camera_id, id_formatted)`` is true while reviewers suppressed the
            pair (see :mod:`edge.suppression`); such a pair emits no event.
    """

    def __init__(
        self,
        cfg: MatchingConfig,
        case_info: CaseInfo,
        today: Callable[[], date] = _utc_today,
        suppressed: Callable[[str, str], bool] | None = None,
    ) -> None:
        if cfg.threshold is None:
            raise ValueError("matching.threshold must be resolved first (models.registry.match_threshold)")
        self.cfg = cfg
        self._threshold = float(cfg.threshold)
        self._case_info = case_info
        self._today = today
        self._tracks: dict[tuple[str, int], _TrackVotes] = {}
        self._last_event: dict[tuple[str, str], float] = {}
        self.suppressed = suppressed

    @property
    def open_tracks(self) -> int:
        """Tracks holding at least one vote (tracks without votes hold no state)."""
        return len(self._tracks)

    def candidate(self, matches: Sequence[CaseMatchLike], estimated_age: float | None) -> Candidate | None:
        """The case this face votes for, or ``None`` (below threshold, ambiguous, or age-implausible)."""
        cand = best_candidate(matches)
        if cand is None or cand.score < self._threshold or cand.margin < self.cfg.margin:
            return None
        if self.cfg.age_check.enabled and estimated_age is not None:
            info = self._case_info(cand.id_formatted)
            if not age_plausible(estimated_age, info, self.cfg.age_check, self._today()):
                return None
        return cand

    def observe(
        self,
        camera_id: str,
        track_id: int,
        timestamp: float,
        face_quality: float,
        face_area: float,
        estimated_age: float | None,
        matches: Sequence[CaseMatchLike],
        bbox: np.ndarray | None = None,
    ) -> MatchDecision | None:
        """Record one searched face of a track and return a decision when a case is confirmed.

        Args:
            camera_id: the camera.
            track_id: the face's track (see :class:`edge.tracker.Tracker`).
            timestamp: monotonic capture time of the face's frame (s).
            face_quality: combined quality in [0, 1].
            face_area: face box area in pixels.
            estimated_age: estimated age in years, or ``None``.
            matches: the index hits for this face (any order; several per case allowed).
            bbox: optional float (4,) face box ``x1, y1, x2, y2`` pixels, reported for the best face.

        Returns:
            A :class:`MatchDecision` when the rules in the module docstring fire, else ``None``.
        """
        cand = self.candidate(matches, estimated_age)
        if cand is None:
            return None
        weight = max(MIN_VOTE_WEIGHT, max(0.0, float(face_quality)) * math.sqrt(max(0.0, float(face_area))))
        tv = self._tracks.setdefault((camera_id, track_id), _TrackVotes())
        cv = tv.cases.setdefault(cand.id_formatted, _CaseVotes())
        tv.total_weight += weight
        cv.count += 1
        cv.weight += weight
        cv.score_weighted += weight * cand.score
        cv.margin_weighted += weight * cand.margin
        if cand.score > cv.best_score:
            cv.best_score, cv.image_key = cand.score, cand.image_key
        if face_quality > cv.best_quality:
            cv.best_quality, cv.best_time = float(face_quality), float(timestamp)
            cv.best_bbox = None if bbox is None else np.asarray(bbox, np.float32).reshape(4).copy()
        if estimated_age is not None:
            cv.ages.append(float(estimated_age))

        share = cv.weight / tv.total_weight
        if cv.count < self.cfg.confirm_frames or share <= 0.5:
            return None
        if self.suppressed is not None and self.suppressed(camera_id, cand.id_formatted):
            return None
        key = (camera_id, cand.id_formatted)
        last = self._last_event.get(key)
        if last is not None and timestamp - last < self.cfg.cooldown_s:
            return None
        self._last_event = {k: t for k, t in self._last_event.items() if timestamp - t < self.cfg.cooldown_s}
        self._last_event[key] = float(timestamp)
        decision = MatchDecision(
            camera_id=camera_id,
            track_id=track_id,
            id_formatted=cand.id_formatted,
            similarity=cv.score_weighted / cv.weight,
            best_similarity=cv.best_score,
            margin=cv.margin_weighted / cv.weight,
            estimated_age=float(np.median(cv.ages)) if cv.ages else None,
            quality=cv.best_quality,
            bbox=cv.best_bbox,
            image_key=cv.image_key,
            frames=cv.count,
            vote_share=share,
            timestamp=float(timestamp),
            best_timestamp=cv.best_time,
        )
        logger.info(
            "match: camera %s track %d case %s similarity %.3f over %d frames",
            camera_id,
            track_id,
            cand.id_formatted,
            decision.similarity,
            decision.frames,
        )
        return decision

    def end_track(self, camera_id: str, track_id: int) -> None:
        """Forget a closed track's votes (no-op for tracks that never voted)."""
        self._tracks.pop((camera_id, track_id), None)

    def end_camera(self, camera_id: str) -> None:
        """Forget the votes of every track of a camera (end of stream)."""
        for key in [k for k in self._tracks if k[0] == camera_id]:
            del self._tracks[key]
