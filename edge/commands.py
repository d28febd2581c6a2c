"""The device runtime commands: ``run`` (the camera service) and ``scan`` (one video file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from namus_edge.core.config import Config


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the device runtime commands ``run`` and ``scan``."""
    run = sub.add_parser("run", help="the long-running camera service (systemd Type=notify)", parents=[parent])
    run.set_defaults(func=_run)

    scan = sub.add_parser("scan", help="process every frame of a video file and emit match events",
                          parents=[parent])
    scan.add_argument("--source", required=True, type=Path, help="video file")
    scan.add_argument("--events", type=Path, help="append events as JSON lines to this file")
    scan.add_argument("--mqtt", action="store_true", help="also publish events to the configured broker")
    scan.add_argument("--camera-id", help="camera id in events (default: the file name)")
    scan.set_defaults(func=_scan)


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
