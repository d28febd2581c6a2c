"""TensorRT engine files: cache keys, the JSON manifest beside each engine, and refusal rules.

A serialized TensorRT engine only runs on the TensorRT version and GPU model that built it;
loading it anywhere else fails deep inside TensorRT or, worse, runs with wrong kernels. So every
engine written by ``namus-edge export trt`` is named by what it depends on (source model
sha256, input shape, precision, TensorRT version, GPU name) and carries a manifest with the
same facts plus its own sha256. :func:`check_runtime` refuses an engine whose manifest does
not match the running TensorRT and GPU, with a message telling the operator what to rebuild.

Nothing here imports TensorRT or CUDA: the facts about the running system are passed in.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from namus_edge.core.errors import ModelLoadError
from namus_edge.core.fsutil import sha256_bytes, write_atomic

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
MANIFEST_FORMAT = 1
ENGINE_SUFFIX = ".engine"
MANIFEST_SUFFIX = ".json"


class EngineMismatchError(ModelLoadError):
    """An engine was built for another TensorRT version, GPU, model or precision."""


class ManifestError(ModelLoadError):
    """An engine manifest is missing, unreadable or lacks a required field."""


def gpu_slug(name: str) -> str:
    """File-name-safe form of a GPU name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"GPU name {name!r} has no letters or digits")
    return slug


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimisation profile over the batch axis (min <= opt <= max, all >= 1)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """Parse ``"MIN:OPT:MAX"`` (or a single ``"N"`` for a fixed batch).

        Raises:
            ValueError: not three positive integers in order (the message quotes the text).
        """
        parts = text.split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"batch profile {text!r} must be MIN:OPT:MAX, e.g. 1:8:32")
        lo, opt, hi = (int(p) for p in parts)
        return cls(lo, opt, hi)

    @property
    def tag(self) -> str:
        """Short form used in file names, e.g. ``b1-8-32``."""
        return f"b{self.min}-{self.opt}-{self.max}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine file depends on; its file name is derived from it.

    Attributes:
        model: registry name, e.g. ``"edgeface_xs"``.
        source_sha256: sha256 of the registry ONNX file the engine was built from.
        input_size: network input (width, height) in pixels.
        batch: optimisation profile of the batch axis (``1:1:1`` for fixed-batch detectors).
        precision: ``fp32``, ``fp16`` or ``int8``.
        trt_version: TensorRT version string, e.g. ``"8.5.2.2"``.
        gpu_name: CUDA device name, e.g. ``"Orin"`` or ``"NVIDIA H100 80GB HBM3"``.
        dla_core: DLA core the engine runs on, or ``None`` for the GPU.
    """

    model: str
    source_sha256: str
    input_size: tuple[int, int]
    batch: BatchProfile
    precision: Precision
    trt_version: str
    gpu_name: str
    dla_core: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.source_sha256):
            raise ValueError(f"source_sha256 must be 64 lowercase hex digits, got {self.source_sha256!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", self.trt_version):
            raise ValueError(f"TensorRT version {self.trt_version!r} is not a version string")

    @property
    def stem(self) -> str:
        """File stem: ``{model}-{sha[:12]}-{W}x{H}-{batch}-{precision}-trt{version}-{gpu}[-dla{n}]``."""
        w, h = self.input_size
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return (
            f"{self.model}-{self.source_sha256[:12]}-{w}x{h}-{self.batch.tag}-{self.precision}"
            f"-trt{self.trt_version}-{gpu_slug(self.gpu_name)}{dla}"
        )

    @property
    def engine_name(self) -> str:
        """Engine file name."""
        return self.stem + ENGINE_SUFFIX

    @property
    def manifest_name(self) -> str:
        """Manifest file name (beside the engine)."""
        return self.stem + MANIFEST_SUFFIX


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: name and shape range (``min == opt == max`` when static)."""

    name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


