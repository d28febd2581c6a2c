"""Normalised, device-safe NamUs case records.

A raw NamUs case (the JSON body of ``GET /CaseSets/NamUs/<CaseSet>/Cases/<id>``, see
``NAMUS_FORMAT.md`` §4) is turned into a small frozen :class:`CaseRecord` holding only what an
edge device may carry (§9.10): the case key, name, sex, race, ages, last-seen/found date and
place, the agency name and its case number, and the list of images. Case-contributor names,
e-mails and phones, narrative text (``circumstances*``, notes, descriptions) and
investigating-agency contact data are never copied.

Everything is keyed on ``(case_set, id)`` / ``id_formatted``: case numbers repeat across case
sets (MP2336 and UP2336 are different people), and images are keyed on the 32-hex
``files.original.storageKey``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from namus_edge.core.cases import CASE_SETS, PUBLIC_SITE, CaseSetCode, case_link, case_set_code
from namus_edge.core.errors import NamusEdgeError

logger = logging.getLogger(__name__)

#: Search-predicate field holding the state, per case set (NAMUS_FORMAT §1).
STATE_FIELDS: dict[str, str] = {"MP": "stateOfLastContact", "UP": "stateOfRecovery", "UCP": "stateFound"}

#: Image categories worth running a face detector on (NAMUS_FORMAT §5).
DEFAULT_FACE_CATEGORIES: tuple[str, ...] = (
    "FacialCaseId",
    "ActualPhoto",
    "AgeProgression",
    "Composite",
    "ArtistRendering",
)

#: Categories whose images are drawings or synthetic renderings, not photographs.
RENDERING_CATEGORIES: frozenset[str] = frozenset({"AgeProgression", "Composite", "ArtistRendering"})

_UNKNOWN_TEXT = frozenset({"unknown", "n/a", "none", "unk"})
_STORAGE_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_DATETIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$")


class RecordError(NamusEdgeError):
    """A raw NamUs record lacks a required field or has an invalid value (message names case and field)."""


# --------------------------------------------------------------------------------------------
# value helpers
# --------------------------------------------------------------------------------------------


def parse_namus_datetime(value: str) -> datetime:
    """Parse a NamUs timestamp such as ``2025-03-04T20:53:31.48`` (0-3 fractional digits, no zone).

    Returns:
        A naive :class:`datetime` (NamUs local time, as given).

    Raises:
        ValueError: The text is not in that form.
    """
    m = _DATETIME_RE.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"not a NamUs timestamp: {value!r}")
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro)


def _sub(obj: Any, *keys: str) -> Any:
    """Walk nested dicts; None as soon as a level is missing or not a dict."""
    for k in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(k)
    return obj


def _text(value: Any) -> str | None:
    """A stripped non-empty string or None."""
    if isinstance(value, str):
        v = value.strip()
        return v or None
    return None


def _lookup_name(value: Any) -> str | None:
    """The ``name`` of a lookup object ``{id, name, localizedName}`` (lookup ids differ per set)."""
    return _text(_sub(value, "name"))


def _number(value: Any, case: str, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RecordError(f"{case}: field {field} is not a number: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{case}: field {field} is not a number: {value!r}") from None


def _date(value: Any, case: str, field: str) -> date | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise RecordError(f"{case}: field {field} is not a YYYY-MM-DD date: {value!r}") from None


def whole_years_between(start: date, end: date) -> int:
    """Whole years elapsed from ``start`` to ``end`` (0 when ``end`` is before ``start``)."""
    years = end.year - start.year - ((end.month, end.day) < (start.month, start.day))
    return max(0, years)


# --------------------------------------------------------------------------------------------
# value objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """One image of a case (``images[]``), identified by its original's storage key.

    Attributes:
        storage_key: ``files.original.storageKey``, 32 lower-case hex digits; unique across case sets.
        identity_id: ``identityId`` (used in URLs; unique only within a case set).
        category: ``category.name`` (``FacialCaseId``, ``ActualPhoto``, ...).
        caption: Free-text caption, or None.
        is_rendering: True for ``AgeProgression``, ``Composite`` and ``ArtistRendering``.
        href: ``files.original.href`` as given (root-relative, ``/api/...``).
        mime: ``files.original.mimeType`` as given (non-standard spellings such as ``image/pjpeg``).
        width: Declared original width in pixels, or None.
        height: Declared original height in pixels, or None.
    """

    storage_key: str
    identity_id: int
    category: str
    caption: str | None
    is_rendering: bool
    href: str
    mime: str | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.storage_key, str) or not _STORAGE_KEY_RE.match(self.storage_key):
            raise RecordError(f"image storage_key must be 32 lower-case hex digits, got {self.storage_key!r}")
        if not self.category:
            raise RecordError(f"image {self.storage_key}: empty category")


@dataclass(frozen=True)
class CaseRecord:
    """A normalised, device-safe NamUs case.

    Ages are in years. ``age_min``/``age_max`` are the age at ``date_last`` (``age_kind``
    ``"at_last_contact"``: MP age when last seen, UCP age when found) or the examiner's estimate
    (``"estimated"``: UP). ``current_age_*`` add the whole years from ``date_last`` to the
    ``today`` given to :func:`normalize_case`.

    Attributes:
        case_set: ``"MP"``, ``"UP"`` or ``"UCP"``.
        id: Case number, unique only within ``case_set``.
        id_formatted: ``case_set`` + ``id``, e.g. ``"UP2336"``; the global key.
        display_name: Name to show; see :func:`normalize_case`.
        sex: ``"Male"``, ``"Female"``, ``"Unsure"`` or None.
        race: Race/ethnicity names as NamUs spells them (e.g. ``"White / Caucasian"``).
        age_min: Lower age bound, or None.
        age_max: Upper age bound, or None.
        age_kind: ``"at_last_contact"``, ``"estimated"`` or None when no age is known.
        date_last: MP date of last contact, UP date found, UCP date body found.
        current_age_min: Lower bound of today's age, or None.
        current_age_max: Upper bound of today's age, or None.
        city: City of last contact / recovery.
        county: County name (e.g. ``"Jefferson County"``).
        state: State name (e.g. ``"Alabama"``), as used in search predicates.
        link: Public case page.
        modified: ``modifiedDateTime`` exactly as given (incremental-sync key).
        resolved: ``caseIsResolved``.
        images: The case's images in record order.
        agency: Case-owning (or primary) investigating agency name.
        agency_case_number: That agency's own case number (UP: falls back to the ME/C number).
        deceased: True for UCP and for UP unless ``circumstances.status`` is "Unidentified Living".
            Current ages of deceased persons are the age they would have today if alive.
    """

    case_set: CaseSetCode
    id: int
    id_formatted: str
    display_name: str
    sex: str | None
    race: tuple[str, ...]
    age_min: float | None
    age_max: float | None
    age_kind: Literal["at_last_contact", "estimated"] | None
    date_last: date | None
    current_age_min: float | None
    current_age_max: float | None
    city: str | None
    county: str | None
    state: str | None
    link: str
    modified: str
    resolved: bool
    images: tuple[ImageRef, ...]
    agency: str | None = None
    agency_case_number: str | None = None
    deceased: bool = False

    def __post_init__(self) -> None:
        if self.case_set not in CASE_SETS:
            raise RecordError(f"case_set must be one of {CASE_SETS}, got {self.case_set!r}")
        if self.id_formatted != f"{self.case_set}{self.id}":
            raise RecordError(f"id_formatted {self.id_formatted!r} does not match {self.case_set}{self.id}")
        for lo, hi, what in (
            (self.age_min, self.age_max, "age"),
            (self.current_age_min, self.current_age_max, "current age"),
        ):
            if lo is not None and hi is not None and lo > hi:
                raise RecordError(f"{self.id_formatted}: {what} range {lo}..{hi} is reversed")

    @property
    def key(self) -> tuple[str, int]:
        """``(case_set, id)``, the primary key."""
        return (self.case_set, self.id)

    def face_images(self, categories: Iterable[str] = DEFAULT_FACE_CATEGORIES) -> tuple[ImageRef, ...]:
        """The images whose category is in ``categories`` (see :func:`face_worthy`)."""
        cats = frozenset(categories)
        return tuple(i for i in self.images if i.category in cats)


def face_worthy(image: ImageRef, categories: Iterable[str] = DEFAULT_FACE_CATEGORIES) -> bool:
    """Whether an image's category is worth running a face detector on.

    Args:
        image: The image.
        categories: Accepted ``category.name`` values; default :data:`DEFAULT_FACE_CATEGORIES`
            (FacialCaseId, ActualPhoto, AgeProgression, Composite, ArtistRendering).
    """
    return image.category in frozenset(categories)


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


def raw_case_id(raw: Mapping[str, Any], where: str = "record") -> int:
    """Return the integer ``id`` of a raw record.

    Raises:
        RecordError: ``id`` is missing or not an integer; the message names ``where``.
    """
    value = raw.get("id") if isinstance(raw, Mapping) else None
    if isinstance(value, bool) or value is None:
        fmt = raw.get("idFormatted") if isinstance(raw, Mapping) else None
        raise RecordError(f"{where}{f' ({fmt})' if fmt else ''}: required field 'id' is missing")
    try:
        case_id = int(value)
    except (TypeError, ValueError):
        raise RecordError(f"{where}: field 'id' is not an integer: {value!r}") from None
    if case_id <= 0 or str(case_id) != str(value).strip():
        raise RecordError(f"{where}: field 'id' is not a positive integer: {value!r}")
    return case_id


def raw_state_name(raw: Mapping[str, Any], case_set: str) -> str | None:
    """State name (e.g. ``"Guam"``) of a raw record: MP ``sighting.address``, else ``circumstances.address``."""
    parent = "sighting" if case_set_code(case_set) == "MP" else "circumstances"
    return _lookup_name(_sub(raw, parent, "address", "state"))


def image_refs(raw: Mapping[str, Any], case: str) -> tuple[ImageRef, ...]:
    """The usable images of a raw record, in record order.

    An image lacking ``files.original.storageKey``/``href``, ``category.name`` or ``identityId``,
    or repeating a storage key, is skipped with a warning naming ``case`` and its index.

    Raises:
        RecordError: ``images`` is present but not a list.
    """
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise RecordError(f"{case}: field images is not a list")
    out: list[ImageRef] = []
    seen: set[str] = set()
    for n, img in enumerate(images):
        original = _sub(img, "files", "original")
        key = _text(_sub(original, "storageKey"))
        category = _lookup_name(_sub(img, "category"))
        href = _text(_sub(original, "href"))
        identity = _sub(img, "identityId")
        if key is None or category is None or href is None or identity is None:
            # One unusable image must not drop the case; it is logged with the case and index.
            logger.warning("%s: images[%d] lacks storageKey/category/href/identityId; skipped", case, n)
            continue
        key = key.lower()
        if key in seen:
            logger.warning("%s: images[%d] repeats storageKey %s; skipped", case, n, key)
            continue
        try:
            ref = ImageRef(
                storage_key=key,
                identity_id=int(identity),
                category=category,
                caption=_text(img.get("caption")),
                is_rendering=category in RENDERING_CATEGORIES,
                href=href,
                mime=_text(original.get("mimeType")),
                width=_int_or_none(original.get("width")),
                height=_int_or_none(original.get("height")),
            )
        except (RecordError, TypeError, ValueError) as exc:
            logger.warning("%s: images[%d] invalid (%s); skipped", case, n, exc)
            continue
        seen.add(key)
        out.append(ref)
    return tuple(out)


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _races(block: Any) -> tuple[str, ...]:
    names: list[str] = []
    for e in _sub(block, "ethnicities") or []:
        n = _lookup_name(e)
        if n and n not in names:
            names.append(n)
    if not names:
        primary = _lookup_name(_sub(block, "primaryEthnicity"))
        if primary:
            names.append(primary)
    return tuple(names)


def _full_name(*parts: Any) -> str | None:
    words = [t for t in (_text(p) for p in parts) if t]
    return " ".join(words) or None


def _agency(raw: Mapping[str, Any], case_set: str) -> tuple[str | None, str | None]:
    """Name and case number of the case-owning (else primary, else first) investigating agency.

    Only ``name`` and ``caseNumber`` are read; the nested contact/address/phone data is never touched.
    """
    agencies = [a for a in (raw.get("investigatingAgencies") or []) if isinstance(a, Mapping)]
    owner_id = _sub(raw, "caseOwner", "investigatingAgencyIdentityId")
    chosen: Mapping[str, Any] | None = None
    if owner_id is not None:
        chosen = next((a for a in agencies if a.get("id") == owner_id), None)
    if chosen is None:
        chosen = next((a for a in agencies if a.get("isCaseOwner") is True), None)
    primary_name = _text(_sub(raw, "primaryInvestigatingAgency", "name"))
    if chosen is None and primary_name:
        chosen = next((a for a in agencies if _text(a.get("name")) == primary_name), None)
    if chosen is None and agencies:
        chosen = agencies[0]
    name = _text(chosen.get("name")) if chosen is not None else primary_name
    if name is not None and name.lower() in _UNKNOWN_TEXT:
        name = None
    number = _text(chosen.get("caseNumber")) if chosen is not None else None
    if number is not None and number.lower() in _UNKNOWN_TEXT:
        number = None
    if number is None and case_set == "UP":
        number = _text(_sub(raw, "caseIdentification", "caseNumber"))
    return name, number


def normalize_case(raw: Mapping[str, Any], case_set: str, today: date, site: str = PUBLIC_SITE) -> CaseRecord:
    """Turn one raw NamUs case into a device-safe :class:`CaseRecord`.

    Field sources (NAMUS_FORMAT §4):

    * MP: name ``subjectIdentification.first/middle/lastName``; sex/race ``subjectDescription``;
      age at last contact ``computedMissingMinAge/MaxAge`` (else ``missingMinAge/MaxAge``);
      ``date_last`` = ``sighting.date``; place ``sighting.address``.
    * UP: ``display_name`` "Unidentified person (possibly <possibleFirstName possibleLastName>)"
      when a possible name exists, else "Unidentified male"/"Unidentified female"/"Unidentified
      person"; estimated age ``subjectDescription.estimatedAgeFrom/To``; ``date_last`` =
      ``circumstances.dateFound``; place ``circumstances.address``.
    * UCP: name and sex/race under ``subjectIdentification``; age at the date found from
      ``yearOfBirth`` (``found.year - yearOfBirth - 1`` .. ``found.year - yearOfBirth``), else
      ``missingMinAge/MaxAge``; ``date_last`` = ``circumstances.dateBodyFound``.

    Current age = age range + whole years from ``date_last`` to ``today`` (the birthday is not
    published, so the true age may be up to one year more). For MP the record's own
    ``currentMinAge/MaxAge`` (computed by NamUs from the birth date when it served the record) is
    also used: when ``modifiedDateTime`` is not after ``today`` it raises each bound by at most one
    year (the person is at least that old today); without a date or age at last contact it is used
    as is. Other sets without age or date get None.

    Args:
        raw: The case JSON as served by the API.
        case_set: ``"MP"``/``"UP"``/``"UCP"`` or the API names; must match ``idFormatted``'s prefix.
        today: Date the current ages are computed for.
        site: Public website used for :attr:`CaseRecord.link`.

    Returns:
        The normalised record.

    Raises:
        RecordError: ``id`` is missing or invalid, ``idFormatted`` belongs to another case set, or a
            date/age field holds a malformed value; the message names the case and the field.
    """
    cs = case_set_code(case_set)
    if not isinstance(raw, Mapping):
        raise RecordError(f"{cs} record is not a JSON object but {type(raw).__name__}")
    fmt_given = _text(raw.get("idFormatted"))
    case_id = raw_case_id(raw, f"{cs} record{f' {fmt_given}' if fmt_given else ''}")
    case = f"{cs}{case_id}"
    if fmt_given is not None and fmt_given != case:
        raise RecordError(f"{case}: field idFormatted is {fmt_given!r}, expected {case!r} (wrong case set?)")

    si = raw.get("subjectIdentification") or {}
    sd = raw.get("subjectDescription") or {}
    circ = raw.get("circumstances") or {}

    age_min: float | None = None
    age_max: float | None = None
    age_kind: Literal["at_last_contact", "estimated"] | None = None
    if cs == "MP":
        display = _full_name(si.get("firstName"), si.get("middleName"), si.get("lastName")) or case
        person = sd
        date_last = _date(_sub(raw, "sighting", "date"), case, "sighting.date")
        address = _sub(raw, "sighting", "address")
        for lo_f, hi_f in (("computedMissingMinAge", "computedMissingMaxAge"), ("missingMinAge", "missingMaxAge")):
            age_min = _number(si.get(lo_f), case, f"subjectIdentification.{lo_f}")
            age_max = _number(si.get(hi_f), case, f"subjectIdentification.{hi_f}")
            if age_min is not None or age_max is not None:
                break
        age_kind = "at_last_contact" if age_min is not None or age_max is not None else None
    elif cs == "UP":
        person = sd
        date_last = _date(circ.get("dateFound"), case, "circumstances.dateFound")
        address = circ.get("address")
        possible = _full_name(sd.get("possibleFirstName"), sd.get("possibleLastName"))
        sex_name = _lookup_name(sd.get("sex"))
        if possible:
            display = f"Unidentified person (possibly {possible})"
        elif sex_name in ("Male", "Female"):
            display = f"Unidentified {sex_name.lower()}"
        else:
            display = "Unidentified person"
        age_min = _number(sd.get("estimatedAgeFrom"), case, "subjectDescription.estimatedAgeFrom")
        age_max = _number(sd.get("estimatedAgeTo"), case, "subjectDescription.estimatedAgeTo")
        age_kind = "estimated" if age_min is not None or age_max is not None else None
    else:
        display = _full_name(si.get("firstName"), si.get("middleName"), si.get("lastName")) or case
        person = si
        date_last = _date(circ.get("dateBodyFound"), case, "circumstances.dateBodyFound")
        address = circ.get("address")
        yob = _number(si.get("yearOfBirth"), case, "subjectIdentification.yearOfBirth")
        if yob is not None and date_last is not None:
            age_max = float(date_last.year - int(yob))
            age_min = max(0.0, age_max - 1.0)
            if age_max < 0:
                raise RecordError(f"{case}: subjectIdentification.yearOfBirth {int(yob)} is after the date found")
        else:
            age_min = _number(si.get("missingMinAge"), case, "subjectIdentification.missingMinAge")
            age_max = _number(si.get("missingMaxAge"), case, "subjectIdentification.missingMaxAge")
        age_kind = "at_last_contact" if age_min is not None or age_max is not None else None

    if age_min is None and age_max is not None:
        age_min = age_max
    if age_max is None and age_min is not None:
        age_max = age_min
    if age_min is not None and age_max is not None and age_min > age_max:
        logger.warning("%s: age range %s..%s reversed; swapped", case, age_min, age_max)
        age_min, age_max = age_max, age_min

    cur_min: float | None = None
    cur_max: float | None = None
    if age_min is not None and age_max is not None and date_last is not None:
        elapsed = whole_years_between(date_last, today)
        cur_min, cur_max = age_min + elapsed, age_max + elapsed
    rec_min: float | None = None
    rec_max: float | None = None
    if cs == "MP":
        rec_min = _number(si.get("currentMinAge"), case, "subjectIdentification.currentMinAge")
        rec_max = _number(si.get("currentMaxAge"), case, "subjectIdentification.currentMaxAge")
        rec_min = rec_max if rec_min is None else rec_min
        rec_max = rec_min if rec_max is None else rec_max
        if rec_min is not None and rec_max is not None and rec_min > rec_max:
            rec_min, rec_max = rec_max, rec_min
    if cur_min is None and rec_min is not None:
        cur_min, cur_max = rec_min, rec_max
    elif cur_min is not None and cur_max is not None and rec_min is not None and rec_max is not None:
        # NamUs computes currentMin/MaxAge from the (unpublished) birth date when it serves the
        # record, i.e. at or after modifiedDateTime. If that is not after `today`, the person is at
        # least that old today; whole years since last contact alone can be one year short.
        try:
            served_by = parse_namus_datetime(str(raw.get("modifiedDateTime"))).date() <= today
        except ValueError:
            served_by = False
        if served_by:
            cur_min = max(cur_min, min(rec_min, cur_min + 1))
            cur_max = max(cur_max, min(rec_max, cur_max + 1))

    agency, agency_number = _agency(raw, cs)
    status = _lookup_name(_sub(circ, "status"))
    deceased = cs == "UCP" or (cs == "UP" and status != "Unidentified Living")
    resolved = raw.get("caseIsResolved")
    return CaseRecord(
        case_set=cs,
        id=case_id,
        id_formatted=case,
        display_name=display,
        sex=_lookup_name(person.get("sex")) if isinstance(person, Mapping) else None,
        race=_races(person),
        age_min=age_min,
        age_max=age_max,
        age_kind=age_kind,
        date_last=date_last,
        current_age_min=cur_min,
        current_age_max=cur_max,
        city=_text(_sub(address, "city")),
        county=_lookup_name(_sub(address, "county")),
        state=_lookup_name(_sub(address, "state")),
        link=case_link(cs, case_id, site),
        modified=_text(raw.get("modifiedDateTime")) or "",
        resolved=resolved is True,
        images=image_refs(raw, case),
        agency=agency,
        agency_case_number=agency_number,
        deceased=deceased,
    )
