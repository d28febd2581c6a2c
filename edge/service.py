"""The long-running device service (``namus-edge run``) and the file scanner (``namus-edge scan``).

Start-up order: models loaded and warmed up, index loaded, MQTT publisher started, capture
threads started; then ``READY=1`` is sent to systemd. The inference loop takes frames from
every camera queue with :class:`~edge.scheduler.FairScheduler` (round-robin, a budget per
camera), processes them in small batches and feeds the watchdog on every turn of the loop, with
or without frames: the watchdog watches the loop, not the cameras (a hung inference stops the
pings and systemd restarts the service; a dead camera does not). A batch that raises is logged,
counted and dropped; an outbox that cannot be written degrades the service but detection goes
on (:mod:`edge.event_sink`). Camera outages are reported per camera in the retained status
message and in ``STATUS=``. When every capture has ended and one of them on an error, ``run``
exits 1 so that systemd restarts it. A retained status message goes out every
``mqtt.status_interval_s``. The bundle path is polled for a new version (and an MQTT index
announcement under ``sync.url`` triggers ``index sync`` at once); a new bundle is swapped in
without stopping the cameras. SIGTERM stops capture, drains what is queued within
``service.drain_timeout_s`` and flushes the outbox.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.topics import announce_topic, suppress_topic
from namus_edge.edge.event_sink import EventSink
from namus_edge.edge.events import MatchEvent
from namus_edge.edge.frame_queue import Frame, FrameQueue
from namus_edge.edge.health import ServiceHealth, status_line
from namus_edge.edge.index_holder import IndexHolder
from namus_edge.edge.pipeline import Pipeline, SearchIndex
from namus_edge.edge.scheduler import FairScheduler
from namus_edge.edge.sdnotify import Notifier, ProgressWatchdog, watchdog_interval
from namus_edge.edge.suppression import Suppressions
from namus_edge.index.trust import announce_url_allowed

if TYPE_CHECKING:
    from namus_edge.edge.mqtt_publisher import MqttPublisher
    from namus_edge.edge.outbox import Outbox

logger = logging.getLogger(__name__)

BATCH_FRAMES = 4
#: Frames one camera may put in a batch per round-robin visit.
PER_CAMERA_FRAMES = 1


class ServiceError(NamusEdgeError):
    """The service cannot start (no cameras, no index, bad credentials file...)."""


def read_temperature_c() -> float | None:
    """Highest thermal-zone temperature in degrees Celsius (Jetson/Linux sysfs), or None."""
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def open_publisher(config: Config, password: str | None) -> tuple[MqttPublisher, Outbox]:
    """Open the outbox and the MQTT publisher that drains it (the caller starts the publisher).

    The outbox is ``mqtt.outbox_path``, default ``<service.state_dir>/outbox.sqlite3``.
    """
    from namus_edge.edge.mqtt_publisher import MqttPublisher
    from namus_edge.edge.outbox import Outbox

    path = Path(config.mqtt.outbox_path or Path(config.service.state_dir) / "outbox.sqlite3")
    path.parent.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(path, max_events=config.mqtt.outbox_max_events)
    return MqttPublisher(config.mqtt, config.service.device_id, outbox, password), outbox


def _index_holder(config: Config) -> IndexHolder:
    """The hot-reloading bundle holder of ``run`` and ``scan``; also sets FAISS's thread count for the process."""
    import faiss

    from namus_edge.index.sync import expected_model_from_config

    if not config.index.bundle:
        raise ServiceError("index.bundle is not set: point it at a bundle directory or <sync.state_dir>/current")
    if not config.sync.pubkeys:
        if not config.index.allow_unsigned:
            raise ServiceError(
                "sync.pubkeys is empty: refusing to search a bundle whose signature nothing can check; pin the "
                "operator's public key (sync.pubkeys: [/etc/namus-edge/operator.pub]) or, for development only, "
                "set index.allow_unsigned: true"
            )
        logger.warning("*** index.allow_unsigned is true: bundles are loaded WITHOUT a signature check; anyone who "
                       "can write %s decides which faces alert. Development only. ***", config.index.bundle)
    faiss.omp_set_num_threads(config.index.search_threads)
    return IndexHolder(Path(config.index.bundle), [Path(p) for p in config.sync.pubkeys],
                       expected_model_from_config(config), allow_unsigned=config.index.allow_unsigned)


