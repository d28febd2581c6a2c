"""The alert policy: from one face's search hits to the case it votes for, or the rule that rejected it.

One implementation serves the device (:mod:`namus_edge.edge.decision`), ``namus-edge index search
--alert`` and ``namus-edge eval identify``, so what the tools report is what a device does.

**Threshold** (:func:`resolve_policy`). An explicit ``matching.threshold`` wins (rule
``fixed_threshold``). Otherwise, with ``matching.target_fpir`` set, the threshold is the score at
which an unknown face (someone in no case) gets a candidate from a gallery of N faces with
probability ``target_fpir``: the per-pair false-accept rate ``1 - (1 - target) ** (1 / N)`` read
off the embedder's measured impostor tail (:mod:`namus_edge.models.impostor_tail`, recorded in
the registry). A bigger bundle gets a higher threshold, so the false-alert rate per face stays
bounded whatever the gallery size (rule ``target_fpir``). Without a tail the embedder's fixed
default applies (rule ``embedder_default``).

**Hub normalisation** (:mod:`namus_edge.models.hub_norm`). When the searched bundle carries
per-face hub offsets, ``matching.hub_norm`` is on, the target rule applies and the embedder has a
measured *normalised* impostor tail (registry ``hub_impostor_tail``; children:
``hub_child_impostor_tail``), the thresholds are read off those tails and apply to the
normalised score ``similarity - offset - probe offset`` (:attr:`ResolvedPolicy.hub_norm`; the search must then be
normalised too, :meth:`namus_edge.index.bundle.Bundle.search`). Otherwise scores are raw cosines
and everything above holds unchanged.

**Verdict** (:func:`judge`), in this order; the first failing rule names the rejection:

1. ``no_candidates``: the search returned nothing.
2. ``threshold``: the best case (scored by its best photo) is below the threshold (for a face
   estimated younger than :data:`CHILD_FACE_AGE`, the child threshold, see :class:`ResolvedPolicy`).
3. ``margin``: its lead over the second-best case is below ``matching.margin`` (with no
   second case the lead is measured against 0).
4. ``age``: the face's estimated age lies outside the case's plausible current-age window
   (``matching.age_check``; see :func:`age_window`).
5. ``sex``: the face's sex estimate (``Face.p_male``) is confident (>= ``matching.sex_check.
   min_confidence``, estimated age >= ``min_age``) and disagrees with the case's recorded sex.
   A no-op when ``p_male`` is ``None`` or the case's sex is unknown.

Checks 4 and 5 only reject on evidence: a face without an estimate, or a case without usable
facts, passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from namus_edge.core.config import AgeCheckConfig, ConfigError, MatchingConfig, SexCheckConfig
from namus_edge.models.impostor_tail import far_for_fpir
from namus_edge.models.registry import ModelSpec, get_spec

CHILD_AGE = 18.0
DAYS_PER_YEAR = 365.2425
#: Faces estimated younger than this are judged against the embedder's child impostor tail:
#: young children's faces look alike to face embedders (different children score like adults'
#: true matches), so they need a higher threshold for the same false-positive rate.
CHILD_FACE_AGE = 13.0

#: Reasons :func:`judge` gives; ``alert`` means the face votes for its best case.
REASONS = ("alert", "no_candidates", "threshold", "margin", "age", "sex")


class CaseMatchLike(Protocol):
    """One search hit: a case photo and its score for the face.

    A hit may also carry ``similarity``, the raw cosine, when ``score`` is hub-normalised
    (:class:`namus_edge.index.bundle.CaseMatch`); without it ``score`` is the raw cosine.
    """

    @property
    def id_formatted(self) -> str:
        """The NamUs case id, e.g. ``MP12345``."""

    @property
    def score(self) -> float:
        """The decision score: cosine similarity in [-1, 1], minus the photo's and the face's offsets if normalised."""

    @property
    def image_key(self) -> str:
        """The bundle key of the matched case photo."""


#: Looks up a case's facts: ``sex``, ``current_age_min``, ``current_age_max``, ``age_min`` (age at
#: last contact), ``age_max``, ``date_last`` (ISO date); ``None`` for an unknown case.
CaseInfo = Callable[[str], Mapping[str, Any] | None]


# --------------------------------------------------------------------------------------------
# threshold
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedPolicy:
    """The threshold in force and why.

    Attributes:
        rule: ``fixed_threshold`` (``matching.threshold`` set), ``target_fpir`` (from the tail)
            or ``embedder_default`` (no target or no measured tail).
        threshold: cosine similarity a face's best case must reach.
        gallery_size: number of faces in the searched gallery (bundle ``ntotal``).
        target_fpir: the target per unknown face, or ``None`` unless ``rule == "target_fpir"``.
        far_per_pair: the per-pair false-accept rate the threshold corresponds to (target rule only).
        child_threshold: the threshold for faces estimated younger than :data:`CHILD_FACE_AGE`
            (target rule with a measured child tail), else ``None`` (the same threshold for all).
        hub_norm: the thresholds are on hub-normalised scores (``similarity - offset - probe offset``, from the
            embedder's ``hub_impostor_tail``): search with ``hub_norm=True``. ``False``: raw cosines.
    """

    rule: str
    threshold: float
    gallery_size: int
    target_fpir: float | None
    far_per_pair: float | None = None
    child_threshold: float | None = None
    hub_norm: bool = False

    def threshold_for(self, estimated_age: float | None) -> float:
        """The threshold for a face of this estimated age (an unknown age gets the stricter one)."""
        if self.child_threshold is None:
            return self.threshold
        if estimated_age is None:
            return max(self.threshold, self.child_threshold)
        return self.child_threshold if estimated_age < CHILD_FACE_AGE else self.threshold

    def to_dict(self) -> dict[str, Any]:
        """``{"rule", "threshold", "gallery_size", "target_fpir", "child_threshold", "hub_norm"}``.

        A match event's ``policy`` has these but ``child_threshold``, with the threshold used for that face.
        """
        return {"rule": self.rule, "threshold": round(self.threshold, 4), "gallery_size": self.gallery_size,
                "target_fpir": self.target_fpir,
                "child_threshold": None if self.child_threshold is None else round(self.child_threshold, 4),
                "hub_norm": self.hub_norm}


def uses_hub_tails(spec: ModelSpec) -> bool:
    """Whether an embedder's normalised tails can replace its raw ones (it has a ``hub_impostor_tail``).

    Children get ``hub_child_impostor_tail``'s threshold under normalisation; without one they share
    the adult threshold, so record both tails together.
    """
    return spec.hub_impostor_tail is not None


def resolve_policy(matching: MatchingConfig, embedder: str | ModelSpec, gallery_size: int, *,
                   hub_norm: bool = False) -> ResolvedPolicy:
    """The threshold for a gallery of ``gallery_size`` faces (see the module docstring).

    Args:
        matching: the matching settings (threshold, target_fpir, min_threshold, hub_norm).
        embedder: the embedder's registry name, or its :class:`ModelSpec`.
        gallery_size: faces in the searched gallery (bundle ``ntotal``).
        hub_norm: normalise if possible: the caller passes ``Bundle.has_hub_offsets and
            matching.hub_norm``. The policy normalises (``ResolvedPolicy.hub_norm``) only when this
            and the target rule hold and the embedder has normalised tails (:func:`uses_hub_tails`).

    Raises:
        ConfigError: no threshold is configured and the embedder has neither a tail nor a default.
    """
    n = max(0, int(gallery_size))
    if matching.threshold is not None:
        return ResolvedPolicy("fixed_threshold", float(matching.threshold), n, None)
    spec = get_spec(embedder) if isinstance(embedder, str) else embedder
    norm = bool(hub_norm and uses_hub_tails(spec))
    tail, child_tail = ((spec.hub_impostor_tail, spec.hub_child_impostor_tail) if norm
                        else (spec.impostor_tail, spec.child_impostor_tail))
    if matching.target_fpir is not None and tail is not None:
        far = far_for_fpir(matching.target_fpir, max(1, n))
        t = min(max(tail.threshold_for_far(far), matching.min_threshold), 1.0)
        tc = None
        if child_tail is not None:
            tc = float(min(max(child_tail.threshold_for_far(far), matching.min_threshold), 1.0))
        return ResolvedPolicy("target_fpir", float(t), n, float(matching.target_fpir), far, tc, norm)
    if spec.match_threshold is None:
        raise ConfigError(f"matching.threshold: set it explicitly; embedder {spec.name} has no measured "
                          "impostor tail and no default threshold")
    return ResolvedPolicy("embedder_default", float(spec.match_threshold), n, None)


def decision_floor(policy: ResolvedPolicy, matching: MatchingConfig) -> float:
    """The lowest score a verdict depends on: the smallest threshold in force minus ``matching.margin``.

    A best case below its threshold is rejected whatever else scored; one above it passes the
    margin rule against any case below ``threshold - margin``. So a search that is exact for
    every case scoring at least this (``Bundle.search(exact_above=...)``) gives the same verdicts
    as a fully exact one.
    """
    low = policy.threshold if policy.child_threshold is None else min(policy.threshold, policy.child_threshold)
    return float(low - matching.margin)


# --------------------------------------------------------------------------------------------
# candidate ranking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A face's best case among its search hits.

    Attributes:
        id_formatted: the best case.
        score: its best photo's decision score (the cosine similarity, minus the photo's hub
            offset in a hub-normalised search).
        image_key: that photo's bundle key.
        margin: lead in score over the second-best case (over 0 when there is none).
        similarity: that photo's raw cosine similarity when the hit carried one, else ``None``
            (``score`` is then the raw cosine); read it through :attr:`cosine`.
    """

    id_formatted: str
    score: float
    image_key: str
    margin: float
    similarity: float | None = None

    @property
    def cosine(self) -> float:
        """The raw cosine similarity of the face to the photo (``similarity``, else ``score``)."""
        return self.score if self.similarity is None else self.similarity


def hit_similarity(m: CaseMatchLike) -> float | None:
    """A hit's raw cosine when it carries one apart from its score (``CaseMatch.similarity``), else ``None``."""
    sim = getattr(m, "similarity", None)
    return None if sim is None else float(sim)


def rank_cases(matches: Sequence[CaseMatchLike]) -> list[CaseMatchLike]:
    """One hit per case (its best photo), best first; ties keep the first hit in the given order."""
    best_by_case: dict[str, CaseMatchLike] = {}
    for m in matches:
        cur = best_by_case.get(m.id_formatted)
        if cur is None or m.score > cur.score:
            best_by_case[m.id_formatted] = m
    return sorted(best_by_case.values(), key=lambda m: -m.score)


def best_candidate(matches: Sequence[CaseMatchLike]) -> Candidate | None:
    """Group hits by case (best photo per case) and return the top case with its margin.

    Returns ``None`` for no hits. Ties keep the first hit in the given order.
    """
    ranked = rank_cases(matches)
    if not ranked:
        return None
    top = ranked[0]
    second = float(ranked[1].score) if len(ranked) > 1 else 0.0
    return Candidate(top.id_formatted, float(top.score), top.image_key, float(top.score) - second, hit_similarity(top))


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

    The case's current age range is ``[current_age_min, current_age_max]``, or the age at last
    contact plus the years since ``date_last`` when the current range is missing.

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
    """Whether a face's estimated age fits the case.

    Returns ``True`` when the check is disabled, the face has no estimate, or the case has no
    usable ages.
    """
    if not cfg.enabled or estimated_age is None or case is None:
        return True
    window = age_window(case, cfg, today)
    return window is None or float(estimated_age) in window


# --------------------------------------------------------------------------------------------
# sex plausibility
# --------------------------------------------------------------------------------------------


def case_sex(case: Mapping[str, Any] | None) -> str | None:
    """``"male"``, ``"female"`` or ``None`` from a case's recorded ``sex`` (NamUs ``Male`` / ``Female``)."""
    raw = (case or {}).get("sex")
    if not isinstance(raw, str):
        return None
    s = raw.strip().lower()
    return s if s in ("male", "female") else None


def estimated_sex(p_male: float | None) -> tuple[str, float] | None:
    """``(label, confidence)`` from ``Face.p_male``: male iff p_male >= 0.5, confidence max(p, 1 - p)."""
    if p_male is None or not math.isfinite(p_male):
        return None
    p = min(1.0, max(0.0, float(p_male)))
    return ("male" if p >= 0.5 else "female", max(p, 1.0 - p))


def sex_plausible(p_male: float | None, estimated_age: float | None, case: Mapping[str, Any] | None,
                  cfg: SexCheckConfig) -> bool:
    """Whether a face's sex estimate allows the case; rejects only a confident contradiction.

    ``True`` when the check is disabled, ``p_male`` is ``None``, the case's sex is unknown, the
    estimate is below ``min_confidence``, or the face is estimated younger than ``min_age``
    (sex from faces is unreliable for young children; an unknown age counts as old enough).
    """
    est = estimated_sex(p_male)
    want = case_sex(case)
    if not cfg.enabled or est is None or want is None:
        return True
    if estimated_age is not None and estimated_age < cfg.min_age:
        return True
    label, conf = est
    return conf < cfg.min_confidence or label == want


# --------------------------------------------------------------------------------------------
# verdict
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the policy does with one face.

    Attributes:
        candidate: the case the face votes for, or ``None``.
        reason: ``alert`` or the first rule that rejected the best case (see :data:`REASONS`).
        best: the best case whatever the verdict (``None`` without hits).
    """

    candidate: Candidate | None
    reason: str
    best: Candidate | None


def judge(matches: Sequence[CaseMatchLike], threshold: float, matching: MatchingConfig, *,
          estimated_age: float | None, p_male: float | None, case_info: CaseInfo, today: date) -> Verdict:
    """Apply the rules of the module docstring to one face's hits.

    Args:
        matches: the index hits of the face (any order; several per case allowed).
        threshold: the resolved threshold (:func:`resolve_policy`).
        matching: margin, age and sex check settings.
        estimated_age: the face's estimated age in years, or ``None``.
        p_male: the face's probability of being male, or ``None``.
        case_info: case facts by id; called only for a best case above threshold and margin.
        today: the date for "years since last contact".
    """
    cand = best_candidate(matches)
    if cand is None:
        return Verdict(None, "no_candidates", None)
    if cand.score < threshold:
        return Verdict(None, "threshold", cand)
    if cand.margin < matching.margin:
        return Verdict(None, "margin", cand)
    need_age = matching.age_check.enabled and estimated_age is not None
    need_sex = matching.sex_check.enabled and p_male is not None
    if need_age or need_sex:
        info = case_info(cand.id_formatted)
        if need_age and not age_plausible(estimated_age, info, matching.age_check, today):
            return Verdict(None, "age", cand)
        if need_sex and not sex_plausible(p_male, estimated_age, info, matching.sex_check):
            return Verdict(None, "sex", cand)
    return Verdict(cand, "alert", cand)
