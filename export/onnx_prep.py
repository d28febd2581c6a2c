"""TensorRT-ready copies of the registry's ONNX models (runs anywhere, CPU only).

For each model and input size, :func:`prepare_model`:

1. fixes the input shape: detectors get a static ``1x3xHxW`` (SCRFD's outputs have no batch
   axis and declare the 640x640 sizes whatever the input, so one file per supported size);
   embedders and the age model keep a dynamic batch axis (``batch``) for optimisation profiles
   with a static ``HxW``; output shapes are cleared and inferred again;
2. lowers the opset to ``max_opset`` (default 17: JetPack 5's TensorRT 8.5 parser reads
   opset <= 17 and IR <= 8; ``age-v1`` is opset 18);
3. simplifies with onnxslim (constant folding, shape-op elimination), keeping the result only
   when it has fewer nodes;
4. writes metadata (``namus_edge.*``: model, source sha256, input size and shape, colour order,
   mean/std, tool versions) and checks the model with ``onnx.checker`` (full check).

:func:`compare_outputs` runs the original and the prepared model with onnxruntime on the same
inputs; :func:`prepare_and_verify` refuses a copy whose outputs differ beyond float tolerance.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
from onnx import ModelProto, helper, numpy_helper, shape_inference

from namus_edge.core.errors import ModelError
from namus_edge.models.registry import ModelSpec

logger = logging.getLogger(__name__)

META_PREFIX = "namus_edge."
DEFAULT_MAX_OPSET = 17  # TensorRT 8.5 (JetPack 5.1) parser
DEFAULT_MAX_IR = 8  # onnx 1.12, bundled with TensorRT 8.5
#: Detector input sizes prepared by default (width, height): square, 16:9-friendly, small.
DEFAULT_DETECTOR_SIZES: tuple[tuple[int, int], ...] = ((640, 640), (640, 384), (320, 320))
BATCH_PARAM = "batch"
#: Relative/absolute tolerance of prepared-vs-original output equality (float32 graph rewrites).
RTOL = 1e-4
ATOL = 1e-4

_REDUCE_OPS = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})
#: Ops whose opset-18 form only *added* inputs/attributes; the older form is the same operator
#: when those are unused. Values: attributes that must be absent (or default) to lower.
_ADDITIVE_18: dict[str, tuple[str, ...]] = {
    "Split": ("num_outputs",),
    "Resize": ("antialias", "axes", "keep_aspect_ratio_policy"),
    "ScatterElements": (),
    "ScatterND": (),
}


class PrepError(ModelError):
    """A model cannot be made TensorRT-ready as asked (the message says which model and why)."""


@dataclass(frozen=True)
class OutputDiff:
    """Prepared-vs-original difference of one output on the same inputs."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_ref: float

    @property
    def ok(self) -> bool:
        """Within ``ATOL + RTOL * max|reference|``."""
        return self.max_abs <= ATOL + RTOL * self.max_ref


@dataclass
class PrepReport:
    """What :func:`prepare_model` changed."""

    model: str
    size: tuple[int, int]
    batch: int | None
    opset: tuple[int, int]
    ir_version: tuple[int, int]
    nodes: tuple[int, int]
    simplified: bool
    output_shapes: dict[str, tuple[int | str, ...]]
    changes: list[str] = field(default_factory=list)
    diffs: list[OutputDiff] = field(default_factory=list)
    path: Path | None = None


def prepared_filename(model: str, size: tuple[int, int]) -> str:
    """File name of a prepared model: ``{model}_{W}x{H}.onnx``."""
    return f"{model}_{size[0]}x{size[1]}.onnx"


def default_sizes(spec: ModelSpec, detector_sizes: Sequence[tuple[int, int]] = DEFAULT_DETECTOR_SIZES) -> list[
        tuple[int, int]]:
    """Input sizes to prepare for a model: its fixed size, or ``detector_sizes`` for a dynamic detector."""
    if spec.contract.size is not None:
        return [spec.contract.size]
    return list(dict.fromkeys(tuple(s) for s in detector_sizes))  # type: ignore[misc]


