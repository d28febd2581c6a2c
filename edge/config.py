"""The one validated configuration tree of namus-edge.

``config.yaml`` is loaded into :class:`Config`; every model forbids unknown keys, so a typo
stops start-up with the key's dotted path and what is allowed. Config objects do no I/O:
reading secrets, opening files and resolving the model cache happen in the code that uses
them (``main()`` and the components), never here.

Overrides: every command accepts ``--set dotted.key=value`` (repeatable); the value is parsed
as YAML, so ``--set detection.input_size=[320,320]`` and ``--set mqtt.tls.enabled=true`` work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

MODELS_ENV = "NAMUS_EDGE_MODELS"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the dotted key."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are an error, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

ModelSet = Literal["default", "licence_clean", "custom"]

#: The model names each preset selects (detector, embedder, age); see models/registry.py.
MODEL_SETS: dict[str, tuple[str, str, str]] = {
    # Best accuracy measured on ../shared/data; InsightFace SCRFD and EdgeFace weights are
    # non-commercial research only.
    "default": ("det_500m", "edgeface_xs", "age_v1"),
    # Licence-clean: YuNet (same weights as OpenCV Zoo's MIT 2023mar file, dynamic-shape export,
    # Apache-2.0), SFace (Apache-2.0), age-v1 (CC0).
    "licence_clean": ("yunet_dynamic", "sface", "age_v1"),
}


class BackendConfig(StrictModel):
    """How ONNX models are executed."""

    kind: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime",
        description="onnxruntime (with `provider`), or tensorrt = native TensorRT engines (tensorrt + pycuda).",
    )
    provider: Literal["cpu", "cuda", "tensorrt"] = Field(
        "cpu", description="onnxruntime execution provider; no silent fallback to another."
    )
    intra_op_threads: int = Field(1, ge=0, le=64, description="onnxruntime intra-op threads (0 = library default).")
    inter_op_threads: int = Field(1, ge=0, le=64, description="onnxruntime inter-op threads (0 = library default).")
    trt_engine_cache_dir: str | None = Field(
        None, description="Engine cache for the onnxruntime TensorRT provider and native engines."
    )
    trt_fp16: bool = Field(True, description="Allow FP16 kernels in TensorRT.")
    engine_dir: str | None = Field(None, description="Directory of engines built by `namus-edge export trt`.")
    engine_precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="kind=tensorrt: precision of the engines to load from engine_dir (export trt --precision)."
    )
    gpu_device: int = Field(0, ge=0, description="CUDA device index.")
    warmup_runs: int = Field(1, ge=0, le=50, description="Forward passes on dummy input at load.")


#: Default age calibration (raw expected age -> age, np.interp, clipped at the ends) for age-v1
#: on the product's age chip with flip averaging. Fitted by `python -m bench.age_study` (docs/age.md):
#: binned medians of true age (16 equal-count bins of the raw estimate, count chosen by inner 2-fold
#: CV) made monotone with weighted PAV, on half A of the UTKFace dev set (1,800 images, split
#: stratified by 5-year age bins, seed 20250601; 900 images). Held-out half B: MAE 7.33 raw -> 7.06.
AGE_CALIBRATION_UTKFACE: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.97, 1.0), (6.93, 9.0), (18.98, 15.0), (23.91, 24.0), (26.68, 26.0), (29.15, 26.5),
    (31.7, 31.0), (34.99, 37.0), (39.38, 41.0), (44.31, 50.0), (50.03, 51.0), (55.11, 60.0),
    (60.87, 62.0), (67.53, 72.0), (76.89, 76.0), (79.99, 84.0),
)


class ModelsConfig(StrictModel):
    """Which models run, and where their files are cached."""

    set: ModelSet = Field("default", description="Preset: default, licence_clean, or custom (use the names below).")
    detector: str = Field("det_500m", description="Registry name of the face detector (set: custom).")
    embedder: str = Field("edgeface_xs", description="Registry name of the face embedder (set: custom).")
    age: str | None = Field("age_v1", description="Registry name of the age model, or null to skip age.")
    cache_dir: str | None = Field(
        None, description=f"Model cache; default ${MODELS_ENV} or ~/.cache/namus-edge/models."
    )
    age_flip: bool = Field(True, description="Average age over the chip and its mirror image.")
    age_calibration: list[tuple[float, float]] | None = Field(
        default_factory=lambda: list(AGE_CALIBRATION_UTKFACE),
        description="Piecewise-linear (raw, calibrated) age points, raw strictly increasing; null = raw ages.",
    )
    backend: BackendConfig = Field(default_factory=BackendConfig)

    def selected(self) -> tuple[str, str, str | None]:
        """Return (detector, embedder, age) registry names after applying the preset."""
        if self.set == "custom":
            return self.detector, self.embedder, self.age
        det, emb, age = MODEL_SETS[self.set]
        return det, emb, (age if self.age is not None else None)

    def resolved_cache_dir(self) -> Path:
        """The model cache directory: config key, else ``$NAMUS_EDGE_MODELS``, else ~/.cache."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get(MODELS_ENV)
        if env:
            return Path(env).expanduser()
        return Path("~/.cache/namus-edge/models").expanduser()


