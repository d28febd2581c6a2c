"""The one validated configuration tree of namus-edge.

``config.yaml`` is loaded into :class:`Config`; every model forbids unknown keys, so a typo
stops start-up with the key's dotted path and what is allowed. Config objects do no I/O:
reading secrets, opening files and resolving the model cache happen in the code that uses
them (``main()`` and the components), never here.

Overrides: every command accepts ``--set dotted.key=value`` (repeatable); the value is parsed
as YAML, so ``--set detection.input_size=[320,320]`` and ``--set mqtt.tls.enabled=true`` work.

The tree is split by section, one module each (``models``, ``matching`` for detection/quality/
matching, ``cameras``, ``mqtt``, ``index`` for index/sync, ``service``); ``tree`` holds the root
and ``loader`` the YAML and ``--set`` handling. Import from this package.
"""

from namus_edge.core.config.base import ConfigError, StrictModel
from namus_edge.core.config.cameras import CameraConfig
from namus_edge.core.config.index import IndexConfig, NamusApiConfig, SyncConfig
from namus_edge.core.config.loader import apply_overrides, config_from_mapping, load_config, parse_override
from namus_edge.core.config.matching import (
    AgeCheckConfig,
    DetectionConfig,
    MatchingConfig,
    QualityConfig,
    SexCheckConfig,
    StaticFaceConfig,
)
from namus_edge.core.config.models import (
    AGE2_MODEL_SETS,
    AGE_CALIBRATION_UTKFACE,
    MODEL_SETS,
    MODELS_ENV,
    SEX_MODEL_SETS,
    BackendConfig,
    ModelsConfig,
)
from namus_edge.core.config.mqtt import MqttConfig, TlsConfig
from namus_edge.core.config.review import HomeAssistantConfig, RetentionConfig, ReviewConfig
from namus_edge.core.config.service import ServiceConfig
from namus_edge.core.config.tree import Config

__all__ = [
    "AGE2_MODEL_SETS", "AGE_CALIBRATION_UTKFACE", "MODELS_ENV", "MODEL_SETS", "SEX_MODEL_SETS",
    "AgeCheckConfig", "BackendConfig", "CameraConfig", "Config", "ConfigError", "DetectionConfig",
    "IndexConfig", "MatchingConfig", "ModelsConfig", "MqttConfig", "NamusApiConfig", "QualityConfig",
    "HomeAssistantConfig", "RetentionConfig", "ReviewConfig", "ServiceConfig", "SexCheckConfig",
    "StaticFaceConfig", "StrictModel", "SyncConfig", "TlsConfig",
    "apply_overrides", "config_from_mapping", "load_config", "parse_override",
]
