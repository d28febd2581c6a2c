"""Debug-only saving of matched face crops, with the retention limit enforced on every save.

``service.debug_save_crops`` names a directory; each confirmed match writes the JPEG of the
matched face (never the whole frame, so bystanders are not kept) as ``<event_id>.jpg``. After
each save, files older than ``service.debug_retention_h`` hours and the oldest beyond
``service.debug_max_files`` are deleted, so the directory never holds more than that.
Faces that match nothing never reach this module.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from namus_edge.core.fsutil import write_atomic

logger = logging.getLogger(__name__)


class DebugCropStore:
    """A bounded directory of matched-face crops.

    Args:
        directory: where crops go (created on first save).
        max_files: most crops kept (oldest deleted first).
        retention_h: crops older than this many hours are deleted.
    """

    def __init__(self, directory: Path, max_files: int, retention_h: float) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self.retention_s = retention_h * 3600.0

    def save(self, event_id: str, crop_jpeg: bytes) -> Path:
        """Write one crop (JPEG bytes, ``FF D8`` first) and enforce the limits; returns its path."""
        if not crop_jpeg.startswith(b"\xff\xd8"):
            raise ValueError("debug crop must be JPEG bytes")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{event_id}.jpg"
        write_atomic(path, crop_jpeg, mode=0o600)
        self.prune()
        return path

    def prune(self, now: float | None = None) -> int:
        """Delete crops past the retention time or beyond ``max_files``; returns how many were deleted."""
        t = time.time() if now is None else now
        try:
            entries = sorted(((p.stat().st_mtime, p) for p in self.directory.glob("*.jpg")), reverse=True)
        except OSError:
            return 0
        doomed = [p for i, (mtime, p) in enumerate(entries) if i >= self.max_files or t - mtime > self.retention_s]
        for p in doomed:
            try:
                os.unlink(p)
            except FileNotFoundError:
                continue
        if doomed:
            logger.info("debug crops: deleted %d past the retention limit in %s", len(doomed), self.directory)
        return len(doomed)
