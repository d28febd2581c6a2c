"""Face embedder: any ArcFace-style ONNX taking an aligned 112x112 face.

The embedding size is read from the model's output; vectors are L2-normalised float32 so
inner product equals cosine similarity (what the FAISS bundle indexes).
"""

from __future__ import annotations

import logging

import numpy as np

from namus_edge.core.errors import ModelError
from namus_edge.models.backends.base import Backend
from namus_edge.models.preprocess import to_blob
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of float (N, D); returns float32 (N, D)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class FaceEmbedder:
    """Batched face embeddings.

    Args:
        backend: loaded embedder model.
        spec: its registry entry (input contract: 112x112, colour order, normalisation).
        max_batch: faces per forward pass.
    """

    def __init__(self, backend: Backend, spec: ModelSpec, max_batch: int = 32) -> None:
        if spec.role != "embedder":
            raise ModelError(f"{spec.name} is a {spec.role}, not an embedder")
        self.backend = backend
        self.spec = spec
        self._input = backend.inputs[0].name
        shape = backend.outputs[0].shape
        self._batch_dynamic = backend.inputs[0].shape[0] is None
        self.max_batch = max_batch if self._batch_dynamic else 1
        dim = shape[-1] if shape else None
        if dim is None:
            dim = int(self.backend.run({self._input: np.zeros((1, 3, 112, 112), np.float32)})[0].shape[-1])
        if spec.output_dim is not None and dim != spec.output_dim:
            raise ModelError(f"{spec.filename}: output has {dim} dimensions, registry declares {spec.output_dim}")
        self.dim = int(dim)

    def warmup(self, runs: int) -> None:
        """Forward passes on zeros (batch 1)."""
        self.backend.warmup({self._input: (1, 3, 112, 112)}, runs)

    def embed(self, aligned_bgr: np.ndarray) -> np.ndarray:
        """Embed aligned faces.

        Args:
            aligned_bgr: uint8 (N, 112, 112, 3) BGR crops aligned to the ArcFace template.

        Returns:
            float32 (N, D) L2-normalised embeddings (D = :attr:`dim`); (0, D) for N = 0.
        """
        n = aligned_bgr.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, n, self.max_batch):
            blob = to_blob(aligned_bgr[start : start + self.max_batch], self.spec.contract)
            out.append(self.backend.run({self._input: blob})[0])
        return l2_normalize(np.concatenate(out, axis=0))