# --------------------------------------------------------------------------------------------
# detection, quality, matching
# --------------------------------------------------------------------------------------------


class DetectionConfig(StrictModel):
    """Face detector settings."""

    input_size: tuple[int, int] = Field(
        (640, 640), description="Detector input (width, height), multiples of 32; e.g. 640x384 for 16:9."
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Minimum detector score.")
    nms_threshold: float = Field(0.4, gt=0.0, le=1.0, description="IoU above which NMS suppresses a box.")
    max_faces: int = Field(50, ge=1, le=1000, description="Keep at most this many faces per image (largest first).")
    pad_retry: bool = Field(
        True,
        description="Photos only (ingest, eval): when no face is found, retry on the photo inside a padded canvas "
        "(SCRFD misses faces filling > ~40% of the frame).",
    )
    pad_retry_score: float = Field(0.3, ge=0.0, le=1.0, description="Score threshold of the padded retry.")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        w, h = v
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise ValueError(f"both sides must be positive multiples of 32, got {w}x{h}")
        return v


class QualityConfig(StrictModel):
    """Face quality gates and the weights of the single quality score."""

    min_face_area: float = Field(600.0, ge=0, description="Minimum bbox area in pixels (peers use 500-750).")
    min_det_score: float = Field(0.6, ge=0.0, le=1.0, description="Minimum detector confidence.")
    min_sharpness: float = Field(
        20.0, ge=0.0, description="Minimum variance of the Laplacian on the aligned 112x112 grey crop."
    )
    max_yaw_deg: float = Field(45.0, gt=0, le=90, description="Maximum |yaw| estimated from landmarks.")
    max_roll_deg: float = Field(35.0, gt=0, le=180, description="Maximum |roll| (eye line angle).")
    min_quality: float = Field(0.3, ge=0.0, le=1.0, description="Minimum combined quality score in [0, 1].")
    good_face_px: float = Field(112.0, gt=0, description="Face side (px) at which the size term saturates at 1.")
    good_sharpness: float = Field(150.0, gt=0, description="Laplacian variance at which the sharpness term saturates.")


class AgeCheckConfig(StrictModel):
    """Age plausibility: estimated age against the case's current age range."""

    enabled: bool = True
    tolerance_years: float = Field(8.0, ge=0, description="Base tolerance around the case's current age range.")
    child_extra_years: float = Field(
        6.0, ge=0, description="Extra tolerance when the person was a child (< 18) at last contact."
    )
    per_gap_year: float = Field(
        0.3, ge=0, description="Extra tolerance per year since last contact (older photos, wider window)."
    )
    max_tolerance_years: float = Field(25.0, ge=0, description="Upper bound of the total tolerance.")


class MatchingConfig(StrictModel):
    """Decision rules from search results to a match event."""

    threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity for a candidate match; null = the embedder's measured default "
        "(EdgeFace-XS 0.40, SFace 0.46: ~1e-5 false accepts per different-person pair, docs/accuracy.md).",
    )
    margin: float = Field(0.05, ge=0.0, le=2.0, description="Required lead of the best case over the second best.")
    top_k: int = Field(5, ge=1, le=100, description="Cases retrieved per face.")
    confirm_frames: int = Field(3, ge=1, le=1000, description="Frames of a track that must agree before an event.")
    cooldown_s: float = Field(300.0, ge=0, description="At most one event per (camera, case) in this window.")
    track_max_age_s: float = Field(2.0, gt=0, description="A track unseen this long is closed.")
    track_iou: float = Field(0.3, ge=0, le=1, description="Minimum IoU to continue a track.")
    track_embed_sim: float = Field(0.3, ge=-1, le=1, description="Minimum cosine to re-associate by embedding.")
    faces_per_track: int = Field(5, ge=1, le=100, description="Best-quality faces kept per track for voting.")
    age_check: AgeCheckConfig = Field(default_factory=AgeCheckConfig)


