"""Match events as the console receives them: schema v1 and v2 (see CONTRACTS / docs/events.md).

The v1 fields are checked by :class:`namus_edge.edge.events.MatchEvent` (the one validator of
the wire format); the v2 additions (``candidates``, ``photo``, ``static_suspect``,
``estimated_sex``, ``policy``) are checked here, so the console reads both versions whatever
version the device-side parser emits.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from namus_edge.edge.events import EventError, MatchEvent

#: Keys a v2 event adds to v1.
V2_KEYS = ("candidates", "photo", "static_suspect", "estimated_sex", "policy")
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class CandidateRef:
    """One of the top cases of an event, best first.

    Attributes:
        id_formatted: NamUs case number.
        similarity: cosine similarity in [-1, 1] (raw, also under a hub-normalised policy).
        image_key: bundle key of the case photo.
        category: NamUs photo category (e.g. ``FacialCaseId``) or ``None``.
        is_rendering: the photo is an age progression or artist rendering.
        score: the hub-normalised decision score when the device's policy normalised
            (``policy.hub_norm``), else ``None`` (absent on the wire).
    """

    id_formatted: str
    similarity: float
    image_key: str
    category: str | None
    is_rendering: bool
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this candidate (``score`` only when set)."""
        out: dict[str, Any] = {"id_formatted": self.id_formatted, "similarity": self.similarity,
                               "image_key": self.image_key, "category": self.category,
                               "is_rendering": self.is_rendering}
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass(frozen=True)
class ReviewEvent:
    """A parsed event: the v1 core plus the v2 fields (defaults for v1, per the contract).

    Attributes:
        event: the v1 part, validated by MatchEvent.
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


def _num(where: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EventError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or not lo <= out <= hi:
        raise EventError(f"{where}: {out!r} is outside [{lo}, {hi}]")
    return out


def _obj(where: str, value: object, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError(f"{where}: expected a JSON object, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise EventError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(value) - set(keys) - set(optional))
    if unknown:
        raise EventError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return value


def _opt_str(where: str, value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 128):
        raise EventError(f"{where}: expected a string (<= 128 characters) or null, got {value!r}")
    return value


def _bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise EventError(f"{where}: expected true or false, got {value!r}")
    return value


def _candidates(value: object) -> tuple[CandidateRef, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CANDIDATES:
        raise EventError(f"candidates: expected an array of 1..{MAX_CANDIDATES} objects, got {value!r:.200}")
    out = []
    for i, item in enumerate(value):
        where = f"candidates[{i}]"
        d = _obj(where, item, ("id_formatted", "similarity", "image_key", "category", "is_rendering"), ("score",))
        for key in ("id_formatted", "image_key"):
            if not isinstance(d[key], str) or not d[key] or len(d[key]) > 512:
                raise EventError(f"{where}.{key}: expected a non-empty string, got {d[key]!r}")
        out.append(CandidateRef(d["id_formatted"], _num(f"{where}.similarity", d["similarity"], -1.0, 1.0),
                                d["image_key"], _opt_str(f"{where}.category", d["category"]),
                                _bool(f"{where}.is_rendering", d["is_rendering"]),
                                None if d.get("score") is None else _num(f"{where}.score", d["score"], -3.0, 3.0)))
    return tuple(out)


def _v2_parts(data: dict[str, Any]) -> tuple[tuple[CandidateRef, ...], dict[str, Any], bool, dict[str, Any] | None,
                                              dict[str, Any]]:
    missing = [k for k in V2_KEYS if k not in data]
    if missing:
        raise EventError(f"event: schema_version 2 requires field(s) {', '.join(missing)}")
    cands = _candidates(data["candidates"])
    case = data.get("case")
    if cands[0].id_formatted != (case.get("id_formatted") if isinstance(case, dict) else None):
        raise EventError("candidates[0].id_formatted: must be the alerted case (case.id_formatted)")
    p = _obj("photo", data["photo"], ("category", "is_rendering"))
    photo = {"category": _opt_str("photo.category", p["category"]),
             "is_rendering": _bool("photo.is_rendering", p["is_rendering"])}
    static = _bool("static_suspect", data["static_suspect"])
    sex = None
    if data["estimated_sex"] is not None:
        s = _obj("estimated_sex", data["estimated_sex"], ("label", "confidence"))
        if s["label"] not in ("female", "male"):
            raise EventError(f"estimated_sex.label: {s['label']!r} is not 'female' or 'male'")
        sex = {"label": s["label"], "confidence": _num("estimated_sex.confidence", s["confidence"], 0.5, 1.0)}
    pol = _obj("policy", data["policy"], ("rule", "threshold", "gallery_size", "target_fpir"), ("hub_norm",))
    if not isinstance(pol["rule"], str) or not pol["rule"] or len(pol["rule"]) > 64:
        raise EventError(f"policy.rule: expected a non-empty string, got {pol['rule']!r}")
    size = pol["gallery_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise EventError(f"policy.gallery_size: expected an integer >= 0, got {size!r}")
    fpir = None if pol["target_fpir"] is None else _num("policy.target_fpir", pol["target_fpir"], 0.0, 1.0)
    policy = {"rule": pol["rule"], "threshold": _num("policy.threshold", pol["threshold"], -1.0, 1.0),
              "gallery_size": size, "target_fpir": fpir}
    if "hub_norm" in pol:
        policy["hub_norm"] = _bool("policy.hub_norm", pol["hub_norm"])
    return cands, photo, static, sex, policy


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
    if version == 1:
        event = MatchEvent.from_dict(data)
        single = CandidateRef(event.case.id_formatted, event.similarity, event.image_key, None, False)
        return ReviewEvent(event, 1, (single,), None, False, None, None)
    cands, photo, static, sex, policy = _v2_parts(data)
    core = {k: v for k, v in data.items() if k not in V2_KEYS}
    core["schema_version"] = 1  # the v1 part is checked by the v1 rules, whichever version edge.events emits
    event = MatchEvent.from_dict(core)
    return ReviewEvent(event, 2, cands, photo, static, sex, policy)
