"""What a bundle's SQLite metadata may hold: the device-safe case and face columns, and their validation.

A bundle carries only device-safe case metadata (:data:`CASE_KEYS`); :func:`validate_case` rejects
any other key, so contributor contacts and narrative text can never reach a device.

The ``faces`` table has one row per gallery face (``face_id`` = FAISS id). ``hub_offset`` (REAL,
nullable) is the face's hub offset (:func:`namus_edge.models.hub_norm.hub_offsets`: how strongly it
attracts faces of other cases, minus the gallery median), computed over the whole gallery at
build time; the manifest's ``index.hub_norm`` says the bundle carries them. Bundles built before
the column existed lack it and are searched on raw scores.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

logger = logging.getLogger(__name__)

#: The only case keys a bundle may carry (the sqlite ``cases`` table). Anything else is refused.
CASE_KEYS: tuple[str, ...] = (
    "id_formatted",
    "case_set",
    "case_id",
    "display_name",
    "sex",
    "race",
    "age_min",
    "age_max",
    "age_kind",
    "date_last",
    "current_age_min",
    "current_age_max",
    "city",
    "county",
    "state",
    "link",
    "modified",
    "agency",
    "agency_case_number",
)
NUMBER_KEYS = frozenset({"age_min", "age_max", "current_age_min", "current_age_max"})
TEXT_KEYS = frozenset(CASE_KEYS) - NUMBER_KEYS - {"id_formatted", "case_set", "case_id", "race", "date_last"}

FACE_KEYS: tuple[str, ...] = (
    "face_id",
    "id_formatted",
    "image_key",
    "category",
    "is_rendering",
    "quality",
    "det_score",
    "bbox",
    "file_sha256",
    "ambiguous",
    "hub_offset",
)

ID_RE = re.compile(r"^(MP|UP|UCP)([0-9]+)$")
IMAGE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: A stored embedding's L2 norm may differ from 1 by at most this much.
NORM_TOLERANCE = 1e-3
DIFF_KEYS = ("added", "removed", "changed")

SCHEMA_SQL = """
CREATE TABLE cases (
    id_formatted TEXT PRIMARY KEY,
    case_set TEXT NOT NULL,
    case_id INTEGER NOT NULL,
    display_name TEXT,
    sex TEXT,
    race TEXT,
    age_min NUMERIC,
    age_max NUMERIC,
    age_kind TEXT,
    date_last TEXT,
    current_age_min NUMERIC,
    current_age_max NUMERIC,
    city TEXT,
    county TEXT,
    state TEXT,
    link TEXT,
    modified TEXT,
    agency TEXT,
    agency_case_number TEXT
);
CREATE TABLE faces (
    face_id INTEGER PRIMARY KEY,
    id_formatted TEXT NOT NULL REFERENCES cases(id_formatted),
    image_key TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    is_rendering INTEGER NOT NULL,
    quality REAL NOT NULL,
    det_score REAL NOT NULL,
    bbox TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    ambiguous INTEGER NOT NULL,
    hub_offset REAL
);
CREATE INDEX faces_by_case ON faces(id_formatted);
PRAGMA user_version = 1;
"""


def validate_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """Check one device-safe case row and return it complete (missing keys as ``None``).

    Args:
        case: keys from :data:`CASE_KEYS` only; ``id_formatted`` is required, ``case_set`` and
            ``case_id`` default to the parts of ``id_formatted``; ``race`` is a list of strings;
            ``date_last`` an ISO date (``YYYY-MM-DD``) or :class:`datetime.date`.

    Raises:
        ValueError: naming the first forbidden key (the privacy guard) or invalid value.
    """
    forbidden = sorted(k for k in case if k not in CASE_KEYS)
    if forbidden:
        raise ValueError(
            f"case {case.get('id_formatted')!r}: key {forbidden[0]!r} is not allowed in a bundle "
            f"(device-safe keys: {', '.join(CASE_KEYS)})"
        )
    cid = case.get("id_formatted")
    m = ID_RE.match(cid) if isinstance(cid, str) else None
    if m is None:
        raise ValueError(f"case id_formatted must look like MP123, UP45 or UCP6, got {cid!r}")
    row: dict[str, Any] = {k: case.get(k) for k in CASE_KEYS}
    if row["case_set"] is None:
        row["case_set"] = m.group(1)
    elif row["case_set"] != m.group(1):
        raise ValueError(f"case {cid}: case_set {row['case_set']!r} does not match the id prefix {m.group(1)!r}")
    if row["case_id"] is None:
        row["case_id"] = int(m.group(2))
    elif isinstance(row["case_id"], bool) or row["case_id"] != int(m.group(2)):
        raise ValueError(f"case {cid}: case_id {row['case_id']!r} does not match the id number {m.group(2)}")
    for key in TEXT_KEYS:
        if row[key] is not None and not isinstance(row[key], str):
            raise ValueError(f"case {cid}: {key} must be a string or None, got {type(row[key]).__name__}")
    for key in NUMBER_KEYS:
        v = row[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise ValueError(f"case {cid}: {key} must be a finite number or None, got {v!r}")
    race = row["race"]
    if race is not None and (not isinstance(race, list | tuple) or not all(isinstance(r, str) for r in race)):
        raise ValueError(f"case {cid}: race must be a list of strings or None, got {race!r}")
    row["race"] = list(race) if race is not None else None
    d = row["date_last"]
    if isinstance(d, datetime):
        raise ValueError(f"case {cid}: date_last must be a date, got a datetime {d!r}")
    if isinstance(d, date):
        row["date_last"] = d.isoformat()
    elif d is not None:
        try:
            date.fromisoformat(str(d))
        except ValueError:
            raise ValueError(f"case {cid}: date_last must be an ISO date YYYY-MM-DD, got {d!r}") from None
    return row


def row_to_case(row: sqlite3.Row) -> dict[str, Any]:
    """A ``cases`` table row as the dict :func:`validate_case` returns (``race`` decoded from JSON)."""
    case = dict(row)
    case["race"] = json.loads(case["race"]) if case["race"] is not None else None
    return case


def row_to_face(row: sqlite3.Row) -> dict[str, Any]:
    """A ``faces`` table row as a dict (``bbox`` decoded from JSON, flags as bool)."""
    face = dict(row)
    face["bbox"] = json.loads(face["bbox"])
    face["is_rendering"] = bool(face["is_rendering"])
    face["ambiguous"] = bool(face["ambiguous"])
    return face
