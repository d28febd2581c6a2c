"""``namus-edge index build``: registered into the ``index`` group by index/cli.py.

Handlers import the modules that load OpenCV, FAISS or onnxruntime when they run: every
``namus-edge`` command builds this parser, and ``config show`` or ``--help`` should not pay for them.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from namus_edge.core.config import Config


def register(index_sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add ``index build`` to the ``index`` command group."""
    b = index_sub.add_parser("build", help="build a signed bundle from NamUs data", parents=[parent])
    b.add_argument("--source", required=True, metavar="DIR_OR_api",
                   help="scraper output (Prepager or Auto-namus-scraper layout), an API store, or 'api'")
    b.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    b.add_argument("--key", required=True, type=Path, help="operator Ed25519 private key (index keygen)")
    b.add_argument("--base", type=Path, help="previous operator bundle: reuse unchanged embeddings, write a diff")
    b.add_argument("--case-sets", help="comma-separated subset of MP,UP,UCP (default: index.case_sets)")
    b.add_argument("--workers", type=int, help="photo decoding threads (default: index.workers)")
    b.add_argument("--today", type=date.fromisoformat, help="date current ages are computed for (YYYY-MM-DD)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.index.build import BuildError, build_bundle


    sets = None
    if args.case_sets:
        sets = [s.strip().upper() for s in args.case_sets.split(",") if s.strip()]
        bad = [s for s in sets if s not in ("MP", "UP", "UCP")]
        if bad:
            raise BuildError(f"--case-sets: unknown case set(s) {', '.join(bad)}; allowed MP, UP, UCP")
    s = build_bundle(config, args.source, args.out, args.key, base=args.base, case_sets=sets,
                     workers=args.workers, today=args.today)
    if args.json:
        print(json.dumps(s.as_dict(), indent=2))
        return 0
    print(f"bundle {s.version} -> {s.bundle}")
    print(f"cases: {s.cases_in_source} in source, {sum(s.cases_in_bundle.values())} in bundle "
          f"({', '.join(f'{k} {v}' for k, v in sorted(s.cases_in_bundle.items()))}); "
          f"{s.resolved_excluded} resolved excluded, {s.cases_without_face} without a usable face")
    print(f"images: {s.images} face-worthy, {s.faces} faces ({s.images_reused} reused from base, "
          f"{s.padded_retry} found by the padded retry, {s.ambiguous} ambiguous)")
    if s.no_face:
        print("no face: " + ", ".join(f"{k} {v}" for k, v in sorted(s.no_face.items())))
        for p in s.problems[:20]:
            print(f"  {p['case']} {p['storage_key']}: {p['reason']}")
        if len(s.problems) > 20:
            print(f"  ... {len(s.problems) - 20} more in the bundle's problems.json")
    for line in s.record_problems[:10]:
        print(f"source problem: {line}")
    if s.diff is not None:
        print(f"diff vs base: {len(s.diff['added'])} added, {len(s.diff['removed'])} removed, "
              f"{len(s.diff['changed'])} changed")
    st = s.stage_seconds
    print(f"elapsed {s.elapsed_s:.1f} s, {s.images_per_s:.2f} images/s (decode {st['decode']:.1f} s, "
          f"detect {st['detect']:.1f} s, embed {st['embed']:.1f} s, write {st['write']:.1f} s)")
    return 0
