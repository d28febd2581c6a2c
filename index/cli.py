"""``namus-edge index ...``: operator commands for signed bundles.

keygen, verify, info, diff and search live here; ``index build`` (index/build_cli.py) and
``index publish`` / ``index sync`` (index/fleet_cli.py) register themselves into the same group
when those modules are installed.

Handlers import the modules that load OpenCV, FAISS or onnxruntime when they run: every
``namus-edge`` command builds this parser, and ``config show`` or ``--help`` should not pay for them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.index.manifest import read_manifest, verify_bundle
from namus_edge.index.signing import generate_keypair, key_id
from namus_edge.models.policy import decision_floor, judge, resolve_policy
from namus_edge.models.registry import match_threshold

logger = logging.getLogger(__name__)

#: Modules that add more ``index`` subcommands: ``register(index_sub, parent)``.
EXTRA_COMMAND_MODULES: tuple[str, ...] = ("namus_edge.index.build_cli", "namus_edge.index.fleet_cli",
                                          "namus_edge.index.evaluate_cli")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``index`` command group (and the subcommands of :data:`EXTRA_COMMAND_MODULES`)."""
    p = sub.add_parser("index", help="build, sign, verify, inspect and search NamUs bundles", parents=[parent])
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True

    kp = isub.add_parser("keygen", help="create an Ed25519 signing key pair (KEY, KEY.pub)", parents=[parent])
    kp.add_argument("--out", required=True, type=Path, metavar="KEY", help="private key file (mode 0600)")
    kp.set_defaults(func=_keygen)

    vp = isub.add_parser("verify", help="check a bundle's hashes and signature", parents=[parent])
    vp.add_argument("bundle", type=Path, metavar="BUNDLE")
    add_pubkey_option(vp, "pinned public key (repeatable; default: sync.pubkeys; none = hashes only)")
    vp.add_argument(
        "--device-only",
        action="store_true",
        help="check the device files only (a published copy has no operator files)",
    )
    vp.set_defaults(func=_verify)

    ip = isub.add_parser("info", help="show a bundle's version, counts, model, index and sizes", parents=[parent])
    ip.add_argument("bundle", type=Path, metavar="BUNDLE")
    ip.add_argument("--json", action="store_true")
    ip.set_defaults(func=_info)

    dp = isub.add_parser("diff", help="cases added / removed / changed from OLD to NEW", parents=[parent])
    dp.add_argument("old", type=Path, metavar="OLD")
    dp.add_argument("new", type=Path, metavar="NEW")
    dp.add_argument("--json", action="store_true")
    dp.set_defaults(func=_diff)

    sp = isub.add_parser("search", help="search a bundle with face photos", parents=[parent])
    sp.add_argument("bundle", type=Path, metavar="BUNDLE")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", action="append", type=Path, metavar="FILE", help="query photo (repeatable)")
    src.add_argument("--list", type=Path, metavar="FILE", help="text file of photo paths, one per line (# comments)")
    add_pubkey_option(sp, "pinned public key (repeatable; default: sync.pubkeys; none = hashes only)")
    sp.add_argument("--top", type=int, default=None, metavar="K", help="cases per photo (default: matching.top_k)")
    sp.add_argument("--alert", action="store_true",
                    help="apply the device's alert policy (threshold from matching.target_fpir and the bundle size, "
                    "margin, age and sex checks) and print the case each photo's face would vote for, or why not")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_search)

    for name in EXTRA_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but something it imports is missing: a real error
                raise
            logger.debug("%s is not installed; its index subcommands are unavailable", name)
            continue
        module.register(isub, parent)


