"""From per-face search results to match decisions: thresholds, votes, age check, cooldown.

For every searched face of a track the pipeline calls :meth:`DecisionEngine.observe` with the
index hits. The rules:

1. **Candidate.** Hits are grouped by case (a case may have several photos; its score is its
   best photo's). The face votes for its best case only when that score >= ``threshold``,
   the lead over the second-best *case* >= ``margin`` (with no second case the lead is
   measured against 0, the score of unrelated faces), and the age and sex checks pass
   (:func:`namus_edge.models.policy.judge`). A photo's score is its cosine similarity, or,
   under a hub-normalised policy (``ResolvedPolicy.hub_norm``), the similarity minus the
   photo's hub offset minus the face's probe offset (:mod:`namus_edge.models.hub_norm`); decisions
   report both (``similarity`` is always the raw cosine).
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

The per-face rules (threshold, margin, age, sex) are :func:`namus_edge.models.policy.judge`,
shared with ``index search --alert`` and ``eval identify``; they are re-exported here.

Not thread-safe: one inference loop owns an engine.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import numpy as np

from namus_edge.core.config import MatchingConfig
from namus_edge.models.policy import (
    Candidate,
    CaseInfo,
    CaseMatchLike,
    ResolvedPolicy,
    Verdict,
    hit_similarity,
    judge,
    rank_cases,
)

logger = logging.getLogger(__name__)

#: Age estimates kept per (track, case) for the median reported in a decision.
MAX_AGES_PER_CASE = 256

#: Floor of a vote's weight, so a zero-quality face still counts towards ``confirm_frames``.
MIN_VOTE_WEIGHT = 1e-9


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
        similarity: vote-weighted mean raw cosine similarity of the track's faces to the case.
        best_similarity: raw cosine similarity of the best-scoring single face.
        margin: vote-weighted mean lead (in decision score) over the second-best case.
        estimated_age: median estimated age of the voting faces, or ``None``.
        quality: quality of the best voting face.
        bbox: float32 (4,) ``x1, y1, x2, y2`` of the best-quality voting face in its frame, or
            ``None`` when the caller gave no boxes.
        image_key: bundle key of the case photo with the highest decision score.
        frames: number of faces that voted for the case in this track.
        vote_share: the case's share of the track's vote weight, in (0.5, 1].
        timestamp: monotonic time of the observation that fired (s).
        best_timestamp: monotonic capture time of the best-quality voting face (s).
        candidates: the top cases (best photo each, best first, at most 5) of the face that
            fired; the first is ``id_formatted``.
        p_male: mean ``Face.p_male`` of the voting faces, or ``None`` without a sex model.
        policy: the alert policy in force when the decision fired.
        best_score: the decision score (similarity minus the photo's and the face's offsets) of the best-scoring
            face when the policy is hub-normalised, else ``None`` (scores are the similarities).
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
    candidates: tuple[Candidate, ...] = ()
    p_male: float | None = None
    policy: ResolvedPolicy | None = None
    best_score: float | None = None


#: Cases listed in a decision (and a v2 match event).
MAX_CANDIDATES = 5


def ranked_candidates(matches: Sequence[CaseMatchLike], limit: int = MAX_CANDIDATES) -> tuple[Candidate, ...]:
    """The top ``limit`` cases of one face's hits (best photo each), best first, with their leads."""
    ranked = rank_cases(matches)[:limit]
    out = []
    for i, m in enumerate(ranked):
        nxt = float(ranked[i + 1].score) if i + 1 < len(ranked) else 0.0
        out.append(Candidate(m.id_formatted, float(m.score), m.image_key, float(m.score) - nxt, hit_similarity(m)))
    return tuple(out)


@dataclass
class _CaseVotes:
    count: int = 0
    weight: float = 0.0
    similarity_weighted: float = 0.0
    margin_weighted: float = 0.0
    best_score: float = -math.inf
    best_similarity: float = -math.inf
    image_key: str = ""
    best_quality: float = -math.inf
    best_bbox: np.ndarray | None = None
    best_time: float = 0.0
    p_male_sum: float = 0.0
    p_male_n: int = 0
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
        self.policy = ResolvedPolicy("fixed_threshold", self._threshold, 0, None)
        self._case_info = case_info
        self._today = today
        self._tracks: dict[tuple[str, int], _TrackVotes] = {}
        self._last_event: dict[tuple[str, str], float] = {}
        self.suppressed = suppressed

    @property
    def open_tracks(self) -> int:
        """Tracks holding at least one vote (tracks without votes hold no state)."""
        return len(self._tracks)

    @property
    def threshold(self) -> float:
        """The threshold in force."""
        return self._threshold

    def set_policy(self, policy: ResolvedPolicy) -> None:
        """Use another resolved policy (a bundle of another size was loaded); votes are kept."""
        self.policy = policy
        self._threshold = float(policy.threshold)

    def verdict(self, matches: Sequence[CaseMatchLike], estimated_age: float | None,
                p_male: float | None = None) -> Verdict:
        """The policy's verdict on one face (:func:`namus_edge.models.policy.judge`)."""
        return judge(matches, self.policy.threshold_for(estimated_age), self.cfg, estimated_age=estimated_age,
                     p_male=p_male, case_info=self._case_info, today=self._today())

    def candidate(self, matches: Sequence[CaseMatchLike], estimated_age: float | None,
                  p_male: float | None = None) -> Candidate | None:
        """The case this face votes for, or ``None`` (below threshold, ambiguous, age- or sex-implausible)."""
        return self.verdict(matches, estimated_age, p_male).candidate

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
        p_male: float | None = None,
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
            p_male: the face's probability of being male (``Face.p_male``), or ``None``.

        Returns:
            A :class:`MatchDecision` when the rules in the module docstring fire, else ``None``.
        """
        cand = self.candidate(matches, estimated_age, p_male)
        if cand is None:
            return None
        weight = max(MIN_VOTE_WEIGHT, max(0.0, float(face_quality)) * math.sqrt(max(0.0, float(face_area))))
        tv = self._tracks.setdefault((camera_id, track_id), _TrackVotes())
        cv = tv.cases.setdefault(cand.id_formatted, _CaseVotes())
        tv.total_weight += weight
        cv.count += 1
        cv.weight += weight
        cv.similarity_weighted += weight * cand.cosine
        cv.margin_weighted += weight * cand.margin
        if cand.score > cv.best_score:
            cv.best_score, cv.best_similarity, cv.image_key = cand.score, cand.cosine, cand.image_key
        if face_quality > cv.best_quality:
            cv.best_quality, cv.best_time = float(face_quality), float(timestamp)
            cv.best_bbox = None if bbox is None else np.asarray(bbox, np.float32).reshape(4).copy()
        if estimated_age is not None:
            cv.ages.append(float(estimated_age))
        if p_male is not None:
            cv.p_male_sum += float(p_male)
            cv.p_male_n += 1

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
            similarity=cv.similarity_weighted / cv.weight,
            best_similarity=cv.best_similarity,
            margin=cv.margin_weighted / cv.weight,
            estimated_age=float(np.median(cv.ages)) if cv.ages else None,
            quality=cv.best_quality,
            bbox=cv.best_bbox,
            image_key=cv.image_key,
            frames=cv.count,
            vote_share=share,
            timestamp=float(timestamp),
            best_timestamp=cv.best_time,
            candidates=ranked_candidates(matches),
            p_male=cv.p_male_sum / cv.p_male_n if cv.p_male_n else None,
            policy=self.policy,
            best_score=cv.best_score if self.policy.hub_norm else None,
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
