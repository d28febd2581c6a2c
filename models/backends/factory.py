"""Create the configured backend for a model file."""

from __future__ import annotations

from pathlib import Path

from edge.config import BackendConfig
from models.backends.base import Backend


def create_backend(path: Path, cfg: BackendConfig) -> Backend:
    """Load ``path`` with the backend named by ``cfg.kind`` (imports GPU modules only when used).

    Raises:
        ModelLoadError: the backend cannot load the model or its provider is unavailable.
    """
    if cfg.kind == "tensorrt":
        from models.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend.for_onnx(path, cfg)
    from models.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, cfg)
