"""The ``cameras`` section: one entry per video source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from namus_edge.core.config.base import StrictModel


class CameraConfig(StrictModel):
    """One video source."""

    id: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    source: str = Field(
        ..., min_length=1, description="File path, rtsp:// or http(s):// URL, /dev/videoN, or GStreamer pipeline."
    )
    kind: Literal["auto", "file", "stream", "usb", "gstreamer"] = Field("auto", description="How to open `source`.")
    fps_cap: float | None = Field(None, gt=0, description="Process at most this many frames per second.")
    mask: list[list[tuple[int, int]]] | None = Field(
        None, description="Region(s) of interest as polygons of (x, y) pixels; faces outside are ignored."
    )
    queue_size: int = Field(4, ge=1, le=256, description="Frames buffered between capture and inference.")
    reconnect_initial_s: float = Field(1.0, gt=0, description="Streams: first reconnect delay (s).")
    reconnect_max_s: float = Field(
        60.0, gt=0, description="Streams: longest reconnect delay (s); delays double with full jitter up to it."
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Streams: an open or read waiting longer than this counts as a lost source."
    )
    loop: bool = Field(False, description="Files only: restart at the end (demo).")

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_initial_s ({self.reconnect_initial_s})"
            )
        return self