def default_batch(spec: ModelSpec) -> int | None:
    """Batch axis of the prepared model: 1 for detectors (one frame at a time), dynamic otherwise."""
    return 1 if spec.role == "detector" else None


def _default_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise PrepError(f"{model.graph.name}: no default-domain opset import")


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in vi.type.tensor_type.shape.dim)


def _graph_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fix_shapes(model: ModelProto, spec: ModelSpec, size: tuple[int, int], batch: int | None) -> list[str]:
    """Set the image input to ``[batch|"batch", 3, H, W]`` and clear inferred shapes.

    Output dims and ``value_info`` are cleared (rank kept) so shape inference recomputes them
    from the new input; SCRFD's stale 640x640 output sizes disappear this way.

    Args:
        model: modified in place.
        spec: registry entry (input name, fixed size if any).
        size: (width, height).
        batch: fixed batch size, or ``None`` for a dynamic ``batch`` axis.

    Returns:
        Human-readable list of changes.

    Raises:
        PrepError: unexpected inputs, or a fixed dimension that contradicts the request.
    """
    inputs = _graph_inputs(model)
    if [i.name for i in inputs] != [spec.contract.name]:
        raise PrepError(f"{spec.name}: expected one input {spec.contract.name!r}, graph has {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise PrepError(f"{spec.name}: input {spec.contract.name!r} has rank {len(dims)}, expected 4 (NCHW)")
    w, h = size
    before = _dims(inputs[0])
    wanted: list[int | str] = [BATCH_PARAM if batch is None else batch, 3, h, w]
    for axis, (dim, want) in enumerate(zip(dims, wanted, strict=True)):
        fixed = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        if fixed is not None and fixed != want and not (axis == 0 and fixed == 1 and want == 1):
            raise PrepError(
                f"{spec.name}: input axis {axis} is fixed to {fixed} in the original graph; cannot set it to {want} "
                f"(supported input: {'x'.join(str(d) for d in before)})"
            )
        dim.Clear()
        if isinstance(want, str):
            dim.dim_param = want
        else:
            dim.dim_value = want
    changes = []
    after = tuple(wanted)
    if before != after:
        changes.append(f"input {spec.contract.name}: {list(before)} -> {list(after)}")
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            d.Clear()
    del model.graph.value_info[:]
    return changes


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _constant_ints(model: ModelProto, name: str) -> list[int] | None:
    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and list(node.output) == [name]:
            value = _attr(node, "value")
            if value is not None:
                return [int(v) for v in numpy_helper.to_array(value.t).reshape(-1)]
    return None


def lower_opset(model: ModelProto, target: int) -> list[str]:
    """Lower the default-domain opset to ``target`` (13..17) in place.

    Ops unchanged between ``target`` and the model's opset are relabelled; opset-18 forms that
    only added an input or attribute are rewritten when equivalent: ``Pad`` without ``axes``,
    ``Reduce*`` with constant ``axes`` (input -> attribute), ``Split``/``Resize``/``Scatter*``
    without the new attributes. Anything else is handed to ``onnx.version_converter``.

    Returns:
        Human-readable list of changes (empty when the opset is already <= ``target``).

    Raises:
        PrepError: an op cannot be expressed at ``target`` (names the ops and nodes).
    """
    current = _default_opset(model)
    if current <= target:
        return []
    if not 13 <= target:
        raise PrepError(f"{model.graph.name}: lowering below opset 13 is not supported (asked {target})")
    changed = [n for n in model.graph.node if n.domain in ("", "ai.onnx")
               and onnx.defs.get_schema(n.op_type, current).since_version > target]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node
           for a in n.attribute):
        changed = [*changed, *(n for n in model.graph.node if n.op_type in ("If", "Loop", "Scan"))]
    problems: list[str] = []
    rewrites = 0
    if current == 18:
        for node in changed:
            problem = _lower_node_18(model, node)
            if problem:
                problems.append(problem)
            else:
                rewrites += 1
    else:
        problems = [f"{n.op_type} ({n.name or n.output[0]})" for n in changed]
    if problems:
        return _convert_with_onnx(model, current, target, problems)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target
    return [f"opset {current} -> {target} ({rewrites} nodes rewritten to their opset-{target} form)"]


