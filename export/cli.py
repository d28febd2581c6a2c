"""``namus-edge export onnx|trt|check``: TensorRT-ready ONNX, TensorRT engines, parity checks.

``onnx`` runs anywhere (CPU); ``trt`` and ``check`` need an NVIDIA GPU with TensorRT and
pycuda. onnx/onnxslim/TensorRT are imported inside the handlers, so the root CLI starts on a
device without the export tools.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from namus_edge.core.config import BackendConfig, Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.extras import require_extra
from namus_edge.models.registry import REGISTRY, ModelSpec, get_spec, resolve

if TYPE_CHECKING:
    from namus_edge.models.detector import FaceDetector

logger = logging.getLogger(__name__)

#: Synthetic images used to verify a prepared model when no --images folder is given.
_RANDOM_IMAGES = 4


class ExportUsageError(NamusEdgeError):
    """A command-line value of ``namus-edge export`` is invalid."""


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` into (width, height).

    Raises:
        ExportUsageError: not two positive integers separated by ``x``.
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ExportUsageError(f"size {text!r} must be WIDTHxHEIGHT, e.g. 640x384")
    return int(parts[0]), int(parts[1])


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``export`` command group."""
    p = sub.add_parser("export", help="TensorRT-ready ONNX, TensorRT engines, parity checks", parents=[parent])
    esub = p.add_subparsers(dest="export_command", metavar="ACTION")
    esub.required = True

    op = esub.add_parser("onnx", parents=[parent],
                         help="write TensorRT-ready copies of the registry models (fixed shapes, opset, metadata)")
    op.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    op.add_argument("--model", action="append", default=[], metavar="NAME",
                    help="only this model (repeatable; default: every registry model)")
    op.add_argument("--sizes", default=None, metavar="WxH[,WxH...]",
                    help="detector input sizes (default: detection.input_size, 640x640, 640x384, 320x320)")
    op.add_argument("--images", type=Path, default=None, metavar="DIR",
                    help="real photos to verify outputs on (default: seeded random images)")
    op.add_argument("--max-opset", type=int, default=17, help="highest opset (TensorRT 8.5: 17)")
    op.add_argument("--max-ir", type=int, default=8, help="highest ONNX IR version (TensorRT 8.5: 8)")
    op.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    op.add_argument("--json", action="store_true", help="print the report as JSON")
    op.set_defaults(func=_onnx)

    tp = esub.add_parser("trt", parents=[parent], help="build a TensorRT engine for one model (needs a GPU)")
    tp.add_argument("--model", required=True, metavar="NAME", help=f"one of {', '.join(REGISTRY)}")
    tp.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    tp.add_argument("--calib", type=Path, default=None, metavar="DIR", help="folder of face photos (INT8)")
    tp.add_argument("--calib-crop", choices=["resize", "align"], default="resize",
                    help="calibration photos are face crops (resize) or photos to detect and align (align)")
    tp.add_argument("--batch", default=None, metavar="MIN:OPT:MAX", help="batch profile (embedder/age; default 1:8:32)")
    tp.add_argument("--size", default=None, metavar="WxH", help="detector input (default: detection.input_size)")
    tp.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace limit (MiB)")
    tp.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson only)")
    tp.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="engine folder (default: models.backend.engine_dir)")
    tp.add_argument("--timing-cache", type=Path, default=None, metavar="FILE", help="default: OUT/timing.cache")
    tp.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                    help="a file written by `export onnx` (default: prepare the registry model now)")
    tp.set_defaults(func=_trt)

    cp = esub.add_parser("check", parents=[parent],
                         help="compare an engine with the original ONNX (onnxruntime CPU) on real photos")
    cp.add_argument("--model", required=True, metavar="NAME")
    cp.add_argument("--engine", required=True, type=Path, metavar="FILE")
    cp.add_argument("--images", required=True, type=Path, metavar="DIR", help="real photos with faces")
    cp.add_argument("--limit", type=int, default=50, help="use at most this many photos")
    cp.set_defaults(func=_check)


