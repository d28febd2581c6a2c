"""The ``models`` section: which models run, on which backend, from which cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from namus_edge.core.config.base import StrictModel

MODELS_ENV = "NAMUS_EDGE_MODELS"


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

#: The sex model each preset selects (fills Face.p_male): the CC0 dlib/Cydral classifier in both
#: (adult accuracy on the UTKFace dev set 95.2 % with SCRFD landmarks vs 90.8 % for agesex_utk_v1,
#: docs/age.md).
SEX_MODEL_SETS: dict[str, str] = {"default": "gender_v1", "licence_clean": "gender_v1"}

#: The second age model each preset selects (mixed into the reported age, ``models.age_sex_mix``):
#: the project's own age model (agesex_utk_v1 + an age head over the EdgeFace-XS embedding;
#: non-commercial: UTKFace + InsightFace weights) in the default set; none in the licence-clean set.
AGE2_MODEL_SETS: dict[str, str | None] = {"default": "agesex_utk_v2", "licence_clean": None}

#: The detector each preset uses to score small-face verification crops (``detection.verify_low``);
#: None = the preset's own full-frame detector. det_2.5g (same licence as det_500m) was chosen on one
#: half of FDDB fold 1 and checked on the other (docs/accuracy.md 2b).
VERIFIER_SETS: dict[str, str | None] = {"default": "det_2.5g", "licence_clean": None}


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

    set: ModelSet = Field(
        "default",
        description="Preset: default, licence_clean, or custom (use the names below). Naming a detector/embedder/"
        "age model other than the preset's without set: custom is an error, never silently ignored.",
    )
    detector: str | None = Field(
        None, description="Registry name of the face detector; null = the preset's (set: custom: the default set's)."
    )
    embedder: str | None = Field(
        None, description="Registry name of the face embedder; null = the preset's (set: custom: the default set's)."
    )
    age: str | None = Field(
        "age_v1", description="Registry name of the age model, or null to skip age (a preset accepts only its own)."
    )
    sex: str | None = Field(
        "auto",
        description="Sex model, fills Face.p_male only: auto = the preset's (both presets: gender_v1), a registry "
        "name of a sex or age_sex model (set: custom only), or null to skip sex.",
    )
    age2: str | None = Field(
        "auto",
        description="Second age model (an age_sex model: agesex_utk_v2, agesex_utk_v1), mixed into the reported age "
        "with weight age_sex_mix; it never fills p_male (that is models.sex): auto = the preset's (default: "
        "agesex_utk_v2, licence_clean: none), a registry name (set: custom only), or null for the age model alone.",
    )
    verifier: str | None = Field(
        "auto",
        description="Detector that scores small-face verification crops (used only with detection.verify_low): "
        "auto = the preset's (default: det_2.5g, licence_clean: its own detector), a registry name (set: custom "
        "only), or null = the full-frame detector.",
    )
    age_sex_mix: float = Field(
        0.75, ge=0.0, le=1.0,
        description="Weight of models.age2 in the reported age, the rest from models.age (1 = age2 alone; "
        "unused without age2). Chosen on validation data, docs/age.md.",
    )
    age_sex_mix_min_age: float = Field(
        16.0, ge=0.0, le=100.0,
        description="Faces models.age puts below this age keep its estimate alone (no mixing with age2): "
        "age-v1 is the better child model. Chosen on validation data, docs/age.md.",
    )
    cache_dir: str | None = Field(
        None, description=f"Model cache; default ${MODELS_ENV} or ~/.cache/namus-edge/models."
    )
    age_flip: bool = Field(True, description="Average age over the chip and its mirror image.")
    age_calibration: list[tuple[float, float]] | None = Field(
        default_factory=lambda: list(AGE_CALIBRATION_UTKFACE),
        description="Piecewise-linear (raw, calibrated) age points, raw strictly increasing; null = raw ages.",
    )
    backend: BackendConfig = Field(default_factory=BackendConfig)

    @model_validator(mode="after")
    def _names_agree_with_preset(self) -> ModelsConfig:
        """A preset runs its own models: a different name outside ``set: custom`` is an error.

        Failing (rather than switching to ``custom``) keeps a preset a promise: ``licence_clean``
        can never end up running non-commercial weights because one name was overridden.
        """
        if self.set == "custom":
            return self
        preset = dict(zip(("detector", "embedder", "age"), MODEL_SETS[self.set], strict=True))
        for role, wanted in preset.items():
            given = getattr(self, role)
            if given is not None and given != wanted:
                raise ValueError(
                    f"models.{role}={given} would be ignored: models.set={self.set} runs {role} {wanted}; "
                    f"add models.set=custom to choose models by name (or drop models.{role})"
                )
        for role, wanted_name in (("sex", SEX_MODEL_SETS[self.set]), ("age2", AGE2_MODEL_SETS[self.set])):
            given = getattr(self, role)
            if given not in (None, "auto", wanted_name):
                runs = f"runs {role} {wanted_name}" if wanted_name else f"runs no {role} model"
                raise ValueError(
                    f"models.{role}={given} would be ignored: models.set={self.set} {runs}; "
                    f"add models.set=custom to choose models by name (or use models.{role}=auto / null)"
                )
        wanted_verifier = VERIFIER_SETS[self.set]
        if self.verifier not in (None, "auto", wanted_verifier):
            raise ValueError(
                f"models.verifier={self.verifier} would be ignored: models.set={self.set} verifies crops with "
                f"{wanted_verifier or 'its own detector'}; add models.set=custom to choose models by name "
                "(or use models.verifier=auto / null)"
            )
        return self

    def selected(self) -> tuple[str, str, str | None]:
        """Return (detector, embedder, age) registry names after applying the preset."""
        if self.set == "custom":
            det, emb, _ = MODEL_SETS["default"]
            return self.detector or det, self.embedder or emb, self.age
        det, emb, age = MODEL_SETS[self.set]
        return det, emb, (age if self.age is not None else None)

    def selected_sex(self) -> str | None:
        """Registry name of the sex model after applying the preset (None: no sex estimate)."""
        if self.sex is None:
            return None
        if self.sex == "auto":
            return SEX_MODEL_SETS["default" if self.set == "custom" else self.set]
        return self.sex

    def selected_verifier(self) -> str | None:
        """Registry name of the verification-crop detector after applying the preset (None: the full-frame one)."""
        if self.verifier == "auto":
            return VERIFIER_SETS["default" if self.set == "custom" else self.set]
        return self.verifier

    def selected_age2(self) -> str | None:
        """Registry name of the second age model after applying the preset (None: the age model alone)."""
        if self.age2 is None:
            return None
        if self.age2 == "auto":
            return AGE2_MODEL_SETS["default" if self.set == "custom" else self.set]
        return self.age2

    def selected_all(self) -> list[str]:
        """Every registry name the configuration runs (detector, embedder, age, sex, age2), without repeats."""
        names = [*self.selected(), self.selected_sex(), self.selected_age2()]
        return list(dict.fromkeys(n for n in names if n))

    def resolved_cache_dir(self) -> Path:
        """The model cache directory: config key, else ``$NAMUS_EDGE_MODELS``, else ~/.cache."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get(MODELS_ENV)
        if env:
            return Path(env).expanduser()
        return Path("~/.cache/namus-edge/models").expanduser()
