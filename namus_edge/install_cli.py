"""``namus-edge install``: place the systemd units, the default config and the state directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from namus_edge.core.config import Config
from namus_edge.install import install


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``install`` command."""
    p = sub.add_parser(
        "install",
        parents=[parent],
        help="install systemd units, the default config and state directories under a root",
        description="Write etc/systemd/system/namus-edge{,-sync}.service and namus-edge-sync.timer (ExecStart= "
        "set to this installation's namus-edge script), etc/namus-edge/config.yaml (kept if present unless "
        "--force), etc/namus-edge/credentials/ (0700) and var/lib/namus-edge/{index,outbox} under --prefix. "
        "Idempotent. Then: systemctl daemon-reload && systemctl enable --now namus-edge namus-edge-sync.timer",
    )
    p.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR", help="root directory (default: /)")
    p.add_argument("--config-src", type=Path, metavar="FILE", help="config to install (default: documented defaults)")
    p.add_argument("--force", action="store_true", help="replace an existing etc/namus-edge/config.yaml")
    p.add_argument("--exec", dest="executable", type=Path, metavar="PATH", help="namus-edge script for ExecStart=")
    p.add_argument("--units-dir", type=Path, metavar="DIR", help="where the shipped unit files are")
    p.set_defaults(func=install_command)


def install_command(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``install``."""
    report = install(
        args.prefix,
        config_src=args.config_src,
        force=args.force,
        executable=args.executable,
        units_dir=args.units_dir,
    )
    for path in report.written:
        print(f"wrote     {path}")
    for path in report.kept:
        print(f"kept      {path} (exists; --force replaces it)")
    for path in report.dirs:
        print(f"created   {path}/")
    print(f"{len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.kept)} kept")
    if args.prefix == Path("/"):
        print("next: systemctl daemon-reload && systemctl enable --now namus-edge.service namus-edge-sync.timer")
    return 0
