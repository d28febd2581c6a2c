"""The console's one MQTT connection: subscriptions (re-made after every reconnect) and QoS 1 publishing.

Match events and crops are subscribed through a shared subscription ``$share/<group>/...``
when ``review.share_group`` is set, so several console instances (one PostgreSQL database)
split the fleet's events; availability and Home Assistant's birth message are subscribed
plainly, since every instance needs them. The console's own availability
(``<prefix>/review-console/availability``) is ``online`` while connected, ``offline`` as its will.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from namus_edge.core.config import MqttConfig
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.secrets import SecretError, mqtt_tls_files

logger = logging.getLogger(__name__)

#: ``callback(topic, payload)`` on paho's network thread.
Handler = Callable[[str, bytes], object]

CONSOLE_NODE = "review-console"


class MqttLinkError(NamusEdgeError):
    """The console's MQTT settings are unusable (e.g. a TLS file is missing); names the key."""


def shared(topic: str, group: str | None) -> str:
    """``$share/<group>/<topic>`` when a group is set, else ``topic``."""
    return f"$share/{group}/{topic}" if group else topic


def console_availability_topic(prefix: str) -> str:
    """``<prefix>/review-console/availability``: ``online``/``offline`` of the console (retained)."""
    return f"{prefix}/{CONSOLE_NODE}/availability"


class MqttLink:
    """A paho client with handlers per topic filter and fire-and-forget QoS 1 publishing.

    Args:
        cfg: the ``mqtt`` section (broker, TLS, credentials, prefix).
        password: the broker password or None.
        client_id: default ``namus-edge-review-<hostname>-<pid>``.
    """

    def __init__(self, cfg: MqttConfig, password: str | None = None, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id or f"namus-edge-review-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=True)
        self.client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
        self.client.max_queued_messages_set(0)
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        self.availability = console_availability_topic(cfg.topic_prefix)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._subs: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._stopping = False
        self.on_connected: list[Callable[[], None]] = []

    def _configure_tls(self) -> None:
        tls = self.cfg.tls
        try:
            paths = mqtt_tls_files(tls)
        except SecretError as exc:
            raise MqttLinkError(str(exc)) from exc
        self.client.tls_set(ca_certs=paths["ca_file"], certfile=paths["cert_file"], keyfile=paths["key_file"],
                            cert_reqs=ssl.CERT_REQUIRED)
        self.client.tls_insecure_set(tls.insecure)

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Route messages matching ``topic`` (a filter, maybe ``$share/...``) to ``handler``; kept across reconnects."""
        def deliver(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:  # a handler's bug must not stop paho's network loop
                logger.exception("review: handler for %s failed", topic)

        plain = topic.split("/", 2)[2] if topic.startswith("$share/") else topic
        with self._lock:
            self._subs[topic] = handler
            self.client.message_callback_add(plain, deliver)
            if self.connected.is_set():
                self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 (paho queues it while disconnected and sends it after the reconnect)."""
        self.client.publish(topic, payload, qos=1, retain=retain)

    def start(self) -> None:
        """Connect in the background (retrying with back-off)."""
        if self.cfg.tls.enabled:
            self._configure_tls()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until subscribed after a connect; True when it happened in time."""
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Publish ``offline``, disconnect and stop the network thread."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.availability, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except RuntimeError:
                pass
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object,
                    properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            logger.warning("review: MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port,
                           reason_code)
            return
        logger.info("review: connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        with self._lock:
            topics = list(self._subs)
        if topics:
            client.subscribe([(t, 1) for t in topics])
        client.publish(self.availability, "online", qos=1, retain=True)
        for fn in list(self.on_connected):
            try:
                fn()
            except Exception:
                logger.exception("review: on-connect action failed")
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object,
                       properties: object) -> None:
        self.connected.clear()
        if self._stopping:
            logger.info("review: disconnected from MQTT broker")
        else:
            logger.warning("review: disconnected from MQTT broker (%s); paho reconnects", reason_code)
