"""MQTT publisher: match events through a persistent outbox, availability, status, announcements.

Topics (``<prefix>`` is ``mqtt.topic_prefix``, ``<device>`` is ``service.device_id``):

* ``<prefix>/<device>/match`` — match events (:class:`edge.events.MatchEvent` JSON), QoS 1.
* ``<prefix>/<device>/match/<event_id>/crop`` — the face crop JPEG (``mqtt.face_crop: topic``).
* ``<prefix>/<device>/availability`` — ``online`` / ``offline``, retained; ``offline`` is the
  last will, so a device that dies or loses its network reads ``offline``.
* ``<prefix>/<device>/status`` — retained JSON state published by the service.
* ``<prefix>/index/announce`` — subscribed: a new index bundle was published.

Delivery of match events: ``publish_event`` writes to the :class:`edge.outbox.Outbox` (so
nothing is dropped while the broker is away, unlike a bare ``client.publish``) and wakes a
sender thread. The sender hands outbox messages to paho in order, at most
``mqtt.max_inflight`` at a time, and deletes a message from the outbox only when paho reports
the broker's PUBACK for its message id. Messages in flight when the connection drops stay in
the outbox; paho re-sends them after the reconnect (DUP flag) and the sender sends nothing
newer until they are acknowledged, so order is kept. A crash re-sends whatever was not
acknowledged. Delivery is therefore at least once: receivers dedupe on ``event_id``.

Threads: paho's network thread runs the callbacks, which only record facts in a queue; the
sender thread alone owns the message-id map and writes the outbox. paho calls ``on_publish``
while holding its own message lock, so the callbacks never take a lock that is held around
``client.publish`` (that would deadlock).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from namus_edge.core.config import MqttConfig
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.secrets import SecretError, mqtt_tls_files
from namus_edge.core.topics import announce_topic
from namus_edge.edge.events import MatchEvent
from namus_edge.edge.outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)

#: CONNACK reason codes meaning the credentials were refused (v5 codes; paho maps v3.1.1's 4 and 5 to them).
_AUTH_REFUSED = {0x86, 0x87}  # Bad user name or password, Not authorized

AUTH_REFUSED_MESSAGE = (
    "MQTT broker refused the connection: not authorised (check mqtt.username and the password credential)"
)

#: A subscription callback: ``callback(topic, payload)``; runs on paho's network thread, keep it short.
MessageCallback = Callable[[str, bytes], None]


class MqttError(NamusEdgeError):
    """The MQTT publisher is misconfigured (e.g. a TLS file is missing); names the config key."""


@dataclass(frozen=True)
class Topics:
    """The topics of one device."""

    prefix: str
    device_id: str

    @property
    def match(self) -> str:
        """Match events: ``<prefix>/<device>/match``."""
        return f"{self.prefix}/{self.device_id}/match"

    def crop(self, event_id: str) -> str:
        """Face crop JPEG of one event: ``<prefix>/<device>/match/<event_id>/crop``."""
        return f"{self.prefix}/{self.device_id}/match/{event_id}/crop"

    @property
    def availability(self) -> str:
        """Retained ``online``/``offline``: ``<prefix>/<device>/availability``."""
        return f"{self.prefix}/{self.device_id}/availability"

    @property
    def status(self) -> str:
        """Retained status JSON: ``<prefix>/<device>/status``."""
        return f"{self.prefix}/{self.device_id}/status"

    @property
    def announce(self) -> str:
        """Index bundle announcements (fleet-wide): ``<prefix>/index/announce``."""
        return announce_topic(self.prefix)


def check_password_transport(cfg: MqttConfig, password: str | None) -> None:
    """Refuse to send a password in clear text over the network.

    Raises:
        MqttError: a password would go to a non-loopback broker without TLS and
            ``mqtt.allow_plaintext_password`` is false.
    """
    if not password or not cfg.username or cfg.tls.enabled or cfg.allow_plaintext_password:
        return
    host = cfg.host.strip("[]").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise MqttError(
            f"mqtt: refusing to send the password for {cfg.username!r} to {cfg.host}:{cfg.port} without TLS; "
            "set mqtt.tls.enabled: true (recommended) or, knowingly, mqtt.allow_plaintext_password: true"
        )


def _check_topic_part(name: str, value: str) -> None:
    if not value or any(c in value for c in "/#+\0"):
        raise MqttError(f"{name}: {value!r} must be non-empty without '/', '#', '+'")


class MqttPublisher:
    """Publishes a device's events and state to one MQTT broker.

    Construction does no I/O; :meth:`start` loads TLS files and starts connecting in the
    background (retrying with back-off forever; connection problems are logged, never raised).
    ``mqtt.enabled`` is the caller's decision: a publisher, once started, always connects.
    Lifecycle: ``start()`` once, ``close()`` once (or use it as a context manager).

    Args:
        cfg: The ``mqtt`` config section.
        device_id: ``service.device_id`` (one topic level).
        outbox: The persistent outbox (owned by the caller, who closes it after :meth:`close`).
        password: From :func:`edge.secrets.read_mqtt_password`; never logged.

    Raises:
        MqttError: an invalid device id or topic prefix.
    """

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox, password: str | None = None) -> None:
        _check_topic_part("service.device_id", device_id)
        check_password_transport(cfg, password)
        self._cfg = cfg
        self._outbox = outbox
        self.topics = Topics(cfg.topic_prefix.rstrip("/"), device_id)
        self.client_id = cfg.client_id or f"namus-edge-{device_id}"
        self._broker = f"{cfg.host}:{cfg.port}"

        # Written by paho's network thread, read by anyone.
        self._events: queue.SimpleQueue[tuple[str, int, str | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._connected = False
        self._closing = False
        self._fail_streak = 0
        self._auth_logged = False
        self._subs_lock = threading.Lock()
        self._subs: dict[str, MessageCallback] = {}

        # Owned by the sender thread only.
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._sent_upto = 0
        self._link_up = False
        self._resend_pending = False

        self._sender: threading.Thread | None = None
        self._started = False
        self._client = self._make_client(password)

    # -- construction ----------------------------------------------------------------------

    def _make_client(self, password: str | None) -> mqtt.Client:
        cfg = self._cfg
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        # paho's own messages (including an ERROR-level line on every failed reconnect) go to
        # DEBUG; this module logs the connection events that matter at their real level.
        paho_logger = logging.getLogger(__name__ + ".paho")
        client.on_log = lambda _client, _userdata, _level, text: paho_logger.debug("%s", text)
        # Room for availability/status beside the outbox window, so paho never queues ours.
        client.max_inflight_messages_set(cfg.max_inflight + 8)
        client.max_queued_messages_set(0)
        # paho types these as int but computes with them as numbers; sub-second values work.
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        elif password:
            logger.warning("A MQTT password credential is set but mqtt.username is empty; the password is not used")
        # The will is registered before connecting: the broker publishes it if we vanish.
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _configure_tls(self) -> None:
        tls = self._cfg.tls
        try:
            paths = mqtt_tls_files(tls)
        except SecretError as exc:
            raise MqttError(str(exc)) from exc
        try:
            self._client.tls_set(
                ca_certs=paths["ca_file"],
                certfile=paths["cert_file"],
                keyfile=paths["key_file"],
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise MqttError(f"mqtt.tls: cannot load {', '.join(p for p in paths.values() if p)}: {exc}") from exc
        self._client.tls_insecure_set(tls.insecure)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in the background) and delivering the outbox.

        Raises:
            MqttError: TLS is enabled and a certificate/key file is missing or invalid.
        """
        if self._started:
            return
        if self._stopping.is_set():
            raise MqttError("this MqttPublisher was closed; create a new one")
        if self._cfg.tls.enabled:
            self._configure_tls()
        self._started = True
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()
        logger.info(
            "MQTT: connecting to %s as %s (TLS %s, MQTT %s); %d message(s) waiting in the outbox",
            self._broker, self.client_id, "on" if self._cfg.tls.enabled else "off", self._cfg.protocol,
            len(self._outbox),
        )
        self._client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        self._client.loop_start()

    @property
    def connected(self) -> bool:
        """True while the broker connection is up (CONNACK accepted)."""
        return self._connected

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every event acknowledged by the broker).

        Args:
            timeout: Seconds to wait at most.

        Returns:
            True when the outbox is empty.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._progress:
            while len(self._outbox) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush within ``timeout``, publish ``offline`` (retained), disconnect, stop the threads.

        Undelivered events stay in the outbox for the next start. Safe to call more than once.
        """
        if not self._started:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        if self._connected and not self.flush(deadline - time.monotonic()):
            logger.warning("MQTT close: %d event(s) not acknowledged in time; kept in the outbox", len(self._outbox))
        if self._connected:
            info = self._client.publish(self.topics.availability, "offline", qos=1, retain=True)
            while not info.is_published() and self._connected and time.monotonic() < deadline:
                time.sleep(0.01)
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join()
            self._sender = None
        self._started = False
        logger.info("MQTT publisher closed; %d message(s) left in the outbox", len(self._outbox))

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ------------------------------------------------------------------------

    def publish_event(self, event: MatchEvent, crop_jpeg: bytes | None = None) -> int:
        """Queue a match event (and its crop, per ``mqtt.face_crop``) for delivery.

        Never drops and never blocks on the network: the event is written durably to the
        outbox, then the sender delivers it when connected.

        Args:
            event: The validated event.
            crop_jpeg: JPEG bytes of the matched face crop (``FF D8`` start), or None. Ignored
                when ``mqtt.face_crop`` is ``off``.

        Returns:
            The outbox sequence number of the event message.

        Raises:
            MqttError: ``event`` is not a MatchEvent or the crop is not JPEG bytes.
            OutboxError: the outbox could not be written.
        """
        if not isinstance(event, MatchEvent):
            raise MqttError(f"publish_event: expected a MatchEvent, got {type(event).__name__}")
        mode = self._cfg.face_crop
        if crop_jpeg is not None and mode != "off":
            if not isinstance(crop_jpeg, (bytes, bytearray)) or not bytes(crop_jpeg[:2]) == b"\xff\xd8":
                raise MqttError("publish_event: crop_jpeg must be JPEG bytes (starting with FF D8)")
        if mode == "inline" and crop_jpeg is not None:
            event = replace(event, crop_jpeg_b64=base64.b64encode(bytes(crop_jpeg)).decode("ascii"))
        elif mode != "inline" and event.crop_jpeg_b64 is not None:
            event = replace(event, crop_jpeg_b64=None)
        messages: list[tuple[str, bytes, int, bool]] = [(self.topics.match, event.to_json().encode("utf-8"), 1, False)]
        if mode == "topic" and crop_jpeg is not None:
            messages.append((self.topics.crop(event.event_id), bytes(crop_jpeg), 1, False))
        seq = self._outbox.put_many(messages)[0]
        logger.info(
            "Match event %s queued (camera %s, case %s, similarity %.3f)",
            event.event_id, event.camera_id, event.case.id_formatted, event.similarity,
        )
        self._wake.set()
        return seq

    def publish_status(self, payload: dict[str, Any]) -> bool:
        """Publish the retained status JSON, only while connected (status is state, not queued).

        Args:
            payload: JSON-serialisable mapping.

        Returns:
            True when handed to the connection; False when disconnected.

        Raises:
            MqttError: ``payload`` is not JSON-serialisable.
        """
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MqttError(f"publish_status: payload is not JSON-serialisable: {exc}") from exc
        if not self._connected:
            return False
        info = self._client.publish(self.topics.status, data, qos=1, retain=True)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        """Subscribe (QoS 1) now if connected and again after every reconnect.

        Args:
            topic: Topic filter, e.g. ``topics.announce``.
            callback: ``callback(topic, payload)`` on paho's network thread; exceptions are
                logged, never propagated into paho (they would stop its network loop).
        """
        if not isinstance(topic, str) or not topic:
            raise MqttError(f"subscribe: invalid topic {topic!r}")

        def deliver(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            try:
                callback(message.topic, bytes(message.payload))
            except Exception:  # a subscriber's bug must not kill paho's network thread
                logger.exception("MQTT subscription callback for %s failed", topic)

        with self._subs_lock:
            self._subs[topic] = callback
            self._client.message_callback_add(topic, deliver)
            if self._connected:
                self._client.subscribe(topic, qos=1)

    # -- paho callbacks (network thread; keep them tiny) ------------------------------------

    def _retry_delay(self) -> float:
        n = max(1, self._fail_streak)
        return float(min(self._cfg.reconnect_min_s * 2 ** (n - 1), self._cfg.reconnect_max_s))

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason_code: ReasonCode, properties: object
    ) -> None:
        if reason_code.is_failure:
            self._fail_streak += 1
            if reason_code.value in _AUTH_REFUSED:
                if not self._auth_logged:
                    logger.error("%s; broker %s, retrying with back-off", AUTH_REFUSED_MESSAGE, self._broker)
                    self._auth_logged = True
                else:
                    logger.debug("MQTT broker %s still refuses the credentials", self._broker)
            else:
                logger.warning(
                    "MQTT broker %s refused the connection: %s; retrying in %.1f s",
                    self._broker, reason_code, self._retry_delay(),
                )
            return
        if self._fail_streak or self._auth_logged:
            logger.info("Connected to MQTT broker %s after %d failed attempt(s)", self._broker, self._fail_streak)
        else:
            logger.info("Connected to MQTT broker %s", self._broker)
        self._fail_streak = 0
        self._auth_logged = False
        self._connected = True
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        with self._subs_lock:
            for topic in self._subs:
                client.subscribe(topic, qos=1)
        self._events.put(("up", 0, None))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._fail_streak += 1
        logger.warning(
            "Cannot reach MQTT broker %s (refused, unreachable, or TLS handshake failed); retrying in %.1f s",
            self._broker, self._retry_delay(),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason_code: ReasonCode, properties: object
    ) -> None:
        was_up = self._connected
        self._connected = False
        self._events.put(("down", 0, None))
        self._wake.set()
        if self._closing:
            logger.info("Disconnected from MQTT broker %s", self._broker)
        elif was_up:
            self._fail_streak = 1
            logger.warning(
                "Lost connection to MQTT broker %s (%s); reconnecting in %.1f s",
                self._broker, reason_code, self._retry_delay(),
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason_code: ReasonCode, properties: object
    ) -> None:
        self._events.put(("puback", mid, str(reason_code) if reason_code.is_failure else None))
        self._wake.set()

    # -- sender thread ---------------------------------------------------------------------

    def _run_sender(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            acked = self._drain_events()
            if acked:
                try:
                    self._outbox.ack_many(acked)
                except OutboxError:
                    logger.exception("MQTT: could not delete acknowledged events (they will be re-sent)")
                with self._progress:
                    self._progress.notify_all()
            if self._stopping.is_set():
                return
            if self._link_up and not self._resend_pending:
                try:
                    self._send_more()
                except OutboxError:
                    logger.exception("MQTT: cannot read the outbox; retrying")
                    time.sleep(1.0)
                except Exception:  # a dead sender would silently stop all alerts: log and go on
                    logger.exception("MQTT: unexpected error while sending the outbox; retrying")
                    time.sleep(1.0)

    def _drain_events(self) -> list[int]:
        acked: list[int] = []
        while True:
            try:
                kind, mid, failure = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "puback":
                seq = self._inflight.pop(mid, None)
                if seq is None:
                    continue  # availability/status, or a duplicate acknowledgement
                if failure is not None:
                    # MQTT 5 only: the broker refused this message (e.g. ACL); re-sending cannot help.
                    logger.error("MQTT broker rejected outbox message seq %d (%s); dropping it", seq, failure)
                acked.append(seq)
            elif kind == "up":
                self._link_up = True
            elif kind == "down":
                self._link_up = False
                # paho keeps unacknowledged messages and re-sends them after the reconnect;
                # nothing newer goes out before they are acknowledged, to keep the order.
                self._resend_pending = bool(self._inflight)
                if self._inflight:
                    logger.info(
                        "MQTT: %d message(s) were not acknowledged when the connection dropped; "
                        "they are re-sent first after the reconnect",
                        len(self._inflight),
                    )
        if not self._inflight:
            self._resend_pending = False
        return acked

    def _send_more(self) -> None:
        room = self._cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for item in self._outbox.peek(room, after=self._sent_upto):
            try:
                info = self._client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            except ValueError as exc:
                logger.error("MQTT: outbox message seq %d cannot be published (%s); dropping it", item.seq, exc)
                self._outbox.ack(item.seq)
                self._sent_upto = item.seq
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                logger.warning("MQTT client queue is full; will retry outbox seq %d", item.seq)
                return
            # MQTT_ERR_NO_CONN: paho keeps the message and sends it after the reconnect.
            self._inflight[info.mid] = item.seq
            self._sent_upto = item.seq
