"""Loads a verified bundle and searches it: the small reader that runs on devices.

:class:`Bundle` checks the manifest, signature and file hashes (:mod:`namus_edge.index.manifest`)
before it opens FAISS and SQLite. Building is :mod:`namus_edge.index.bundle_writer`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from namus_edge.core.cases import case_sort_key
from namus_edge.core.closing import Closing
from namus_edge.core.errors import BundleError, BundleVerificationError
from namus_edge.core.memory import release_free_heap
from namus_edge.index.bundle_files import BundleDir, sqlite_from_bytes
from namus_edge.index.bundle_schema import (
    row_to_case,
    row_to_face,
)
from namus_edge.index.faiss_index import apply_search_params
from namus_edge.index.manifest import (
    EMBEDDINGS_NAME,
    INDEX_NAME,
    MANIFEST_NAME,
    META_NAME,
    SIGNATURE_NAME,
    ModelIdentity,
    check_file,
    check_model,
    parse_manifest,
    unlisted_files,
)
from namus_edge.index.signing import verify_signature
from namus_edge.index.trust import manifest_sequence
from namus_edge.models.hub_norm import probe_offsets

logger = logging.getLogger(__name__)

#: A hub-normalised search asks FAISS for this many times more faces than a raw one, then widens
#: (doubling, up to :data:`HUB_SEARCH_MAX_FACTOR`) until no face left out could still rank.
HUB_SEARCH_FACTOR = 3
HUB_SEARCH_MAX_FACTOR = 24


@dataclass(frozen=True)
class CaseMatch:
    """One case found for a query face.

    Attributes:
        id_formatted: case id, e.g. ``MP1358``.
        score: the decision score of the case's best face: in a hub-normalised search its cosine
            similarity minus that face's hub offset (``faces.hub_offset``) minus the query's
            ``probe_offset``; else the cosine similarity.
        image_key: NamUs ``storageKey`` of that best-scoring photo.
        face_id: FAISS id of that face.
        similarity: the raw cosine similarity of the query to that face, in [-1, 1].
        probe_offset: the query's probe offset (:func:`namus_edge.models.hub_norm.probe_offsets`,
            the same for every case of one search; 0 in a raw search).
    """

    id_formatted: str
    score: float
    image_key: str
    face_id: int
    similarity: float
    probe_offset: float = 0.0


class Bundle(Closing):
    """A loaded bundle: FAISS index plus the sqlite metadata, searched by case.

    Thread safety: :meth:`search` may run from several threads; sqlite access is serialised
    by an internal lock.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], index: faiss.Index, conn: sqlite3.Connection) -> None:
        """Wrap opened parts; use :meth:`load`."""
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["bundle_version"]
        self.sequence: int = manifest_sequence(manifest)
        self.valid_until: str = str(manifest["valid_until"])
        self.model = ModelIdentity.from_dict(manifest["embedding_model"])
        self.dim: int = self.model.dim
        self._index: faiss.Index | None = index
        self._conn = conn
        self._lock = threading.Lock()
        # face rows are looked up in SQLite per search (face_id is the rowid) rather than mirrored in a
        # Python dict: that dict cost ~0.3 KiB per face, resident twice during a swap (bench.index_swap)
        self._ntotal = int(conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
        self._max_faces_per_case = int(conn.execute(
            "SELECT COALESCE(MAX(n), 1) FROM (SELECT COUNT(*) AS n FROM faces GROUP BY id_formatted)").fetchone()[0])
        # hub offsets: float32 indexed by face_id (4 bytes a face), None for a bundle without them
        self.hub_norm: dict[str, Any] | None = manifest["index"].get("hub_norm")
        self._hub_offsets = self._load_hub_offsets(conn) if self.hub_norm is not None else None
        self._hub_median = 0.0
        self._hub_k = 0
        if self._hub_offsets is not None and self.hub_norm is not None:
            median = self.hub_norm.get("median")
            if median is None:
                # built before probe offsets: the registry's normalised tails do not describe its scores
                logger.warning("bundle %s: index.hub_norm has no median (built by an older namus-edge): "
                               "searching it on raw similarities; rebuild it for hub-normalised alerts", path)
                self._hub_offsets = None
            elif isinstance(median, bool) or not isinstance(median, (int, float)) or not np.isfinite(median):
                raise BundleError(f"{path / MANIFEST_NAME}: index.hub_norm.median must be a finite number, "
                                  f"got {median!r}")
            else:
                self._hub_median = float(median)
                self._hub_k = int(self.hub_norm["k"])

    @classmethod
    def load(
        cls,
        path: Path,
        pubkeys: Sequence[Path] | None = None,
        expected_model: ModelIdentity | None = None,
        verify: bool = True,
    ) -> Bundle:
        """Verify and open a bundle, using exactly the bytes that were verified.

        Every file is opened once, without following symlinks (:mod:`index.bundle_files`): the
        manifest and signature are checked from the bytes read, the SQLite metadata is hashed and
        then opened from those same bytes (in memory), and the FAISS index is hashed while FAISS
        parses it. Swapping a file on disk after its check cannot change what is searched.

        Args:
            path: bundle directory.
            pubkeys: pinned public keys; when given the signature must verify.
            expected_model: the embedding model in use; a bundle built with another is refused.
            verify: check the device files' sizes and hashes (and the signature when ``pubkeys``).
                Operator files are not needed; :meth:`embeddings` checks its file when used.

        Raises:
            BundleVerificationError: a bad signature, model, size or hash, an unlisted file, a symlink.
            BundleError: the index or database cannot be opened or disagree with the manifest.
        """
        path = Path(path)
        with BundleDir(path) as bdir:
            bdir.refuse_symlinks()
            raw = bdir.read_bytes(MANIFEST_NAME, max_bytes=64 << 20)
            manifest = parse_manifest(raw, str(path / MANIFEST_NAME))
            if verify and pubkeys is not None:
                sig_path = path / SIGNATURE_NAME
                try:
                    signature = bdir.read_bytes(SIGNATURE_NAME, max_bytes=4096)
                except BundleVerificationError as exc:
                    raise BundleVerificationError(f"{sig_path}: missing (the bundle is unsigned)") from exc
                try:
                    verify_signature(raw, signature, pubkeys)
                except BundleVerificationError as exc:
                    raise BundleVerificationError(f"{sig_path}: {exc}") from exc
            if expected_model is not None:
                check_model(manifest, expected_model)
            if verify:
                listed = {MANIFEST_NAME, SIGNATURE_NAME, *manifest["files"], *manifest["operator_files"]}
                extra = unlisted_files(path, listed)
                if extra:
                    raise BundleVerificationError(f"{path / extra[0]}: not listed in {MANIFEST_NAME}")
            files = manifest["files"]
            meta_path = path / META_NAME
            # the metadata first: its two transient copies (bytes read, SQLite's own) are gone
            # before the large index is streamed in, so a swap peaks at two bundles, not more
            conn = sqlite_from_bytes(bdir.read_checked(META_NAME, files[META_NAME] if verify else None), meta_path)
            release_free_heap()  # the bytes read are freed: keep that hole from staying resident
            index_path = path / INDEX_NAME
            try:
                index = bdir.read_index(INDEX_NAME, files[INDEX_NAME] if verify else None)
            except BaseException:
                conn.close()
                raise
        model = ModelIdentity.from_dict(manifest["embedding_model"])
        info = manifest["index"]
        if index.d != model.dim or index.ntotal != info.get("ntotal"):
            conn.close()
            raise BundleError(
                f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, "
                f"manifest says {info.get('ntotal')} of dim {model.dim}"
            )
        try:
            apply_search_params(index, str(info.get("type")), info.get("params") or {})
        except ValueError as exc:
            conn.close()
            raise BundleError(f"{index_path}: {exc}") from exc
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

    def _load_hub_offsets(self, conn: sqlite3.Connection) -> np.ndarray:
        meta = self.path / META_NAME
        info = self.hub_norm
        k = info.get("k") if isinstance(info, dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BundleError(f"{self.path / MANIFEST_NAME}: index.hub_norm must be {{\"k\": positive int, ...}}, "
                              f"got {info!r}")
        columns = {r[1] for r in conn.execute("PRAGMA table_info(faces)")}
        if "hub_offset" not in columns:
            raise BundleError(f"{meta}: the manifest says the bundle carries hub offsets but the faces table "
                              "has no hub_offset column")
        rows = conn.execute("SELECT face_id, hub_offset FROM faces").fetchall()
        n = max((int(r[0]) for r in rows), default=-1) + 1
        offsets = np.zeros(n, np.float32)
        for fid, off in rows:
            if off is None or not np.isfinite(off):
                raise BundleError(f"{meta}: face {fid} has no finite hub_offset ({off!r})")
            offsets[int(fid)] = off
        return offsets

    @property
    def has_hub_offsets(self) -> bool:
        """Whether the bundle carries per-face hub offsets (manifest ``index.hub_norm``)."""
        return self._hub_offsets is not None

    def hub_offsets(self) -> np.ndarray | None:
        """float32 (max face_id + 1,) hub offset per face_id (a copy), or ``None`` without offsets."""
        return None if self._hub_offsets is None else self._hub_offsets.copy()

    @property
    def ntotal(self) -> int:
        """Number of face vectors in the index."""
        return self._ntotal

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

    def search(self, queries: np.ndarray, top_k: int = 5, *, hub_norm: bool = False,
               exact_above: float | None = None) -> list[list[CaseMatch]]:
        """Find the best-matching cases for each query face.

        Each case is scored by its best face. FAISS is asked for ``top_k`` times the largest
        number of faces any case has, so one case with many photos cannot crowd the others out
        (exact for flat indexes).

        With ``hub_norm`` and a bundle carrying hub offsets (:attr:`has_hub_offsets`) a face's
        score is its cosine similarity minus its hub offset, and cases are ranked by that; every
        score then also loses the query's probe offset (:func:`namus_edge.models.hub_norm.probe_offsets`,
        from the same FAISS results: at least ``k`` + the largest case's faces are asked for). As the
        order changes, FAISS is asked for :data:`HUB_SEARCH_FACTOR` times more faces, and for more
        (doubling, up to :data:`HUB_SEARCH_MAX_FACTOR`) while a face it did not return could still
        outscore the ``top_k``-th case (its similarity is at most the last one returned; its
        offset at least the smallest) and could still reach ``exact_above``.

        Args:
            queries: float32 (N, D) L2-normalised embeddings.
            top_k: cases per query.
            hub_norm: normalise by the hub offsets (no-op for a bundle without them); the caller
                decides (:attr:`namus_edge.models.policy.ResolvedPolicy.hub_norm`), since the
                threshold must be on the same scale.
            exact_above: normalised search only: every case scoring at least this is found with
                its true best score and rank; cases below it may be missing or scored on fewer
                photos. :func:`namus_edge.models.policy.decision_floor` gives the lowest score a
                verdict depends on. ``None``: all ``top_k`` cases exact.

        Returns:
            Per query, up to ``top_k`` :class:`CaseMatch`, sorted by ``score``, best first.

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
        offsets = self._hub_offsets if hub_norm else None
        base_k = top_k * self._max_faces_per_case
        if offsets is None:
            scores, ids = index.search(q, min(index.ntotal, base_k))
            return self._rank(scores, ids, None, top_k)
        min_offset = float(offsets.min())
        results: list[list[CaseMatch] | None] = [None] * len(q)
        todo = np.arange(len(q))
        factor = HUB_SEARCH_FACTOR
        # the probe offset needs the k best faces outside the judged case
        min_k = self._hub_k + self._max_faces_per_case
        while len(todo):
            k = min(index.ntotal, max(base_k * factor, min_k))
            scores, ids = index.search(q[todo], k)
            ranked = self._rank(scores, ids, offsets, top_k)
            complete = k >= index.ntotal or factor >= HUB_SEARCH_MAX_FACTOR
            retry = []
            for row, (qi, matches) in enumerate(zip(todo, ranked, strict=True)):
                # a face not returned scores at most (last similarity returned) - (smallest offset)
                # - (this query's probe offset, the same for every case)
                probe = matches[0].probe_offset if matches else 0.0
                bound = float(scores[row, -1]) - min_offset - probe
                if (complete or (len(matches) == top_k and matches[-1].score >= bound)
                        or (exact_above is not None and bound < exact_above)):
                    results[int(qi)] = matches
                else:
                    retry.append(int(qi))
            todo = np.asarray(retry, np.int64)
            factor *= 2
        return [r if r is not None else [] for r in results]

    def _rank(self, scores: np.ndarray, ids: np.ndarray, offsets: np.ndarray | None,
              top_k: int) -> list[list[CaseMatch]]:
        """Per query row: the best face per case (by decision score), the ``top_k`` best cases."""
        face_map = self._face_rows({int(i) for i in ids.ravel() if i >= 0})
        results: list[list[CaseMatch]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            best: dict[str, CaseMatch] = {}
            for sim, fid in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                if fid < 0:  # fewer results than k (approximate indexes)
                    continue
                score = sim - float(offsets[fid]) if offsets is not None else sim
                cid, image_key = face_map[fid]
                prev = best.get(cid)
                if prev is None or score > prev.score:
                    best[cid] = CaseMatch(cid, float(score), image_key, int(fid), float(sim))
            ranked = sorted(best.values(), key=lambda m: (-m.score, case_sort_key(m.id_formatted)))[:top_k]
            if offsets is not None and ranked:
                probe = self._probe_offset(row_scores, row_ids, face_map, ranked[0].id_formatted)
                ranked = [replace(m, score=m.score - probe, probe_offset=probe) for m in ranked]
            results.append(ranked)
        return results

    def _probe_offset(self, row_scores: np.ndarray, row_ids: np.ndarray, face_map: Mapping[int, tuple[str, str]],
                      judged: str) -> float:
        """The query's probe offset (:func:`namus_edge.models.hub_norm.probe_offsets`) against the judged case."""
        valid = row_ids >= 0
        cases = [face_map[int(f)][0] for f in row_ids[valid]]
        codes = {c: i for i, c in enumerate(dict.fromkeys(cases))}
        groups = np.full(len(row_ids), -1, np.int64)
        groups[valid] = [codes[c] for c in cases]
        sc = np.where(valid, row_scores, -np.inf).astype(np.float32)
        return float(probe_offsets(sc[None, :], groups[None, :], np.array([codes[judged]]), self._hub_median,
                                   self._hub_k)[0])

    def _face_rows(self, face_ids: set[int]) -> dict[int, tuple[str, str]]:
        """``face_id -> (id_formatted, image_key)`` for the given ids (rowid lookups)."""
        out: dict[int, tuple[str, str]] = {}
        ids = sorted(face_ids)
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT face_id, id_formatted, image_key FROM faces WHERE face_id IN ({marks})", chunk
                ).fetchall()
                out.update({int(r[0]): (r[1], r[2]) for r in rows})
        missing = face_ids - out.keys()
        if missing:
            raise BundleError(f"{self.path / META_NAME}: no face row for FAISS id(s) {sorted(missing)[:5]}")
        return out

    def case(self, id_formatted: str) -> dict[str, Any] | None:
        """The metadata row of one case (``race`` as a list), or ``None`` when absent."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM cases WHERE id_formatted = ?", (id_formatted,)).fetchone()
        return row_to_case(row) if row is not None else None

    def photo(self, image_key: str) -> dict[str, Any] | None:
        """``{"category", "is_rendering"}`` of one case photo (NamUs photo category), or ``None`` when absent."""
        with self._lock:
            row = self._conn.execute("SELECT category, is_rendering FROM faces WHERE image_key = ?",
                                     (image_key,)).fetchone()
        return None if row is None else {"category": row[0], "is_rendering": bool(row[1])}

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

