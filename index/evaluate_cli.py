"""``namus-edge index evaluate``: open-set identification metrics of a built bundle.

``eval identify`` measures the alert policy on a gallery given as photos; this command measures it
on the gallery a fleet actually runs: the faces of a built (operator) bundle, its case records for
the age and sex checks, and labelled probe photos. A probe whose ``identity`` is a case id of the
bundle (``MP1234``) is a mated search; any other identity is a stranger (non-mated; every one is
reported, nothing is fitted on them). The metrics, tails and JSON keys are those of
:mod:`namus_edge.models.identify_eval` (one implementation); the bundle's faces are embedded
already, so only the probes are (cached like ``eval identify``'s). The impostor tails and the predictions at 55k
and 1M are measured on all of the bundle's faces (split into halves of cases by ``--seed``).

Registered into the ``index`` command group by :mod:`index.cli`. Handlers import FAISS and
onnxruntime when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.index.cli import add_pubkey_option, pinned_pubkeys


class EvaluateInputError(NamusEdgeError):
    """The bundle cannot be evaluated (no operator embeddings) or the probe list is unusable."""


def register(index_sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add ``evaluate`` to the ``index`` command group."""
    p = index_sub.add_parser(
        "evaluate", parents=[parent],
        help="FPIR / FNIR of the alert policy on a built bundle with labelled probe photos",
        description="Open-set identification (NIST FRTE 1:N terms) on the faces of a built operator bundle: "
        "probes whose identity is a case id are mated searches, others are strangers. Same metrics and JSON as "
        "`eval identify` (docs/accuracy.md section 6).")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="operator bundle (needs embeddings.npy)")
    p.add_argument("--probes", required=True, type=Path,
                   help="CSV: path, identity [, age, sex, race, age_gap, group]; identity = a case id for mated probes")
    p.add_argument("--root", required=True, type=Path, help="directory the probe paths are relative to")
    p.add_argument("--exclude", type=Path, help="CSV: path_a, path_b [, ...]: label-noise pairs (probe path, "
                   "gallery pseudo-path BUNDLE/faces/<image_key>)")
    p.add_argument("--seed", type=int, default=0, help="fit/report split of the bundle's cases for the tails")
    p.add_argument("--sizes", default="", help="measured gallery sizes besides the whole bundle (comma list)")
    p.add_argument("--cache-dir", type=Path, help="probe embedding cache root (as eval identify)")
    p.add_argument("--hub-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="score with hub offsets (default: as a device would with this bundle and configuration)")
    add_pubkey_option(p, "pinned public key (repeatable; default: sync.pubkeys; none = hashes only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)


def bundle_gallery(bundle: Any) -> tuple[list[Any], dict[Path, Any], dict[str, dict[str, Any]]]:
    """The gallery of a loaded :class:`~namus_edge.index.bundle.Bundle` in ``eval identify``'s terms.

    Returns:
        ``(rows, faces, facts)``: one :class:`~namus_edge.models.identify_eval.Row` per face (path
        ``BUNDLE/faces/<image_key>``, a key, not a file; identity = case id), its
        :class:`~namus_edge.models.embedding_cache.PhotoFace` (the stored float32 L2-normalised
        embedding), and each case's record (what the age and sex checks read).

    Raises:
        BundleError: the bundle has no operator embeddings (a published device copy).
    """
    from namus_edge.models.embedding_cache import PhotoFace
    from namus_edge.models.identify_eval import Row

    vectors, faces = bundle.embeddings()
    rows, photo = [], {}
    for vec, f in zip(vectors, faces, strict=True):
        key = bundle.path / "faces" / str(f["image_key"])
        rows.append(Row(key, str(f["id_formatted"])))
        photo[key] = PhotoFace(vec.astype("float32"), None, 0.0, 1.0, None)
    facts = {cid: bundle.case(cid) or {} for cid in dict.fromkeys(r.identity for r in rows)}
    return rows, photo, facts


def _evaluate(args: argparse.Namespace, config: Config) -> int:
    from namus_edge.index.bundle import Bundle
    from namus_edge.index.sync import expected_model_from_config
    from namus_edge.models import identify_eval as ie
    from namus_edge.models.eval_cli import emit_identify
    from namus_edge.models.policy import resolve_policy

    sizes = ie.parse_sizes(args.sizes)
    probes = ie.read_rows(args.probes, args.root)
    excl = ie.read_exclusions(args.exclude, args.root) if args.exclude else None
    with Bundle.load(args.bundle, pubkeys=pinned_pubkeys(args, config) or None,
                     expected_model=expected_model_from_config(config)) as bundle:
        rows, faces, facts = bundle_gallery(bundle)
        hub = args.hub_norm
        if hub is None:  # what the device would do with this bundle and configuration
            hub = resolve_policy(config.matching, config.models.selected()[1], bundle.ntotal,
                                 hub_norm=bundle.has_hub_offsets and config.matching.hub_norm).hub_norm
        if not any(p.identity in facts for p in probes):
            raise EvaluateInputError(f"{args.probes}: no probe's identity is a case id of {args.bundle} "
                                     f"(e.g. {next(iter(facts), 'MP1')}): FNIR needs mated probes")
        result = ie.run_identify(config, rows, probes, seed=args.seed, exclusions=excl, cache_root=args.cache_dir,
                                 sizes=sizes, hub_norm=bool(hub), gallery_faces=faces, case_facts=facts,
                                 nonmated_half=None, tails_from_all=True)
        result["bundle"] = {"path": str(bundle.path), "version": bundle.version, "faces": bundle.ntotal,
                            "hub_offsets": bundle.has_hub_offsets}
    emit_identify(result, args.json)
    return 0