class EdgeService:
    """Cameras -> pipeline -> MQTT, supervised by systemd.

    Args:
        config: the validated configuration (needs ``cameras`` and ``index.bundle``).
        password: MQTT password (read by ``main`` from the credential file or environment).
        notifier: systemd notifier (default: from ``NOTIFY_SOCKET``).
    """

    def __init__(self, config: Config, password: str | None = None, notifier: Notifier | None = None) -> None:
        if not config.cameras:
            raise ServiceError("no cameras configured (cameras: [...]); use `namus-edge scan --source FILE` for files")
        self.config = config
        self.password = password
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.publisher: Any = None
        self.outbox: Any = None
        self.index = _index_holder(config)
        self.health = ServiceHealth()
        self.sink: EventSink | None = None
        self._batch_index: SearchIndex | None = None
        self._processed: dict[str, int] = {}
        self._sync_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.suppressions = Suppressions(config.matching.suppress_rejected_s)

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        from namus_edge.edge.sources import CaptureThread, frame_queue_for
        from namus_edge.models.analyzer import FaceAnalyzer

        self.notifier.status("loading models")
        analyzer = FaceAnalyzer(self.config)
        self.index.refresh()
        if self.index.get() is None:
            raise ServiceError(f"no loadable index at {self.config.index.bundle}: {self.index.last_error}")
        self._start_mqtt()
        self.pipeline = Pipeline(self.config, analyzer, lambda: self._batch_index, self._emit)
        self.pipeline.engine.suppressed = self.suppressions.active
        queues: dict[str, FrameQueue] = {}
        captures = []
        for cam in self.config.cameras:
            q = frame_queue_for(cam)
            queues[cam.id] = q
            t = CaptureThread(cam, q, self.stop_event)
            captures.append(t)
            t.start()
        self.captures = captures
        self._install_signals()
        interval = watchdog_interval()
        watchdog = ProgressWatchdog(self.notifier, interval or 10.0, self.config.service.watchdog_stall_s)
        if interval:
            watchdog.start()
        self._start_background()
        self.notifier.ready()
        self.notifier.status(f"running: {len(captures)} camera(s), index {self.index.version}")
        logger.info("namus-edge running: %d camera(s), index %s", len(captures), self.index.version)
        try:
            self._loop(queues, watchdog)
        finally:
            requested = self.stop_event.is_set()
            self.notifier.stopping()
            self._shutdown(queues, captures, watchdog)
        return 0 if requested else self._exit_code()

    def _exit_code(self) -> int:
        """After every camera stream ended by itself: 1 when a capture died on an error, 0 when all were files."""
        dead = [t.stats() for t in self.captures if t.stats().error]
        if dead:
            logger.error("every capture has stopped, %d on an error (%s); exiting 1 so that systemd restarts "
                         "the service", len(dead), "; ".join(f"{s.camera_id}: {s.error}" for s in dead))
            return 1
        logger.info("every camera stream has ended")
        return 0

    def request_stop(self) -> None:
        """Ask the service to stop (what SIGTERM does)."""
        self.stop_event.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())

    def _loop(self, queues: dict[str, FrameQueue], watchdog: ProgressWatchdog) -> None:
        scheduler = FairScheduler(queues, BATCH_FRAMES, PER_CAMERA_FRAMES)
        while not self.stop_event.is_set() and scheduler.open_cameras:
            watchdog.progress()  # the loop turns: alive, whether or not a camera delivers
            batch, ended = scheduler.collect(timeout=0.2)
            for cam_id in ended:
                self.pipeline.finish_camera(cam_id)
            if batch:
                self.process_batch(batch)
            if self.sink is not None:
                self.sink.retry()

    def process_batch(self, batch: list[Frame]) -> None:
        """Run one batch against the live index, pinned for the batch; an error drops the batch, never the service."""
        try:
            with self.index.lease() as bundle:
                self._batch_index = bundle
                try:
                    self.pipeline.process(batch)
                finally:
                    self._batch_index = None
            for f in batch:
                self._processed[f.camera_id] = self._processed.get(f.camera_id, 0) + 1
        except Exception as exc:  # noqa: BLE001 - the guard: one bad frame or value must not stop every camera
            self.health.batch_failed(exc, (f.camera_id for f in batch))

    def _shutdown(self, queues: dict[str, FrameQueue], captures: list[Any], watchdog: ProgressWatchdog) -> None:
        deadline = time.monotonic() + self.config.service.drain_timeout_s
        self.stop_event.set()
        for q in queues.values():
            q.close()
        # drain frames already captured, within the bound
        for cam_id, q in queues.items():
            while len(q) and time.monotonic() < deadline:
                frame = q.get(timeout=0.01)
                if frame is None:
                    break
                self.pipeline.process([frame])
            self.pipeline.finish_camera(cam_id)
        for t in captures:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        watchdog.stop()
        if self.publisher is not None:
            left = max(0.5, deadline - time.monotonic())
            self.publisher.close(timeout=left)
        if self.outbox is not None:
            self.outbox.close()
        self.index.close()
        logger.info("namus-edge stopped")

    # -- mqtt ----------------------------------------------------------------------------------------

    def _start_mqtt(self) -> None:
        if not self.config.mqtt.enabled:
            logger.warning("mqtt.enabled is false: match events are only logged")
            return

        self.publisher, self.outbox = open_publisher(self.config, self.password)
        self.sink = EventSink(self.publisher.publish_event, self.health)
        if self.config.sync.on_announce:
            self.publisher.subscribe(announce_topic(self.config.mqtt.topic_prefix), self._on_announce)
        if self.config.matching.suppress_rejected_s > 0:
            self.publisher.subscribe(suppress_topic(self.config.mqtt.topic_prefix, self.config.service.device_id),
                                     self.suppressions.on_message)
        self.publisher.start()

    def _emit(self, event: MatchEvent, crop: bytes | None) -> None:
        if self.sink is not None:
            self.sink.emit(event, crop)

    def status_payload(self) -> dict[str, Any]:
        """The retained status message: per-camera state, fps and drops, health, stage latency, index, uptime."""
        cams = {}
        states = []
        for t in getattr(self, "captures", []):
            s = t.stats()
            h = self.health.camera(s.camera_id, s.connected, s.running, s.error)
            states.append(h)
            cams[s.camera_id] = {"state": h.state, "down_s": h.down_s, "fps": round(s.fps, 2),
                                 "processed": self._processed.get(s.camera_id, 0), "frames": s.frames_read,
                                 "dropped": s.dropped, "reconnects": s.reconnects,
                                 "connected": s.connected, "error": s.error}
        self._update_index_health()
        p = getattr(self, "pipeline", None)
        health = self.health.snapshot()
        health["nonfinite_dropped"] = p.stats.nonfinite_dropped if p else 0
        health["events_held_in_memory"] = self.sink.pending if self.sink is not None else 0
        self.notifier.status(status_line(states, self.index.version, health["degraded"]))
        return {
            "device_id": self.config.service.device_id,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "index_version": self.index.version,
            "index_sequence": self.index.sequence,
            "index_valid_until": self.index.valid_until,
            "index_expired": self.index.expired(),
            "index_error": self.index.last_error,
            "cameras": cams,
            "health": health,
            "stage_ms": {k: round(v, 2) for k, v in p.stats.ms.items()} if p else {},
            "frames": p.stats.frames if p else 0,
            "events": p.stats.events if p else 0,
            "outbox": len(self.outbox) if self.outbox is not None else 0,
            "temperature_c": read_temperature_c(),
        }

    def _update_index_health(self) -> None:
        if self.index.expired():
            self.health.degrade("index", f"bundle {self.index.version} expired at {self.index.valid_until} "
                                         "(no newer signed bundle reached this device)")
        else:
            self.health.recover("index")

    # -- background: status, index reload, sync on announcement ------------------------------------------

    def _start_background(self) -> None:
        def every(period: float, fn: Callable[[], None], name: str) -> threading.Thread:
            def loop() -> None:
                while not self.stop_event.wait(period):
                    try:
                        fn()
                    except Exception:
                        logger.exception("%s failed", name)

            t = threading.Thread(target=loop, name=name, daemon=True)
            t.start()
            return t

        self._threads.append(every(self.config.service.index_poll_s, self._reload_index, "index-poll"))
        self._publish_status()
        self._threads.append(every(self.config.mqtt.status_interval_s, self._publish_status, "status"))

    def _reload_index(self) -> None:
        if self.index.refresh():
            self._publish_status()

    def _publish_status(self) -> None:
        payload = self.status_payload()  # also refreshes STATUS=, with or without MQTT
        if self.publisher is not None:
            self.publisher.publish_status(payload)

    def _on_announce(self, topic: str, payload: bytes) -> None:
        base = self.config.sync.url
        try:
            msg = json.loads(payload)
            url = str(msg.get("url") or base or "")
        except (ValueError, TypeError, AttributeError):
            logger.warning("ignored a malformed index announcement on %s", topic)
            return
        if not base:
            logger.warning("ignored an index announcement: sync.url is not set, and a device only fetches "
                           "bundles from its configured sync.url")
            return
        if not announce_url_allowed(url, base):
            logger.warning("ignored an index announcement naming %r: not under sync.url %s", url, base)
            return
        if msg.get("version") and msg.get("version") == self.index.version:
            return
        threading.Thread(target=self._sync, args=(url,), name="sync", daemon=True).start()

    def _sync(self, url: str) -> None:
        from namus_edge.index.sync import expected_model_from_config, sync_once

        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            if not self.config.sync.pubkeys:
                logger.error("index announcement ignored: no sync.pubkeys pinned")
                return
            result = sync_once(url, Path(self.config.sync.state_dir), [Path(p) for p in self.config.sync.pubkeys],
                               expected_model_from_config(self.config), timeout_s=self.config.sync.timeout_s,
                               max_bytes=self.config.sync.max_bytes, keep_versions=self.config.sync.keep_versions)
            logger.info("sync after announcement: %s %s %s", result.status, result.version, result.reason or "")
            self._reload_index()
        finally:
            self._sync_lock.release()


