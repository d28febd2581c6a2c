"""Train the age + sex model on ArcFace-aligned crops (PyTorch; the ``training`` extra).

Starting point: the InsightFace 2018 gender-age backbone (MODELS.md 2c). The early layers stay
frozen and are evaluated once with onnxruntime (cached activations of each crop and its mirror
image); the rest is trained in PyTorch:

* ``head``: only the (256 -> 202) head, on the pooled 256-d feature.
* ``last1``: the last MobileNet block (conv_14, 256 channels at 7x7) + the head.
* ``last2``: the last two blocks (conv_13, conv_14) + the head.
* ``full``: every layer, on the crops themselves with augmentation (:func:`augment`: mirror,
  small scale / shift / rotation, brightness / contrast / saturation); the frozen BatchNorm layers
  are folded into their convolutions first (:func:`fold_batchnorm`, same function; the BatchNorm
  passes were ~12 % of a training step in a profile).
  Slow on a CPU: one epoch over 10k faces took 2-11 min on the shared 2-core box (docs/age.md).

The age output keeps the original ordinal form (100 "age > k" pairs); the exported graph decodes
it to the expected age ``sum_k P(age > k)`` and the sex logits to ``p_male``, optionally averaged
with the mirror image. Everything is seeded and single-process; with the same data, seed and
thread count two runs give the same weights.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from namus_edge.core.fsutil import write_atomic
from namus_edge.training.backbone import AGE_PAIRS, frozen_features, load_backbone

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "data"
OUTPUT_NAMES = ("age", "p_male")


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one run (all recorded in the model card)."""

    mode: str = "last1"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    backbone_lr_scale: float = 0.3
    augment: bool = True
    weight_decay: float = 1e-4
    l1_weight: float = 0.05
    sex_weight: float = 1.0
    balance: bool = True
    seed: int = 20250601
    threads: int = 2


class AgeSexNet(nn.Module):
    """Backbone + (256 -> 202) head: 2 sex logits and 100 ordinal age pairs."""

    def __init__(self, features: nn.Sequential, fc: nn.Linear, fc_bn: nn.BatchNorm1d) -> None:
        super().__init__()
        self.features = features
        self.fc = fc
        self.fc_bn = fc_bn

    def head(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 256) features -> (sex logits (N, 2), age pair logits (N, 100, 2))."""
        z = self.fc_bn(self.fc(feat))
        return z[:, :2], z[:, 2:].reshape(-1, AGE_PAIRS, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))


def decode(sex_logits: torch.Tensor, pair_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(age (N,) = sum_k P(age > k), p_male (N,))."""
    age = torch.softmax(pair_logits, dim=2)[:, :, 1].sum(dim=1)
    return age, torch.softmax(sex_logits, dim=1)[:, 1]


class Deployed(nn.Module):
    """What is exported: float32 (N, 3, 112, 112) RGB 0-255 -> (age (N,), p_male (N,))."""

    def __init__(self, net: AgeSexNet, flip: bool) -> None:
        super().__init__()
        self.net = net
        self.flip = flip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        age, p = decode(*self.net(x))
        if self.flip:
            age_f, p_f = decode(*self.net(torch.flip(x, dims=[3])))
            age, p = 0.5 * (age + age_f), 0.5 * (p + p_f)
        return age, p


