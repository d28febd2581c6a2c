"""TensorRT engines from the TensorRT-ready ONNX (TensorRT Python API; needs an NVIDIA GPU).

:func:`plan_build` validates a request on any machine (impossible requests fail here with a
clear message: INT8 without calibration images, DLA off a Jetson, a batch profile for a
fixed-batch detector, an unsupported size); :func:`build_engine` runs TensorRT: optimisation
profile over the batch axis, workspace limit, persistent timing cache, FP16, INT8 with an
entropy calibrator fed from a folder of face photos (its cache kept beside the engines), and
writes the engine with its manifest (:mod:`export.engine_cache`).

No precision is silently downgraded: a GPU without fast FP16/INT8 is an error.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.extras import require_extra
from namus_edge.export.calibration import MIN_CALIBRATION_IMAGES, CropMode, batches, list_images, load_calibration_set
from namus_edge.models.backends.engine_cache import (
    PRECISIONS,
    BatchProfile,
    EngineKey,
    EngineManifest,
    Precision,
    TensorSpec,
    sha256_bytes,
    write_engine,
)
from namus_edge.models.backends.tensorrt_backend import trt_logger
from namus_edge.models.detector import FaceDetector
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: Default batch profiles (min:opt:max) of the batched models: a camera frame rarely holds more
#: than 8 faces; 32 covers a crowd and the photo-ingest path.
DEFAULT_BATCH = BatchProfile(1, 8, 32)
FIXED_BATCH = BatchProfile(1, 1, 1)
DEFAULT_WORKSPACE_MIB = 1024
TIMING_CACHE_NAME = "timing.cache"


class TrtBuildError(NamusEdgeError):
    """An engine cannot be built as asked (the message says why and what to change)."""


@dataclass(frozen=True)
class BuildPlan:
    """A validated engine build.

    Attributes:
        spec: registry entry of the model.
        size: network input (width, height).
        batch: batch-axis optimisation profile (``1:1:1`` for detectors).
        precision: fp32, fp16 or int8.
        calib_dir: folder of face photos (INT8 only).
        calib_crop: ``resize`` (folder holds face crops) or ``align`` (detect + align).
        workspace_mib: builder workspace limit.
        dla_core: Jetson DLA core, or ``None`` for the GPU.
        out_dir: engine directory.
        timing_cache: timing cache file (read if present, written after the build).
    """

    spec: ModelSpec
    size: tuple[int, int]
    batch: BatchProfile
    precision: Precision
    calib_dir: Path | None
    calib_crop: CropMode
    workspace_mib: int
    dla_core: int | None
    out_dir: Path
    timing_cache: Path


def is_jetson(root: Path = Path("/")) -> bool:
    """Whether this machine is an NVIDIA Jetson (L4T): ``/etc/nv_tegra_release`` or the device-tree model."""
    if (root / "etc" / "nv_tegra_release").is_file():
        return True
    model = root / "proc" / "device-tree" / "model"
    try:
        return "jetson" in model.read_bytes().decode(errors="replace").lower()
    except OSError:
        return False


def plan_build(
    spec: ModelSpec,
    *,
    precision: str,
    out_dir: Path,
    size: tuple[int, int] | None = None,
    batch: BatchProfile | None = None,
    calib_dir: Path | None = None,
    calib_crop: CropMode = "resize",
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    dla_core: int | None = None,
    timing_cache: Path | None = None,
    jetson: bool | None = None,
) -> BuildPlan:
    """Validate an engine request (no GPU needed).

    Args:
        spec: the model's registry entry.
        precision: ``fp32``, ``fp16`` or ``int8``.
        out_dir: engine directory.
        size: input (width, height); detectors with a dynamic input need it, fixed-size models
            default to (and must equal) their contract size.
        batch: batch profile; default ``1:8:32`` for embedders/age, ``1:1:1`` for detectors.
        calib_dir: folder of face photos for INT8 calibration.
        calib_crop: how calibration photos become inputs (see :mod:`export.calibration`).
        workspace_mib: builder workspace limit in MiB (>= 16).
        dla_core: Jetson DLA core index.
        timing_cache: timing cache file; default ``out_dir/timing.cache``.
        jetson: override of :func:`is_jetson` (tests).

    Raises:
        TrtBuildError: the request is impossible; the message says what to change.
    """
    if precision not in PRECISIONS:
        raise TrtBuildError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    prec: Precision = precision
    if prec == "int8" and calib_dir is None:
        raise TrtBuildError(
            f"INT8 for {spec.name} needs calibration data: pass --calib DIR, a folder of at least "
            f"{MIN_CALIBRATION_IMAGES} face photos like the ones the camera will see (no silent FP16 fallback)"
        )
    if prec != "int8" and calib_dir is not None:
        raise TrtBuildError(f"--calib is only used for --precision int8 (asked {prec})")
    if calib_crop == "align" and spec.role == "detector":
        raise TrtBuildError(f"--calib-crop align is for embedders and the age model, not the detector {spec.name}")
    if calib_dir is not None:
        found = len(list_images(calib_dir))  # CalibrationError when the folder is missing
        if found < MIN_CALIBRATION_IMAGES:
            raise TrtBuildError(f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} face images in "
                                f"{calib_dir}, found {found}")
    if dla_core is not None:
        if not (jetson if jetson is not None else is_jetson()):
            raise TrtBuildError(
                f"--dla-core {dla_core}: DLA cores exist only on Jetson AGX/NX modules (Xavier, Orin); "
                f"this machine ({platform.machine()}) is not a Jetson. Leave --dla-core out to build for the GPU"
            )
        if dla_core < 0:
            raise TrtBuildError(f"--dla-core must be >= 0, got {dla_core}")
        if prec == "fp32":
            raise TrtBuildError("DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla-core")
    fixed = spec.contract.size
    if fixed is not None:
        if size is not None and tuple(size) != fixed:
            raise TrtBuildError(f"{spec.name} has a fixed {fixed[0]}x{fixed[1]} input; --size {size[0]}x{size[1]} "
                                "is not supported")
        size = fixed
    elif size is None:
        raise TrtBuildError(
            f"{spec.name} has a dynamic input: pass --size WxH (e.g. 640x640, the detection.input_size)"
        )
    w, h = size
    if w <= 0 or h <= 0 or (spec.role == "detector" and (w % 32 or h % 32)):
        raise TrtBuildError(f"--size {w}x{h}: detector sizes must be positive multiples of 32")
    if spec.role == "detector":
        if batch is not None and batch != FIXED_BATCH:
            raise TrtBuildError(
                f"{spec.name} is built for one frame at a time (batch 1:1:1; SCRFD outputs have no batch axis); "
                f"--batch {batch.min}:{batch.opt}:{batch.max} is not supported"
            )
        batch = FIXED_BATCH
    elif batch is None:
        batch = DEFAULT_BATCH
    if workspace_mib < 16:
        raise TrtBuildError(f"--workspace-mib must be at least 16, got {workspace_mib}")
    return BuildPlan(
        spec=spec,
        size=(w, h),
        batch=batch,
        precision=prec,
        calib_dir=calib_dir,
        calib_crop=calib_crop,
        workspace_mib=workspace_mib,
        dla_core=dla_core,
        out_dir=out_dir,
        timing_cache=timing_cache or out_dir / TIMING_CACHE_NAME,
    )


def calibration_cache_path(plan: BuildPlan, trt_version: str, image_set: str) -> Path:
    """Calibration cache file: keyed by model sha256, input size, TensorRT version and image set."""
    w, h = plan.size
    return plan.out_dir / (
        f"{plan.spec.name}-{plan.spec.sha256[:12]}-{w}x{h}-trt{trt_version}-calib-{image_set[:12]}.cache"
    )


def cuda_device(index: int) -> tuple[Any, Any]:
    """(pycuda driver module, the device's retained primary context, not yet pushed).

    Raises:
        TrtBuildError: pycuda missing or no such device.
    """
    cuda = require_extra("pycuda.driver", "gpu", "building TensorRT engines")
    try:
        cuda.init()
        dev = cuda.Device(index)
    except cuda.Error as exc:
        raise TrtBuildError(f"CUDA device {index} is not available: {exc}") from exc
    return cuda, dev


def _make_calibrator(trt: Any, cuda: Any, data: np.ndarray, batch_size: int, cache: Path) -> Any:
    """An IInt8EntropyCalibrator2 that feeds ``data`` (N, 3, H, W) float32 in batches of ``batch_size``."""
    chunks = list(batches(data, batch_size))

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._device = cuda.mem_alloc(chunks[0].nbytes)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= len(chunks):
                return None
            cuda.memcpy_htod(self._device, chunks[self._next])
            self._next += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file():
                logger.info("using INT8 calibration cache %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: bytes) -> None:
            tmp = cache.with_name(cache.name + ".part")
            tmp.write_bytes(bytes(data))
            tmp.replace(cache)
            logger.info("wrote INT8 calibration cache %s", cache)

    return _Calibrator()


def build_engine(
    plan: BuildPlan, onnx_bytes: bytes, *, gpu_device: int = 0, calib_detector: FaceDetector | None = None
) -> tuple[Path, EngineManifest]:
    """Build, serialise and store one engine (needs TensorRT, pycuda and an NVIDIA GPU).

    Args:
        plan: from :func:`plan_build`.
        onnx_bytes: the TensorRT-ready ONNX (:func:`export.onnx_prep.prepare_model`) for ``plan.size``.
        gpu_device: CUDA device index.
        calib_detector: face detector for ``calib_crop="align"``.

    Returns:
        (engine path, its manifest).

    Raises:
        TrtBuildError: TensorRT missing, parse failure, precision unsupported by the GPU,
            calibration problems, or a failed build.
    """
    trt = require_extra("tensorrt", "gpu", "building TensorRT engines (JetPack ships TensorRT)")
    cuda, dev = cuda_device(gpu_device)
    ctx = dev.retain_primary_context()
    ctx.push()
    try:
        return _build(trt, cuda, dev, plan, onnx_bytes, calib_detector)
    finally:
        ctx.pop()


def _build(
    trt: Any, cuda: Any, dev: Any, plan: BuildPlan, onnx_bytes: bytes, detector: FaceDetector | None
) -> tuple[Path, EngineManifest]:
    spec, (w, h) = plan.spec, plan.size
    gpu_name = str(dev.name())
    cc = ".".join(str(v) for v in dev.compute_capability())
    log = trt_logger(trt)
    builder = trt.Builder(log)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # TRT 8; implied in TRT 10
    if explicit is not None:
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtBuildError(f"{spec.name}: TensorRT cannot parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    shapes = [(n, 3, h, w) for n in (plan.batch.min, plan.batch.opt, plan.batch.max)]
    profile.set_shape(inp.name, *shapes)
    config.add_optimization_profile(profile)
    if plan.precision in ("fp16", "int8"):
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise TrtBuildError(f"{gpu_name} has no fast FP16; build --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    calibration: dict[str, str] = {}
    if plan.precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            raise TrtBuildError(f"{gpu_name} has no fast INT8; build --precision fp16")
        if plan.calib_dir is None:  # plan_build guarantees it; kept for a clear message if bypassed
            raise TrtBuildError("INT8 needs --calib DIR")
        data, image_set = load_calibration_set(plan.calib_dir, spec, plan.size, crop=plan.calib_crop,
                                               detector=detector)
        cache = calibration_cache_path(plan, trt.__version__, image_set)
        batch_size = max(1, min(plan.batch.opt, len(data)))
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, cuda, data, batch_size, cache)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(inp.name, *[(batch_size, 3, h, w)] * 3)
        config.set_calibration_profile(calib_profile)
        calibration = {"images": str(len(data)), "image_set_sha256": image_set, "folder": str(plan.calib_dir),
                       "crop": plan.calib_crop, "cache": cache.name}
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    cache_bytes = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    timing = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing, ignore_mismatch=False)
    logger.info("building %s %dx%d %s batch %s on %s (TensorRT %s)", spec.name, w, h, plan.precision,
                plan.batch.tag, gpu_name, trt.__version__)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise TrtBuildError(f"{spec.name}: TensorRT failed to build the engine (see the tensorrt log above)")
    engine = bytes(memoryview(serialized))
    tmp = plan.timing_cache.with_name(plan.timing_cache.name + ".part")
    tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    tmp.replace(plan.timing_cache)
    key = EngineKey(
        model=spec.name,
        source_sha256=spec.sha256,
        input_size=plan.size,
        batch=plan.batch,
        precision=plan.precision,
        trt_version=trt.__version__,
        gpu_name=gpu_name,
        dla_core=plan.dla_core,
    )
    outputs = tuple(network.get_output(i).name for i in range(network.num_outputs))
    manifest = EngineManifest(
        key=key,
        engine_sha256=sha256_bytes(engine),
        engine_bytes=len(engine),
        prepared_onnx_sha256=sha256_bytes(onnx_bytes),
        inputs=(TensorSpec(inp.name, *shapes),),
        outputs=outputs,
        workspace_mib=plan.workspace_mib,
        build_seconds=round(seconds, 3),
        compute_capability=cc,
        calibration=calibration,
        tools={"tensorrt": trt.__version__, "python": platform.python_version()},
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = write_engine(plan.out_dir, manifest, engine)
    logger.info("built %s in %.1f s (%d bytes)", path.name, seconds, len(engine))
    return path, manifest
