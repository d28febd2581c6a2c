"""``namus-edge index publish`` and ``namus-edge index sync``: moving signed bundles to the fleet.

Registered into the ``index`` command group by :mod:`index.cli` (``register(index_sub, parent)``).

Handlers import the modules that load OpenCV, FAISS or onnxruntime when they run: every
``namus-edge`` command builds this parser, and ``config show`` or ``--help`` should not pay for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.secrets import read_mqtt_password
from namus_edge.index.cli import add_pubkey_option, pinned_pubkeys
from namus_edge.index.publish import Announcement, announce, latest_url, publish_bundle


def register(index_sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add ``publish`` and ``sync`` to the ``index`` command group."""
    p = index_sub.add_parser(
        "publish",
        parents=[parent],
        help="copy a signed bundle into a static publish tree (DIR/<version>/ + DIR/latest.json)",
        description="Copy a bundle's device files, manifest and signature into DIR/<version>/ (each file "
        "written to a temporary name and renamed), then point DIR/latest.json at it. Serve DIR with any web "
        "server or object store; devices run `namus-edge index sync --url URL`.",
    )
    p.add_argument("bundle", metavar="BUNDLE", type=Path, help="bundle directory written by `index build`")
    p.add_argument("--to", dest="dest", metavar="DIR", type=Path, required=True, help="publish tree")
    p.add_argument(
        "--include-operator-files",
        action="store_true",
        help="also publish embeddings.npy, thumbnails and reports (devices never fetch them)",
    )
    add_pubkey_option(p, "check the signature against this public key before publishing (repeatable)")
    p.add_argument(
        "--announce",
        action="store_true",
        help="publish a retained MQTT message on <mqtt.topic_prefix>/index/announce (broker from config mqtt)",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="URL under which DIR is served, put in the announcement (default: config sync.url)",
    )
    p.set_defaults(func=publish_command)

    s = index_sub.add_parser(
        "sync",
        parents=[parent],
        help="fetch the published bundle, verify it, and switch STATE_DIR/current to it atomically",
        description="One sync (for the systemd timer): download latest.json and the bundle it names (resuming "
        "with Range requests, capped by sync.max_bytes), verify the signature against the pinned key(s), every "
        "file hash and the embedding model the device runs, unpack into STATE_DIR/versions/<version>/, switch "
        "STATE_DIR/current atomically, roll back if it fails to load. Exit 0: updated or unchanged; 1: refused "
        "or rolled back (the reason is printed); the previous bundle stays live.",
    )
    s.add_argument("--url", metavar="URL", help="publish tree base URL or its latest.json (default: sync.url)")
    s.add_argument("--dest", metavar="STATE_DIR", type=Path, help="state directory (default: sync.state_dir)")
    add_pubkey_option(s, "pinned operator public key (repeatable; default: sync.pubkeys)")
    s.add_argument("--keep", type=int, metavar="K", help="versions kept on disk (default: sync.keep_versions)")
    s.set_defaults(func=sync_command)


def publish_command(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``index publish``."""
    result = publish_bundle(
        args.bundle, args.dest, include_operator_files=args.include_operator_files, pubkeys=args.pubkeys
    )
    print(f"published {result.version} to {args.dest} ({len(result.copied)} file(s) copied)")
    print(f"latest.json: {result.latest_path}")
    if args.announce:
        base = args.base_url or config.sync.url
        if not base:
            raise NamusEdgeError("--announce needs the URL devices fetch from: pass --base-url or set sync.url")
        note = Announcement(
            version=result.version, url=latest_url(base), manifest_sha256=result.latest["manifest_sha256"]
        )
        topic = announce(config.mqtt, note, password=read_mqtt_password(config.mqtt))
        print(f"announced {result.version} on {topic} (retained)")
    return 0


def sync_command(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``index sync``: exit 0 when updated or unchanged, 1 when refused or rolled back."""
    from namus_edge.index.sync import SyncError, expected_model_from_config, sync_once

    url = args.url or config.sync.url
    if not url:
        raise SyncError("no bundle URL: pass --url or set sync.url")
    result = sync_once(
        url,
        args.dest or Path(config.sync.state_dir),
        pinned_pubkeys(args, config),
        expected_model_from_config(config),
        timeout_s=config.sync.timeout_s,
        max_bytes=config.sync.max_bytes,
        keep_versions=args.keep if args.keep is not None else config.sync.keep_versions,
    )
    if result.status == "updated":
        print(f"updated: {result.version} is live ({result.downloaded_bytes} bytes downloaded)")
    elif result.status == "unchanged":
        print(f"unchanged: {result.version} is already live")
    else:
        print(f"{result.status}: {result.reason}")
        print(f"live version: {result.current or 'none'}")
    return 0 if result.ok else 1
