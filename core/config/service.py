"""The ``service`` section: the long-running device service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namus_edge.core.config.base import StrictModel


class ServiceConfig(StrictModel):
    """The long-running service."""

    device_id: str = Field("edge-01", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    state_dir: str = Field("/var/lib/namus-edge", description="Outbox and runtime state.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drain_timeout_s: float = Field(10.0, gt=0, description="SIGTERM: finish and flush within this bound.")
    watchdog_stall_s: float = Field(
        20.0, gt=0, description="The inference loop not turning for this long stops the watchdog pings (keep it "
        "below WatchdogSec/2 of the unit, 30 s). Camera outages do not count: the loop turns without frames."
    )
    batch_max_faces: int = Field(32, ge=1, le=512, description="Faces embedded in one batch (across cameras).")
    index_poll_s: float = Field(5.0, gt=0, description="How often the bundle path is checked for a new version.")
    debug_save_crops: str | None = Field(
        None, description="Debug only: save the matched face crop (never the whole frame) of each match to this "
        "directory. Off (null) in production."
    )
    debug_max_files: int = Field(100, ge=1, le=100_000, description="Most debug crops kept (oldest deleted first).")
    debug_retention_h: float = Field(
        24.0, gt=0, le=24 * 90,
        description="Debug crops older than this many hours are deleted (enforced at every save).",
    )
