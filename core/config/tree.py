"""The root of the configuration tree: one field per section."""

from __future__ import annotations

from pydantic import Field, field_validator

from namus_edge.core.config.base import StrictModel
from namus_edge.core.config.cameras import CameraConfig
from namus_edge.core.config.index import IndexConfig, SyncConfig
from namus_edge.core.config.matching import DetectionConfig, MatchingConfig, QualityConfig
from namus_edge.core.config.models import ModelsConfig
from namus_edge.core.config.mqtt import MqttConfig
from namus_edge.core.config.review import ReviewConfig
from namus_edge.core.config.service import ServiceConfig


class Config(StrictModel):
    """The whole configuration tree (see config.yaml for documented defaults)."""

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    cameras: list[CameraConfig] = Field(default_factory=list)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    matching: MatchingConfig = Field(default_factory=MatchingConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for cam in cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return cameras
