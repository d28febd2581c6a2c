"""NamUs case identity shared by every layer: case-set codes, ``idFormatted`` ids and public case links.

NamUs has three case sets, each with a short code used in ``idFormatted`` (``MP1358``) and an API
path segment used in URLs (``MissingPersons``). Ingest, bundles, events and the console all use
these helpers, so a case id or link is written one way everywhere.
"""

from __future__ import annotations

import re
from typing import Literal

from namus_edge.core.errors import NamusEdgeError

CaseSetCode = Literal["MP", "UP", "UCP"]

#: Short codes of the three case sets, in NamUs order.
CASE_SETS: tuple[CaseSetCode, ...] = ("MP", "UP", "UCP")

#: Public website host used to build case links.
PUBLIC_SITE = "https://www.namus.gov"

_CODE_TO_NAME: dict[str, str] = {"MP": "MissingPersons", "UP": "UnidentifiedPersons", "UCP": "UnclaimedPersons"}
_NAME_TO_CODE: dict[str, CaseSetCode] = {"MissingPersons": "MP", "UnidentifiedPersons": "UP", "UnclaimedPersons": "UCP"}
_CODES: dict[str, CaseSetCode] = {"MP": "MP", "UP": "UP", "UCP": "UCP"}
_ID_RE = re.compile(r"^(MP|UP|UCP)([0-9]+)$")


class CaseIdError(NamusEdgeError, ValueError):
    """A case set name or ``idFormatted`` value is not valid (the message names it and what is allowed)."""


def case_set_code(name: str) -> CaseSetCode:
    """Return the short code (``"MP"``, ``"UP"``, ``"UCP"``) of a case set.

    Args:
        name: Either the API path segment (``"MissingPersons"``) or the code itself.

    Raises:
        CaseIdError: ``name`` is neither; the message lists the valid names.
    """
    if name in _NAME_TO_CODE:
        return _NAME_TO_CODE[name]
    if name in _CODES:
        return _CODES[name]
    valid = ", ".join(f"{c}/{n}" for c, n in _CODE_TO_NAME.items())
    raise CaseIdError(f"unknown case set {name!r}; expected one of {valid}")


def case_set_name(code: str) -> str:
    """Return the API path segment (``"MissingPersons"``, ...) of a case set code or name."""
    return _CODE_TO_NAME[case_set_code(code)]


def is_case_set_name(name: str) -> bool:
    """Return True when ``name`` is one of the three API path segments (``MissingPersons``, ...)."""
    return name in _NAME_TO_CODE


def parse_case_id(id_formatted: str) -> tuple[CaseSetCode, int]:
    """Split an ``idFormatted`` value into (case set code, case number): ``"UP2336" -> ("UP", 2336)``.

    Raises:
        CaseIdError: ``id_formatted`` is not ``MP|UP|UCP`` followed by digits.
    """
    m = _ID_RE.match(id_formatted)
    if m is None:
        raise CaseIdError(f"case id {id_formatted!r} is not MP|UP|UCP followed by digits")
    return _CODES[m.group(1)], int(m.group(2))


def is_case_id(id_formatted: str) -> bool:
    """Return True when ``id_formatted`` is a valid ``idFormatted`` value (``MP1358``)."""
    return _ID_RE.match(id_formatted) is not None


def case_link(case_set: str, case_id: int, site: str = PUBLIC_SITE) -> str:
    """Return the public case page ``<site>/<CaseSet>/Case#/<id>``."""
    return f"{site.rstrip('/')}/{case_set_name(case_set)}/Case#/{int(case_id)}"


def case_link_for(id_formatted: str, site: str = PUBLIC_SITE) -> str:
    """Return the public case page of an ``idFormatted`` value (``MP1358`` -> ``.../MissingPersons/Case#/1358``)."""
    case_set, case_id = parse_case_id(id_formatted)
    return case_link(case_set, case_id, site)


def case_sort_key(id_formatted: str) -> tuple[int, int, str]:
    """Sort key of a case id: by case set (MP, UP, UCP), then number; unparsable ids last."""
    m = _ID_RE.match(id_formatted)
    if m is None:
        return (len(CASE_SETS), 0, id_formatted)
    return (CASE_SETS.index(_CODES[m.group(1)]), int(m.group(2)), id_formatted)
