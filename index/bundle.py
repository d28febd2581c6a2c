"""Signed, versioned FAISS bundles: :class:`BundleWriter` builds one, :class:`Bundle` loads and searches it.

The layout and the manifest are described in :mod:`index.manifest`. A bundle carries only
device-safe case metadata (:data:`CASE_KEYS`); the writer rejects any other key, so contributor
contacts and narrative text can never reach a device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np

from edge.errors import BundleError, BundleVerificationError
from index.faiss_index import apply_search_params, build_index, choose_index
from index.manifest import (
    DEVICE_FILES,
    DIFF_NAME,
    EMBEDDINGS_NAME,
    FORMAT,
    FORMAT_VERSION,
    INDEX_NAME,
    MANIFEST_NAME,
    META_NAME,
    PROBLEMS_NAME,
    SIGNATURE_NAME,
    THUMBS_DIR,
    ModelIdentity,
    check_file,
    check_model,
    file_entry,
    manifest_bytes,
    read_manifest,
    verify_bundle,
)
from index.signing import load_private_key, sign_bytes

logger = logging.getLogger(__name__)

CASE_SETS: tuple[str, ...] = ("MP", "UP", "UCP")

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
_NUMBER_KEYS = frozenset({"age_min", "age_max", "current_age_min", "current_age_max"})
_TEXT_KEYS = frozenset(CASE_KEYS) - _NUMBER_KEYS - {"id_formatted", "case_set", "case_id", "race", "date_last"}

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
)

_ID_RE = re.compile(r"^(MP|UP|UCP)([0-9]+)$")
_IMAGE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: A stored embedding's L2 norm may differ from 1 by at most this much.
_NORM_TOLERANCE = 1e-3
_DIFF_KEYS = ("added", "removed", "changed")

_SCHEMA = """
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
    ambiguous INTEGER NOT NULL
);
CREATE INDEX faces_by_case ON faces(id_formatted);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True)
class CaseMatch:
    """One case found for a query face.

    Attributes:
        id_formatted: case id, e.g. ``MP1358``.
        score: cosine similarity of the query to the case's best-matching face, in [-1, 1].
        image_key: NamUs ``storageKey`` of that best-matching photo.
        face_id: FAISS id of that face.
    """

    id_formatted: str
    score: float
    image_key: str
    face_id: int


def case_sort_key(id_formatted: str) -> tuple[int, int, str]:
    """Natural order of case ids: MP before UP before UCP, then by number (MP2 < MP10)."""
    m = _ID_RE.match(id_formatted)
    if m is None:
        return (len(CASE_SETS), 0, id_formatted)
    return (CASE_SETS.index(m.group(1)), int(m.group(2)), id_formatted)


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
    m = _ID_RE.match(cid) if isinstance(cid, str) else None
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
    for key in _TEXT_KEYS:
        if row[key] is not None and not isinstance(row[key], str):
            raise ValueError(f"case {cid}: {key} must be a string or None, got {type(row[key]).__name__}")
    for key in _NUMBER_KEYS:
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


def _row_to_case(row: sqlite3.Row) -> dict[str, Any]:
    case = dict(row)
    case["race"] = json.loads(case["race"]) if case["race"] is not None else None
    return case


