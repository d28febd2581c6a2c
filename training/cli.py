"""``namus-edge train age-sex``: the reproducible training entry point.

This module only builds the parser; the handler imports the PyTorch code when it runs, so the
CLI works without the ``training`` extra and says how to install it.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError

INSTALL_HINT = 'training needs PyTorch: pip install "namus-edge[training]"'


class TrainingUnavailableError(NamusEdgeError):
    """The ``training`` extra (PyTorch) is not installed."""


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``train`` command group."""
    p = sub.add_parser("train", help="train the project's own models (needs the training extra)", parents=[parent])
    tsub = p.add_subparsers(dest="train_command", metavar="MODEL")
    tsub.required = True
    a = tsub.add_parser("age-sex", help="fine-tune the 2018 gender-age backbone on ArcFace-aligned crops",
                        parents=[parent])
    a.add_argument("--manifest", required=True, type=Path, help="training CSV: path, age [, gender, race, dataset]")
    a.add_argument("--root", required=True, type=Path, help="folder the manifest paths are relative to")
    a.add_argument("--dataset", help="use only rows whose dataset column equals this (e.g. utkface)")
    a.add_argument("--backbone", required=True, type=Path, help="genderage_2018_112.onnx (MODELS.md 2c)")
    a.add_argument("--out", required=True, type=Path, help="output folder (model, report.json, parity.json)")
    a.add_argument("--work-dir", required=True, type=Path, help="cache of aligned crops (reused across runs)")
    a.add_argument("--name", default="agesex_utk_v1", help="model name (file <name>.onnx)")
    a.add_argument("--mode", choices=["head", "last1", "last2", "full"], default="last1",
                   help="what is trained: the head, or also the last one / two backbone blocks, or every layer "
                        "(full: on augmented crops; slow on a CPU)")
    a.add_argument("--backbone-lr-scale", type=float, default=0.3,
                   help="backbone learning rate as a share of --lr (the head gets --lr)")
    a.add_argument("--no-augment", dest="augment", action="store_false",
                   help="full mode: train on the crops and their mirror images only (no jitter)")
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--seed", type=int, default=20250601)
    a.add_argument("--no-balance", dest="balance", action="store_false",
                   help="train on the natural age mix (default: every 5-year bin weighs the same)")
    a.add_argument("--threads", type=int, default=2, help="torch intra-op threads (results depend on it)")
    a.add_argument("--workers", type=int, default=1,
                   help="processes detecting + aligning the crops the first time (same crops as 1)")
    a.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training pool")
    a.add_argument("--limit", type=int, help="use only the first N labelled rows (quick / reproducibility runs)")
    a.add_argument("--eval-manifest", type=Path, help="evaluation CSV scored (never trained on), e.g. data/age")
    a.add_argument("--eval-root", type=Path)
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=run_train_age_sex)
    h = tsub.add_parser("age-head", parents=[parent],
                        help="train an age head over the face embedding + 2018 backbone feature and ship it "
                             "beside an age+sex model")
    h.add_argument("--manifest", required=True, type=Path, help="training CSV (the age-sex model's)")
    h.add_argument("--root", required=True, type=Path, help="folder the manifest paths are relative to")
    h.add_argument("--dataset", help="use only rows whose dataset column equals this (e.g. utkface)")
    h.add_argument("--backbone", required=True, type=Path, help="genderage_2018_112.onnx (MODELS.md 2c)")
    h.add_argument("--base-model", required=True, type=Path,
                   help="the age+sex model trained by `train age-sex` on the same manifest and seed")
    h.add_argument("--out", required=True, type=Path, help="output folder (model, report.json, parity.json)")
    h.add_argument("--work-dir", required=True, type=Path, help="cache of crops, features and embeddings")
    h.add_argument("--name", default="agesex_utk_v2", help="model name (file <name>.onnx)")
    h.add_argument("--hidden", type=int, default=128, help="hidden width of the head")
    h.add_argument("--epochs", type=int, default=40)
    h.add_argument("--batch-size", type=int, default=128)
    h.add_argument("--lr", type=float, default=2e-3)
    h.add_argument("--seed", type=int, default=20250601, help="also selects the split: use the base model's seed")
    h.add_argument("--threads", type=int, default=2, help="torch intra-op threads (results depend on it)")
    h.add_argument("--workers", type=int, default=1, help="processes detecting + aligning uncached crops")
    h.add_argument("--val-fraction", type=float, default=0.1, help="validation share (use the base model's)")
    h.add_argument("--limit", type=int, help="use only the first N labelled rows (use the base model's)")
    h.add_argument("--eval-manifest", type=Path, help="evaluation CSV scored (never trained on), e.g. data/age")
    h.add_argument("--eval-root", type=Path)
    h.add_argument("--json", action="store_true", help="print the report as JSON")
    h.set_defaults(func=run_train_age_head)


