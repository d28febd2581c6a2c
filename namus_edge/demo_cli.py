"""The ``demo`` command: a self-contained demo (demo case, signed index, synthetic clip, embedded broker)."""

from __future__ import annotations

import argparse
from pathlib import Path

from namus_edge.core.config import Config


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``demo`` command."""
    demo = sub.add_parser("demo", help="self-contained demo: demo case, synthetic clip, embedded broker",
                          parents=[parent])
    demo.add_argument("--photo", type=Path, action="append", default=[],
                      help="enrol these photos as the demo case (default: scikit-image's astronaut)")
    demo.add_argument("--models-from", default=None,
                      help="model mirror dir or URL for missing models (default: ../shared/models if present, "
                           "else official URLs)")
    demo.add_argument("--workdir", type=Path, help="keep the demo files here (default: a temporary directory)")
    demo.add_argument("--frames", type=int, default=90, help="frames in the synthetic clip")
    demo.set_defaults(func=_demo)

def _demo(args: argparse.Namespace, config: Config) -> int:
    # imported here so `namus-edge --help` does not load OpenCV and the broker code
    from namus_edge.demo import run_demo

    return run_demo(config, photos=args.photo, models_from=args.models_from, workdir=args.workdir,
                    frames=args.frames)
