"""The ``mqtt`` section: broker, TLS, credentials and topics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from namus_edge.core.config.base import StrictModel


class TlsConfig(StrictModel):
    """TLS for the MQTT connection."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = Field(None, description="Client certificate (optional, mutual TLS).")
    key_file: str | None = Field(None, description="Client key; may be a systemd credential path.")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(StrictModel):
    """Broker connection and topics."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="Default: namus-edge-<device_id>.")
    topic_prefix: str = Field("namus-edge", min_length=1, pattern=r"^[^#+]+$")
    username: str | None = None
    password_file: str | None = Field(
        None, description="File holding the password (e.g. $CREDENTIALS_DIRECTORY/mqtt-password)."
    )
    password_env: str | None = Field("NAMUS_EDGE_MQTT_PASSWORD", description="Environment variable with the password.")
    allow_plaintext_password: bool = Field(
        False, description="Send the MQTT password without TLS to a broker that is not on this machine. Refused "
        "by default: anyone on the network path could read it. A loopback broker (localhost) is always allowed."
    )
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    status_interval_s: float = Field(30.0, gt=0, description="Period of the retained status message.")
    face_crop: Literal["off", "topic", "inline"] = Field(
        "off", description="Matched face crop JPEG: off, on <prefix>/<device>/match/<event_id>/crop, or inline base64."
    )
    outbox_path: str | None = Field(None, description="SQLite outbox; default <service.state_dir>/outbox.sqlite3.")
    outbox_max_events: int = Field(10000, ge=1, description="Oldest events are dropped (and logged) beyond this.")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay; doubles up to reconnect_max_s.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest delay between reconnect attempts.")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    max_inflight: int = Field(
        20, ge=1, le=1000, description="Outbox events sent but not yet acknowledged (PUBACK) at any time."
    )

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) must not exceed reconnect_max_s ({self.reconnect_max_s})"
            )
        return self