@dataclass(frozen=True)
class EngineManifest:
    """The JSON written beside an engine.

    Attributes:
        key: what the engine depends on.
        engine_sha256: sha256 of the engine file (checked before deserialising).
        engine_bytes: engine file size.
        prepared_onnx_sha256: sha256 of the TensorRT-ready ONNX that was parsed.
        inputs: input tensors with their profile shapes.
        outputs: output tensor names in the order the backend returns them.
        workspace_mib: builder workspace limit.
        build_seconds: wall time of ``build_serialized_network``.
        compute_capability: e.g. ``"8.7"``.
        calibration: INT8 calibration facts (images, cache file sha256) or empty.
        tools: versions of the tools that built it.
        built_at: UTC ISO-8601 time of the build.
    """

    key: EngineKey
    engine_sha256: str
    engine_bytes: int
    prepared_onnx_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    workspace_mib: int
    build_seconds: float
    compute_capability: str = ""
    calibration: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    built_at: str = ""

    def to_json(self) -> str:
        """Serialise with a format version; stable key order."""
        data: dict[str, Any] = {"format": MANIFEST_FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<manifest>") -> EngineManifest:
        """Parse a manifest.

        Args:
            text: the JSON text.
            source: file name used in error messages.

        Raises:
            ManifestError: invalid JSON, unknown format, or a missing/invalid field (named).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(
                f"{source}: manifest format {data.get('format')!r}, this version reads {MANIFEST_FORMAT}"
            )
        try:
            k = data["key"]
            key = EngineKey(
                model=str(k["model"]),
                source_sha256=str(k["source_sha256"]),
                input_size=(int(k["input_size"][0]), int(k["input_size"][1])),
                batch=BatchProfile(int(k["batch"]["min"]), int(k["batch"]["opt"]), int(k["batch"]["max"])),
                precision=cast(Precision, k["precision"]),
                trt_version=str(k["trt_version"]),
                gpu_name=str(k["gpu_name"]),
                dla_core=None if k.get("dla_core") is None else int(k["dla_core"]),
            )
            return cls(
                key=key,
                engine_sha256=str(data["engine_sha256"]),
                engine_bytes=int(data["engine_bytes"]),
                prepared_onnx_sha256=str(data["prepared_onnx_sha256"]),
                inputs=tuple(
                    TensorSpec(str(t["name"]), tuple(t["min_shape"]), tuple(t["opt_shape"]), tuple(t["max_shape"]))
                    for t in data["inputs"]
                ),
                outputs=tuple(str(o) for o in data["outputs"]),
                workspace_mib=int(data["workspace_mib"]),
                build_seconds=float(data["build_seconds"]),
                compute_capability=str(data.get("compute_capability", "")),
                calibration={str(a): str(b) for a, b in dict(data.get("calibration", {})).items()},
                tools={str(a): str(b) for a, b in dict(data.get("tools", {})).items()},
                built_at=str(data.get("built_at", "")),
            )
        except KeyError as exc:
            raise ManifestError(f"{source}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, IndexError) as exc:
            raise ManifestError(f"{source}: invalid field value ({exc})") from exc


def write_engine(directory: Path, manifest: EngineManifest, engine: bytes) -> Path:
    """Write an engine and its manifest atomically (``.part`` then rename; engine first).

    Args:
        directory: engine directory (created if missing).
        manifest: its ``engine_sha256``/``engine_bytes`` must describe ``engine``.
        engine: the serialized engine.

    Returns:
        Path of the engine file.

    Raises:
        ValueError: the manifest does not describe these bytes.
    """
    if manifest.engine_sha256 != sha256_bytes(engine) or manifest.engine_bytes != len(engine):
        raise ValueError("manifest engine_sha256/engine_bytes do not match the engine bytes")
    directory.mkdir(parents=True, exist_ok=True)
    engine_path = directory / manifest.key.engine_name
    write_atomic(engine_path, engine)
    write_atomic(directory / manifest.key.manifest_name, manifest.to_json().encode())
    logger.info("wrote %s (%d bytes) and its manifest", engine_path, len(engine))
    return engine_path


def manifest_path_for(engine_path: Path) -> Path:
    """The manifest beside an engine file."""
    return engine_path.with_suffix(MANIFEST_SUFFIX)


def read_manifest(engine_path: Path) -> EngineManifest:
    """Read the manifest beside ``engine_path``.

    Raises:
        ManifestError: no manifest, or it is invalid (an engine without one is never loaded).
    """
    path = manifest_path_for(engine_path)
    if not path.is_file():
        raise ManifestError(
            f"{engine_path}: no manifest {path.name} beside it; engines are only loaded with the manifest "
            "written by `namus-edge export trt`"
        )
    return EngineManifest.from_json(path.read_text(encoding="utf-8"), source=str(path))


def check_runtime(manifest: EngineManifest, trt_version: str, gpu_name: str, source: str = "engine") -> None:
    """Refuse an engine built for another TensorRT version or GPU.

    Args:
        manifest: the engine's manifest.
        trt_version: ``tensorrt.__version__`` of the running process.
        gpu_name: name of the CUDA device the engine would run on.
        source: engine file name for the message.

    Raises:
        EngineMismatchError: naming what differs and the command that rebuilds the engine.
    """
    key = manifest.key
    problems = []
    if key.trt_version != trt_version:
        problems.append(f"TensorRT {key.trt_version} (this system runs TensorRT {trt_version})")
    if gpu_slug(key.gpu_name) != gpu_slug(gpu_name):
        problems.append(f"GPU {key.gpu_name!r} (this device is {gpu_name!r})")
    if problems:
        raise EngineMismatchError(
            f"{source}: refusing an engine built for {' and '.join(problems)}; rebuild it here with "
            f"`namus-edge export trt --model {key.model} --precision {key.precision}`"
        )


def verify_engine_bytes(manifest: EngineManifest, engine: bytes, source: str = "engine") -> None:
    """Check an engine's bytes against its manifest.

    Raises:
        EngineMismatchError: size or sha256 differ (truncated copy, or a different engine).
    """
    digest = sha256_bytes(engine)
    if len(engine) != manifest.engine_bytes or digest != manifest.engine_sha256:
        raise EngineMismatchError(
            f"{source}: {len(engine)} bytes with sha256 {digest}, manifest says {manifest.engine_bytes} bytes "
            f"with sha256 {manifest.engine_sha256}; rebuild with `namus-edge export trt --model {manifest.key.model}`"
        )


def find_engines(
    directory: Path,
    source_sha256: str,
    *,
    precision: Precision,
    trt_version: str,
    gpu_name: str,
) -> list[tuple[Path, EngineManifest]]:
    """Engines in ``directory`` built from this model at this precision for this TensorRT and GPU.

    Args:
        directory: the engine directory (``models.backend.engine_dir``).
        source_sha256: sha256 of the registry ONNX file.
        precision: wanted precision.
        trt_version: running TensorRT version.
        gpu_name: running GPU name.

    Returns:
        (engine path, manifest) pairs, sorted by file name; each has passed :func:`check_runtime`.

    Raises:
        ManifestError: ``directory`` does not exist.
        EngineMismatchError: engines for this model and precision exist but every one was built
            for another TensorRT version or GPU (the message says which).
    """
    if not directory.is_dir():
        raise ManifestError(f"engine directory {directory} does not exist; run `namus-edge export trt`")
    found: list[tuple[Path, EngineManifest]] = []
    refused: list[str] = []
    for mpath in sorted(directory.glob("*" + MANIFEST_SUFFIX)):
        try:
            manifest = EngineManifest.from_json(mpath.read_text(encoding="utf-8"), source=str(mpath))
        except ManifestError as exc:
            logger.warning("skipping %s", exc)
            continue
        key = manifest.key
        if key.source_sha256 != source_sha256 or key.precision != precision:
            continue
        engine_path = directory / key.engine_name
        if not engine_path.is_file():
            logger.warning("%s: its engine %s is missing", mpath, engine_path.name)
            continue
        try:
            check_runtime(manifest, trt_version, gpu_name, source=engine_path.name)
        except EngineMismatchError as exc:
            refused.append(str(exc))
            continue
        found.append((engine_path, manifest))
    if not found and refused:
        raise EngineMismatchError("; ".join(refused))
    return found
