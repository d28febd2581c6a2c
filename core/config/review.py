"""The ``review`` section: the reviewer console (``namus-edge review serve``)."""

from __future__ import annotations

from pydantic import Field

from namus_edge.core.config.base import StrictModel


class RetentionConfig(StrictModel):
    """How long the console keeps face crops (enforced by a purge loop, not only documented)."""

    rejected_hours: float = Field(
        24.0, gt=0, le=24 * 365, description="Crops of items judged not_a_match or unusable are purged after this."
    )
    unreviewed_days: float = Field(
        14.0, gt=0, le=3650, description="Crops of items nobody reviewed are purged (item expired) after this."
    )
    orphan_crop_hours: float = Field(
        1.0, gt=0, le=24 * 30, description="Crops whose event never arrived are purged after this."
    )
    purge_interval_s: float = Field(300.0, gt=0, le=86400, description="How often the purge runs.")


class HomeAssistantConfig(StrictModel):
    """Home Assistant MQTT discovery (confirmed matches only; no unconfirmed candidate, no crop)."""

    enabled: bool = Field(True, description="Publish retained device-based discovery configs.")
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, pattern=r"^[^#+]+$", description="Home Assistant's discovery prefix."
    )


class ReviewConfig(StrictModel):
    """The reviewer console: web pages, JSON API, MQTT ingest and feedback, retention."""

    host: str = Field("127.0.0.1", description="Listen address (put a TLS reverse proxy in front).")
    port: int = Field(8088, ge=1, le=65535, description="Listen port.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<service.state_dir>/review.sqlite3. PostgreSQL: "
        "postgresql+psycopg://user@host/db."
    )
    bundle_dir: str | None = Field(
        None, description="The operator bundle (with thumbs/) whose case photos the cards show."
    )
    share_group: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="MQTT shared-subscription group: instances with the same group split the events.",
    )
    client_id: str | None = Field(None, description="MQTT client id; default namus-edge-review-<host>-<pid>.")
    confirmations: int = Field(2, ge=1, le=10, description="Distinct reviewers whose 'match' confirms an item.")
    suppress_seconds: float = Field(
        86400.0, gt=0, le=365 * 86400, description="A 'not a match' asks the device to suppress the pair this long."
    )
    track_merge_s: float = Field(
        3600.0, gt=0, description="A later event of the same (device, camera, track) within this joins its item."
    )
    session_secret_file: str | None = Field(
        None, description="Session signing key (created 0600 if missing); default <service.state_dir>/review.secret."
    )
    cookie_secure: bool = Field(True, description="Session cookie only over HTTPS (the reverse proxy's TLS).")
    session_max_age_s: int = Field(8 * 3600, ge=60, description="A login lasts this long.")
    login_max_failures: int = Field(5, ge=1, le=1000, description="Failed logins per client and per user ...")
    login_window_s: float = Field(300.0, gt=0, description="... within this window before logins are refused.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
