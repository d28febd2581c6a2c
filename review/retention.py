"""Retention: the purge that enforces ``review.retention.*`` (crops are deleted, not just hidden).

* "not a match" and "unusable" items lose their crops ``rejected_hours`` after the verdict;
* items nobody reviewed lose their crops after ``unreviewed_days`` and become ``expired``;
* confirmed items keep their crops until an admin releases them (then the next purge);
* crops whose event never arrived go after ``orphan_crop_hours``.

The console stores no thumbnails of camera faces and no embeddings (events carry none), so
the crop row is all there is to delete; SQLite's ``secure_delete`` overwrites its pages. The
clock is injectable: tests move a fake clock instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from namus_edge.core.config import RetentionConfig
from namus_edge.review.store import Store

logger = logging.getLogger(__name__)


def purge_once(store: Store, cfg: RetentionConfig, now: float) -> dict[str, int]:
    """Run one purge at time ``now`` (epoch seconds); returns the counts of :meth:`Store.purge`."""
    counts = store.purge(rejected_before=now - cfg.rejected_hours * 3600.0,
                         unreviewed_before=now - cfg.unreviewed_days * 86400.0,
                         orphans_before=now - cfg.orphan_crop_hours * 3600.0)
    if counts["crops"] or any(counts[k] for k in ("rejected", "unreviewed", "released")):
        logger.info("review retention: purged %s", counts)
    return counts


class RetentionLoop:
    """Runs :func:`purge_once` every ``cfg.purge_interval_s`` in a daemon thread until stopped."""

    def __init__(self, store: Store, cfg: RetentionConfig, clock: Callable[[], float]) -> None:
        self.store, self.cfg, self.clock = store, cfg, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-retention", daemon=True)

    def start(self) -> None:
        """Purge now, then periodically."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                purge_once(self.store, self.cfg, self.clock())
            except Exception:  # a failed purge is retried at the next period, never silently stops
                logger.exception("review retention: purge failed")
            if self._stop.wait(self.cfg.purge_interval_s):
                return

    def stop(self) -> None:
        """Stop the loop (waits for a running purge)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