# -- scan -------------------------------------------------------------------------------------------------


class ScanResult:
    """What a scan did: frames processed, events emitted, events delivered over MQTT."""

    def __init__(self) -> None:
        self.frames = 0
        self.events: list[MatchEvent] = []
        self.delivered: bool | None = None
        self.seconds = 0.0


def scan_file(config: Config, source: Path, *, events_path: Path | None = None, mqtt: bool = False,
              password: str | None = None, camera_id: str | None = None) -> ScanResult:
    """Process every frame of a video file (no drops) and emit match events.

    Timestamps are video time (frame index / fps), so tracking, confirmation and cooldown
    behave as they would live, however fast this machine is.

    Args:
        config: validated configuration (``index.bundle`` must be set).
        source: the video file.
        events_path: append events as JSON lines here (created; one object per line).
        mqtt: also publish events through the outbox and broker of ``config.mqtt``.
        password: MQTT password.
        camera_id: camera id in events (default: the file's stem).
    """
    import cv2

    from namus_edge.models.analyzer import FaceAnalyzer

    if not source.is_file():
        raise ServiceError(f"--source {source}: no such file")
    holder = _index_holder(config)
    holder.refresh()
    if holder.get() is None:
        raise ServiceError(f"no loadable index at {config.index.bundle}: {holder.last_error}")
    result = ScanResult()
    t_start = time.perf_counter()
    publisher = outbox = None
    if mqtt:
        publisher, outbox = open_publisher(config, password)
        publisher.start()
    out_fh = events_path.open("a", encoding="utf-8") if events_path else None

    def emit(event: MatchEvent, crop: bytes | None) -> None:
        result.events.append(event)
        if out_fh is not None:
            out_fh.write(event.to_json() + "\n")
            out_fh.flush()
        if publisher is not None:
            publisher.publish_event(event, crop)

    cam = camera_id or "".join(c if c.isalnum() or c in "_.-" else "_" for c in source.stem)[:64] or "file"
    cap = cv2.VideoCapture(str(source))
    try:
        if not cap.isOpened():
            raise ServiceError(f"--source {source}: OpenCV cannot open this video")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not 1.0 <= fps <= 240.0:
            fps = 25.0
        pipeline = Pipeline(config, FaceAnalyzer(config), holder.get, emit)
        batch: list[Frame] = []
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            batch.append(Frame(cam, index, index / fps, datetime.now(timezone.utc), image))
            index += 1
            if len(batch) >= BATCH_FRAMES:
                pipeline.process(batch)
                batch = []
        if batch:
            pipeline.process(batch)
        pipeline.finish_camera(cam)
        result.frames = index
    finally:
        cap.release()
        if out_fh is not None:
            out_fh.close()
        if publisher is not None:
            result.delivered = publisher.flush(config.service.drain_timeout_s)
            publisher.close(timeout=config.service.drain_timeout_s)
        if outbox is not None:
            outbox.close()
        holder.close()
    result.seconds = time.perf_counter() - t_start
    logger.info("scan %s: %d frames, %d event(s) in %.1f s", source, result.frames, len(result.events),
                result.seconds)
    return result