def add_pubkey_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The repeatable ``--pubkey KEY.pub`` option of the index commands (``args.pubkeys``, None when absent)."""
    parser.add_argument("--pubkey", dest="pubkeys", action="append", type=Path, default=None, metavar="KEY.pub",
                        help=help_text)


def pinned_pubkeys(args: argparse.Namespace, config: Config) -> list[Path]:
    """Keys given with ``--pubkey``, else the ones pinned in ``sync.pubkeys`` (possibly none)."""
    return list(args.pubkeys) if args.pubkeys is not None else [Path(k) for k in config.sync.pubkeys]


def _pubkeys(args: argparse.Namespace, config: Config) -> list[Path] | None:
    """:func:`pinned_pubkeys`, or None when there are none (signature not checked)."""
    return pinned_pubkeys(args, config) or None


def _keygen(args: argparse.Namespace, config: Config) -> int:

    private, public = generate_keypair(args.out)
    print(f"private key: {private} (mode 0600; keep it offline)")
    print(f"public key:  {public} (pin it on devices: sync.pubkeys)")
    print(f"key id:      {key_id(public)}")
    return 0


def _verify(args: argparse.Namespace, config: Config) -> int:
    pubkeys = _pubkeys(args, config)
    manifest = verify_bundle(args.bundle, pubkeys, None, include_operator_files=not args.device_only)
    if pubkeys is None:
        print("warning: no public key given (--pubkey or sync.pubkeys): signature NOT checked", file=sys.stderr)
    scope = "device files" if args.device_only else "all files"
    signed = "signature checked" if pubkeys is not None else "hashes only"
    print(f"OK {manifest['bundle_version']} ({scope}, {signed})")
    return 0


def _sizes(table: dict[str, Any]) -> int:
    return sum(int(entry["size"]) for entry in table.values())


def _info(args: argparse.Namespace, config: Config) -> int:
    manifest, raw = read_manifest(args.bundle)
    device_bytes = _sizes(manifest["files"])
    operator_bytes = _sizes(manifest["operator_files"])
    present = sorted(rel for rel in manifest["operator_files"] if (args.bundle / rel).is_file())
    info = {
        "path": str(args.bundle),
        "version": manifest["bundle_version"],
        "created": manifest["created"],
        "source_snapshot": manifest.get("source_snapshot"),
        "base_version": manifest.get("base_version"),
        "counts": manifest["counts"],
        "embedding_model": manifest["embedding_model"],
        "detector": manifest["detector"],
        "index": manifest["index"],
        "sizes": {
            "manifest": len(raw),
            "device_bytes": device_bytes,
            "operator_bytes": operator_bytes,
            "files": {rel: e["size"] for rel, e in sorted(manifest["files"].items())},
        },
        "operator_files_present": len(present),
        "operator_files_listed": len(manifest["operator_files"]),
        "diff": ({k: len(v) for k, v in manifest["diff"].items()} if isinstance(manifest.get("diff"), dict) else None),
        "verified": False,
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    counts = manifest["counts"]
    cases = counts["cases"]
    model = manifest["embedding_model"]
    idx = manifest["index"]
    print(f"bundle   {info['version']}  (not verified; run `namus-edge index verify`)")
    print(f"created  {info['created']}  source {info['source_snapshot'] or '-'}  base {info['base_version'] or '-'}")
    print(
        f"cases    {sum(cases.values())} ("
        + ", ".join(f"{k} {cases[k]}" for k in sorted(cases, key=lambda s: (len(s), s)))  # MP, UP, UCP
        + ")"
        f"  faces {counts['faces']}  images with faces {counts['images_with_faces']}  problems {counts['problems']}"
    )
    print(f"model    {model['name']} sha256 {model['sha256'][:12]} dim {model['dim']}")
    print(f"index    {idx['type']} ({idx['factory']}, {idx['metric']}, {idx['ntotal']} vectors)")
    print(f"         {idx['chosen_because']}")
    hub = idx.get("hub_norm")
    if not isinstance(hub, dict):
        print("hub      no offsets (searched on raw similarity)")
    elif hub.get("median") is None:
        print("hub      offsets without a median (built before probe offsets: searched on raw similarity; rebuild)")
    else:
        print(f"hub      offsets per face (k {hub.get('k')}, {hub.get('offset_min')} .. {hub.get('offset_max')}, "
              f"median hub value {hub['median']:.4f})")
    for rel, size in info["sizes"]["files"].items():
        print(f"file     {rel:<16} {_human(size)}")
    print(f"device   {_human(device_bytes)}")
    print(f"operator {_human(operator_bytes)} in {len(manifest['operator_files'])} files ({len(present)} present)")
    if info["diff"] is not None:
        d = info["diff"]
        print(f"diff     +{d['added']} -{d['removed']} ~{d['changed']} against {info['base_version'] or '-'}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _diff(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.index.bundle import Bundle
    from namus_edge.index.bundle_diff import diff_bundles

    with Bundle.load(args.old) as old, Bundle.load(args.new) as new:
        diff = diff_bundles(old, new)
        versions = (old.version, new.version)
    if args.json:
        out = {"old": versions[0], "new": versions[1], **diff}
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"{versions[0]} -> {versions[1]}")
    for cid in diff["added"]:
        print(f"+ {cid}")
    for cid in diff["removed"]:
        print(f"- {cid}")
    for cid in diff["changed"]:
        d = diff["details"][cid]
        parts = []
        if d["fields"]:
            parts.append("fields " + ", ".join(d["fields"]))
        if d["faces_added"] or d["faces_removed"]:
            parts.append(f"faces +{len(d['faces_added'])} -{len(d['faces_removed'])}")
        print(f"~ {cid} ({'; '.join(parts)})")
    print(f"added {len(diff['added'])}, removed {len(diff['removed'])}, changed {len(diff['changed'])}")
    return 0


class SearchInputError(NamusEdgeError):
    """The list of query photos for ``index search`` cannot be read."""


def _query_paths(args: argparse.Namespace) -> list[Path]:
    if args.image:
        return list(args.image)
    try:
        lines = args.list.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SearchInputError(f"cannot read image list {args.list}: {exc.strerror or exc}") from exc
    paths = [Path(s) for line in lines if (s := line.strip()) and not s.startswith("#")]
    if not paths:
        raise SearchInputError(f"image list {args.list} names no files")
    # Relative entries are relative to the list file, so a list travels with its photos.
    return [p if p.is_absolute() else args.list.parent / p for p in paths]


def _check_exist(paths: Sequence[Path]) -> None:
    """Fail before loading any model when a query photo does not exist."""
    for path in paths:
        if not path.is_file():
            raise SearchInputError(f"query photo {path} does not exist or is not a file")


def _search_document(bundle_matches: Sequence[tuple[Path, int, Sequence[Any]]], threshold: float) -> dict[str, Any]:
    """The ``index search --json`` document: ``{"threshold", "results": [{"image", "faces", "matches"}]}``."""
    return {
        "threshold": threshold,
        "results": [
            {
                "image": str(path),
                "faces": n_faces,
                "matches": [
                    {"case": m.id_formatted, "score": round(m.score, 4), "image_key": m.image_key} for m in matches
                ],
            }
            for path, n_faces, matches in bundle_matches
        ],
    }


def _search(args: argparse.Namespace, config: Config) -> int:
    import numpy as np

    from namus_edge.index.bundle import Bundle
    from namus_edge.index.sync import expected_model_from_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.imagefile import read_image

    top_k = args.top if args.top is not None else config.matching.top_k
    if top_k < 1:
        raise SearchInputError(f"--top must be >= 1, got {top_k}")
    paths = _query_paths(args)
    _check_exist(paths)
    if args.alert:
        return _search_alert(args, config, paths, top_k)
    expected = expected_model_from_config(config)
    threshold = match_threshold(config)
    with Bundle.load(args.bundle, pubkeys=_pubkeys(args, config), expected_model=expected) as bundle:
        analyzer = FaceAnalyzer(config, with_age=False)
        rows: list[tuple[Path, int, Sequence[Any]]] = []
        for path in paths:
            faces = analyzer.analyze(read_image(path), photo=True)
            embedded = [f for f in faces if f.has_embedding]
            matches: Sequence[Any] = []
            if embedded:
                best = max(embedded, key=lambda f: f.area)  # the largest face: the subject of the photo
                matches = bundle.search(best.embedding[np.newaxis, :], top_k)[0]
            rows.append((path, len(faces), matches))
    doc = _search_document(rows, threshold)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"bundle {bundle.version}, threshold {threshold}")
    for row in doc["results"]:
        print(f"{row['image']}: {row['faces']} face(s)")
        for m in row["matches"]:
            mark = "*" if m["score"] >= threshold else " "
            print(f"  {mark} {m['case']:<12} {m['score']:.4f}  {m['image_key']}")
    return 0


def _search_alert(args: argparse.Namespace, config: Config, paths: Sequence[Path], top_k: int) -> int:
    """``index search --alert``: what a device would do with the largest face of each photo.

    JSON: ``{"bundle", "policy", "results": [{"image", "alert", "reason", "candidates", "threshold",
    "estimated_age", "probe_offset"}]}``; ``reason`` is ``alert``, ``no_face`` or the rule that rejected
    the best case (``threshold``, ``margin``, ``age``, ``sex``; see ``models/policy.py``). Each candidate
    has ``score`` (what the threshold applies to: when ``policy.hub_norm``, the similarity minus the
    photo's hub offset minus the face's ``probe_offset``) and ``similarity`` (the raw cosine); they are
    equal without normalisation (``probe_offset`` 0).
    """
    import numpy as np

    from namus_edge.index.bundle import Bundle
    from namus_edge.index.sync import expected_model_from_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.imagefile import read_image

    expected = expected_model_from_config(config)
    today = datetime.now(timezone.utc).date()
    results: list[dict[str, Any]] = []
    with Bundle.load(args.bundle, pubkeys=_pubkeys(args, config), expected_model=expected) as bundle:
        analyzer = FaceAnalyzer(config, with_age=True)
        policy = resolve_policy(config.matching, analyzer.embedder_spec.name, bundle.ntotal,
                                hub_norm=bundle.has_hub_offsets and config.matching.hub_norm)
        for path in paths:
            faces = [f for f in analyzer.analyze(read_image(path), photo=True) if f.has_embedding]
            row: dict[str, Any] = {"image": str(path), "alert": None, "reason": "no_face", "candidates": [],
                                   "threshold": round(policy.threshold, 4), "estimated_age": None}
            if faces:
                best = max(faces, key=lambda f: f.area)  # the largest face: the subject of the photo
                matches = bundle.search(best.embedding[np.newaxis, :], top_k, hub_norm=policy.hub_norm,
                                        exact_above=decision_floor(policy, config.matching))[0]
                verdict = judge(matches, policy.threshold_for(best.age), config.matching, estimated_age=best.age,
                                p_male=best.p_male, case_info=bundle.case, today=today)
                row["threshold"] = round(policy.threshold_for(best.age), 4)
                row["alert"] = verdict.candidate.id_formatted if verdict.candidate else None
                row["reason"] = verdict.reason
                row["estimated_age"] = None if best.age is None else round(float(best.age), 1)
                row["probe_offset"] = round(matches[0].probe_offset, 4) if matches else 0.0
                row["candidates"] = [{"case": m.id_formatted, "score": round(m.score, 4),
                                      "similarity": round(m.similarity, 4), "image_key": m.image_key,
                                      **(bundle.photo(m.image_key) or {"category": None, "is_rendering": False})}
                                     for m in matches]
            results.append(row)
        doc: dict[str, Any] = {"bundle": bundle.version, "policy": policy.to_dict(), "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    pol = doc["policy"]
    print(f"bundle {doc['bundle']}: {pol['rule']} threshold {pol['threshold']} for {pol['gallery_size']} faces"
          + (f" (target FPIR {pol['target_fpir']})" if pol["target_fpir"] is not None else "")
          + (", hub-normalised scores" if pol["hub_norm"] else ""))
    for row in results:
        verdict_text = f"ALERT {row['alert']}" if row["alert"] else f"no alert ({row['reason']})"
        print(f"{row['image']}: {verdict_text}")
        for m in row["candidates"]:
            tag = " [rendering]" if m["is_rendering"] else ""
            print(f"    {m['case']:<12} score {m['score']:.4f}  similarity {m['similarity']:.4f}  "
                  f"{m['image_key']}  {m['category']}{tag}")
    return 0
