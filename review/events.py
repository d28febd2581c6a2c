"""Match events as the console receives them: schema v1 and v2 (see CONTRACTS / docs/events.md).

Every field, v1 and v2, is checked by :meth:`namus_edge.edge.events.MatchEvent.from_dict` (the one
validator of the wire format); this module adds what the console requires on top (a v2 event
must name its policy) and keeps the v2 parts as they arrived, so the store writes back what the
device sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from namus_edge.edge.events import CandidateRef, EventError, MatchEvent


@dataclass(frozen=True)
class ReviewEvent:
    """A parsed event: the v1 core plus the v2 fields (defaults for v1, per the contract).

    Attributes:
        event: the whole event, validated by MatchEvent.
        schema_version: 1 or 2 as received.
        candidates: top cases, best first (v1: the single match).
        photo: ``{"category", "is_rendering"}`` of the matched photo, or ``None`` (v1).
        static_suspect: the face did not move (v2), else False.
        estimated_sex: ``{"label", "confidence"}`` or ``None``.
        policy: ``{"rule", "threshold", "gallery_size", "target_fpir"}`` (plus ``hub_norm`` when the
            event carries it) or ``None``.
    """

    event: MatchEvent
    schema_version: int
    candidates: tuple[CandidateRef, ...]
    photo: dict[str, Any] | None
    static_suspect: bool
    estimated_sex: dict[str, Any] | None
    policy: dict[str, Any] | None


def parse_event(payload: bytes | str) -> ReviewEvent:
    """Parse and validate one MQTT match payload (schema v1 or v2).

    Args:
        payload: UTF-8 JSON bytes as received.

    Returns:
        The event with v2 fields (v1 events get the contract's defaults).

    Raises:
        EventError: not JSON, an unsupported ``schema_version``, or a missing/unknown/invalid
            field (the message names it).
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"event: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EventError(f"event: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in (1, 2):
        raise EventError(f"schema_version: {version!r} is not supported (the console reads 1 and 2)")
    event = MatchEvent.from_dict(data)
    if version == 1:
        return ReviewEvent(event, 1, event.candidates, None, False, None, None)
    if event.policy is None:
        raise EventError("policy: expected a JSON object, got NoneType (the console needs the policy that fired)")
    policy = event.policy.to_dict()
    if "hub_norm" not in data["policy"]:
        del policy["hub_norm"]  # stored as received: events from before hub normalisation do not carry it
    sex = None if event.estimated_sex is None else event.estimated_sex.to_dict()
    return ReviewEvent(event, 2, event.candidates, event.photo.to_dict(), event.static_suspect, sex, policy)
