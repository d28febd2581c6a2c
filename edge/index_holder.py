"""The live index of a device: loaded once, swapped atomically when the bundle on disk changes.

``index.bundle`` usually points at ``<sync.state_dir>/current``, a symlink that ``index sync``
switches atomically. :meth:`IndexHolder.refresh` notices a new target (or a new manifest
version at the same path), loads and verifies it *beside* the running one, and swaps the
reference: the pipeline keeps searching the old bundle until the new one is ready, so frames
are never dropped for a reload. A bundle that fails to load is logged and the old one stays.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from namus_edge.core.errors import BundleError
from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import MANIFEST_NAME, ModelIdentity

logger = logging.getLogger(__name__)


class IndexHolder:
    """Holds the current :class:`Bundle`.

    Args:
        path: bundle directory or the ``current`` symlink of a sync state dir.
        pubkeys: pinned operator keys; the signature is checked at every load when given.
        expected_model: the embedder this device runs; a bundle for another one is refused.
    """

    def __init__(self, path: Path, pubkeys: Sequence[Path], expected_model: ModelIdentity) -> None:
        self.path = Path(path)
        self.pubkeys = list(pubkeys)
        self.expected_model = expected_model
        self._bundle: Bundle | None = None
        self._key: tuple[str, str] | None = None
        self._retired: Bundle | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def get(self) -> Bundle | None:
        """The current bundle (None before the first successful load)."""
        return self._bundle

    @property
    def version(self) -> str | None:
        """Version of the current bundle."""
        b = self._bundle
        return b.version if b is not None else None

    def _disk_key(self) -> tuple[str, str] | None:
        try:
            real = os.path.realpath(self.path)
            with open(os.path.join(real, MANIFEST_NAME), "rb") as fh:
                version = str(json.loads(fh.read()).get("bundle_version", ""))
        except (OSError, ValueError):
            return None
        return real, version

    def refresh(self) -> bool:
        """Load the bundle on disk if it differs from the current one.

        Returns:
            True when a new bundle went live.
        """
        with self._lock:
            key = self._disk_key()
            if key is None:
                if self._bundle is None:
                    self.last_error = f"no bundle at {self.path}"
                return False
            if key == self._key:
                return False
            try:
                new = Bundle.load(Path(key[0]), pubkeys=self.pubkeys or None, expected_model=self.expected_model)
            except (BundleError, OSError) as exc:
                self.last_error = f"{key[0]}: {exc}"
                logger.error("index %s not loaded, keeping %s: %s", key[0], self.version, exc)
                self._key = key  # do not retry the same broken bundle every poll
                return False
            old, self._bundle, self._key = self._bundle, new, key
            self.last_error = None
        logger.info("index %s live (%d faces) from %s", new.version, new.manifest["counts"]["faces"], key[0])
        # a batch that started before the swap may still search the old bundle: close it one
        # swap later instead of now
        if self._retired is not None:
            self._retired.close()
        self._retired = old
        return True

    def close(self) -> None:
        """Release the current bundle."""
        with self._lock:
            for b in (self._bundle, self._retired):
                if b is not None:
                    b.close()
            self._bundle = self._retired = None
