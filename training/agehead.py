"""A small age head over features the runtime already has, and the model that ships it (PyTorch).

Inputs of the head, per face: the face embedding the embedder computes for matching anyway
(EdgeFace-XS, 512-d, L2-normalised) and the pooled 256-d feature of the *original* InsightFace
2018 gender-age backbone (MODELS.md 2c), averaged over the crop and its mirror image. Both are
frozen, so the head trains in seconds on cached features; neither saw the training crops.

What ships is one ONNX graph: the existing age+sex model (``agesex_utk_v1``, unchanged inside)
side by side with backbone + head; ``age = w * head + (1 - w) * agesex_utk_v1`` and ``p_male``
from ``agesex_utk_v1``. Inputs ``data`` (the ArcFace crop, as for ``agesex_utk_v1``) and
``embedding``.
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

from namus_edge.training.agesex import OPSET, age_balance_weights, seed_everything, to_tensor
from namus_edge.training.backbone import load_backbone

logger = logging.getLogger(__name__)

#: The backbone tensor the head reads (the pooled feature).
FEATURE_TENSOR = "flatten0"
EMBEDDING_INPUT = "embedding"


@dataclass(frozen=True)
class HeadSettings:
    """Hyper-parameters of the head (recorded in the model card)."""

    hidden: int = 128
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-3
    huber_beta: float = 2.0
    seed: int = 20250601
    threads: int = 2


class AgeHead(nn.Module):
    """Standardise -> dropout -> Linear(D, hidden) -> ReLU -> dropout -> Linear(hidden, 1): age in years.

    Args:
        mean, std: float32 (D,) standardisation of the input features (from the training split).
        s: settings (hidden width, dropout).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray, s: HeadSettings) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))
        self.mlp = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(mean.shape[0], s.hidden), nn.ReLU(),
                                 nn.Dropout(s.dropout), nn.Linear(s.hidden, 1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """float32 (N, D) features -> (N,) years."""
        return self.mlp((feat - self.mean) / self.std).squeeze(1)


def head_inputs(embedding: np.ndarray, feat: np.ndarray, feat_flip: np.ndarray) -> np.ndarray:
    """float32 (N, 512 + 256): the embedding, then the mirror-averaged backbone feature."""
    return np.concatenate([embedding.astype(np.float32),
                           0.5 * (feat.astype(np.float32) + feat_flip.astype(np.float32))], axis=1)


def train_head(x: np.ndarray, age: np.ndarray, s: HeadSettings) -> tuple[AgeHead, list[float]]:
    """Train the head on float32 (N, D) inputs and true ages (every 5-year bin weighs the same).

    Seeded and single-process: the same data, settings and thread count give the same weights.
    Returns the head (eval mode) and each epoch's mean loss.
    """
    seed_everything(s.seed, s.threads)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    head = AgeHead(mean, std, s)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    yt = torch.from_numpy(age.astype(np.float32))
    wt = torch.from_numpy(age_balance_weights(age))
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    n = x.shape[0]
    steps = s.epochs * ((n + s.batch_size - 1) // s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=max(steps, 1))
    rng = np.random.default_rng(s.seed)
    history = []
    t0 = time.monotonic()
    for _ in range(s.epochs):
        head.train()
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, s.batch_size):
            idx = torch.from_numpy(order[start:start + s.batch_size])
            loss = (nn.functional.smooth_l1_loss(head(xt[idx]), yt[idx], reduction="none", beta=s.huber_beta)
                    * wt[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / max(n, 1))
    head.eval()
    logger.info("age head: %d epochs on %d faces in %.0f s, final loss %.4f", s.epochs, n, time.monotonic() - t0,
                history[-1] if history else float("nan"))
    return head, history


def predict_head(head: AgeHead, x: np.ndarray) -> np.ndarray:
    """float32 (N,) years from float32 (N, D) head inputs."""
    with torch.no_grad():
        return head.eval()(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy().astype(np.float32)


class HeadDeployed(nn.Module):
    """(crop float32 (N, 3, 112, 112) RGB 0-255, embedding float32 (N, 512)) -> head age (N,)."""

    def __init__(self, features: nn.Module, head: AgeHead) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (self.features(x) + self.features(torch.flip(x, dims=[3])))
        return self.head(torch.cat([embedding, f], dim=1))


def backbone_features(backbone_onnx: Path) -> nn.Sequential:
    """The 2018 backbone up to its pooled feature (``flatten0``), frozen, eval mode."""
    features, _, _, names = load_backbone(backbone_onnx)
    cut = names.index(FEATURE_TENSOR) + 1
    net = nn.Sequential(*list(features)[:cut]).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def predict_deployed(dep: HeadDeployed, aligned_bgr: np.ndarray, embedding: np.ndarray,
                     batch: int = 256) -> np.ndarray:
    """Head age float32 (N,) from uint8 (N, 112, 112, 3) BGR crops and float32 (N, 512) embeddings."""
    out = []
    with torch.no_grad():
        for i in range(0, aligned_bgr.shape[0], batch):
            out.append(dep.eval()(to_tensor(aligned_bgr[i:i + batch]),
                                  torch.from_numpy(embedding[i:i + batch].astype(np.float32))).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _export_head(dep: HeadDeployed, embedding_dim: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(dep.eval(), (torch.zeros(1, 3, 112, 112), torch.zeros(1, embedding_dim)),
                          buf,  # type: ignore[arg-type]
                          dynamo=False, opset_version=OPSET,
                          input_names=["data", EMBEDDING_INPUT], output_names=["age"],
                          dynamic_axes={"data": {0: "N"}, EMBEDDING_INPUT: {0: "N"}, "age": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def export_combined(base_onnx: Path, dep: HeadDeployed, weight: float, embedding_dim: int,
                    metadata: dict[str, str]) -> bytes:
    """ONNX bytes of ``base_onnx`` (an age+sex model: ``data`` -> ``age``, ``p_male``) beside the head.

    Graph: ``data`` float32 [N, 3, 112, 112] RGB 0-255 and ``embedding`` float32 [N, D] ->
    ``age`` = ``weight`` x head + (1 - ``weight``) x base age, float32 [N]; ``p_male`` (the base
    model's), float32 [N]. ``metadata`` goes into ``metadata_props``.
    """
    base = onnx.load(str(base_onnx))
    head = onnx.compose.add_prefix(_export_head(dep, embedding_dim), "head/")
    g = base.graph
    if [o.name for o in g.output][:2] != ["age", "p_male"] or [i.name for i in g.input] != ["data"]:
        raise ValueError(f"{base_onnx}: expected data -> age, p_male")
    for node in g.node:  # the base model's age becomes an intermediate value
        node.output[:] = ["base/age" if o == "age" else o for o in node.output]
    nodes = list(g.node)
    nodes.append(onnx.helper.make_node("Identity", ["data"], ["head/data"]))
    nodes.append(onnx.helper.make_node("Identity", [EMBEDDING_INPUT], [f"head/{EMBEDDING_INPUT}"]))
    nodes.extend(head.graph.node)
    w = np.asarray(weight, np.float32)
    inits = [*g.initializer, *head.graph.initializer,
             onnx.numpy_helper.from_array(w, "mix/w"), onnx.numpy_helper.from_array(np.float32(1.0) - w, "mix/1-w")]
    nodes += [onnx.helper.make_node("Mul", ["head/age", "mix/w"], ["mix/head"]),
              onnx.helper.make_node("Mul", ["base/age", "mix/1-w"], ["mix/base"]),
              onnx.helper.make_node("Add", ["mix/head", "mix/base"], ["age"])]
    emb = onnx.helper.make_tensor_value_info(EMBEDDING_INPUT, onnx.TensorProto.FLOAT, ["N", embedding_dim])
    graph = onnx.helper.make_graph(nodes, "agesex_head", [g.input[0], emb], list(g.output), inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="namus-edge train age-head")
    model.ir_version = base.ir_version
    model.doc_string = metadata.get("description", "")
    for k, v in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()

