"""Top-level device commands: ``config``, and (with the runtime) ``run``, ``scan`` and ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from namus_edge.core.config import Config
from namus_edge.core.redaction import redact_tree


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``config`` command group (and the runtime commands when present)."""
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

    run = sub.add_parser("run", help="the long-running camera service (systemd Type=notify)", parents=[parent])
    run.set_defaults(func=_run)

    scan = sub.add_parser("scan", help="process every frame of a video file and emit match events",
                          parents=[parent])
    scan.add_argument("--source", required=True, type=Path, help="video file")
    scan.add_argument("--events", type=Path, help="append events as JSON lines to this file")
    scan.add_argument("--mqtt", action="store_true", help="also publish events to the configured broker")
    scan.add_argument("--camera-id", help="camera id in events (default: the file name)")
    scan.set_defaults(func=_scan)

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


def _show(args: argparse.Namespace, config: Config) -> int:
    # credentials inside URLs (RTSP cameras, sync) are masked as in the logs
    print(json.dumps(redact_tree(config.model_dump(mode="json")), indent=2))
    return 0


def _defaults(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.core.config_doc import render_yaml

    print(render_yaml(), end="")
    return 0


def _reference(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.core.config_doc import render_reference

    print("\n".join(render_reference()))
    return 0


def _run(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.core.secrets import read_mqtt_password
    from namus_edge.edge.service import EdgeService

    password = read_mqtt_password(config.mqtt) if config.mqtt.enabled else None
    return EdgeService(config, password=password).run()


def _scan(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.core.secrets import read_mqtt_password
    from namus_edge.edge.service import scan_file

    password = read_mqtt_password(config.mqtt) if args.mqtt else None
    result = scan_file(config, args.source, events_path=args.events, mqtt=args.mqtt, password=password,
                       camera_id=args.camera_id)
    print(f"{result.frames} frames, {len(result.events)} match event(s) in {result.seconds:.1f} s")
    for e in result.events:
        print(f"  {e.timestamp} track {e.track_id}: {e.case.id_formatted} {e.case.name!r} "
              f"similarity {e.similarity:.3f} over {e.frames} frames")
    if args.mqtt and result.delivered is False:
        print("warning: not every event was acknowledged by the broker; they stay in the outbox")
        return 1
    return 0


def _demo(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.demo import run_demo

    return run_demo(config, photos=args.photo, models_from=args.models_from, workdir=args.workdir,
                    frames=args.frames)