def seed_everything(seed: int, threads: int) -> None:
    """Seed torch and fix the thread count and deterministic kernels."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def to_tensor(aligned_bgr: np.ndarray) -> torch.Tensor:
    """uint8 (N, 112, 112, 3) BGR -> float32 (N, 3, 112, 112) RGB 0-255 (the model's contract)."""
    return torch.from_numpy(np.ascontiguousarray(aligned_bgr[..., ::-1].transpose(0, 3, 1, 2))).float()


def _targets(age: np.ndarray) -> torch.Tensor:
    k = np.arange(AGE_PAIRS, dtype=np.float32)
    return torch.from_numpy((age[:, None] > k[None, :]).astype(np.int64))


def age_balance_weights(age: np.ndarray) -> np.ndarray:
    """Per-face weights that make every 5-year age bin (100+ pooled) count equally; mean 1, float32 (N,)."""
    bins = np.minimum(np.asarray(age) // 5, 20).astype(np.int64)
    counts = np.bincount(bins, minlength=21).astype(np.float64)
    w = 1.0 / counts[bins]
    return (w / w.mean()).astype(np.float32)


def _loss(sex_logits: torch.Tensor, pair_logits: torch.Tensor, age: torch.Tensor,
          pairs: torch.Tensor, male: torch.Tensor, weight: torch.Tensor, s: TrainSettings) -> torch.Tensor:
    ordinal = nn.functional.cross_entropy(pair_logits.reshape(-1, 2), pairs.reshape(-1), reduction="none")
    ordinal = (ordinal.reshape(-1, AGE_PAIRS).sum(dim=1) * weight).mean() / 10
    expected, _ = decode(sex_logits, pair_logits)
    l1 = ((expected - age).abs() * weight).mean()
    known = male >= 0
    if bool(known.any()):
        ce = nn.functional.cross_entropy(sex_logits[known], male[known], reduction="none")
        sex = (ce * weight[known]).sum() / weight[known].sum()
    else:
        sex = sex_logits.sum() * 0
    return ordinal + s.l1_weight * l1 + s.sex_weight * sex


#: Where each mode cuts the backbone: the frozen part ends with this ONNX tensor.
#: ``full`` trains from the input on (no frozen part: the "features" are the crops themselves).
MODE_CUTS = {"head": "flatten0", "last1": "conv_13_relu", "last2": "conv_12_relu", "full": ""}


def build(backbone_onnx: Path) -> tuple[AgeSexNet, list[str]]:
    """The network initialised with the 2018 weights, and the ONNX tensor name of each feature layer."""
    features, fc, fc_bn, names = load_backbone(backbone_onnx)
    return AgeSexNet(features, fc, fc_bn), names


def cut_index(names: list[str], mode: str) -> int:
    """Index of the first trainable module of ``features`` in ``mode``."""
    if mode not in MODE_CUTS:
        raise ValueError(f"mode must be one of {', '.join(MODE_CUTS)}, got {mode!r}")
    if mode == "full":
        return 0
    return names.index(MODE_CUTS[mode]) + 1


def crop_inputs(aligned_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crops as the network's input, uint8 (N, 3, 112, 112) RGB, and their mirror images (``full`` mode)."""
    rgb = np.ascontiguousarray(aligned_bgr[..., ::-1].transpose(0, 3, 1, 2))
    return rgb, np.ascontiguousarray(rgb[..., ::-1])


def fold_batchnorm(features: nn.Sequential) -> None:
    """Fold every BatchNorm2d that follows a Conv2d into the convolution (in place; the BN becomes Identity).

    Exact for BatchNorm in eval mode (frozen statistics, as every mode here trains): ``bn(conv(x))``
    equals the new ``conv(x)``. Saves the BatchNorm passes over the large early activations.
    """
    mods = list(features)
    for i in range(1, len(mods)):
        conv, bn = mods[i - 1], mods[i]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                              stride=conv.stride, padding=conv.padding,  # type: ignore[arg-type]
                              groups=conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            assert fused.bias is not None
            fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        features[i - 1] = fused
        features[i] = nn.Identity()


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random jitter of float32 (B, 3, H, W) RGB 0-255 aligned crops (the mirror is chosen by the caller).

    Geometry (one affine warp, border pixels repeated): scale 0.93-1.07, shift up to 4 % of the
    side, rotation up to 8 degrees; colour: brightness x0.8-1.2, contrast x0.8-1.2 about the
    image mean, saturation x0.7-1.3 about the grey value. Parameters come from ``rng`` (seeded runs
    repeat exactly).
    """
    b = x.shape[0]
    scale = rng.uniform(0.93, 1.07, b)
    angle = np.deg2rad(rng.uniform(-8.0, 8.0, b))
    shift = rng.uniform(-0.08, 0.08, (b, 2))  # grid units: the side spans 2
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    col = rng.uniform([0.8, 0.8, 0.7], [1.2, 1.2, 1.3], (b, 3)).astype(np.float32)
    bright, contrast, sat = (torch.from_numpy(col[:, k]).reshape(-1, 1, 1, 1) for k in range(3))
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = grey + (x - grey) * sat
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (mean + (x - mean) * contrast) * bright
    return x.clamp(0.0, 255.0)


def cached_features(backbone_onnx: Path, aligned_bgr: np.ndarray, mode: str, work_dir: Path,
                    key: str) -> tuple[np.ndarray, np.ndarray]:
    """Frozen activations of the crops and of their mirror images (float16), cached in ``work_dir``.

    Args:
        backbone_onnx: ``genderage_2018_112.onnx``.
        aligned_bgr: uint8 (N, 112, 112, 3) BGR ArcFace crops.
        mode: training mode (selects the cut, :data:`MODE_CUTS`).
        work_dir: cache folder.
        key: identity of the crops (e.g. their manifest digest); the file name also holds the cut.
    """
    tensor = MODE_CUTS[mode]
    out = []
    for flip in (False, True):
        path = work_dir / f"feat-{key[:16]}-{tensor}-{'flip' if flip else 'orig'}-{aligned_bgr.shape[0]}.npy"
        if path.is_file():
            out.append(np.load(path))
            continue
        t0 = time.monotonic()
        arr = frozen_features(backbone_onnx, aligned_bgr, tensor, flip=flip)
        buf = io.BytesIO()
        np.save(buf, arr)
        write_atomic(path, buf.getvalue())
        logger.info("frozen %s features of %d crops (flip=%s) in %.0f s", tensor, arr.shape[0], flip,
                    time.monotonic() - t0)
        out.append(arr)
    return out[0], out[1]


def train(net: AgeSexNet, cut: int, feats: np.ndarray, feats_flip: np.ndarray, age: np.ndarray, male: np.ndarray,
          s: TrainSettings) -> list[float]:
    """Train the layers of ``net`` from ``features[cut]`` on, in place; returns each epoch's mean loss.

    Args:
        net: the network (trained in place).
        cut: first trainable module of ``net.features`` (see :func:`cut_index`).
        feats: float16 (N, ...) frozen activations feeding ``features[cut]``; with ``cut == 0``
            (``full`` mode) uint8 (N, 3, 112, 112) RGB crops (:func:`crop_inputs`), which are
            jittered by :func:`augment` when ``s.augment``.
        feats_flip: the same for the mirror images (random mirror augmentation picks one per face).
        age: float32 (N,) years.
        male: int (N,) 1 male, 0 female, -1 unknown.
        s: hyper-parameters, seed and thread count.
    """
    seed_everything(s.seed, s.threads)
    rng = np.random.default_rng(s.seed)
    n = age.shape[0]
    pairs_all = _targets(age)
    age_t = torch.from_numpy(age.astype(np.float32))
    weight_t = torch.from_numpy(age_balance_weights(age) if s.balance else np.ones(n, np.float32))
    male_t = torch.from_numpy(male.astype(np.int64))
    suffix = net.features[cut:]
    for p in net.features[:cut].parameters():
        p.requires_grad_(False)
    params: list[dict] = [{"params": list(net.fc.parameters()) + list(net.fc_bn.parameters()), "lr": s.lr}]
    if list(suffix.parameters()):
        params.append({"params": list(suffix.parameters()), "lr": s.lr * s.backbone_lr_scale})
    opt = torch.optim.AdamW(params, weight_decay=s.weight_decay)
    steps = s.epochs * ((n + s.batch_size - 1) // s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in params], total_steps=max(steps, 1),
                                                pct_start=0.15)
    net.eval()  # BatchNorm statistics stay frozen: small data, and no dependence on batch composition
    history = []
    for epoch in range(s.epochs):
        t0 = time.monotonic()
        order = rng.permutation(n)
        flips = np.asarray(rng.random(n) < 0.5)
        total = 0.0
        for start in range(0, n, s.batch_size):
            idx = order[start:start + s.batch_size]
            x = np.where(flips[idx].reshape((-1,) + (1,) * (feats.ndim - 1)), feats_flip[idx], feats[idx])
            xt = torch.from_numpy(x.astype(np.float32))
            if cut == 0 and s.augment:
                xt = augment(xt, rng)
            sex_logits, pair_logits = net.head(suffix(xt))
            loss = _loss(sex_logits, pair_logits, age_t[idx], pairs_all[idx], male_t[idx], weight_t[idx], s)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.size
            if cut == 0 and (start // s.batch_size) % 20 == 0:
                logger.info("epoch %d batch %d/%d: %.1f s so far", epoch + 1, start // s.batch_size + 1,
                            (n + s.batch_size - 1) // s.batch_size, time.monotonic() - t0)
        history.append(total / max(n, 1))
        logger.info("epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, s.epochs, history[-1], time.monotonic() - t0)
    return history


def predict_features(net: AgeSexNet, cut: int, feats: np.ndarray, feats_flip: np.ndarray | None,
                     batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(age float32 (N,) years, p_male float32 (N,)) from frozen activations (mirror-averaged when given)."""
    suffix = net.features[cut:]
    net.eval()
    ages, ps = [], []
    with torch.no_grad():
        for i in range(0, feats.shape[0], batch):
            a, p = decode(*net.head(suffix(torch.from_numpy(feats[i:i + batch].astype(np.float32)))))
            if feats_flip is not None:
                af, pf = decode(*net.head(suffix(torch.from_numpy(feats_flip[i:i + batch].astype(np.float32)))))
                a, p = 0.5 * (a + af), 0.5 * (p + pf)
            ages.append(a.numpy())
            ps.append(p.numpy())
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ages).astype(np.float32), np.concatenate(ps).astype(np.float32)


def predict(net: AgeSexNet, aligned_bgr: np.ndarray, *, flip: bool, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(age float32 (N,) years, p_male float32 (N,)) of uint8 (N, 112, 112, 3) BGR crops."""
    dep = Deployed(net, flip).eval()
    ages, ps = [], []
    with torch.no_grad():
        for i in range(0, aligned_bgr.shape[0], batch):
            a, p = dep(to_tensor(aligned_bgr[i:i + batch]))
            ages.append(a.numpy())
            ps.append(p.numpy())
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ages).astype(np.float32), np.concatenate(ps).astype(np.float32)


def export_onnx(net: AgeSexNet, flip: bool, metadata: dict[str, str]) -> bytes:
    """ONNX bytes (opset 17) of the deployed model with ``metadata`` in ``metadata_props``.

    Graph: ``data`` float32 [N, 3, 112, 112] RGB 0-255 -> ``age`` float32 [N] years,
    ``p_male`` float32 [N].
    """
    dep = Deployed(net, flip).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(dep, (torch.zeros(1, 3, 112, 112),), buf, dynamo=False,  # type: ignore[arg-type]
                          opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "N"}, "age": {0: "N"}, "p_male": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "namus-edge train age-sex"
    model.doc_string = metadata.get("description", "")
    for k, v in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model.SerializeToString()
