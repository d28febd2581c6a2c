"""Match events: the JSON document a device publishes when a face matches a NamUs case.

An event is a *candidate* match for human review (``review_required`` is always true), never an
identification. Events are published at QoS 1 (at least once), so receivers must dedupe on
``event_id``. The wire format is documented, with its JSON Schema, in ``docs/events.md``;
``SCHEMA_VERSION`` changes whenever a field changes meaning or a required field is added.

Every value object here validates itself on construction and raises :class:`EventError`
naming the field and the offending value, so a malformed event never reaches the outbox.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from namus_edge.core.cases import CASE_SETS
from namus_edge.core.errors import NamusEdgeError

SCHEMA_VERSION = 2
#: Versions :meth:`MatchEvent.from_dict` reads (a v1 event gets the v2 defaults, see docs/events.md).
READABLE_VERSIONS = (1, 2)
MAX_CANDIDATES = 5
SEX_LABELS = ("female", "male")

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")
_MAX_AGE = 150


class EventError(NamusEdgeError, ValueError):
    """A match event (or its JSON) is invalid; the message names the field and the value."""


def utc_timestamp(when: datetime | None = None) -> str:
    """Format a time as the event timestamp: UTC ISO 8601 with millisecond precision and ``Z``.

    Args:
        when: An aware datetime (any zone; converted to UTC). ``None`` means now.

    Returns:
        e.g. ``"2024-05-01T12:34:56.789Z"``.

    Raises:
        EventError: ``when`` is a naive datetime (its zone would be a guess).
    """
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is None or when.utcoffset() is None:
        raise EventError(f"timestamp: naive datetime {when.isoformat()} has no time zone")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """Parse an event timestamp (ISO 8601 in UTC, ``Z`` or ``+00:00``) into an aware datetime.

    Raises:
        EventError: not a string, not ISO 8601, without a zone, or not UTC.
    """
    if not isinstance(text, str):
        raise EventError(f"timestamp: expected an ISO 8601 string, got {type(text).__name__}")
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise EventError(f"timestamp: {text!r} is not ISO 8601") from None
    offset = parsed.utcoffset()
    if offset is None:
        raise EventError(f"timestamp: {text!r} has no time zone (expected 'Z' or '+00:00')")
    if offset.total_seconds() != 0:
        raise EventError(f"timestamp: {text!r} is not UTC (expected 'Z' or '+00:00')")
    return parsed


def new_event_id() -> str:
    """Return a fresh random event id (UUID version 4, canonical lowercase string)."""
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# field checks: each returns the normalised value or raises EventError naming the field
# ---------------------------------------------------------------------------------------------


def _str(name: str, value: object, *, allow_empty: bool = False, max_len: int = 1024) -> str:
    if not isinstance(value, str):
        raise EventError(f"{name}: expected a string, got {type(value).__name__} {value!r}")
    if not value and not allow_empty:
        raise EventError(f"{name}: must not be empty")
    if len(value) > max_len:
        raise EventError(f"{name}: longer than {max_len} characters ({len(value)})")
    return value


def _ident(name: str, value: object) -> str:
    text = _str(name, value)
    if not _ID_RE.match(text):
        raise EventError(f"{name}: {text!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return text


def _int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass; True as a track id is a bug upstream, not a value.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise EventError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    out = int(value)
    if out < lo or (hi is not None and out > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise EventError(f"{name}: {out} is outside {bound}")
    return out


def _opt_int(name: str, value: object, lo: int, hi: int) -> int | None:
    return None if value is None else _int(name, value, lo, hi)


def _float(name: str, value: object, lo: float, hi: float) -> float:
    # numbers.Real covers numpy float32/float64 scalars, which the pipeline produces.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EventError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < lo or out > hi:
        raise EventError(f"{name}: {out!r} is outside [{lo}, {hi}]")
    return out


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their fields in __post_init__ through object.__setattr__.
    object.__setattr__(obj, name, value)


def _take(data: object, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EventError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise EventError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise EventError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return data


# ---------------------------------------------------------------------------------------------
# value objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CaseRef:
    """The NamUs case a face matched (public case facts only; no contributor data, no narrative).

    Attributes:
        id_formatted: NamUs case number as shown on the site, e.g. ``"MP12345"``.
        case_set: ``"MP"`` (missing), ``"UP"`` (unidentified) or ``"UCP"`` (unclaimed).
        name: Display name of the person; empty for unidentified cases.
        link: Public case page URL (``https://www.namus.gov/MissingPersons/Case#/12345``).
        current_age_min: Lower bound of the person's age today in years, or ``None`` if unknown.
        current_age_max: Upper bound of the person's age today in years, or ``None`` if unknown.
    """

    id_formatted: str
    case_set: str
    name: str
    link: str
    current_age_min: int | None = None
    current_age_max: int | None = None

    def __post_init__(self) -> None:
        _str("case.id_formatted", self.id_formatted, max_len=64)
        if self.case_set not in CASE_SETS:
            raise EventError(f"case.case_set: {self.case_set!r} is not one of {', '.join(CASE_SETS)}")
        _str("case.name", self.name, allow_empty=True, max_len=256)
        link = _str("case.link", self.link, max_len=2048)
        if not link.startswith(("https://", "http://")):
            raise EventError(f"case.link: {link!r} is not an http(s) URL")
        lo = _opt_int("case.current_age_min", self.current_age_min, 0, _MAX_AGE)
        hi = _opt_int("case.current_age_max", self.current_age_max, 0, _MAX_AGE)
        if lo is not None and hi is not None and lo > hi:
            raise EventError(f"case: current_age_min ({lo}) is greater than current_age_max ({hi})")
        _set(self, "current_age_min", lo)
        _set(self, "current_age_max", hi)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of this case (all keys present, unknown ages as null)."""
        return {
            "id_formatted": self.id_formatted,
            "case_set": self.case_set,
            "name": self.name,
            "link": self.link,
            "current_age_min": self.current_age_min,
            "current_age_max": self.current_age_max,
        }

    @classmethod
    def from_dict(cls, data: object) -> CaseRef:
        """Build from a parsed JSON object; raises EventError on missing/unknown/invalid fields."""
        d = _take(data, "case", ("id_formatted", "case_set", "name", "link", "current_age_min", "current_age_max"))
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """A model that produced the event: registry name and a prefix of its file's sha256 (hex)."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        _str("models.name", self.name, max_len=128)
        digest = _str("models.sha256", self.sha256, max_len=64)
        if not _HEX_RE.match(digest):
            raise EventError(f"models.sha256: {digest!r} must be 8-64 lowercase hex digits (a sha256 prefix)")

    def to_dict(self) -> dict[str, str]:
        """Return ``{"name": ..., "sha256": ...}``."""
        return {"name": self.name, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: object, where: str) -> ModelRef:
        """Build from a parsed JSON object found at ``where`` (used in error messages)."""
        d = _take(data, where, ("name", "sha256"))
        return cls(name=d["name"], sha256=d["sha256"])


@dataclass(frozen=True, kw_only=True)
class EventModels:
    """The detector, embedder and (optional) age model behind an event."""

    detector: ModelRef
    embedder: ModelRef
    age: ModelRef | None = None

    def __post_init__(self) -> None:
        for key in ("detector", "embedder"):
            if not isinstance(getattr(self, key), ModelRef):
                raise EventError(f"models.{key}: expected a ModelRef, got {type(getattr(self, key)).__name__}")
        if self.age is not None and not isinstance(self.age, ModelRef):
            raise EventError(f"models.age: expected a ModelRef or None, got {type(self.age).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object (``age`` is null when no age model ran)."""
        return {
            "detector": self.detector.to_dict(),
            "embedder": self.embedder.to_dict(),
            "age": None if self.age is None else self.age.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object) -> EventModels:
        """Build from a parsed JSON object; raises EventError on missing/unknown/invalid fields."""
        d = _take(data, "models", ("detector", "embedder", "age"))
        return cls(
            detector=ModelRef.from_dict(d["detector"], "models.detector"),
            embedder=ModelRef.from_dict(d["embedder"], "models.embedder"),
            age=None if d["age"] is None else ModelRef.from_dict(d["age"], "models.age"),
        )


def _opt_str(name: str, value: object, max_len: int = 128) -> str | None:
    return None if value is None else _str(name, value, max_len=max_len)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise EventError(f"{name}: expected true or false, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class CandidateRef:
    """One of the top cases of the face that fired (schema v2 ``candidates``).

    Attributes:
        id_formatted: the case.
        similarity: raw cosine similarity of the face to the case's best photo, in [-1, 1].
        image_key: that photo's bundle key.
        category: its NamUs photo category (``FacialCaseId``, ``AgeProgression``, ...) or ``None``.
        is_rendering: the photo is an age progression, composite or artist rendering.
        score: the decision score (similarity minus the photo's hub offset minus the face's probe
            offset) when the policy is hub-normalised (``policy.hub_norm``), in [-3, 3]; ``None``
            (key absent) otherwise.
    """

    id_formatted: str
    similarity: float
    image_key: str
    category: str | None = None
    is_rendering: bool = False
    score: float | None = None

    def __post_init__(self) -> None:
        _str("candidates[].id_formatted", self.id_formatted, max_len=64)
        _set(self, "similarity", _float("candidates[].similarity", self.similarity, -1.0, 1.0))
        _str("candidates[].image_key", self.image_key, max_len=512)
        _opt_str("candidates[].category", self.category)
        _bool("candidates[].is_rendering", self.is_rendering)
        if self.score is not None:
            _set(self, "score", _float("candidates[].score", self.score, -3.0, 3.0))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (all keys present; ``score`` only when set)."""
        out: dict[str, Any] = {"id_formatted": self.id_formatted, "similarity": self.similarity,
                               "image_key": self.image_key, "category": self.category,
                               "is_rendering": self.is_rendering}
        if self.score is not None:
            out["score"] = self.score
        return out

    @classmethod
    def from_dict(cls, data: object) -> CandidateRef:
        """Build from a parsed JSON object; raises EventError on missing/unknown/invalid fields."""
        return cls(**_take(data, "candidates[]", ("id_formatted", "similarity", "image_key", "category",
                                                  "is_rendering"), ("score",)))


@dataclass(frozen=True, kw_only=True)
class PhotoRef:
    """Category of the matched case photo (schema v2 ``photo``)."""

    category: str | None = None
    is_rendering: bool = False

    def __post_init__(self) -> None:
        _opt_str("photo.category", self.category)
        _bool("photo.is_rendering", self.is_rendering)

    def to_dict(self) -> dict[str, Any]:
        """``{"category", "is_rendering"}``."""
        return {"category": self.category, "is_rendering": self.is_rendering}

    @classmethod
    def from_dict(cls, data: object) -> PhotoRef:
        """Build from a parsed JSON object."""
        return cls(**_take(data, "photo", ("category", "is_rendering")))


@dataclass(frozen=True, kw_only=True)
class SexEstimate:
    """The face's estimated sex (schema v2 ``estimated_sex``), from ``Face.p_male``.

    Attributes:
        label: ``female`` or ``male`` (male iff p_male >= 0.5).
        confidence: max(p_male, 1 - p_male), in [0.5, 1].
    """

    label: str
    confidence: float

    def __post_init__(self) -> None:
        if self.label not in SEX_LABELS:
            raise EventError(f"estimated_sex.label: {self.label!r} is not one of {', '.join(SEX_LABELS)}")
        _set(self, "confidence", _float("estimated_sex.confidence", self.confidence, 0.5, 1.0))

    @classmethod
    def from_p_male(cls, p_male: float | None) -> SexEstimate | None:
        """From ``Face.p_male`` (``None`` stays ``None``)."""
        if p_male is None:
            return None
        p = _float("estimated_sex (p_male)", p_male, 0.0, 1.0)
        return cls(label="male" if p >= 0.5 else "female", confidence=round(max(p, 1.0 - p), 4))

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "confidence"}``."""
        return {"label": self.label, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: object) -> SexEstimate:
        """Build from a parsed JSON object."""
        return cls(**_take(data, "estimated_sex", ("label", "confidence")))


@dataclass(frozen=True, kw_only=True)
class PolicyRef:
    """The alert policy that fired (schema v2 ``policy``; see ``models/policy.py``).

    Attributes:
        rule: ``target_fpir``, ``fixed_threshold`` or ``embedder_default``.
        threshold: the threshold used (on the raw cosine, or on the hub-normalised score when
            ``hub_norm``).
        gallery_size: faces in the searched bundle.
        target_fpir: the target false-positive identification rate, or ``None``.
        hub_norm: scores were hub-normalised (similarity minus each gallery photo's hub offset minus the
            face's probe offset).
    """

    rule: str
    threshold: float
    gallery_size: int
    target_fpir: float | None = None
    hub_norm: bool = False

    def __post_init__(self) -> None:
        _str("policy.rule", self.rule, max_len=64)
        _set(self, "threshold", _float("policy.threshold", self.threshold, -1.0, 1.0))
        _set(self, "gallery_size", _int("policy.gallery_size", self.gallery_size, 0))
        if self.target_fpir is not None:
            _set(self, "target_fpir", _float("policy.target_fpir", self.target_fpir, 0.0, 1.0))
        _bool("policy.hub_norm", self.hub_norm)

    def to_dict(self) -> dict[str, Any]:
        """``{"rule", "threshold", "gallery_size", "target_fpir", "hub_norm"}``."""
        return {"rule": self.rule, "threshold": self.threshold, "gallery_size": self.gallery_size,
                "target_fpir": self.target_fpir, "hub_norm": self.hub_norm}

    @classmethod
    def from_dict(cls, data: object) -> PolicyRef:
        """Build from a parsed JSON object (``hub_norm`` absent in events before it existed: false)."""
        return cls(**_take(data, "policy", ("rule", "threshold", "gallery_size", "target_fpir"), ("hub_norm",)))


_EVENT_REQUIRED = (
    "schema_version", "event_id", "device_id", "camera_id", "timestamp", "track_id", "case", "similarity",
    "margin", "estimated_age", "quality", "bbox", "index_version", "models", "image_key", "frames",
    "review_required",
)
_EVENT_V2_REQUIRED = ("candidates", "photo", "static_suspect", "estimated_sex", "policy")
_EVENT_OPTIONAL = ("crop_jpeg_b64",)


@dataclass(frozen=True, kw_only=True)
class MatchEvent:
    """A candidate match of a tracked face against a NamUs case, for human review.

    Attributes:
        device_id: The device (``service.device_id``).
        camera_id: The camera (``cameras[].id``).
        track_id: Tracker id of the face within the camera (>= 0).
        case: The matched case.
        similarity: Cosine similarity of the face to the best case photo, in [-1, 1].
        margin: Lead of the best case over the second-best case, in [0, 2].
        estimated_age: Estimated age of the face in years, or ``None`` without an age model.
        quality: Combined face quality score in [0, 1].
        bbox: Face box ``(x1, y1, x2, y2)`` in pixels of the full camera frame, x right, y down,
            ``0 <= x1 < x2``, ``0 <= y1 < y2`` (floats; lists are accepted and stored as a tuple).
        index_version: Version of the index bundle searched.
        models: The models that produced the event.
        image_key: Key of the case photo that matched (as stored in the bundle).
        frames: Number of frames of the track that confirmed the match (>= 1).
        timestamp: UTC ISO 8601 time of the confirming frame (default: now, see :func:`utc_timestamp`).
        event_id: Unique id, a UUID4 string (default: fresh). Receivers dedupe on it.
        schema_version: :data:`SCHEMA_VERSION` for new events; 1 for an event parsed from a v1
            payload (it serialises back to v1).
        review_required: Always ``True``: an event is a candidate for a human to review.
        crop_jpeg_b64: Base64 of the face crop JPEG, only with ``mqtt.face_crop: inline``.
        candidates: v2: the top cases (1-5, best first); ``candidates[0]`` is ``case``. Empty
            means "the single match" and is filled from ``case``, ``similarity`` and ``image_key``.
        photo: v2: category of the matched photo (default: unknown, not a rendering).
        static_suspect: v2: the face did not move / the same region re-triggered (a poster?).
        estimated_sex: v2: the face's sex estimate, or ``None`` without a sex model.
        policy: v2: the alert policy that fired (``None`` only for events read from v1).
    """

    device_id: str
    camera_id: str
    track_id: int
    case: CaseRef
    similarity: float
    margin: float
    estimated_age: float | None
    quality: float
    bbox: tuple[float, float, float, float]
    index_version: str
    models: EventModels
    image_key: str
    frames: int
    timestamp: str = field(default_factory=utc_timestamp)
    event_id: str = field(default_factory=new_event_id)
    schema_version: int = SCHEMA_VERSION
    review_required: bool = True
    crop_jpeg_b64: str | None = None
    candidates: tuple[CandidateRef, ...] = ()
    photo: PhotoRef = field(default_factory=PhotoRef)
    static_suspect: bool = False
    estimated_sex: SexEstimate | None = None
    policy: PolicyRef | None = None

    def __post_init__(self) -> None:
        if self.schema_version not in READABLE_VERSIONS or isinstance(self.schema_version, bool):
            raise EventError(
                f"schema_version: {self.schema_version!r} is not supported (this build reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        self._check_event_id()
        _ident("device_id", self.device_id)
        _ident("camera_id", self.camera_id)
        parse_timestamp(self.timestamp)
        _set(self, "track_id", _int("track_id", self.track_id, 0))
        if not isinstance(self.case, CaseRef):
            raise EventError(f"case: expected a CaseRef, got {type(self.case).__name__}")
        _set(self, "similarity", _float("similarity", self.similarity, -1.0, 1.0))
        _set(self, "margin", _float("margin", self.margin, 0.0, 2.0))
        if self.estimated_age is not None:
            _set(self, "estimated_age", _float("estimated_age", self.estimated_age, 0.0, float(_MAX_AGE)))
        _set(self, "quality", _float("quality", self.quality, 0.0, 1.0))
        _set(self, "bbox", self._check_bbox(self.bbox))
        _str("index_version", self.index_version, max_len=128)
        if not isinstance(self.models, EventModels):
            raise EventError(f"models: expected EventModels, got {type(self.models).__name__}")
        _str("image_key", self.image_key, max_len=512)
        _set(self, "frames", _int("frames", self.frames, 1))
        if self.review_required is not True:
            raise EventError(
                f"review_required: must be true (events are candidates for review), got {self.review_required!r}"
            )
        if self.crop_jpeg_b64 is not None:
            self._check_crop(self.crop_jpeg_b64)
        self._check_v2()

    def _check_v2(self) -> None:
        cands = tuple(self.candidates)
        if not cands:
            cands = (CandidateRef(id_formatted=self.case.id_formatted, similarity=self.similarity,
                                  image_key=self.image_key, category=self.photo.category,
                                  is_rendering=self.photo.is_rendering),)
        if len(cands) > MAX_CANDIDATES:
            raise EventError(f"candidates: {len(cands)} given, at most {MAX_CANDIDATES}")
        if not all(isinstance(c, CandidateRef) for c in cands):
            raise EventError("candidates: expected CandidateRef objects")
        if cands[0].id_formatted != self.case.id_formatted:
            raise EventError(f"candidates[0].id_formatted: {cands[0].id_formatted!r} is not the alerted case "
                             f"{self.case.id_formatted!r}")
        _set(self, "candidates", cands)
        if not isinstance(self.photo, PhotoRef):
            raise EventError(f"photo: expected a PhotoRef, got {type(self.photo).__name__}")
        _bool("static_suspect", self.static_suspect)
        if self.estimated_sex is not None and not isinstance(self.estimated_sex, SexEstimate):
            raise EventError(f"estimated_sex: expected a SexEstimate or None, got {type(self.estimated_sex).__name__}")
        if self.policy is not None and not isinstance(self.policy, PolicyRef):
            raise EventError(f"policy: expected a PolicyRef or None, got {type(self.policy).__name__}")

    def _check_event_id(self) -> None:
        text = _str("event_id", self.event_id, max_len=36)
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            raise EventError(f"event_id: {text!r} is not a UUID") from None
        if parsed.version != 4 or str(parsed) != text:
            raise EventError(f"event_id: {text!r} is not a canonical lowercase UUID4 string")

    @staticmethod
    def _check_bbox(value: object) -> tuple[float, float, float, float]:
        # Tuples, lists and 1-D numpy arrays are accepted; strings are not coordinates.
        try:
            values = [] if isinstance(value, (str, bytes)) else list(value)  # type: ignore[call-overload]
        except TypeError:
            values = []
        if len(values) != 4:
            raise EventError(f"bbox: expected [x1, y1, x2, y2], got {value!r}")
        x1, y1, x2, y2 = (_float(f"bbox[{i}]", v, 0.0, 1e6) for i, v in enumerate(values))
        if not (x2 > x1 and y2 > y1):
            raise EventError(f"bbox: {[x1, y1, x2, y2]} must satisfy x1 < x2 and y1 < y2 (pixels)")
        return (x1, y1, x2, y2)

    @staticmethod
    def _check_crop(text: object) -> None:
        data = _str("crop_jpeg_b64", text, max_len=10_000_000)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("crop_jpeg_b64: not valid base64") from None
        if not raw.startswith(b"\xff\xd8"):
            raise EventError("crop_jpeg_b64: does not decode to a JPEG (no FF D8 start marker)")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of the event (``crop_jpeg_b64`` only when set)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "device_id": self.device_id,
            "camera_id": self.camera_id,
            "timestamp": self.timestamp,
            "track_id": self.track_id,
            "case": self.case.to_dict(),
            "similarity": self.similarity,
            "margin": self.margin,
            "estimated_age": self.estimated_age,
            "quality": self.quality,
            "bbox": list(self.bbox),
            "index_version": self.index_version,
            "models": self.models.to_dict(),
            "image_key": self.image_key,
            "frames": self.frames,
            "review_required": self.review_required,
        }
        if self.schema_version >= 2:
            out["candidates"] = [c.to_dict() for c in self.candidates]
            out["photo"] = self.photo.to_dict()
            out["static_suspect"] = self.static_suspect
            out["estimated_sex"] = None if self.estimated_sex is None else self.estimated_sex.to_dict()
            out["policy"] = None if self.policy is None else self.policy.to_dict()
        if self.crop_jpeg_b64 is not None:
            out["crop_jpeg_b64"] = self.crop_jpeg_b64
        return out

    def to_json(self) -> str:
        """Serialise to compact UTF-8 JSON (the MQTT payload)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: object) -> MatchEvent:
        """Build from a parsed JSON object; raises EventError naming the first bad field."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version == 1:
            d = _take(data, "event", _EVENT_REQUIRED, _EVENT_OPTIONAL)
        else:
            d = _take(data, "event", _EVENT_REQUIRED + _EVENT_V2_REQUIRED, _EVENT_OPTIONAL)
        kwargs = dict(d)
        if version != 1:
            cands = d["candidates"]
            if not isinstance(cands, list) or not cands:
                raise EventError(f"candidates: expected a JSON array of 1-{MAX_CANDIDATES} objects, got {cands!r}")
            kwargs["candidates"] = tuple(CandidateRef.from_dict(c) for c in cands)
            kwargs["photo"] = PhotoRef.from_dict(d["photo"])
            es = d["estimated_sex"]
            kwargs["estimated_sex"] = None if es is None else SexEstimate.from_dict(es)
            kwargs["policy"] = None if d["policy"] is None else PolicyRef.from_dict(d["policy"])
        kwargs["case"] = CaseRef.from_dict(d["case"])
        kwargs["models"] = EventModels.from_dict(d["models"])
        bbox = d["bbox"]
        if not isinstance(bbox, list):
            raise EventError(f"bbox: expected a JSON array of 4 numbers, got {bbox!r}")
        kwargs["bbox"] = tuple(bbox)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> MatchEvent:
        """Parse an MQTT payload.

        Raises:
            EventError: not UTF-8 JSON, or any field missing, unknown or invalid.
        """
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventError(f"event: not valid JSON ({exc})") from None
        return cls.from_dict(data)
