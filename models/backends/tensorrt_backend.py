"""Native TensorRT backend (tensorrt + pycuda): engines built by ``namus-edge export trt``.

Each engine runs in its own execution context on a CUDA stream of the device's retained
primary context: inputs are copied into page-locked host buffers, moved to the GPU with
asynchronous copies, executed with ``execute_async_v3`` (TensorRT >= 8.5) and copied back on
the same stream. Device and host buffers are allocated once for the profile's largest shape;
each call sets the actual input shape (dynamic batch); a larger batch runs in chunks.

A detector may have several engines, one per input size (SCRFD exports are static per size):
:meth:`TensorRTBackend.for_onnx` finds every engine built from the model file for the running
TensorRT version, GPU and ``models.backend.engine_precision``, loads the first and the others
on first use of their input size.

Engines for another TensorRT version or GPU, or whose bytes do not match their manifest, are
refused (:mod:`export.engine_cache`). ``tensorrt``/``pycuda`` are imported only when an engine
is loaded, so CPU machines import this module fine.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.config import BackendConfig
from namus_edge.core.errors import ModelLoadError
from namus_edge.core.extras import require_extra
from namus_edge.core.fsutil import sha256_file
from namus_edge.models.backends.base import Backend, TensorInfo
from namus_edge.models.backends.engine_cache import (
    EngineManifest,
    check_runtime,
    find_engines,
    read_manifest,
    verify_engine_bytes,
)

logger = logging.getLogger(__name__)


def _gpu_modules(device: int) -> tuple[Any, Any, Any]:
    """(tensorrt, pycuda.driver, the device's retained primary context).

    Raises:
        ModelLoadError: tensorrt or pycuda missing, or no such CUDA device.
    """
    feature = "models.backend.kind=tensorrt (on a Jetson JetPack ships it; or set models.backend.kind=onnxruntime)"
    trt = require_extra("tensorrt", "gpu", feature)
    cuda = require_extra("pycuda.driver", "gpu", feature)
    try:
        cuda.init()
        ctx = cuda.Device(device).retain_primary_context()
    except cuda.Error as exc:
        raise ModelLoadError(f"CUDA device {device} is not available: {exc}") from exc
    return trt, cuda, ctx


def trt_logger(trt: Any) -> Any:
    """A ``tensorrt.ILogger`` that forwards TensorRT messages to Python logging."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }
    trt_log = logging.getLogger("tensorrt")

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            trt_log.log(levels.get(severity, logging.INFO), "%s", msg)

    return _Logger()


def runtime_facts(device: int) -> tuple[str, str]:
    """(TensorRT version, GPU name) of this process and CUDA device; imports the GPU modules."""
    trt, cuda, _ = _gpu_modules(device)
    return str(trt.__version__), str(cuda.Device(device).name())


class _Engine:
    """One deserialised engine with its context, stream and buffers (all calls under a lock)."""

    def __init__(self, path: Path, manifest: EngineManifest, trt: Any, cuda: Any, ctx: Any, logger_: Any) -> None:
        data = path.read_bytes()
        verify_engine_bytes(manifest, data, source=str(path))
        self.path = path
        self.manifest = manifest
        self._cuda = cuda
        self._ctx = ctx
        ctx.push()
        try:
            self._runtime = trt.Runtime(logger_)
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise ModelLoadError(f"{path}: TensorRT could not deserialise the engine (see the tensorrt log)")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self.inputs: list[TensorInfo] = []
            self.outputs: list[TensorInfo] = []
            self._host: dict[str, np.ndarray] = {}
            self._device: dict[str, Any] = {}
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            for name in names:
                if trt.nptype(self._engine.get_tensor_dtype(name)) != np.float32:
                    raise ModelLoadError(f"{path}: tensor {name} is not float32")
                is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                if is_input:
                    max_shape = tuple(self._engine.get_tensor_profile_shape(name, 0)[2])
                    self._context.set_input_shape(name, max_shape)
            for name in names:  # output shapes at the largest input shape size the buffers
                shape = tuple(self._context.get_tensor_shape(name))
                size = int(np.prod(shape))
                self._host[name] = cuda.pagelocked_empty(size, dtype=np.float32)
                self._device[name] = cuda.mem_alloc(self._host[name].nbytes)
                self._context.set_tensor_address(name, int(self._device[name]))
                decl = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
                info = TensorInfo(name, decl, "tensor(float)")
                if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    self.inputs.append(info)
                else:
                    self.outputs.append(info)
        finally:
            ctx.pop()
        order = {n: i for i, n in enumerate(manifest.outputs)}
        self.outputs.sort(key=lambda t: order.get(t.name, len(order)))
        self._lock = threading.Lock()

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cuda = self._cuda
        with self._lock:
            self._ctx.push()
            try:
                for info in self.inputs:
                    x = np.ascontiguousarray(feeds[info.name], dtype=np.float32)
                    host = self._host[info.name]
                    if x.size > host.size:
                        raise ModelLoadError(f"{self.path.name}: input {info.name} {x.shape} exceeds the engine's "
                                             "largest profile shape")
                    self._context.set_input_shape(info.name, x.shape)
                    host[: x.size] = x.reshape(-1)
                    cuda.memcpy_htod_async(self._device[info.name], host[: x.size], self._stream)
                shapes = [tuple(self._context.get_tensor_shape(o.name)) for o in self.outputs]
                if not self._context.execute_async_v3(self._stream.handle):
                    raise ModelLoadError(f"{self.path.name}: TensorRT execution failed")
                sizes = [int(np.prod(s)) for s in shapes]
                for o, n in zip(self.outputs, sizes, strict=True):
                    cuda.memcpy_dtoh_async(self._host[o.name][:n], self._device[o.name], self._stream)
                self._stream.synchronize()
                return [self._host[o.name][:n].reshape(s).copy() for o, n, s in zip(self.outputs, sizes, shapes,
                                                                                   strict=True)]
            finally:
                self._ctx.pop()

    def close(self) -> None:
        with self._lock:
            for buf in self._device.values():
                buf.free()
            self._device.clear()
            self._host.clear()
            self._context = None
            self._engine = None


class TensorRTBackend(Backend):
    """Engines built by ``namus-edge export trt`` for one model, run with TensorRT + pycuda.

    Use :meth:`for_onnx` (the factory's path: find engines by cache key) or :meth:`from_engine`.

    Args:
        engines: (engine path, manifest) pairs of one model, already checked against this
            TensorRT version and GPU; the first is loaded now, the others on first use.
        cfg: backend config (``gpu_device``, ``warmup_runs``).
    """

    def __init__(self, engines: list[tuple[Path, EngineManifest]], cfg: BackendConfig) -> None:
        if not engines:
            raise ModelLoadError("TensorRTBackend needs at least one engine")
        self._trt, self._cuda, self._ctx = _gpu_modules(cfg.gpu_device)
        self._logger = trt_logger(self._trt)
        self._pending = {self._hw(m): (p, m) for p, m in engines}
        self._loaded: dict[tuple[int, int], _Engine] = {}
        first_path, first = engines[0]
        self._default = self._load(self._hw(first))
        key = first.key
        self.engine = f"tensorrt:{key.precision}:{key.gpu_name}"
        dynamic_hw = len(self._pending) > 1
        self._inputs = [
            TensorInfo(t.name, (t.shape[0], t.shape[1], None, None) if dynamic_hw else t.shape, t.dtype)
            for t in self._default.inputs
        ]
        logger.info("loaded %s (%s, TensorRT %s, input sizes %s)", first_path.name, self.engine, key.trt_version,
                    ", ".join(f"{w}x{h}" for h, w in self._pending))

    @staticmethod
    def _hw(manifest: EngineManifest) -> tuple[int, int]:
        w, h = manifest.key.input_size
        return (h, w)

    def _load(self, hw: tuple[int, int]) -> _Engine:
        path, manifest = self._pending[hw]
        engine = _Engine(path, manifest, self._trt, self._cuda, self._ctx, self._logger)
        self._loaded[hw] = engine
        return engine

    @classmethod
    def from_engine(cls, engine_path: Path, cfg: BackendConfig) -> TensorRTBackend:
        """Load one engine file (its manifest must sit beside it).

        Raises:
            ModelLoadError: no/invalid manifest, built for another TensorRT/GPU, bytes differ,
                or TensorRT cannot deserialise it.
        """
        if not engine_path.is_file():
            raise ModelLoadError(f"engine {engine_path} does not exist")
        manifest = read_manifest(engine_path)
        trt_version, gpu_name = runtime_facts(cfg.gpu_device)
        check_runtime(manifest, trt_version, gpu_name, source=str(engine_path))
        return cls([(engine_path, manifest)], cfg)

    @classmethod
    def for_onnx(cls, path: Path, cfg: BackendConfig) -> TensorRTBackend:
        """The engines built from the registry model ``path`` in ``cfg.engine_dir``.

        Matches on the file's sha256, ``cfg.engine_precision``, this TensorRT version and GPU.

        Raises:
            ModelLoadError: ``engine_dir`` unset or missing, no engine for this model (the
                message gives the `namus-edge export trt` command), or only engines built
                for another TensorRT version/GPU.
        """
        if not cfg.engine_dir:
            raise ModelLoadError(
                f"{path.name}: models.backend.kind=tensorrt needs models.backend.engine_dir, the folder "
                "`namus-edge export trt --out DIR` wrote"
            )
        engine_dir = Path(cfg.engine_dir).expanduser()
        digest = sha256_file(path)
        trt_version, gpu_name = runtime_facts(cfg.gpu_device)
        engines = find_engines(engine_dir, digest, precision=cfg.engine_precision, trt_version=trt_version,
                               gpu_name=gpu_name)
        if not engines:
            raise ModelLoadError(
                f"{path.name}: no {cfg.engine_precision} TensorRT engine for this model (sha256 {digest[:12]}) "
                f"built with TensorRT {trt_version} on {gpu_name!r} in {engine_dir}; run "
                f"`namus-edge export trt --model NAME --precision {cfg.engine_precision} --out {engine_dir}`"
            )
        return cls(engines, cfg)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._default.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[self._inputs[0].name]
        hw = (int(x.shape[2]), int(x.shape[3]))
        engine = self._loaded.get(hw)
        if engine is None:
            if hw not in self._pending:
                built = ", ".join(f"{w}x{h}" for h, w in self._pending)
                raise ModelLoadError(
                    f"no TensorRT engine for input {hw[1]}x{hw[0]} (built: {built}); run "
                    f"`namus-edge export trt --model {self._default.manifest.key.model} --size {hw[1]}x{hw[0]}`"
                )
            engine = self._load(hw)
        limit = engine.manifest.key.batch.max
        if x.shape[0] <= limit:
            return engine.infer(feeds)
        # more faces than the profile allows: run in chunks of the profile's largest batch
        parts = [engine.infer({**feeds, self._inputs[0].name: x[i : i + limit]}) for i in range(0, x.shape[0], limit)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def close(self) -> None:
        for engine in self._loaded.values():
            engine.close()
        self._loaded.clear()
