"""Builds a signed bundle atomically.

:class:`BundleWriter` validates cases and faces, writes FAISS + SQLite + manifest + signature into
a temporary sibling, then moves it into place.

The layout and the manifest are described in :mod:`namus_edge.index.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from namus_edge.core.cases import CASE_SETS, case_sort_key
from namus_edge.core.closing import Closing
from namus_edge.core.errors import BundleError
from namus_edge.core.fsutil import fsync_dir, fsync_file
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_diff import case_diff
from namus_edge.index.bundle_schema import (
    CASE_KEYS,
    DIFF_KEYS,
    FACE_KEYS,
    ID_RE,
    IMAGE_KEY_RE,
    NORM_TOLERANCE,
    SCHEMA_SQL,
    SHA256_RE,
    validate_case,
)
from namus_edge.index.faiss_index import build_index, choose_index
from namus_edge.index.manifest import (
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
    file_entry,
    manifest_bytes,
    verify_bundle,
)
from namus_edge.index.signing import load_private_key, sign_bytes
from namus_edge.models.hub_norm import HUB_K, hub_offsets

logger = logging.getLogger(__name__)

class BundleWriter(Closing):
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
        sequence: int | None = None,
        valid_days: float = 30.0,
        hub_k: int | None = HUB_K,
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
            sequence: the signed, monotonic ``sequence`` (default: Unix time in milliseconds at
                :meth:`finish`; devices refuse a bundle with a lower sequence than the live one).
            valid_days: the signed ``valid_until`` is ``created`` plus this many days.
            hub_k: neighbours per hub offset (:func:`namus_edge.models.hub_norm.hub_offsets`),
                computed over all faces at :meth:`finish` and stored per face (``faces.hub_offset``,
                manifest ``index.hub_norm``); ``None`` stores none (the search uses raw scores).

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
        if sequence is not None and (isinstance(sequence, bool) or sequence < 0):
            raise ValueError(f"sequence must be a non-negative integer, got {sequence!r}")
        if not valid_days > 0:
            raise ValueError(f"valid_days must be > 0, got {valid_days!r}")
        self.sequence = sequence
        self.valid_days = float(valid_days)
        if hub_k is not None and (isinstance(hub_k, bool) or not isinstance(hub_k, int) or hub_k < 1):
            raise ValueError(f"hub_k must be a positive integer or None, got {hub_k!r}")
        self.hub_k = hub_k
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
        if abs(norm - 1.0) > NORM_TOLERANCE:
            raise ValueError(f"face {image_key}: embedding must be L2-normalised, norm is {norm:.4f}")
        if not ID_RE.match(id_formatted):
            raise ValueError(f"face {image_key}: id_formatted must look like MP123, got {id_formatted!r}")
        if not IMAGE_KEY_RE.match(image_key):
            raise ValueError(f"image_key must be 1-128 of [A-Za-z0-9_.-] (a NamUs storageKey), got {image_key!r}")
        if image_key in self._image_keys:
            raise ValueError(f"image_key {image_key} added twice (one face per photo)")
        if not SHA256_RE.match(file_sha256):
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
        hub_info = self._hub_offsets(vectors)
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
            fsync_file(tmp / rel)
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
        if hub_info is not None:
            index_info["hub_norm"] = hub_info
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
        sequence = self.sequence if self.sequence is not None else time.time_ns() // 1_000_000
        valid_until = now + timedelta(days=self.valid_days)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_version": f"{now:%Y%m%dT%H%M%SZ}-{content[:8]}",
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sequence": int(sequence),
            "valid_until": valid_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
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
            fsync_file(tmp / rel)
        return manifest

    def _hub_offsets(self, vectors: np.ndarray) -> dict[str, Any] | None:
        """Set every face's ``hub_offset`` over the whole gallery; the manifest's ``index.hub_norm``.

        Always recomputed from all faces of this bundle (a face added or removed anywhere changes
        everyone's neighbours), so an incremental build is as correct as a full one.
        """
        if self.hub_k is None:
            for f in self._faces:
                f["hub_offset"] = None
            return None
        t0 = time.perf_counter()
        offsets, median = hub_offsets(vectors, [f["id_formatted"] for f in self._faces], self.hub_k)
        for f, off in zip(self._faces, offsets.tolist(), strict=True):
            f["hub_offset"] = float(off)
        logger.info("hub offsets of %d faces (k=%d) in %.1f s", len(offsets), self.hub_k, time.perf_counter() - t0)
        lo = float(offsets.min()) if len(offsets) else 0.0
        hi = float(offsets.max()) if len(offsets) else 0.0
        return {"k": self.hub_k, "median": median, "offset_min": round(lo, 6), "offset_max": round(hi, 6)}

    @staticmethod
    def _check_diff(diff: Mapping[str, Any] | None) -> dict[str, list[str]] | None:
        if diff is None:
            return None
        out: dict[str, list[str]] = {}
        for key in DIFF_KEYS:
            ids = diff.get(key)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"diff[{key!r}] must be a list of case ids, got {ids!r}")
            out[key] = list(ids)
        manifest_bytes(dict(diff))  # the full diff goes to diff.json; fail before building the index
        return out

    def _write_sqlite(self, path: Path) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.executescript(SCHEMA_SQL)
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
        fsync_dir(tmp)
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
                fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, self.out_dir)
            fsync_dir(parent)

    def close(self) -> None:
        """Same as :meth:`abort`: what :meth:`finish` did not move into place is discarded."""
        self.abort()

    def abort(self) -> None:
        """Discard the temporary directory (idempotent); ``out_dir`` is left as it was."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

