"""``namus-edge models list|fetch``: the local model cache."""

from __future__ import annotations

import argparse
import json

from namus_edge.core.config import Config
from namus_edge.models.fetch import fetch_models
from namus_edge.models.registry import REGISTRY, check_file


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``models`` command group."""
    p = sub.add_parser("models", help="list or fetch model files", parents=[parent])
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    lp = msub.add_parser("list", help="show present / missing / corrupt models in the cache", parents=[parent])
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_list)
    fp = msub.add_parser("fetch", help="fill the cache and verify every sha256", parents=[parent])
    fp.add_argument("--from", dest="source", default="official",
                    help="mirror directory, http(s) base URL of a mirror, or 'official' (default)")
    fp.add_argument("--only", action="append", default=[], metavar="NAME", help="fetch only these models")
    fp.add_argument("--selected", action="store_true", help="fetch only the models the config selects")
    fp.add_argument("--timeout", type=float, default=60.0)
    fp.set_defaults(func=_fetch)


def _list(args: argparse.Namespace, config: Config) -> int:
    cache = config.models.resolved_cache_dir()
    selected = set(config.models.selected_all())
    rows = []
    for spec in REGISTRY.values():
        state, detail = check_file(spec, cache)
        rows.append({"name": spec.name, "role": spec.role, "state": state, "file": spec.filename,
                     "selected": spec.name in selected, "licence": spec.licence,
                     "commercial_use": spec.commercial_use, "detail": detail})
    if args.json:
        print(json.dumps({"cache_dir": str(cache), "models": rows}, indent=2))
    else:
        print(f"model cache: {cache}")
        for r in rows:
            mark = "*" if r["selected"] else " "
            print(f"{mark} {r['name']:<14} {r['role']:<9} {r['state']:<8} {r['file']}")
            if r["state"] == "corrupt":
                print(f"    {r['detail']}")
    return 1 if any(r["state"] != "present" and r["selected"] for r in rows) else 0


def _fetch(args: argparse.Namespace, config: Config) -> int:
    cache = config.models.resolved_cache_dir()
    if args.only:
        names = list(args.only)
    elif args.selected:
        names = config.models.selected_all()
    else:
        names = list(REGISTRY)
    report = fetch_models(args.source, cache, names, args.timeout)
    for n in report.present:
        print(f"ok       {n} (already present)")
    for n in report.fetched:
        print(f"fetched  {n}")
    for n, why in report.failed.items():
        print(f"FAILED   {n}: {why}")
    print(f"cache: {cache}")
    return 1 if report.failed else 0