def _lower_node_18(model: ModelProto, node: onnx.NodeProto) -> str | None:
    """Rewrite one opset-18 node to its opset-13..17 form; return a problem string or None."""
    label = f"{node.op_type} ({node.name or node.output[0]})"
    if node.op_type == "Pad":
        if len(node.input) >= 4 and node.input[3]:
            return f"{label}: uses the opset-18 'axes' input"
        return None
    if node.op_type in _REDUCE_OPS:
        noop = _attr(node, "noop_with_empty_axes")
        if len(node.input) >= 2 and node.input[1]:
            axes = _constant_ints(model, node.input[1])
            if axes is None:
                return f"{label}: axes are computed at run time"
            if not axes and noop is not None and noop.i:
                return f"{label}: empty axes with noop_with_empty_axes=1"
            del node.input[1:]
            if axes:
                node.attribute.append(helper.make_attribute("axes", axes))
        elif noop is not None and noop.i:
            return f"{label}: noop_with_empty_axes=1 has no opset-17 form"
        if noop is not None:
            node.attribute.remove(noop)
        return None
    if node.op_type in _ADDITIVE_18:
        used = [a for a in _ADDITIVE_18[node.op_type] if _attr(node, a) is not None]
        if node.op_type.startswith("Scatter"):
            red = _attr(node, "reduction")
            if red is not None and red.s.decode() in ("max", "min"):
                used.append(f"reduction={red.s.decode()}")
        return f"{label}: uses {', '.join(used)}" if used else None
    return f"{label}: changed in opset 18"


def _convert_with_onnx(model: ModelProto, current: int, target: int, problems: list[str]) -> list[str]:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the C++ converter raises RuntimeError/ValidationError variants
        raise PrepError(
            f"{model.graph.name}: cannot lower opset {current} -> {target}: {'; '.join(problems)} "
            f"(onnx.version_converter: {str(exc).splitlines()[-1]})"
        ) from exc
    model.CopyFrom(converted)
    return [f"opset {current} -> {target} (onnx.version_converter)"]