# --------------------------------------------------------------------------------------------
# cameras
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# mqtt
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# index, sync, service
# --------------------------------------------------------------------------------------------


class NamusApiConfig(StrictModel):
    """The (undocumented) NamUs JSON API used by `index build --source api`."""

    base_url: str = "https://www.namus.gov/api"
    user_agent: str = "namus-edge index builder (+https://github.com/namus-edge/namus-edge)"
    concurrency: int = Field(6, ge=1, le=16)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0, description="Cap on one retry delay (also on a server's Retry-After).")
    page_size: int = Field(
        2000, ge=1, le=10000, description="Search `take` per request; NamUs caps at 10000 and times out above ~2000."
    )
    states: list[str] | None = Field(None, description="Limit to these state names (default: all).")
    store_dir: str | None = Field(None, description="Resumable download store; default <service.state_dir>/namus-api.")


CaseSetCode = Literal["MP", "UP", "UCP"]
ALL_CASE_SETS: tuple[CaseSetCode, ...] = ("MP", "UP", "UCP")


class IndexConfig(StrictModel):
    """Building and searching the NamUs bundle."""

    bundle: str | None = Field(None, description="Bundle directory the edge searches (e.g. <state>/index/current).")
    case_sets: list[CaseSetCode] = Field(default_factory=lambda: list(ALL_CASE_SETS))
    categories: list[str] = Field(
        default_factory=lambda: ["FacialCaseId", "ActualPhoto", "AgeProgression", "Composite", "ArtistRendering"],
        description="Image categories run through the face detector.",
    )
    flat_max: int = Field(
        80_000, ge=1, description="Exact (flat) search up to this many vectors; beyond, a PQ fast scan of all "
        "vectors with an exact fp16 re-rank (bench/search.py)."
    )
    flat_fp16: bool = Field(True, description="Store flat vectors as fp16 (half the memory, same ranking).")
    search_threads: int = Field(
        1, ge=1, le=64, description="FAISS (OpenMP) threads while the edge searches; one face at a time is fastest "
        "on 1, and more threads contend with the models on a busy device (bench/search.py)."
    )
    thumbnails: bool = Field(True, description="Keep 20%-padded face thumbnails in the operator bundle.")
    thumbnail_px: int = Field(160, ge=32, le=1024)
    min_face_px: int = Field(20, ge=1, description="Smallest face side accepted from a case photo.")
    center_margin: float = Field(
        0.8, gt=0, le=1, description="Several faces: a runner-up larger than this fraction of the chosen face "
        "marks the photo ambiguous."
    )
    workers: int = Field(2, ge=1, le=64)
    api: NamusApiConfig = Field(default_factory=NamusApiConfig)


