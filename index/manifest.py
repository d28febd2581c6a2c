"""The bundle manifest: what a bundle holds, its hashes, and how a bundle is verified.

A bundle is a directory::

    manifest.json   sorted-key UTF-8 JSON (this module), signed as exact bytes
    manifest.sig    raw 64-byte Ed25519 signature over manifest.json
    index.faiss     device file: FAISS index over face embeddings, ids = face_id
    meta.sqlite3    device file: cases and faces tables (device-safe metadata only)
    embeddings.npy  operator file: float32 (N, D) vectors in face_id order (incremental builds)
    problems.json   operator file: images with no usable face, corrupt images
    diff.json       operator file: cases added / removed / changed against the base bundle
    thumbs/<image_key>.jpg   operator files: face thumbnails

``sequence`` (an integer that grows with every build) and ``valid_until`` (ISO-8601 UTC) are
signed with the rest; :mod:`namus_edge.index.trust` refuses rollbacks and reports expiry.
``files`` in the manifest lists the device files, ``operator_files`` the others; each entry is
``{"sha256": hex, "size": bytes}``. The signature covers the whole manifest, so a publisher can
drop the operator files and a device still verifies what it received
(``include_operator_files=False``).

**Hub offsets.** Some case photos (blurry, small, young children, scans) resemble many unrelated
faces: *hubs* that would raise most false alerts at one fixed threshold. At build time the writer
computes every face's hub offset over the whole gallery (:func:`namus_edge.models.hub_norm.hub_offsets`:
mean of its ``k`` best similarities to faces of other cases, minus the gallery median) and stores
it in the ``faces.hub_offset`` column of ``meta.sqlite3``; ``index.hub_norm`` in the manifest
(``{"k", "median", "offset_min", "offset_max"}``, signed with the rest) says the bundle carries them;
``median`` (the gallery's median hub value) lets a device normalise the searched face the same way
(:func:`namus_edge.models.hub_norm.probe_offsets`). Every build recomputes all offsets, incremental
ones included: one face more or less changes everyone's neighbours. A device then scores a photo as
``similarity - offset - probe offset`` when its policy is normalised
(``matching.hub_norm`` and a measured normalised tail for the embedder,
:func:`namus_edge.models.policy.resolve_policy`); events keep the raw ``similarity`` and add the
``score`` (docs/events.md). A bundle without ``index.hub_norm`` (built before offsets existed) is
searched on raw similarities, and so is one whose ``index.hub_norm`` has no ``median`` (built before
probe offsets existed: the normalised tails in the registry are of the symmetric score).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from namus_edge.core.errors import BundleError, BundleVerificationError
from namus_edge.core.fsutil import sha256_file
from namus_edge.index.signing import verify_signature

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FORMAT = "namus-edge-bundle"
FORMAT_VERSION = 1

INDEX_NAME = "index.faiss"
META_NAME = "meta.sqlite3"
EMBEDDINGS_NAME = "embeddings.npy"
PROBLEMS_NAME = "problems.json"
DIFF_NAME = "diff.json"
THUMBS_DIR = "thumbs"

#: Files a device needs (listed under ``files``).
DEVICE_FILES: tuple[str, ...] = (INDEX_NAME, META_NAME)
#: Directories whose unlisted extra files are tolerated (operator material, never searched).
OPERATOR_DIRS: tuple[str, ...] = (THUMBS_DIR,)

_REQUIRED_KEYS = (
    "format",
    "format_version",
    "bundle_version",
    "created",
    "sequence",
    "valid_until",
    "counts",
    "embedding_model",
    "detector",
    "index",
    "files",
    "operator_files",
)


@dataclass(frozen=True)
class ModelIdentity:
    """The embedding model a bundle's vectors come from; a device must run the same one.

    Attributes:
        name: registry name, e.g. ``edgeface_xs``.
        sha256: hex sha256 of the ONNX file.
        dim: embedding dimension D.
    """

    name: str
    sha256: str
    dim: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelIdentity.name must not be empty")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"ModelIdentity.sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"ModelIdentity.dim must be a positive int, got {self.dim!r}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form ``{"name", "sha256", "dim"}``."""
        return {"name": self.name, "sha256": self.sha256, "dim": self.dim}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIdentity:
        """Parse the manifest form.

        Raises:
            BundleError: a key is missing or a value is invalid.
        """
        try:
            return cls(name=str(data["name"]), sha256=str(data["sha256"]), dim=data["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"invalid embedding_model in manifest: {data!r} ({exc})") from exc

    def describe(self) -> str:
        """Human form used in mismatch messages: ``edgeface_xs sha256 f64d05c10d84 dim 512``."""
        return f"{self.name} sha256 {self.sha256[:12]} dim {self.dim}"


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Serialise a manifest deterministically: sorted keys, 2-space indent, UTF-8, final newline.

    Raises:
        ValueError: the manifest holds a value JSON cannot represent (NaN, a set, bytes, ...).
    """
    try:
        text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except TypeError as exc:
        raise ValueError(f"manifest is not JSON-serialisable: {exc}") from exc
    return (text + "\n").encode("utf-8")


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest entry of one file: ``{"sha256": hex, "size": bytes}``."""
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def check_relpath(rel: str) -> str:
    """Reject a manifest path that could escape the bundle directory.

    Raises:
        BundleVerificationError: absolute, empty, with ``..`` parts or backslashes.
    """
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or p.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise BundleVerificationError(f"manifest lists an unsafe path {rel!r}")
    return rel


def parse_manifest(raw: bytes, source: str = MANIFEST_NAME) -> dict[str, Any]:
    """Decode and sanity-check manifest bytes (format, version, required keys, file tables).

    Raises:
        BundleVerificationError: not UTF-8 JSON, another format, a newer format version, or a
            required key missing; the message names ``source``.
    """
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleVerificationError(f"{source}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleVerificationError(f"{source}: top level must be an object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleVerificationError(f"{source}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleVerificationError(
            f"{source}: format_version {version!r} is not supported (this software reads {FORMAT_VERSION})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleVerificationError(f"{source}: missing key(s) {', '.join(missing)}")
    for table in ("files", "operator_files"):
        entries = manifest[table]
        if not isinstance(entries, dict):
            raise BundleVerificationError(f"{source}: {table} must be an object")
        for rel, entry in entries.items():
            check_relpath(rel)
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int)
            ):
                raise BundleVerificationError(f"{source}: {table}[{rel!r}] must be {{'sha256': str, 'size': int}}")
    for name in DEVICE_FILES:
        if name not in manifest["files"]:
            raise BundleVerificationError(f"{source}: files does not list {name}")
    seq = manifest["sequence"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise BundleVerificationError(f"{source}: sequence must be a non-negative integer, got {seq!r}")
    until = manifest["valid_until"]
    try:
        if not isinstance(until, str):
            raise ValueError("not a string")
        if datetime.fromisoformat(until.replace("Z", "+00:00")).tzinfo is None:
            raise ValueError("no timezone")
    except ValueError as exc:
        raise BundleVerificationError(f"{source}: valid_until must be ISO-8601 UTC, got {until!r} ({exc})") from exc
    return manifest


def read_manifest(bundle_dir: Path) -> tuple[dict[str, Any], bytes]:
    """Read and parse ``bundle_dir/manifest.json`` (no hash or signature check).

    Returns:
        ``(manifest, raw_bytes)``.

    Raises:
        BundleVerificationError: the directory or manifest is missing or malformed.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleVerificationError(f"bundle {bundle_dir} is not a directory")
    path = bundle_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleVerificationError(f"{path}: missing") from exc
    except OSError as exc:
        raise BundleVerificationError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return parse_manifest(raw, str(path)), raw


def check_model(manifest: Mapping[str, Any], expected: ModelIdentity) -> None:
    """Refuse a bundle whose vectors come from another embedding model than ``expected``.

    Raises:
        BundleVerificationError: e.g. "bundle built for edgeface_xs sha256 f64d05c10d84 dim 512,
            device runs sface sha256 0797f178dfe9 dim 128".
    """
    built = ModelIdentity.from_dict(manifest["embedding_model"])
    if built != expected:
        raise BundleVerificationError(
            f"embedding model mismatch: bundle built for {built.describe()}, device runs {expected.describe()}"
        )


def check_file(bundle_dir: Path, rel: str, entry: Mapping[str, Any]) -> None:
    """Check one listed file's presence, size and sha256.

    Raises:
        BundleVerificationError: naming the file and what is wrong.
    """
    path = bundle_dir / rel
    if path.is_symlink():
        raise BundleVerificationError(f"{path}: a symlink; bundles must hold plain files only")
    if not path.is_file():
        raise BundleVerificationError(f"{path}: missing (listed in {MANIFEST_NAME})")
    size = path.stat().st_size
    if size != entry["size"]:
        raise BundleVerificationError(f"{path}: size {size} bytes, manifest says {entry['size']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise BundleVerificationError(f"{path}: sha256 {digest[:16]}… does not match manifest {entry['sha256'][:16]}…")


def unlisted_files(bundle_dir: Path, listed: set[str]) -> list[str]:
    """Relative paths of files in the bundle that the manifest does not list (operator dirs excepted)."""
    extra = []
    for root, dirs, names in os.walk(bundle_dir):
        rel_root = Path(root).relative_to(bundle_dir)
        if rel_root.parts and rel_root.parts[0] in OPERATOR_DIRS:
            dirs.clear()
            continue
        for name in [*names, *dirs]:
            if os.path.islink(os.path.join(root, name)):
                raise BundleVerificationError(f"{Path(root, name)}: a symlink; bundles must hold plain files only")
        for name in names:
            rel = (rel_root / name).as_posix()
            if rel not in listed:
                extra.append(rel)
    return sorted(extra)


def verify_bundle(
    bundle_dir: Path,
    pubkeys: Sequence[Path] | None = None,
    expected_model: ModelIdentity | None = None,
    include_operator_files: bool = True,
) -> dict[str, Any]:
    """Verify a bundle directory: signature, embedding model, then every listed file's size and hash.

    Args:
        bundle_dir: the bundle directory.
        pubkeys: pinned public keys; ``None`` skips the signature check (hashes only), an empty
            sequence is an error (a signature is required but nothing can verify it).
        expected_model: the embedding model the caller runs; ``None`` skips the check.
        include_operator_files: also check ``operator_files`` (they must all be present); a device
            passes ``False`` because publishing omits them.

    Returns:
        The parsed manifest.

    Raises:
        BundleVerificationError: naming the first bad file (missing, size or sha256 mismatch, an
            unlisted extra file outside the operator directories), a missing or bad signature, or
            a model mismatch.
    """
    bundle_dir = Path(bundle_dir)
    manifest, raw = read_manifest(bundle_dir)
    if pubkeys is not None:
        sig_path = bundle_dir / SIGNATURE_NAME
        try:
            signature = sig_path.read_bytes()
        except FileNotFoundError as exc:
            raise BundleVerificationError(f"{sig_path}: missing (the bundle is unsigned)") from exc
        try:
            key = verify_signature(raw, signature, pubkeys)
        except BundleVerificationError as exc:
            raise BundleVerificationError(f"{sig_path}: {exc}") from exc
        logger.debug("bundle %s signed by %s", bundle_dir, key)
    if expected_model is not None:
        check_model(manifest, expected_model)
    for rel in sorted(manifest["files"]):
        check_file(bundle_dir, rel, manifest["files"][rel])
    if include_operator_files:
        for rel in sorted(manifest["operator_files"]):
            check_file(bundle_dir, rel, manifest["operator_files"][rel])
    listed = {MANIFEST_NAME, SIGNATURE_NAME, *manifest["files"], *manifest["operator_files"]}
    extra = unlisted_files(bundle_dir, listed)
    if extra:
        raise BundleVerificationError(f"{bundle_dir / extra[0]}: not listed in {MANIFEST_NAME}")
    return manifest