def _row_to_face(row: sqlite3.Row) -> dict[str, Any]:
    face = dict(row)
    face["bbox"] = json.loads(face["bbox"])
    face["is_rendering"] = bool(face["is_rendering"])
    face["ambiguous"] = bool(face["ambiguous"])
    return face


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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleWriter:
    """Build a bundle in a temporary directory beside ``out_dir`` and move it into place on :meth:`finish`.

    Use as a context manager (or call :meth:`abort`) so an exception while collecting faces
    removes the temporary directory. A failure inside :meth:`finish` removes it too: ``out_dir``
    is either the complete, signed bundle or untouched.
    """

    def __init__(
        self,
        out_dir: Path,
        embedding_model: ModelIdentity,
        detector: dict[str, Any],
        *,
        flat_max: int = 500_000,
        flat_fp16: bool = False,
        source_snapshot: str | None = None,
        base_version: str | None = None,
        overwrite: bool = False,
    ) -> None:
        """Start a bundle.

        Args:
            out_dir: the final bundle directory; must not exist unless ``overwrite``.
            embedding_model: the model whose vectors are added.
            detector: JSON-serialisable description of the face detector (name, sha256, input size, ...).
            flat_max: exact search up to this many vectors (``config.index.flat_max``).
            flat_fp16: fp16 flat storage (``config.index.flat_fp16``).
            source_snapshot: where the case data came from (e.g. a scrape date or file).
            base_version: bundle version this one was built incrementally on.
            overwrite: replace an existing ``out_dir`` (swapped only once the new bundle is complete).

        Raises:
            BundleError: ``out_dir`` exists and ``overwrite`` is false.
            ValueError: ``detector`` is not JSON-serialisable.
        """
        self.out_dir = Path(out_dir)
        self.embedding_model = embedding_model
        manifest_bytes({"detector": detector})  # fail now, not after an hour of face extraction
        self.detector = dict(detector)
        self.flat_max = flat_max
        self.flat_fp16 = flat_fp16
        self.source_snapshot = source_snapshot
        self.base_version = base_version
        self.overwrite = overwrite
        self._check_out_dir()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp: Path | None = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent)
        )
        self._cases: dict[str, dict[str, Any]] = {}
        self._faces: list[dict[str, Any]] = []
        self._vectors: list[np.ndarray] = []
        self._image_keys: set[str] = set()
        self._problems: list[dict[str, str]] = []
        self._thumbs: list[str] = []

    # -- collecting --------------------------------------------------------------------------

    def _check_out_dir(self) -> None:
        if (self.out_dir.exists() or self.out_dir.is_symlink()) and not self.overwrite:
            raise BundleError(f"{self.out_dir} already exists; refusing to overwrite it (pass overwrite)")

    def _live_tmp(self) -> Path:
        if self._tmp is None:
            raise BundleError(f"bundle writer for {self.out_dir} is already finished or aborted")
        return self._tmp

    def add_case(self, case: dict[str, Any]) -> None:
        """Add one case's device-safe metadata row (see :func:`validate_case`).

        Raises:
            ValueError: a forbidden key, an invalid value, or the case was already added.
        """
        self._live_tmp()
        row = validate_case(case)
        cid = row["id_formatted"]
        if cid in self._cases:
            raise ValueError(f"case {cid} added twice")
        self._cases[cid] = row

    def add_face(
        self,
        id_formatted: str,
        image_key: str,
        embedding: np.ndarray,
        *,
        quality: float,
        det_score: float,
        bbox: Sequence[float],
        category: str,
        is_rendering: bool,
        file_sha256: str,
        ambiguous: bool = False,
        thumbnail_jpeg: bytes | None = None,
    ) -> int:
        """Add the face found in one case photo.

        Args:
            id_formatted: the case it belongs to (its row must be added before :meth:`finish`).
            image_key: NamUs ``storageKey`` of the photo; one face per photo.
            embedding: float32 (D,) L2-normalised, D = ``embedding_model.dim``.
            quality: face quality score in [0, 1].
            det_score: detector confidence in [0, 1].
            bbox: ``x1, y1, x2, y2`` in pixels of the original photo.
            category: NamUs image category (``FacialCaseId``, ``AgeProgression``, ...).
            is_rendering: an artist rendering, composite or age progression rather than a photo.
            file_sha256: hex sha256 of the photo's bytes (incremental builds skip unchanged photos).
            ambiguous: several similar-sized faces; the chosen one may be the wrong person.
            thumbnail_jpeg: JPEG bytes of the face thumbnail (operator file ``thumbs/<image_key>.jpg``).

        Returns:
            The face_id (FAISS id) assigned, 0, 1, 2, ... in call order.

        Raises:
            ValueError: a bad shape, a non-normalised or non-finite vector, a repeated or unsafe
                image_key, or a malformed value.
        """
        tmp = self._live_tmp()
        dim = self.embedding_model.dim
        vec = np.asarray(embedding, dtype=np.float32)
        if vec.shape != (dim,):
            raise ValueError(f"face {image_key}: embedding must have shape ({dim},), got {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise ValueError(f"face {image_key}: embedding has non-finite values")
        norm = float(np.linalg.norm(vec))
        if abs(norm - 1.0) > _NORM_TOLERANCE:
            raise ValueError(f"face {image_key}: embedding must be L2-normalised, norm is {norm:.4f}")
        if not _ID_RE.match(id_formatted):
            raise ValueError(f"face {image_key}: id_formatted must look like MP123, got {id_formatted!r}")
        if not _IMAGE_KEY_RE.match(image_key):
            raise ValueError(f"image_key must be 1-128 of [A-Za-z0-9_.-] (a NamUs storageKey), got {image_key!r}")
        if image_key in self._image_keys:
            raise ValueError(f"image_key {image_key} added twice (one face per photo)")
        if not _SHA256_RE.match(file_sha256):
            raise ValueError(f"face {image_key}: file_sha256 must be 64 lowercase hex digits, got {file_sha256!r}")
        box = [float(v) for v in bbox]
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"face {image_key}: bbox must be 4 finite numbers x1, y1, x2, y2, got {bbox!r}")
        if not math.isfinite(quality) or not math.isfinite(det_score):
            raise ValueError(f"face {image_key}: quality and det_score must be finite")
        if thumbnail_jpeg is not None:
            if not thumbnail_jpeg.startswith(b"\xff\xd8"):
                raise ValueError(f"face {image_key}: thumbnail_jpeg is not JPEG data")
            thumbs = tmp / THUMBS_DIR
            thumbs.mkdir(exist_ok=True)
            (thumbs / f"{image_key}.jpg").write_bytes(thumbnail_jpeg)
            self._thumbs.append(f"{THUMBS_DIR}/{image_key}.jpg")
        face_id = len(self._faces)
        self._faces.append(
            {
                "face_id": face_id,
                "id_formatted": id_formatted,
                "image_key": image_key,
                "category": str(category),
                "is_rendering": bool(is_rendering),
                "quality": float(quality),
                "det_score": float(det_score),
                "bbox": box,
                "file_sha256": file_sha256,
                "ambiguous": bool(ambiguous),
            }
        )
        self._vectors.append(vec / norm)
        self._image_keys.add(image_key)
        return face_id

    def add_problem(self, id_formatted: str, image_key: str, reason: str) -> None:
        """Record a photo that gave no usable face (no face, corrupt, unreadable): operator file problems.json."""
        self._live_tmp()
        self._problems.append({"id_formatted": id_formatted, "image_key": image_key, "reason": reason})

    @property
    def n_faces(self) -> int:
        """Faces added so far."""
        return len(self._faces)

    def diff_against(self, base: Bundle) -> dict[str, Any]:
        """:func:`case_diff` of ``base`` against what was added so far (pass it to :meth:`finish`)."""
        return case_diff(
            {c["id_formatted"]: c for c in base.cases()},
            base.face_keys(),
            self._cases,
            {f["image_key"]: (f["id_formatted"], f["file_sha256"]) for f in self._faces},
        )

    # -- writing -----------------------------------------------------------------------------

    def finish(self, key_path: Path, diff: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build the index, sqlite, operator files, manifest and signature; move the bundle into place.

        Args:
            key_path: the operator's Ed25519 private key (loaded first, so a bad key fails fast).
            diff: ``{"added", "removed", "changed"}`` lists of case ids against ``base_version``
                (e.g. from :meth:`diff_against`); other keys go to ``diff.json`` only.

        Returns:
            The manifest.

        Raises:
            SigningKeyError: the key cannot be loaded.
            BundleError: ``out_dir`` appeared meanwhile (without ``overwrite``).
            ValueError: a face refers to a case that was never added, or ``diff`` is malformed.
        """
        tmp = self._live_tmp()
        try:
            private = load_private_key(Path(key_path))
            self._check_out_dir()
            manifest = self._write(tmp, Path(key_path), diff)
            # Verify what was written before it becomes visible: hashes, then the signature.
            raw = (tmp / MANIFEST_NAME).read_bytes()
            verify_bundle(tmp, pubkeys=None, expected_model=self.embedding_model)
            private.public_key().verify((tmp / SIGNATURE_NAME).read_bytes(), raw)
            self._move_into_place(tmp)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        logger.info(
            "wrote bundle %s to %s: %d cases, %d faces, %s index",
            manifest["bundle_version"],
            self.out_dir,
            len(self._cases),
            len(self._faces),
            manifest["index"]["type"],
        )
        return manifest

    def _write(self, tmp: Path, key_path: Path, diff: dict[str, Any] | None) -> dict[str, Any]:
        orphans = sorted({f["id_formatted"] for f in self._faces} - set(self._cases), key=case_sort_key)
        if orphans:
            raise ValueError(f"faces refer to cases that were never added: {', '.join(orphans[:10])}")
        manifest_diff = self._check_diff(diff)
        dim = self.embedding_model.dim
        vectors = np.stack(self._vectors).astype(np.float32) if self._vectors else np.zeros((0, dim), np.float32)
        ids = np.arange(len(vectors), dtype=np.int64)
        choice = choose_index(len(vectors), dim, self.flat_max, self.flat_fp16)
        index = build_index(vectors, ids, choice)
        faiss.write_index(index, str(tmp / INDEX_NAME))
        self._write_sqlite(tmp / META_NAME)
        np.save(tmp / EMBEDDINGS_NAME, vectors, allow_pickle=False)
        problems = sorted(self._problems, key=lambda p: (case_sort_key(p["id_formatted"]), p["image_key"]))
        (tmp / PROBLEMS_NAME).write_bytes(manifest_bytes({"problems": problems}))
        operator_names = [EMBEDDINGS_NAME, PROBLEMS_NAME, *self._thumbs]
        if diff is not None:
            (tmp / DIFF_NAME).write_bytes(manifest_bytes({"base_version": self.base_version, **diff}))
            operator_names.append(DIFF_NAME)
        # Durable before the rename makes them visible. Thumbnails are skipped (tens of thousands of
        # fsyncs); a thumbnail lost to a power cut is caught by `index verify`, not by a device.
        for rel in (*DEVICE_FILES, *(n for n in operator_names if not n.startswith(f"{THUMBS_DIR}/"))):
            _fsync_file(tmp / rel)
        files = {rel: file_entry(tmp / rel) for rel in DEVICE_FILES}
        operator_files = {rel: file_entry(tmp / rel) for rel in sorted(operator_names)}
        per_set = Counter(c["case_set"] for c in self._cases.values())
        index_info = {
            "type": choice.type,
            "factory": choice.factory,
            "wrapper": "IDMap2",
            "metric": "inner_product",
            "ntotal": int(index.ntotal),
            "params": choice.params,
            "chosen_because": choice.reason,
        }
        content = hashlib.sha256(
            manifest_bytes(
                {
                    "embedding_model": self.embedding_model.to_dict(),
                    "files": files,
                    "index": index_info,
                    "operator_files": operator_files,
                }
            )
        ).hexdigest()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_version": f"{now:%Y%m%dT%H%M%SZ}-{content[:8]}",
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source_snapshot": self.source_snapshot,
            "base_version": self.base_version,
            "counts": {
                "cases": {s: per_set.get(s, 0) for s in CASE_SETS},
                "faces": len(self._faces),
                "images_with_faces": len({f["image_key"] for f in self._faces}),
                "problems": len(self._problems),
            },
            "embedding_model": self.embedding_model.to_dict(),
            "detector": self.detector,
            "index": index_info,
            "files": files,
            "operator_files": operator_files,
            "diff": manifest_diff,
        }
        raw = manifest_bytes(manifest)
        (tmp / MANIFEST_NAME).write_bytes(raw)
        (tmp / SIGNATURE_NAME).write_bytes(sign_bytes(raw, key_path))
        for rel in (MANIFEST_NAME, SIGNATURE_NAME):
            _fsync_file(tmp / rel)
        return manifest

    @staticmethod
    def _check_diff(diff: Mapping[str, Any] | None) -> dict[str, list[str]] | None:
        if diff is None:
            return None
        out: dict[str, list[str]] = {}
        for key in _DIFF_KEYS:
            ids = diff.get(key)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"diff[{key!r}] must be a list of case ids, got {ids!r}")
            out[key] = list(ids)
        manifest_bytes(dict(diff))  # the full diff goes to diff.json; fail before building the index
        return out

    def _write_sqlite(self, path: Path) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.executescript(_SCHEMA)
            case_rows = [
                tuple(json.dumps(c["race"]) if k == "race" and c[k] is not None else c[k] for k in CASE_KEYS)
                for c in sorted(self._cases.values(), key=lambda c: case_sort_key(c["id_formatted"]))
            ]
            conn.executemany(
                f"INSERT INTO cases ({', '.join(CASE_KEYS)}) VALUES ({', '.join('?' * len(CASE_KEYS))})", case_rows
            )
            face_rows = [tuple(json.dumps(f["bbox"]) if k == "bbox" else f[k] for k in FACE_KEYS) for f in self._faces]
            conn.executemany(
                f"INSERT INTO faces ({', '.join(FACE_KEYS)}) VALUES ({', '.join('?' * len(FACE_KEYS))})", face_rows
            )
            conn.commit()
        finally:
            conn.close()

    def _move_into_place(self, tmp: Path) -> None:
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700; a bundle is public data, readable by the service user
        _fsync_dir(tmp)
        parent = self.out_dir.parent
        if self.out_dir.exists() or self.out_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".old", dir=parent))
            os.rename(self.out_dir, old / "bundle")
            try:
                os.rename(tmp, self.out_dir)
            except OSError:
                os.rename(old / "bundle", self.out_dir)
                raise
            finally:
                _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, self.out_dir)
            _fsync_dir(parent)

    def abort(self) -> None:
        """Discard the temporary directory (idempotent); ``out_dir`` is left as it was."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class Bundle:
    """A loaded bundle: FAISS index plus the sqlite metadata, searched by case.

    Thread safety: :meth:`search` may run from several threads; sqlite access is serialised
    by an internal lock.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], index: faiss.Index, conn: sqlite3.Connection) -> None:
        """Wrap opened parts; use :meth:`load`."""
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["bundle_version"]
        self.model = ModelIdentity.from_dict(manifest["embedding_model"])
        self.dim: int = self.model.dim
        self._index: faiss.Index | None = index
        self._conn = conn
        self._lock = threading.Lock()
        rows = conn.execute("SELECT face_id, id_formatted, image_key FROM faces").fetchall()
        self._face_map: dict[int, tuple[str, str]] = {int(r[0]): (r[1], r[2]) for r in rows}
        per_case = Counter(r[1] for r in rows)
        self._max_faces_per_case = max(per_case.values(), default=1)

    @classmethod
    def load(
        cls,
        path: Path,
        pubkeys: Sequence[Path] | None = None,
        expected_model: ModelIdentity | None = None,
        verify: bool = True,
    ) -> Bundle:
        """Verify and open a bundle.

        Args:
            path: bundle directory.
            pubkeys: pinned public keys; when given the signature must verify.
            expected_model: the embedding model in use; a bundle built with another is refused.
            verify: check the device files' sizes and hashes (and the signature when ``pubkeys``).
                Operator files are not needed; :meth:`embeddings` checks its file when used.

        Raises:
            BundleVerificationError: see :func:`index.manifest.verify_bundle`.
            BundleError: the index or database cannot be opened or disagree with the manifest.
        """
        path = Path(path)
        if verify:
            manifest = verify_bundle(path, pubkeys, expected_model, include_operator_files=False)
        else:
            manifest, _ = read_manifest(path)
            if expected_model is not None:
                check_model(manifest, expected_model)
        model = ModelIdentity.from_dict(manifest["embedding_model"])
        info = manifest["index"]
        index_path = path / INDEX_NAME
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise BundleError(f"{index_path}: cannot be read by FAISS ({str(exc).splitlines()[0]})") from exc
        if index.d != model.dim or index.ntotal != info.get("ntotal"):
            raise BundleError(
                f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, "
                f"manifest says {info.get('ntotal')} of dim {model.dim}"
            )
        try:
            apply_search_params(index, str(info.get("type")), info.get("params") or {})
        except ValueError as exc:
            raise BundleError(f"{index_path}: {exc}") from exc
        meta_path = path / META_NAME
        try:
            # immutable=1: a bundle never changes once written, so sqlite needs no locks (read-only media).
            conn = sqlite3.connect(
                f"{meta_path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise BundleError(f"{meta_path}: cannot be opened ({exc})") from exc
        try:
            conn.row_factory = sqlite3.Row
            n_faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            bundle = cls(path, manifest, index, conn)
        except sqlite3.Error as exc:
            conn.close()
            raise BundleError(f"{meta_path}: cannot be read as the bundle database ({exc})") from exc
        if n_faces != index.ntotal:
            bundle.close()
            raise BundleError(f"{meta_path}: {n_faces} faces but {index_path} holds {index.ntotal} vectors")
        logger.info(
            "loaded bundle %s from %s: %d faces, %s index", bundle.version, path, index.ntotal, info.get("type")
        )
        return bundle

    @property
    def ntotal(self) -> int:
        """Number of face vectors in the index."""
        return len(self._face_map)

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (``IndexIDMap2``, ids = face_id), e.g. for benchmarks.

        Raises:
            BundleError: the bundle is closed.
        """
        return self._faiss()

    def _faiss(self) -> faiss.Index:
        if self._index is None:
            raise BundleError(f"bundle {self.path} is closed")
        return self._index

    def search(self, queries: np.ndarray, top_k: int = 5) -> list[list[CaseMatch]]:
        """Find the best-matching cases for each query face.

        Each case is scored by its best face. FAISS is asked for ``top_k`` times the largest
        number of faces any case has, so one case with many photos cannot crowd the others out
        (exact for flat indexes).

        Args:
            queries: float32 (N, D) L2-normalised embeddings.
            top_k: cases per query.

        Returns:
            Per query, up to ``top_k`` :class:`CaseMatch`, sorted by score, best first.

        Raises:
            ValueError: wrong shape or ``top_k`` < 1.
            BundleError: the bundle is closed.
        """
        index = self._faiss()
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (N, {self.dim}), got {q.shape}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if len(q) == 0 or index.ntotal == 0:
            return [[] for _ in range(len(q))]
        k = min(index.ntotal, top_k * self._max_faces_per_case)
        scores, ids = index.search(q, k)
        results: list[list[CaseMatch]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            best: dict[str, CaseMatch] = {}
            for score, fid in zip(row_scores, row_ids, strict=True):
                if fid < 0:  # fewer results than k (approximate indexes)
                    continue
                cid, image_key = self._face_map[int(fid)]
                prev = best.get(cid)
                if prev is None or score > prev.score:
                    best[cid] = CaseMatch(cid, float(score), image_key, int(fid))
            ranked = sorted(best.values(), key=lambda m: (-m.score, case_sort_key(m.id_formatted)))
            results.append(ranked[:top_k])
        return results

    def case(self, id_formatted: str) -> dict[str, Any] | None:
        """The metadata row of one case (``race`` as a list), or ``None`` when absent."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM cases WHERE id_formatted = ?", (id_formatted,)).fetchone()
        return _row_to_case(row) if row is not None else None

    def cases(self) -> Iterator[dict[str, Any]]:
        """Every case row, in :func:`case_sort_key` order."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM cases").fetchall()
        for row in sorted(rows, key=lambda r: case_sort_key(r["id_formatted"])):
            yield _row_to_case(row)

    def faces(self) -> list[dict[str, Any]]:
        """Every face row in face_id order (``bbox`` as a list, flags as bools)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM faces ORDER BY face_id").fetchall()
        return [_row_to_face(r) for r in rows]

    def face_keys(self) -> dict[str, tuple[str, str]]:
        """``image_key -> (id_formatted, file_sha256)`` of every face (incremental builds, diffs)."""
        with self._lock:
            rows = self._conn.execute("SELECT image_key, id_formatted, file_sha256 FROM faces").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def embeddings(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """All stored vectors with their face rows, for reuse by an incremental (``--base``) build.

        Returns:
            ``(vectors, faces)``: float32 (N, D) L2-normalised, row i is face ``faces[i]``
            (face_id order).

        Raises:
            BundleError: the operator file ``embeddings.npy`` is absent (a published device bundle),
                or does not match the manifest.
        """
        entry = self.manifest["operator_files"].get(EMBEDDINGS_NAME)
        path = self.path / EMBEDDINGS_NAME
        if entry is None or not path.is_file():
            raise BundleError(f"{path}: absent; --base needs the operator bundle, not a published device copy")
        try:
            check_file(self.path, EMBEDDINGS_NAME, entry)
        except BundleVerificationError as exc:
            raise BundleError(str(exc)) from exc
        vectors = np.load(path, allow_pickle=False)
        faces = self.faces()
        if vectors.dtype != np.float32 or vectors.shape != (len(faces), self.dim):
            raise BundleError(f"{path}: {vectors.dtype} {vectors.shape}, expected float32 ({len(faces)}, {self.dim})")
        if [f["face_id"] for f in faces] != list(range(len(faces))):
            raise BundleError(f"{self.path / META_NAME}: face ids are not 0..N-1; cannot align {path}")
        return vectors, faces

    def close(self) -> None:
        """Release the index and the database (idempotent)."""
        self._index = None
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
