"""Sex estimates (``Face.p_male``): the dlib/Cydral classifier or the project's age+sex model.

Two model kinds fill the same number, the probability that a face is male:

* ``gender_v1`` (role ``sex``, CC0): 2-class softmax on a 32x32 dlib chip. The chip is the age
  chip (64x64, same geometry, padding 0.2) halved with area averaging, so no extra warp runs.
* ``agesex_utk_v1`` (role ``age_sex``, trained by ``namus-edge train age-sex``): the ArcFace
  112x112 crop the embedder already uses in, ``age`` (years) and ``p_male`` out, mirror averaging
  inside the graph.
* ``agesex_utk_v2`` (role ``age_sex``, ``namus-edge train age-head``): ``agesex_utk_v1`` beside an
  age head that also reads the face's embedding (input ``embedding``, from the embedder its
  registry entry names).

In the presets the age+sex models supply a second age only (``models.age2``); ``p_male`` comes
from ``gender_v1`` (``models.sex``), the better sex model measured (docs/age.md).

Sex is hard to see on young children: consumers threshold ``max(p, 1 - p)`` per age band
(docs/age.md gives the measured thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from namus_edge.core.errors import ModelError
from namus_edge.models.backends.base import Backend
from namus_edge.models.preprocess import to_blob
from namus_edge.models.registry import ModelSpec

#: Input name of age+sex models that also read the face embedding (``agesex_utk_v2``).
EMBEDDING_INPUT = "embedding"


@dataclass(frozen=True)
class SexEstimate:
    """Per-face outputs of a sex model.

    Attributes:
        p_male: float32 (N,) probability in [0, 1] that each face is male.
        age: float32 (N,) age in years when the model also estimates age (role ``age_sex``), else None.
    """

    p_male: np.ndarray
    age: np.ndarray | None


class SexEstimator:
    """Batched sex (and, for ``age_sex`` models, age) estimates.

    Args:
        backend: loaded model.
        spec: its registry entry (role ``sex`` or ``age_sex``).
        max_batch: faces per forward pass.
    """

    def __init__(self, backend: Backend, spec: ModelSpec, *, max_batch: int = 64) -> None:
        if spec.role not in ("sex", "age_sex"):
            raise ModelError(f"{spec.name} is a {spec.role}, not a sex model")
        self.backend = backend
        self.spec = spec
        self.max_batch = max_batch
        self._input = backend.inputs[0].name
        self._outputs = [o.name for o in backend.outputs]
        if spec.role == "age_sex" and self._outputs[:2] != ["age", "p_male"]:
            raise ModelError(f"{spec.filename}: expected outputs age, p_male, got {self._outputs}")
        emb_in = [i for i in backend.inputs if i.name == EMBEDDING_INPUT]
        self.needs_embedding = bool(emb_in)
        self._embedding_dim: int = (emb_in[0].shape[-1] if emb_in else None) or 512
        if self.needs_embedding and not spec.extra.get("embedder"):
            raise ModelError(f"{spec.name} reads face embeddings but its registry entry names no embedder")

    @property
    def estimates_age(self) -> bool:
        """Whether the model also gives an age."""
        return self.spec.role == "age_sex"

    def warmup(self, runs: int) -> None:
        """Forward passes on zeros (batch 1)."""
        size = self.spec.contract.size or (112, 112)
        shapes: dict[str, tuple[int, ...]] = {self._input: (1, 3, size[1], size[0])}
        if self.needs_embedding:
            shapes[EMBEDDING_INPUT] = (1, self._embedding_dim)
        self.backend.warmup(shapes, runs)

    @property
    def embedder(self) -> str | None:
        """Registry name of the embedder whose embeddings the model reads (None: it reads none)."""
        return self.spec.extra.get("embedder") if self.needs_embedding else None

    def estimate(self, aligned_bgr: np.ndarray, age_chips_bgr: np.ndarray,
                 embeddings: np.ndarray | None = None) -> SexEstimate:
        """Estimates for N faces.

        Args:
            aligned_bgr: uint8 (N, 112, 112, 3) BGR ArcFace crops (used by ``age_sex`` models).
            age_chips_bgr: uint8 (N, 64, 64, 3) BGR age chips (used by ``sex`` models, halved to 32x32).
            embeddings: float32 (N, D) L2-normalised embeddings of the same faces by :attr:`embedder`;
                required when :attr:`needs_embedding`, ignored otherwise.

        Returns:
            p_male float32 (N,), and age float32 (N,) years for ``age_sex`` models.
        """
        n = aligned_bgr.shape[0]
        if n != age_chips_bgr.shape[0]:
            raise ValueError(f"{n} aligned crops but {age_chips_bgr.shape[0]} age chips")
        if self.needs_embedding and (embeddings is None or embeddings.shape[0] != n):
            raise ValueError(f"{self.spec.name} needs the {n} faces' embeddings by {self.embedder}, got "
                             f"{None if embeddings is None else embeddings.shape}")
        if n == 0:
            return SexEstimate(np.zeros(0, np.float32), np.zeros(0, np.float32) if self.estimates_age else None)
        p_parts, a_parts = [], []
        for start in range(0, n, self.max_batch):
            if self.estimates_age:
                feeds = {self._input: to_blob(aligned_bgr[start:start + self.max_batch], self.spec.contract)}
                if self.needs_embedding and embeddings is not None:
                    feeds[EMBEDDING_INPUT] = np.ascontiguousarray(embeddings[start:start + self.max_batch],
                                                                  np.float32)
                age, p = self.backend.run(feeds)[:2]
                a_parts.append(np.asarray(age, np.float32).reshape(-1))
                p_parts.append(np.asarray(p, np.float32).reshape(-1))
            else:
                chips = age_chips_bgr[start:start + self.max_batch]
                size = self.spec.contract.size or (32, 32)
                small = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in chips])
                probs = self.backend.run({self._input: to_blob(small, self.spec.contract)})[0]
                p_parts.append(np.asarray(probs, np.float32)[:, 1])  # labels: female, male
        p_male = np.clip(np.concatenate(p_parts), 0.0, 1.0)
        return SexEstimate(p_male, np.concatenate(a_parts) if a_parts else None)


def mix_ages(age_model: np.ndarray | None, age_sex_model: np.ndarray | None, weight: float,
             min_age: float = 0.0) -> np.ndarray | None:
    """The reported age: ``weight * age_sex_model + (1 - weight) * age_model`` (either alone when one is None).

    Args:
        age_model: float32 (N,) years from the age model (calibrated), or None.
        age_sex_model: float32 (N,) years from an age+sex model, or None.
        weight: in [0, 1], the age+sex model's share.
        min_age: faces the age model puts below this age keep the age model's estimate alone
            (age-v1 is the better child model, docs/age.md).

    Returns:
        float32 (N,) years, or None when neither estimate exists.
    """
    if age_sex_model is None:
        return age_model
    if age_model is None:
        return age_sex_model.astype(np.float32)
    mixed = weight * age_sex_model + (1.0 - weight) * age_model
    return np.where(age_model < min_age, age_model, mixed).astype(np.float32)