def _import(name: str) -> Any:
    # imported when a command runs, not at the top: torch is optional and must not load for other commands
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise TrainingUnavailableError(INSTALL_HINT) from None


def run_train_age_sex(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``train age-sex``."""
    run = _import("namus_edge.training.run")
    agesex = _import("namus_edge.training.agesex")
    for flag in ("epochs", "batch_size", "threads", "workers"):
        if getattr(args, flag) < 1:
            raise NamusEdgeError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 < args.val_fraction < 1:
        raise NamusEdgeError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not 0 < args.backbone_lr_scale <= 1:
        raise NamusEdgeError(f"--backbone-lr-scale must be in (0, 1], got {args.backbone_lr_scale}")
    settings = agesex.TrainSettings(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                    backbone_lr_scale=args.backbone_lr_scale, augment=args.augment,
                                    seed=args.seed, threads=args.threads, balance=args.balance)
    inputs = run.RunInputs(manifest=args.manifest, root=args.root, dataset=args.dataset, backbone=args.backbone,
                           work_dir=args.work_dir, out_dir=args.out, name=args.name, val_fraction=args.val_fraction,
                           limit=args.limit, eval_manifest=args.eval_manifest, eval_root=args.eval_root,
                           workers=args.workers)
    report = run.run_age_sex(inputs, settings, config, run.command_line())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        v = report["validation"]
        print(f"{report['model']['path']}: {report['model']['bytes']} bytes, sha256 {report['model']['sha256']}")
        print(f"validation ({report['data']['validation']} faces): age MAE model {v['age_model']['mae']}, "
              f"mixed {v['age_mixed']['mae']} (flip={v['flip']}, mix={v['age_mix']}); sex accuracy {v['sex_accuracy']}")
        for ds, e in report.get("evaluation", {}).items():
            print(f"evaluation {ds}: age MAE model {e['age_model']['mae']}, mixed {e['age_mixed']['mae']}, "
                  f"age-v1 {e['age_v1']['mae']}; sex accuracy {e['sex_accuracy']}")
    return 0


def run_train_age_head(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``train age-head``."""
    run_head = _import("namus_edge.training.run_head")
    agehead = _import("namus_edge.training.agehead")
    for flag in ("hidden", "epochs", "batch_size", "threads", "workers"):
        if getattr(args, flag) < 1:
            raise NamusEdgeError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 < args.val_fraction < 1:
        raise NamusEdgeError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    for flag in ("backbone", "base_model"):
        if not getattr(args, flag).is_file():
            raise NamusEdgeError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such file")
    settings = agehead.HeadSettings(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                    seed=args.seed, threads=args.threads)
    inputs = run_head.HeadRunInputs(manifest=args.manifest, root=args.root, dataset=args.dataset,
                                    backbone=args.backbone, base_model=args.base_model, work_dir=args.work_dir,
                                    out_dir=args.out, name=args.name, val_fraction=args.val_fraction,
                                    limit=args.limit, eval_manifest=args.eval_manifest, eval_root=args.eval_root,
                                    workers=args.workers)
    report = run_head.run_age_head(inputs, settings, config, _import("namus_edge.training.run").command_line())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        v = report["validation"]
        print(f"{report['model']['path']}: {report['model']['bytes']} bytes, sha256 {report['model']['sha256']}")
        print(f"validation ({report['data']['validation']} faces): age MAE head {v['head']['mae']}, model "
              f"{v['model']['mae']}, shipped {v['shipped']['mae']} (head weight {v['head_weight']}, mix "
              f"{v['age_mix']}, min age {v['age_mix_min_age']})")
        for ds, e in report.get("evaluation", {}).items():
            print(f"evaluation {ds}: age MAE shipped {e['shipped']['mae']}, previous {e['base_shipped']['mae']}, "
                  f"age-v1 {e['age_v1']['mae']}")
    return 0