class SyncConfig(StrictModel):
    """Fetching signed bundles onto the device."""

    url: str | None = Field(None, description="Base URL of a published bundle tree (…/latest.json lives there).")
    state_dir: str = Field("/var/lib/namus-edge/index", description="versions/<v>/ and the `current` symlink.")
    pubkeys: list[str] = Field(default_factory=list, description="Pinned operator Ed25519 public key files.")
    keep_versions: int = Field(3, ge=1, le=100)
    max_bytes: int = Field(2_000_000_000, ge=1, description="Refuse bundles larger than this.")
    timeout_s: float = Field(30.0, gt=0)
    interval_s: float = Field(3600.0, gt=0, description="Timer period (systemd timer), informative.")
    on_announce: bool = Field(True, description="The running service syncs when an MQTT announcement arrives.")


class ServiceConfig(StrictModel):
    """The long-running service."""

    device_id: str = Field("edge-01", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    state_dir: str = Field("/var/lib/namus-edge", description="Outbox and runtime state.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drain_timeout_s: float = Field(10.0, gt=0, description="SIGTERM: finish and flush within this bound.")
    watchdog_stall_s: float = Field(
        30.0, gt=0, description="No pipeline progress for this long stops the watchdog pings."
    )
    batch_max_faces: int = Field(32, ge=1, le=512, description="Faces embedded in one batch (across cameras).")
    index_poll_s: float = Field(5.0, gt=0, description="How often the bundle path is checked for a new version.")
    debug_save_frames: str | None = Field(
        None, description="Debug only: save frames with matches to this directory. Off (null) in production."
    )


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

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for cam in cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return cameras


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def match_threshold(config: Config) -> float:
    """The effective ``matching.threshold``: the configured value, else the embedder's default.

    Raises:
        ConfigError: no threshold is configured and the embedder has no measured default.
    """
    if config.matching.threshold is not None:
        return float(config.matching.threshold)
    from models.registry import get_spec

    spec = get_spec(config.models.selected()[1])
    if spec.match_threshold is None:
        raise ConfigError(f"matching.threshold: set it explicitly; embedder {spec.name} has no measured default")
    return float(spec.match_threshold)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(Config, e["loc"][:-1])
            if parent is not None:
                msg += f"; allowed keys: {', '.join(sorted(parent.model_fields))}"
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    """Follow a pydantic error location to the sub-model class at that path, if any."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = None
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                nxt = c
                break
            for inner in getattr(c, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        current = nxt
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``dotted.key=value`` into the key path and the YAML-parsed value.

    Raises:
        ConfigError: if there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping (in place) and return it.

    A list element is addressed by its index (``cameras.0.fps_cap=5``).
    """
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError) as exc:
                    raise ConfigError(f"--set {'.'.join(parts)}: no list element {path}") from exc
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {path} is not a mapping")
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"--set {'.'.join(parts)}: no list element {'.'.join(parts)}") from exc
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: parent is not a mapping")
    return data


def config_from_mapping(data: Mapping[str, Any] | None, source: str = "<mapping>") -> Config:
    """Validate a raw mapping into a :class:`Config`.

    Raises:
        ConfigError: with one line per invalid key, each naming its dotted path.
    """
    try:
        return Config.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config file (default: the packaged default config) and apply overrides.

    Args:
        path: YAML file; ``None`` uses the built-in defaults (config.yaml documents exactly these;
            a test keeps the two equal).
        overrides: ``dotted.key=value`` strings, applied in order.

    Raises:
        ConfigError: the file is missing, unreadable, not a YAML mapping, or invalid.
    """
    if path is None:
        return config_from_mapping(apply_overrides({}, overrides), "<built-in defaults>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    apply_overrides(data, overrides)
    return config_from_mapping(data, str(p))
