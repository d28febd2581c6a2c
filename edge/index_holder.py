"""The live index of a device: loaded once, swapped atomically when the bundle on disk changes.

``index.bundle`` usually points at ``<sync.state_dir>/current``, a symlink that ``index sync``
switches atomically. :meth:`IndexHolder.refresh` notices a new target (or a new manifest
version at the same path), loads and verifies it *beside* the running one, and swaps the
reference: the pipeline keeps searching the old bundle until the new one is ready, so frames
are never dropped for a reload. A bundle that fails to load, or whose signed ``sequence`` is
lower than the live one's (a rollback), is logged and the old one stays.

Memory: a batch pins the bundle it searches with :meth:`IndexHolder.lease`. The retired bundle
is closed (its FAISS index and database freed) as soon as the last batch that leased it ends,
or at once when none did, so at most two bundles are ever resident: the live one and the one
being loaded (``bench.index_swap`` measures it). Every state change happens under one lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from namus_edge.core.errors import BundleError
from namus_edge.core.memory import release_free_heap
from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import MANIFEST_NAME, ModelIdentity
from namus_edge.index.trust import parse_utc

logger = logging.getLogger(__name__)


class IndexHolder:
    """Holds the current :class:`Bundle`.

    Args:
        path: bundle directory or the ``current`` symlink of a sync state dir.
        pubkeys: pinned operator keys; the signature is checked at every load.
        expected_model: the embedder this device runs; a bundle for another one is refused.
        allow_unsigned: with no ``pubkeys``, load bundles without a signature check (development
            only; ``index.allow_unsigned``). Without it and without keys every load is refused.
    """

    def __init__(self, path: Path, pubkeys: Sequence[Path], expected_model: ModelIdentity,
                 allow_unsigned: bool = False) -> None:
        self.path = Path(path)
        self.pubkeys = list(pubkeys)
        self.expected_model = expected_model
        self.allow_unsigned = allow_unsigned
        self._bundle: Bundle | None = None
        self._key: tuple[str, str] | None = None
        self._leases: dict[int, int] = {}  # id(bundle) -> batches using it
        self._retired: list[Bundle] = []
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def get(self) -> Bundle | None:
        """The current bundle (None before the first successful load); prefer :meth:`lease` in loops."""
        return self._bundle

    @property
    def version(self) -> str | None:
        """Version of the current bundle."""
        b = self._bundle
        return b.version if b is not None else None

    @property
    def sequence(self) -> int | None:
        """Signed sequence of the current bundle."""
        b = self._bundle
        return b.sequence if b is not None else None

    @property
    def valid_until(self) -> str | None:
        """Signed ``valid_until`` of the current bundle."""
        b = self._bundle
        return b.valid_until if b is not None else None

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the current bundle is past its ``valid_until`` (False when none is loaded)."""
        until = self.valid_until
        return until is not None and (now or datetime.now(timezone.utc)) > parse_utc(until)

    @property
    def retired_open(self) -> int:
        """Retired bundles still open because a batch is using them (0 or 1 in practice)."""
        with self._lock:
            return len(self._retired)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Bundle | None]:
        """Pin the current bundle for one batch: it stays open until the ``with`` block ends."""
        with self._lock:
            bundle = self._bundle
            if bundle is not None:
                self._leases[id(bundle)] = self._leases.get(id(bundle), 0) + 1
        try:
            yield bundle
        finally:
            if bundle is not None:
                with self._lock:
                    n = self._leases[id(bundle)] - 1
                    if n:
                        self._leases[id(bundle)] = n
                    else:
                        del self._leases[id(bundle)]
                        if bundle in self._retired:
                            self._retired.remove(bundle)
                            bundle.close()
                            release_free_heap()

    def _disk_key(self) -> tuple[str, str] | None:
        try:
            real = os.path.realpath(self.path)
            with open(os.path.join(real, MANIFEST_NAME), "rb") as fh:
                version = str(json.loads(fh.read()).get("bundle_version", ""))
        except (OSError, ValueError, AttributeError):
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
            if not self.pubkeys and not self.allow_unsigned:
                self.last_error = f"{key[0]}: no pinned public key (sync.pubkeys) to verify it with"
                logger.error("index %s not loaded: %s", key[0], self.last_error)
                self._key = key
                return False
            live_seq = self._bundle.sequence if self._bundle is not None else None
            try:
                new = Bundle.load(Path(key[0]), pubkeys=self.pubkeys or None, expected_model=self.expected_model)
                if live_seq is not None and new.sequence < live_seq:
                    new.close()
                    raise BundleError(f"sequence {new.sequence} is lower than the live bundle's {live_seq}; "
                                      "refusing a rollback")
            except (BundleError, OSError) as exc:
                self.last_error = f"{key[0]}: {exc}"
                logger.error("index %s not loaded, keeping %s: %s", key[0], self.version, exc)
                self._key = key  # do not retry the same broken bundle every poll
                return False
            old, self._bundle, self._key = self._bundle, new, key
            self.last_error = None
            if old is not None:
                if self._leases.get(id(old)):
                    self._retired.append(old)  # the last batch using it closes it
                else:
                    old.close()
                    release_free_heap()
        logger.info("index %s live (sequence %d, valid until %s, %d faces) from %s", new.version, new.sequence,
                    new.valid_until, new.manifest["counts"]["faces"], key[0])
        if self.expired():
            logger.warning("index %s expired at %s: still searched, reported in the status", new.version,
                           new.valid_until)
        return True

    def close(self) -> None:
        """Release the current bundle and any retired one."""
        with self._lock:
            for b in (self._bundle, *self._retired):
                if b is not None:
                    b.close()
            self._bundle = None
            self._retired = []
