"""The InsightFace 2018 gender-age backbone (MODELS.md 2c) as a trainable PyTorch module.

The ONNX graph is a plain chain (Sub, Mul, 27 x Conv/BatchNormalization/Relu, BatchNormalization,
PRelu, GlobalAveragePool, Flatten, Gemm, BatchNormalization), so it is rebuilt here node by node
with its initializers copied in: no converter package (onnx2torch needs torchvision, which drags
a CUDA build of torch from PyPI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from namus_edge.training.crops import TrainingDataError

#: Width of the pooled feature before the original heads.
FEATURE_DIM = 256
#: Original head: 2 sex logits (index 1 = male) + 100 "age > k" pairs (k = 0..99).
AGE_PAIRS = 100


class Normalize(nn.Module):
    """``(x - 127.5) * 0.0078125`` as in the ONNX graph (input RGB 0-255)."""

    def __init__(self, sub: float, mul: float) -> None:
        super().__init__()
        self.sub = sub
        self.mul = mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.sub) * self.mul


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_backbone(path: Path) -> tuple[nn.Sequential, nn.Linear, nn.BatchNorm1d, list[str]]:
    """Rebuild the 2018 gender-age ONNX model.

    Args:
        path: ``genderage_2018_112.onnx``.

    Returns:
        ``(features, fc, fc_bn)``: ``features`` maps float32 (N, 3, 112, 112) RGB 0-255 to the
        (N, 256) pooled feature; ``fc`` + ``fc_bn`` are the original (256 -> 202) head, so
        ``fc_bn(fc(features(x)))`` equals the ONNX output ``fc1_out``; the last item names the ONNX
        tensor each module of ``features`` produces (to cut the chain at a named tensor).

    Raises:
        TrainingDataError: the graph is not the expected chain.
    """
    model = onnx.load(str(path))
    inits = {i.name: torch.from_numpy(np.array(numpy_helper.to_array(i), dtype=np.float32))
             for i in model.graph.initializer}
    layers: list[nn.Module] = []
    names: list[str] = []
    head: list[nn.Module] = []
    prev = model.graph.input[0].name
    sub = 0.0
    for node in model.graph.node:
        if node.input[0] != prev:
            raise TrainingDataError(f"{path}: node {node.name or node.op_type} does not continue the chain")
        prev = node.output[0]
        a = _attrs(node)
        op = node.op_type
        target = head if head or op == "Gemm" else layers
        if target is layers and op not in ("Sub", "Identity"):
            names.append(node.output[0])
        if op == "Sub":
            sub = float(inits[node.input[1]])
        elif op == "Mul":
            layers.append(Normalize(sub, float(inits[node.input[1]])))
        elif op == "Conv":
            w = inits[node.input[1]]
            pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]  # type: ignore[attr-defined]
            strides = [int(p) for p in a.get("strides", [1, 1])]  # type: ignore[attr-defined]
            group = int(a.get("group", 1))  # type: ignore[call-overload]
            if pads[:2] != pads[2:]:
                raise TrainingDataError(f"{path}: asymmetric padding {pads} is not supported")
            conv = nn.Conv2d(w.shape[1] * group, w.shape[0], (int(w.shape[2]), int(w.shape[3])),
                             stride=(strides[0], strides[1]), padding=(pads[0], pads[1]),
                             groups=group, bias=len(node.input) > 2)
            conv.weight.data.copy_(w)
            if conv.bias is not None:
                conv.bias.data.copy_(inits[node.input[2]])
            target.append(conv)
        elif op == "BatchNormalization":
            g, b, m, v = (inits[n] for n in node.input[1:5])
            eps = float(a.get("epsilon", 1e-5))  # type: ignore[arg-type]
            bn = nn.BatchNorm1d(g.shape[0], eps=eps) if head else nn.BatchNorm2d(g.shape[0], eps=eps)
            bn.weight.data.copy_(g)
            bn.bias.data.copy_(b)
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(m)
            bn.running_var.copy_(v)
            target.append(bn)
        elif op == "Relu":
            target.append(nn.ReLU())
        elif op == "PRelu":
            slope = inits[node.input[1]].reshape(-1)
            pr = nn.PReLU(slope.shape[0])
            pr.weight.data.copy_(slope)
            target.append(pr)
        elif op == "GlobalAveragePool":
            target.append(nn.AdaptiveAvgPool2d(1))
        elif op == "Flatten":
            target.append(nn.Flatten())
        elif op == "Gemm":
            w = inits[node.input[1]]
            if int(a.get("transB", 0)) != 1:  # type: ignore[call-overload]
                raise TrainingDataError(f"{path}: Gemm without transB is not supported")
            fc = nn.Linear(w.shape[1], w.shape[0])
            fc.weight.data.copy_(w)
            fc.bias.data.copy_(inits[node.input[2]])
            head.append(fc)
        elif op == "Identity":
            continue
        else:
            raise TrainingDataError(f"{path}: unsupported op {op}")
    if len(head) != 2 or not isinstance(head[0], nn.Linear) or not isinstance(head[1], nn.BatchNorm1d):
        raise TrainingDataError(f"{path}: expected a Gemm + BatchNormalization head, got {head}")
    if len(names) != len(layers):
        raise TrainingDataError(f"{path}: could not name every layer")
    return nn.Sequential(*layers), head[0], head[1], names


def frozen_features(path: Path, aligned_bgr: np.ndarray, tensor: str, *, flip: bool = False,
                    batch: int = 64, threads: int = 1) -> np.ndarray:
    """The ONNX backbone's activation ``tensor`` for each crop, computed with onnxruntime.

    onnxruntime runs this backbone ~10x faster than PyTorch's CPU kernels (fused depthwise
    convolutions), so the frozen part of the network is evaluated here once and cached.

    Args:
        path: ``genderage_2018_112.onnx``.
        aligned_bgr: uint8 (N, 112, 112, 3) BGR ArcFace crops.
        tensor: graph value to return, e.g. ``flatten0`` (N, 256) or ``conv_13_relu`` (N, 256, 7, 7).
        flip: use the mirror image of every crop.
        batch: crops per forward pass.
        threads: onnxruntime intra-op threads.

    Returns:
        float16 (N, ...) activations (half precision keeps the cache small).
    """
    model = onnx.load(str(path))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, aligned_bgr.shape[0], batch):
        x = aligned_bgr[i:i + batch]
        if flip:
            x = x[:, :, ::-1]
        blob = np.ascontiguousarray(x[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32)
        out.append(sess.run([tensor], {model.graph.input[0].name: blob})[0].astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0,), np.float16)
