"""Loads a verified bundle and searches it: the small reader that runs on devices.

:class:`Bundle` checks the manifest, signature and file hashes (:mod:`namus_edge.index.manifest`)
before it opens FAISS and SQLite. Building is :mod:`namus_edge.index.bundle_writer`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np

from namus_edge.core.cases import case_sort_key
from namus_edge.core.errors import BundleError, BundleVerificationError
from namus_edge.index.bundle_schema import (
    row_to_case,
    row_to_face,
)
from namus_edge.index.faiss_index import apply_search_params
from namus_edge.index.manifest import (
    EMBEDDINGS_NAME,
    INDEX_NAME,
    META_NAME,
    ModelIdentity,
    check_file,
    check_model,
    read_manifest,
    verify_bundle,
)

logger = logging.getLogger(__name__)

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
        rows = conn.execute("SELECT face_id, id_formatted, image_key, category, is_rendering FROM faces").fetchall()
        self._face_map: dict[int, tuple[str, str]] = {int(r[0]): (r[1], r[2]) for r in rows}
        self._photos: dict[str, tuple[str, bool]] = {r[2]: (r[3], bool(r[4])) for r in rows}
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
        return row_to_case(row) if row is not None else None

    def photo(self, image_key: str) -> dict[str, Any] | None:
        """``{"category", "is_rendering"}`` of one case photo (NamUs photo category), or ``None`` when absent."""
        got = self._photos.get(image_key)
        return None if got is None else {"category": got[0], "is_rendering": got[1]}

    def cases(self) -> Iterator[dict[str, Any]]:
        """Every case row, in :func:`case_sort_key` order."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM cases").fetchall()
        for row in sorted(rows, key=lambda r: case_sort_key(r["id_formatted"])):
            yield row_to_case(row)

    def faces(self) -> list[dict[str, Any]]:
        """Every face row in face_id order (``bbox`` as a list, flags as bools)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM faces ORDER BY face_id").fetchall()
        return [row_to_face(r) for r in rows]

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