def _complete_output_shapes(model: ModelProto, batch: int | None) -> list[str]:
    """Fill output dims shape inference left unknown, from one onnxruntime run on zeros."""
    missing = [o for o in model.graph.output if any(isinstance(d, str) and d != BATCH_PARAM for d in _dims(o))]
    if not missing:
        return []
    import onnxruntime as ort

    inp = _graph_inputs(model)[0]
    shape = [1 if isinstance(d, str) else d for d in _dims(inp)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = sess.run([o.name for o in missing], {inp.name: np.zeros(shape, np.float32)})
    for out, arr in zip(missing, results, strict=True):
        dims = out.type.tensor_type.shape.dim
        while len(dims) < arr.ndim:
            dims.add()
        for axis, (d, n) in enumerate(zip(dims, arr.shape, strict=True)):
            if axis == 0 and batch is None:
                d.Clear()
                d.dim_param = BATCH_PARAM
            elif not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = int(n)
    return [f"output shapes of {[o.name for o in missing]} set from a run at the fixed input size"]


def _simplify(model: ModelProto) -> ModelProto | None:
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # onnxslim raises whatever its passes raise
        raise PrepError(f"{model.graph.name}: onnxslim failed ({exc}); retry with --no-simplify") from exc
    return slim if isinstance(slim, ModelProto) else None


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape a prepared model (written into its metadata)."""
    import onnxslim

    return {"onnx": onnx.__version__, "onnxslim": onnxslim.__version__}


def set_metadata(model: ModelProto, values: dict[str, str]) -> None:
    """Set ``metadata_props`` entries (replacing keys that exist, keeping the others)."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(values)
    helper.set_model_props(model, props)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``namus_edge.*`` metadata of a prepared model (prefix stripped); empty if none."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def prepare_model(
    source: Path,
    spec: ModelSpec,
    size: tuple[int, int],
    *,
    batch: int | None = None,
    max_opset: int = DEFAULT_MAX_OPSET,
    max_ir: int = DEFAULT_MAX_IR,
    simplify: bool = True,
) -> tuple[ModelProto, PrepReport]:
    """Build the TensorRT-ready copy of one registry model at one input size (in memory).

    Args:
        source: the registry ONNX file (its sha256 must equal ``spec.sha256``).
        spec: its registry entry.
        size: input (width, height); must equal the contract size for fixed-size models.
        batch: fixed batch size, or ``None`` for a dynamic ``batch`` axis.
        max_opset: highest default-domain opset allowed (lowered when above).
        max_ir: highest IR version allowed.
        simplify: run onnxslim (kept only when it removes nodes).

    Returns:
        (the prepared model, what changed).

    Raises:
        PrepError: wrong file, impossible size, opset that cannot be lowered, checker failure.
    """
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise PrepError(f"{source}: sha256 {digest} is not the registered {spec.name} ({spec.sha256})")
    if spec.contract.size is not None and tuple(size) != spec.contract.size:
        fw, fh = spec.contract.size
        raise PrepError(f"{spec.name} has a fixed {fw}x{fh} input; {size[0]}x{size[1]} is not supported")
    if spec.role == "detector" and (size[0] % 32 or size[1] % 32 or min(size) <= 0):
        raise PrepError(f"{spec.name}: detector input {size[0]}x{size[1]} must be positive multiples of 32 "
                        "(strides 8/16/32)")
    model = onnx.load_from_string(data)
    opset0, ir0, nodes0 = _default_opset(model), model.ir_version, len(model.graph.node)
    changes = fix_shapes(model, spec, size, batch)
    changes += lower_opset(model, max_opset)
    model = shape_inference.infer_shapes(model, data_prop=True)
    simplified = False
    if simplify:
        slim = _simplify(model)
        if slim is not None and len(slim.graph.node) < len(model.graph.node):
            changes.append(f"onnxslim: {len(model.graph.node)} -> {len(slim.graph.node)} nodes")
            model, simplified = slim, True
        else:
            changes.append("onnxslim: no smaller graph, kept as is")
    changes += _complete_output_shapes(model, batch)
    min_ir = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version > max_ir:
        if min_ir > max_ir:
            raise PrepError(f"{spec.name}: opset {_default_opset(model)} needs IR {min_ir} > allowed IR {max_ir}")
        changes.append(f"IR version {model.ir_version} -> {max_ir}")
        model.ir_version = max_ir
    w, h = size
    shape = "x".join(["N" if batch is None else str(batch), "3", str(h), str(w)])
    c = spec.contract
    meta = {
        "model": spec.name,
        "role": spec.role,
        "family": spec.family,
        "source_file": spec.filename,
        "source_sha256": spec.sha256,
        "input_name": c.name,
        "input_size": f"{w}x{h}",
        "input_shape": shape,
        "layout": "NCHW",
        "color": c.color,
        "mean": ",".join(f"{v:g}" for v in c.mean),
        "std": ",".join(f"{v:g}" for v in c.std),
        "normalisation": "(pixel - mean) / std, float32",
        "batch": "dynamic" if batch is None else str(batch),
        "opset": str(_default_opset(model)),
        "outputs": ",".join(o.name for o in model.graph.output),
        **{f"tool.{k}": v for k, v in tool_versions().items()},
    }
    set_metadata(model, {META_PREFIX + k: v for k, v in meta.items()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise PrepError(f"{spec.name} {w}x{h}: onnx.checker rejects the prepared model: {exc}") from exc
    report = PrepReport(
        model=spec.name,
        size=(w, h),
        batch=batch,
        opset=(opset0, _default_opset(model)),
        ir_version=(ir0, model.ir_version),
        nodes=(nodes0, len(model.graph.node)),
        simplified=simplified,
        output_shapes={o.name: _dims(o) for o in model.graph.output},
        changes=changes,
    )
    logger.info("prepared %s %dx%d: %s", spec.name, w, h, "; ".join(changes))
    return model, report


def compare_outputs(source: Path, prepared: ModelProto | Path, inputs: np.ndarray, batch: int | None) -> list[
        OutputDiff]:
    """Run the original and the prepared model on the same inputs with onnxruntime (CPU).

    Args:
        source: the original ONNX file.
        prepared: the prepared model (or its file).
        inputs: float32 (N, 3, H, W) preprocessed inputs (real images, see :mod:`export.calibration`).
        batch: the prepared model's fixed batch size (inputs are fed one by one when 1), or
            ``None`` (all N in one run).

    Returns:
        One :class:`OutputDiff` per output, over all inputs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # SCRFD's stale output sizes make the original warn at non-640 inputs
    opts.intra_op_num_threads = 1
    ref_sess = ort.InferenceSession(str(source), sess_options=opts, providers=["CPUExecutionProvider"])
    blob = prepared.SerializeToString() if isinstance(prepared, ModelProto) else str(prepared)
    new_sess = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    in_name = ref_sess.get_inputs()[0].name
    names = [o.name for o in ref_sess.get_outputs()]
    new_names = [o.name for o in new_sess.get_outputs()]
    if names != new_names:
        raise PrepError(f"{source.name}: prepared outputs {new_names} differ from the original's {names}")
    step = len(inputs) if batch is None else batch
    ref_runs: list[list[np.ndarray]] = []
    new_runs: list[list[np.ndarray]] = []
    for i in range(0, len(inputs), max(step, 1)):
        chunk = np.ascontiguousarray(inputs[i : i + step], dtype=np.float32)
        ref_runs.append(ref_sess.run(names, {in_name: chunk}))
        new_runs.append(new_sess.run(names, {in_name: chunk}))
    diffs = []
    for k, name in enumerate(names):
        ref = np.concatenate([r[k] for r in ref_runs])
        new = np.concatenate([r[k] for r in new_runs])
        if ref.shape != new.shape:
            raise PrepError(f"{source.name}: output {name} has shape {new.shape}, original {ref.shape}")
        diffs.append(OutputDiff(name, tuple(new.shape), float(np.abs(ref - new).max()), float(np.abs(ref).max())))
    return diffs


def save_model(model: ModelProto, path: Path) -> None:
    """Write a model atomically (``.part`` then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)


def prepare_and_verify(
    source: Path,
    spec: ModelSpec,
    size: tuple[int, int],
    inputs: np.ndarray,
    out_dir: Path | None = None,
    *,
    max_opset: int = DEFAULT_MAX_OPSET,
    max_ir: int = DEFAULT_MAX_IR,
    simplify: bool = True,
) -> tuple[ModelProto, PrepReport]:
    """:func:`prepare_model` at the model's default batch, then check outputs equal the original's.

    Args:
        source: registry ONNX file.
        spec: its registry entry.
        size: input (width, height).
        inputs: float32 (N, 3, H, W) at ``size``, preprocessed per the contract (real images).
        out_dir: when given, the verified model is written there as :func:`prepared_filename`.
        max_opset: see :func:`prepare_model`.
        max_ir: see :func:`prepare_model`.
        simplify: see :func:`prepare_model`.

    Raises:
        PrepError: from :func:`prepare_model`, or outputs differ beyond ``ATOL + RTOL * max|ref|``.
    """
    batch = default_batch(spec)
    model, report = prepare_model(source, spec, size, batch=batch, max_opset=max_opset, max_ir=max_ir,
                                  simplify=simplify)
    report.diffs = compare_outputs(source, model, inputs, batch)
    bad = [d for d in report.diffs if not d.ok]
    if bad:
        raise PrepError(
            f"{spec.name} {size[0]}x{size[1]}: prepared outputs differ from the original: "
            + ", ".join(f"{d.name} max|diff| {d.max_abs:.3g} (max|ref| {d.max_ref:.3g})" for d in bad)
        )
    if out_dir is not None:
        report.path = out_dir / prepared_filename(spec.name, size)
        save_model(model, report.path)
    return model, report
