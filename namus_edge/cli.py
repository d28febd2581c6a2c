"""The ``namus-edge`` command line: one root parser, command groups registered by their owners.

Each owning module exposes ``register(subparsers)`` that adds its commands; a command's
handler is ``func(args, config) -> int``. Every command accepts ``--config`` and repeatable
``--set dotted.key=value``; a bad config stops with the key's dotted path (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from namus_edge.core.config import Config, ConfigError, load_config
from namus_edge.core.errors import NamusEdgeError

logger = logging.getLogger(__name__)

#: Modules that register command groups, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "namus_edge.core.config_cli",
    "namus_edge.edge.commands",
    "namus_edge.models.cli",
    "namus_edge.models.eval_cli",
    "namus_edge.index.cli",
    "namus_edge.export.cli",
    "namus_edge.demo_cli",
    "namus_edge.review.cli",
    "namus_edge.training.cli",
    "namus_edge.install_cli",
)


def common_options(*, root: bool) -> argparse.ArgumentParser:
    """A parent parser with the options every command takes.

    The root parser holds the defaults; sub-commands use ``SUPPRESS`` so an option given
    before the command is not reset by the sub-parser's default.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", default=None if root else argparse.SUPPRESS,
                        help="YAML config (default: built-in defaults = config.yaml)")
    parent.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[] if root else argparse.SUPPRESS,
        help="override a config key, e.g. --set detection.input_size=[320,320] (repeatable)",
    )
    parent.add_argument("--log-level", default=None if root else argparse.SUPPRESS,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parent.add_argument("--verbose", action="store_true", default=False if root else argparse.SUPPRESS,
                        help="also show third-party libraries' log lines below WARNING")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Build the root parser with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="namus-edge",
        description="On-device face search against the NamUs missing-persons index.",
        parents=[common_options(root=True)],
    )
    parent = common_options(root=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub, parent)
    return parser


def setup_logging(level: str, *, verbose: bool = False) -> None:
    """Configure logging for the CLI (library code only uses module loggers).

    namus-edge's own loggers log at ``level``; third-party libraries (brokers, HTTP clients,
    state machines) only at WARNING and above unless ``verbose``, so their chatter does not bury
    the lines that matter.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    own = getattr(logging, level)
    logging.getLogger().setLevel(own if verbose else max(logging.WARNING, own))
    logging.getLogger("namus_edge").setLevel(getattr(logging, level))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``namus-edge`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config: Config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"namus-edge: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.service.log_level, verbose=args.verbose)
    try:
        return int(args.func(args, config) or 0)
    except NamusEdgeError as exc:
        logger.debug("command failed", exc_info=True)
        print(f"namus-edge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
