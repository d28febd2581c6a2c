"""The ``config`` command group: show the effective configuration, print the documented defaults or the reference."""

from __future__ import annotations

import argparse
import json
from typing import Any

from namus_edge.core.config import Config
from namus_edge.core.config_doc import render_reference, render_yaml
from namus_edge.core.redaction import redact_tree


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``config`` command group (show, defaults, reference)."""
    p = sub.add_parser("config", help="show, document or check the configuration", parents=[parent])
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("show", help="print the effective configuration (after --config and --set) as JSON",
                        parents=[parent])
    s.set_defaults(func=_show)
    d = csub.add_parser("defaults", help="print the documented default config.yaml", parents=[parent])
    d.set_defaults(func=_defaults)
    r = csub.add_parser("reference", help="print the Markdown reference of every key", parents=[parent])
    r.set_defaults(func=_reference)


def _show(args: argparse.Namespace, config: Config) -> int:
    # credentials inside URLs (RTSP cameras, sync) are masked as in the logs
    data: dict[str, Any] = redact_tree(config.model_dump(mode="json"))
    print(json.dumps(data, indent=2))
    return 0


def _defaults(args: argparse.Namespace, config: Config) -> int:
    print(render_yaml(), end="")
    return 0


def _reference(args: argparse.Namespace, config: Config) -> int:
    print("\n".join(render_reference()))
    return 0
