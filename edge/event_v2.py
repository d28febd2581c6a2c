"""The schema-v2 fields of a match event, from a decision (candidates, photo, sex, policy).

Kept out of :mod:`namus_edge.edge.events` (the wire format) and :mod:`namus_edge.edge.pipeline`
(the processing chain): this is the one mapping from what the decision engine knows to what a
reviewer reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from namus_edge.edge.decision import MatchDecision
from namus_edge.edge.events import CandidateRef, PhotoRef, PolicyRef, SexEstimate

#: Looks up a case photo's ``{"category", "is_rendering"}`` by bundle image key (``Bundle.photo``).
PhotoInfo = Callable[[str], Mapping[str, Any] | None]


def _photo(photo_info: PhotoInfo, image_key: str) -> PhotoRef:
    info = photo_info(image_key) or {}
    cat = info.get("category")
    return PhotoRef(category=str(cat) if cat else None, is_rendering=bool(info.get("is_rendering", False)))


def v2_fields(d: MatchDecision, photo_info: PhotoInfo, *, static_suspect: bool) -> dict[str, Any]:
    """Keyword arguments ``candidates, photo, static_suspect, estimated_sex, policy`` for :class:`MatchEvent`.

    ``candidates[0]`` is always the alerted case with its best photo over the track (the
    decision's ``image_key`` and ``best_similarity``); the runners-up come from the face that fired.
    ``similarity`` is always the raw cosine; under a hub-normalised policy each candidate also
    carries its decision ``score``.
    """
    norm = d.policy is not None and d.policy.hub_norm
    photo = _photo(photo_info, d.image_key)
    first = CandidateRef(id_formatted=d.id_formatted, similarity=round(float(d.best_similarity), 4),
                         image_key=d.image_key, category=photo.category, is_rendering=photo.is_rendering,
                         score=round(float(d.best_score), 4) if norm and d.best_score is not None else None)
    rest = []
    for c in d.candidates:
        if c.id_formatted == d.id_formatted:
            continue
        p = _photo(photo_info, c.image_key)
        rest.append(CandidateRef(id_formatted=c.id_formatted, similarity=round(float(c.cosine), 4),
                                 image_key=c.image_key, category=p.category, is_rendering=p.is_rendering,
                                 score=round(float(c.score), 4) if norm else None))
    policy = None if d.policy is None else PolicyRef(
        rule=d.policy.rule, threshold=round(float(d.policy.threshold_for(d.estimated_age)), 4),
        gallery_size=d.policy.gallery_size,
        target_fpir=d.policy.target_fpir, hub_norm=d.policy.hub_norm)
    return {
        "candidates": (first, *rest[:4]),
        "photo": photo,
        "static_suspect": bool(static_suspect),
        "estimated_sex": SexEstimate.from_p_male(d.p_male),
        "policy": policy,
    }
