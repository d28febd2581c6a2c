"""onnxruntime backend with an explicit execution provider (cpu, cuda or tensorrt).

The provider named in config is the one that runs, or loading fails: onnxruntime would
otherwise silently fall back to the CPU, which on a Jetson means a 10x slower camera nobody
notices. The provider that actually runs is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.config import BackendConfig
from namus_edge.core.errors import ModelLoadError
from namus_edge.models.backends.base import Backend, TensorInfo

logger = logging.getLogger(__name__)

_PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_list(cfg: BackendConfig) -> list[tuple[str, dict[str, Any]] | str]:
    """The onnxruntime provider list for a backend config.

    The named provider comes first, then CPU for the nodes it does not support (as
    onnxruntime requires); the backend refuses to run if the named one is not active.
    """
    if cfg.provider == "cpu":
        return ["CPUExecutionProvider"]
    if cfg.provider == "cuda":
        return [("CUDAExecutionProvider", {"device_id": cfg.gpu_device}), "CPUExecutionProvider"]
    trt: dict[str, Any] = {"device_id": cfg.gpu_device, "trt_fp16_enable": cfg.trt_fp16}
    if cfg.trt_engine_cache_dir:
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=cfg.trt_engine_cache_dir,
                   trt_timing_cache_enable=True, trt_timing_cache_path=cfg.trt_engine_cache_dir)
    return [
        ("TensorrtExecutionProvider", trt),
        ("CUDAExecutionProvider", {"device_id": cfg.gpu_device}),
        "CPUExecutionProvider",
    ]


class OnnxRuntimeBackend(Backend):
    """A model run by onnxruntime.

    Args:
        path: the .onnx file (already verified against the registry).
        cfg: provider, threads and TensorRT options.
    """

    def __init__(self, path: Path, cfg: BackendConfig) -> None:
        import onnxruntime as ort

        wanted = _PROVIDER_NAMES[cfg.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise ModelLoadError(
                f"{path.name}: backend.provider={cfg.provider} needs {wanted}, but this onnxruntime "
                f"offers {available}; install onnxruntime-gpu (extra 'gpu') or set models.backend.provider=cpu"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.intra_op_threads
        opts.inter_op_num_threads = cfg.inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # SCRFD exports print benign VerifyOutputSizes warnings at non-640 sizes
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=provider_list(cfg))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{path}: onnxruntime could not load the model: {exc}") from exc
        active = self._session.get_providers()
        if active[0] != wanted:
            raise ModelLoadError(f"{path.name}: asked for {wanted} but onnxruntime runs {active[0]}")
        self.engine = f"onnxruntime:{active[0]}"
        self._inputs = [TensorInfo(i.name, _shape(i.shape), i.type) for i in self._session.get_inputs()]
        self._outputs = [TensorInfo(o.name, _shape(o.shape), o.type) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        logger.info("loaded %s with %s (threads intra=%d inter=%d)", path.name, active[0],
                    cfg.intra_op_threads, cfg.inter_op_threads)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(self._output_names, feeds))


def _shape(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)
