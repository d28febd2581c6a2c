"""``namus-edge review serve``: the web app, MQTT ingest and feedback, Home Assistant, retention, in one process."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from namus_edge.core.config import Config
from namus_edge.review.auth import LoginLimiter, load_or_create_secret
from namus_edge.review.casebook import CaseBook
from namus_edge.review.db import default_database_url
from namus_edge.review.feedback import Feedback
from namus_edge.review.homeassistant import HomeAssistant
from namus_edge.review.ingest import Ingestor, crop_filter, match_filter
from namus_edge.review.mqtt_link import MqttLink, shared
from namus_edge.review.retention import RetentionLoop
from namus_edge.review.store import IngestResult, Store
from namus_edge.review.web import ReviewContext, create_app

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture (it re-raises SIGTERM after shutdown, so exit code 143)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def database_url(config: Config) -> str:
    """``review.database_url``, default a SQLite file in ``service.state_dir``."""
    return config.review.database_url or default_database_url(config.service.state_dir)


def open_store(config: Config, clock: Callable[[], float] = time.time) -> Store:
    """Open (and migrate) the configured database."""
    return Store(database_url(config), confirmations=config.review.confirmations,
                 track_merge_s=config.review.track_merge_s, clock=clock)


class ReviewService:
    """All parts of the console, wired; :meth:`start` starts MQTT and retention, :meth:`serve` the web server.

    Args:
        config: the validated configuration (``review.*``, ``mqtt.*``, ``service.state_dir``).
        password: MQTT password or None.
        clock: epoch seconds (retention and store; injectable for tests).
    """

    def __init__(self, config: Config, password: str | None = None, clock: Callable[[], float] = time.time) -> None:
        rc = config.review
        self.config = config
        self.clock = clock
        self.store = open_store(config, clock)
        self.casebook = CaseBook(rc.bundle_dir)
        prefix = config.mqtt.topic_prefix
        self.link: MqttLink | None = None
        self.homeassistant: HomeAssistant | None = None
        feedback = None
        if config.mqtt.enabled:
            link = MqttLink(config.mqtt, password, rc.client_id)
            self.link = link
            if rc.homeassistant.enabled:
                self.homeassistant = HomeAssistant(lambda t, p, r: link.publish(t, p, retain=r), prefix,
                                                   rc.homeassistant.discovery_prefix, self.store.count_pending)
            feedback = Feedback(link.publish, prefix, rc.suppress_seconds, self.homeassistant,
                                clock)
        self.ingestor = Ingestor(self.store, prefix, self._stored)
        secret_path = Path(rc.session_secret_file or Path(config.service.state_dir) / "review.secret")
        self.context = ReviewContext(
            store=self.store, casebook=self.casebook, config=rc, secret=load_or_create_secret(secret_path),
            feedback=feedback, limiter=LoginLimiter(rc.login_max_failures, rc.login_window_s))
        self.app: FastAPI = create_app(self.context)
        self.retention = RetentionLoop(self.store, rc.retention, clock)
        self._server: uvicorn.Server | None = None

    def _stored(self, result: IngestResult) -> None:
        if result.new and self.homeassistant is not None:
            self.homeassistant.pending(self.store.count_pending())

    def start(self) -> None:
        """Subscribe and connect to MQTT (background), start the retention loop."""
        if self.link is not None:
            group = self.config.review.share_group
            prefix = self.config.mqtt.topic_prefix
            self.link.subscribe(shared(match_filter(prefix), group), self.ingestor.on_match)
            self.link.subscribe(shared(crop_filter(prefix), group), self.ingestor.on_crop)
            if self.homeassistant is not None:
                ha = self.homeassistant
                self.link.subscribe(ha.availability_filter, ha.on_availability)
                self.link.subscribe(ha.status_topic, ha.on_status)
                self.link.on_connected.append(ha.publish_all)
            self.link.start()
        self.retention.start()

    def serve(self) -> None:
        """Run the web server until SIGINT/SIGTERM (uvicorn's handlers), then stop everything."""
        rc = self.config.review
        self._server = _Server(uvicorn.Config(self.app, host=rc.host, port=rc.port, log_level="warning",
                                                     proxy_headers=True, access_log=False))
        logger.info("review console on http://%s:%d (database %s)", rc.host, rc.port,
                    self.store.engine.url.render_as_string(hide_password=True))
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.request_stop())
        try:
            self._server.run()
        finally:
            self.stop()

    def request_stop(self) -> None:
        """Ask the web server to finish (what SIGTERM does); :meth:`serve` then stops everything."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Stop MQTT, the retention loop and the database pool."""
        if self._server is not None:
            self._server.should_exit = True
        if self.link is not None:
            self.link.stop()
        self.retention.stop()
        self.casebook.close()
        self.store.close()