def _model_file(config: Config, name: str) -> tuple[ModelSpec, Path]:
    return get_spec(name), resolve(name, config.models.resolved_cache_dir())


def _verification_inputs(spec: ModelSpec, size: tuple[int, int], images: Path | None) -> tuple[np.ndarray, str]:
    from namus_edge.export.calibration import list_images, load_inputs

    if images is not None:
        paths = list_images(images, limit=16)
        if not paths:
            raise ExportUsageError(f"--images {images}: no .jpg/.png/... files")
        data, _ = load_inputs(paths, spec, size)
        return data, f"{len(paths)} photos"
    from namus_edge.export.calibration import model_input

    rng = np.random.default_rng(0)
    w, h = size
    data = np.stack([model_input(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), spec, size)
                     for _ in range(_RANDOM_IMAGES)])
    return data, f"{_RANDOM_IMAGES} random images"


def _require_export_extra(feature: str) -> None:
    """Fail with one line naming the extra when onnx/onnxslim are missing (they come with ``[export]``)."""
    for module in ("onnx", "onnxslim"):
        require_extra(module, "export", feature)


def _onnx(args: argparse.Namespace, config: Config) -> int:
    _require_export_extra("namus-edge export onnx")
    from namus_edge.export.onnx_prep import DEFAULT_DETECTOR_SIZES, default_sizes, prepare_and_verify

    names = list(args.model) or list(REGISTRY)
    detector_sizes = ([parse_size(s) for s in args.sizes.split(",")] if args.sizes
                      else [tuple(config.detection.input_size), *DEFAULT_DETECTOR_SIZES])
    report = []
    for name in names:
        spec, source = _model_file(config, name)
        sizes = default_sizes(spec, detector_sizes)  # type: ignore[arg-type]
        for size in sizes:
            inputs, what = _verification_inputs(spec, size, args.images)
            _, rep = prepare_and_verify(source, spec, size, inputs, args.out, max_opset=args.max_opset,
                                        max_ir=args.max_ir, simplify=not args.no_simplify)
            worst = max(d.max_abs for d in rep.diffs)
            report.append({"model": name, "size": f"{size[0]}x{size[1]}", "file": str(rep.path),
                           "opset": list(rep.opset), "ir": list(rep.ir_version), "nodes": list(rep.nodes),
                           "max_abs_diff": worst, "verified_on": what, "changes": rep.changes,
                           "outputs": {k: list(v) for k, v in rep.output_shapes.items()}})
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'model':<14} {'size':<8} {'opset':<7} {'IR':<5} {'nodes':<9} {'max|diff|':<10} file")
    for r in report:
        print(f"{r['model']:<14} {r['size']:<8} {r['opset'][0]}->{r['opset'][1]:<4} {r['ir'][0]}->{r['ir'][1]:<2} "
              f"{r['nodes'][0]}->{r['nodes'][1]:<4} {r['max_abs_diff']:<10.2g} {r['file']}")
    print(f"{len(report)} files written to {args.out}, each verified against the original with onnxruntime "
          f"({report[0]['verified_on'] if report else '-'})")
    return 0


def _engine_dir(args: argparse.Namespace, backend: BackendConfig) -> Path:
    if args.out is not None:
        return Path(args.out)
    if backend.engine_dir:
        return Path(backend.engine_dir).expanduser()
    raise ExportUsageError("pass --out DIR or set models.backend.engine_dir")


