"""Case facts and case photos for the cards, read from the operator bundle (``review.bundle_dir``).

The operator bundle holds ``meta.sqlite3`` (cases and faces) and the operator files
``thumbs/<image_key>.jpg``; case photos come from here, never from devices. The bundle is
opened read-only; a missing bundle leaves the cards without case photos (said on the card).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from namus_edge.index.bundle_schema import IMAGE_KEY_RE, row_to_case, row_to_face
from namus_edge.index.manifest import MANIFEST_NAME, META_NAME, THUMBS_DIR

logger = logging.getLogger(__name__)


class CaseBook:
    """Read-only view of an operator bundle's cases, faces and thumbnails.

    Args:
        bundle_dir: the bundle directory, or None (no case photos).
    """

    def __init__(self, bundle_dir: str | Path | None) -> None:
        self.path = Path(bundle_dir) if bundle_dir else None
        self.version: str | None = None
        self.error: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if self.path is None:
            self.error = "review.bundle_dir is not set"
            return
        try:
            manifest = json.loads((self.path / MANIFEST_NAME).read_text(encoding="utf-8"))
            self.version = str(manifest.get("version"))
            conn = sqlite3.connect(f"file:{self.path / META_NAME}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT 1 FROM faces LIMIT 1")
            self._conn = conn
        except (OSError, ValueError, sqlite3.Error) as exc:
            self.error = f"review.bundle_dir {self.path}: {exc}"
            logger.warning("review: case photos unavailable: %s", self.error)

    def case(self, id_formatted: str) -> dict[str, Any] | None:
        """The case row (ages at disappearance ``age_min``/``age_max``, ``date_last``, ``sex``...) or None."""
        if self._conn is None:
            return None
        with self._lock:
            row = self._conn.execute("SELECT * FROM cases WHERE id_formatted = ?", (id_formatted,)).fetchone()
        return row_to_case(row) if row is not None else None

    def photos(self, id_formatted: str) -> list[dict[str, Any]]:
        """The case's faces (``image_key``, ``category``, ``is_rendering``, ``has_thumb``), face_id order."""
        if self._conn is None:
            return []
        with self._lock:
            rows = self._conn.execute("SELECT * FROM faces WHERE id_formatted = ? ORDER BY face_id",
                                      (id_formatted,)).fetchall()
        out = []
        for r in rows:
            face = row_to_face(r)
            face["has_thumb"] = self._thumb_path(face["image_key"]) is not None
            out.append(face)
        return out

    def gallery_size(self) -> int | None:
        """Faces in the bundle, or None without a bundle."""
        if self._conn is None:
            return None
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])

    def _thumb_path(self, image_key: str) -> Path | None:
        if self.path is None or not IMAGE_KEY_RE.match(image_key):
            return None
        path = self.path / THUMBS_DIR / f"{image_key}.jpg"
        return path if path.is_file() else None

    def thumb(self, image_key: str) -> bytes | None:
        """JPEG bytes of a case photo thumbnail, or None (unknown key, no thumbnail)."""
        path = self._thumb_path(image_key)
        return path.read_bytes() if path is not None else None

    def close(self) -> None:
        """Close the bundle database."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
