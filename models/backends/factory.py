"""Create the configured backend for a model file."""

from __future__ import annotations

from pathlib import Path

from namus_edge.core.config import BackendConfig
from namus_edge.models.backends.base import Backend


def create_backend(path: Path, cfg: BackendConfig) -> Backend:
    """Load ``path`` with the backend named by ``cfg.kind`` (imports GPU modules only when used).

    Raises:
        ModelLoadError: the backend cannot load the model or its provider is unavailable.
    """
    if cfg.kind == "tensorrt":
        from namus_edge.models.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend.for_onnx(path, cfg)
    from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, cfg)
