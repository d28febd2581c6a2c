"""Cases added, removed and changed between two bundles (``index diff`` and the build's ``diff.json``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from namus_edge.core.cases import case_sort_key
from namus_edge.index.bundle import Bundle

logger = logging.getLogger(__name__)

def case_diff(
    old_cases: Mapping[str, Mapping[str, Any]],
    old_faces: Mapping[str, tuple[str, str]],
    new_cases: Mapping[str, Mapping[str, Any]],
    new_faces: Mapping[str, tuple[str, str]],
) -> dict[str, Any]:
    """Cases added, removed and changed between two bundles.

    Args:
        old_cases: id_formatted -> case row of the old bundle.
        old_faces: image_key -> (id_formatted, file_sha256) of the old bundle.
        new_cases: the same for the new bundle.
        new_faces: the same for the new bundle.

    Returns:
        ``{"added": [...], "removed": [...], "changed": [...], "details": {id: {"fields": [...],
        "faces_added": [...], "faces_removed": [...]}}}``; a case is changed when a metadata field
        differs or its set of (image_key, file_sha256) differs. Ids are in :func:`case_sort_key` order.
    """

    def by_case(faces: Mapping[str, tuple[str, str]]) -> dict[str, set[tuple[str, str]]]:
        out: dict[str, set[tuple[str, str]]] = {}
        for key, (cid, sha) in faces.items():
            out.setdefault(cid, set()).add((key, sha))
        return out

    old_by, new_by = by_case(old_faces), by_case(new_faces)
    added = sorted(set(new_cases) - set(old_cases), key=case_sort_key)
    removed = sorted(set(old_cases) - set(new_cases), key=case_sort_key)
    changed: list[str] = []
    details: dict[str, dict[str, list[str]]] = {}
    for cid in sorted(set(old_cases) & set(new_cases), key=case_sort_key):
        old, new = old_cases[cid], new_cases[cid]
        fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        of, nf = old_by.get(cid, set()), new_by.get(cid, set())
        if fields or of != nf:
            changed.append(cid)
            details[cid] = {
                "fields": fields,
                "faces_added": sorted(k for k, _ in nf - of),
                "faces_removed": sorted(k for k, _ in of - nf),
            }
    return {"added": added, "removed": removed, "changed": changed, "details": details}


def diff_bundles(old: Bundle, new: Bundle) -> dict[str, Any]:
    """:func:`case_diff` of two loaded bundles (case rows + face keys)."""
    return case_diff(
        {c["id_formatted"]: c for c in old.cases()},
        old.face_keys(),
        {c["id_formatted"]: c for c in new.cases()},
        new.face_keys(),
    )