def _trt(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.export.trt_build import build_engine, plan_build
    from namus_edge.models.backends.engine_cache import BatchProfile

    spec = get_spec(args.model)
    try:
        batch = BatchProfile.parse(args.batch) if args.batch else None
    except ValueError as exc:
        raise ExportUsageError(f"--batch: {exc}") from exc
    size = parse_size(args.size) if args.size else None
    if size is None and spec.role == "detector" and spec.contract.size is None:
        size = tuple(config.detection.input_size)  # type: ignore[assignment]
    plan = plan_build(spec, precision=args.precision, out_dir=_engine_dir(args, config.models.backend), size=size,
                      batch=batch, calib_dir=args.calib, calib_crop=args.calib_crop,
                      workspace_mib=args.workspace_mib, dla_core=args.dla_core, timing_cache=args.timing_cache)
    onnx_bytes = _prepared_bytes(args, config, spec, plan.size)
    detector = _cpu_detector(config) if args.calib_crop == "align" else None
    path, manifest = build_engine(plan, onnx_bytes, gpu_device=config.models.backend.gpu_device,
                                  calib_detector=detector)
    print(f"engine:   {path}")
    print(f"manifest: {path.with_suffix('.json')}")
    print(f"built in {manifest.build_seconds:.1f} s on {manifest.key.gpu_name} (TensorRT {manifest.key.trt_version}), "
          f"{manifest.engine_bytes / 1e6:.1f} MB, {manifest.key.precision}, batch {manifest.key.batch.tag}")
    return 0


def _prepared_bytes(args: argparse.Namespace, config: Config, spec: ModelSpec, size: tuple[int, int]) -> bytes:
    _require_export_extra("namus-edge export trt")
    from namus_edge.export.onnx_prep import prepare_and_verify, read_metadata

    if args.onnx is not None:
        meta = read_metadata(args.onnx)
        if meta.get("source_sha256") != spec.sha256:
            raise ExportUsageError(f"--onnx {args.onnx}: not prepared from {spec.name} "
                                   f"(metadata source_sha256 {meta.get('source_sha256')!r}); run `export onnx`")
        if meta.get("input_size") != f"{size[0]}x{size[1]}":
            raise ExportUsageError(
                f"--onnx {args.onnx}: input size {meta.get('input_size')}, asked {size[0]}x{size[1]}"
            )
        return Path(args.onnx).read_bytes()
    _, source = _model_file(config, spec.name)
    inputs, _ = _verification_inputs(spec, size, None)
    model, _ = prepare_and_verify(source, spec, size, inputs)
    return bytes(model.SerializeToString())


def _cpu_detector(config: Config) -> FaceDetector:
    """The configured detector on onnxruntime CPU (aligns faces for calibration and parity)."""
    from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend
    from namus_edge.models.detector import FaceDetector

    name = config.models.selected()[0]
    spec, path = _model_file(config, name)
    return FaceDetector(OnnxRuntimeBackend(path, BackendConfig()), spec, config.detection)


def _check(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.export.calibration import list_images, read_image
    from namus_edge.export.parity import format_table, run_parity
    from namus_edge.models.backends.engine_cache import read_manifest
    from namus_edge.models.backends.onnxruntime_backend import OnnxRuntimeBackend
    from namus_edge.models.backends.tensorrt_backend import TensorRTBackend

    spec, source = _model_file(config, args.model)
    if not args.engine.is_file():
        raise ExportUsageError(f"--engine {args.engine} does not exist")
    manifest = read_manifest(args.engine)
    if manifest.key.source_sha256 != spec.sha256:
        raise ExportUsageError(f"{args.engine} was built from {manifest.key.model} "
                               f"(sha256 {manifest.key.source_sha256[:12]}), not {spec.name}")
    paths = list_images(args.images, limit=args.limit)
    if not paths:
        raise ExportUsageError(f"--images {args.images}: no photos")
    images = [(p.name, read_image(p)) for p in paths]
    ref = OnnxRuntimeBackend(source, BackendConfig())
    test = TensorRTBackend.from_engine(args.engine, config.models.backend)
    detector = _cpu_detector(config) if spec.role != "detector" else None
    rows = run_parity(spec, ref, test, images, manifest.key.precision, size=manifest.key.input_size,
                      detector=detector)
    test.close()
    print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1

