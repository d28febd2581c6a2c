"""Ed25519 operator keys: generate, load, sign and verify bundle manifests.

The operator signs the exact bytes of a bundle's ``manifest.json``; devices pin one or more
public keys (``sync.pubkeys``) and accept a bundle only when one of them verifies the raw
64-byte signature in ``manifest.sig``. Keys are PEM files: the private key as unencrypted
PKCS#8 (mode 0600, kept offline by the operator), the public key as SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from namus_edge.core.errors import BundleVerificationError, NamusEdgeError

logger = logging.getLogger(__name__)

#: Length of a raw Ed25519 signature in bytes.
SIGNATURE_BYTES = 64


class SigningKeyError(NamusEdgeError):
    """A key file is missing, unreadable, not a PEM Ed25519 key, or would be overwritten."""


def public_key_path(key_path: Path) -> Path:
    """The public key file that belongs to a private key file: ``KEY`` -> ``KEY.pub``."""
    return key_path.with_name(key_path.name + ".pub")


def generate_keypair(key_path: Path) -> tuple[Path, Path]:
    """Create a new Ed25519 key pair.

    Args:
        key_path: where the private key goes (unencrypted PKCS#8 PEM, mode 0600); the public
            key (SubjectPublicKeyInfo PEM, mode 0644) goes to ``KEY.pub`` beside it.

    Returns:
        ``(private_key_path, public_key_path)``.

    Raises:
        SigningKeyError: either file already exists (keys are never overwritten), or the
            directory is not writable.
    """
    key_path = Path(key_path)
    pub_path = public_key_path(key_path)
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise SigningKeyError(f"refusing to overwrite existing key file {p}")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(key_path, private_pem, 0o600)
    try:
        _write_exclusive(pub_path, public_pem, 0o644)
    except SigningKeyError:
        key_path.unlink()
        raise
    logger.info("generated Ed25519 key %s (key id %s)", key_path, key_id(pub_path))
    return key_path, pub_path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never replacing a file) and write ``data`` to it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningKeyError(f"refusing to overwrite existing key file {path}") from exc
    except OSError as exc:
        raise SigningKeyError(f"cannot create key file {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, mode)  # os.open's mode is filtered by the umask; make it exact
    except OSError as exc:
        raise SigningKeyError(f"cannot write key file {path}: {exc.strerror or exc}") from exc


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc


def _load_key(path: Path, kind: str, load: Callable[[bytes], object], expected: type) -> Any:
    data = _read_pem(Path(path), kind)
    try:
        key = load(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path} is not a usable PEM {kind}: {exc}") from exc
    if not isinstance(key, expected):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, expected an Ed25519 {kind}")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key.

    Raises:
        SigningKeyError: naming ``path`` when it is missing, unreadable, encrypted, or not Ed25519.
    """
    return _load_key(path, "private key", lambda data: serialization.load_pem_private_key(data, password=None),
                     Ed25519PrivateKey)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key.

    Raises:
        SigningKeyError: naming ``path`` when it is missing, unreadable, or not an Ed25519 public key.
    """
    return _load_key(path, "public key", serialization.load_pem_public_key, Ed25519PublicKey)


def key_id(pubkey_path: Path) -> str:
    """Short identifier of a public key: the first 16 hex digits of sha256 of its 32 raw bytes."""
    raw = load_public_key(Path(pubkey_path)).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bytes(data: bytes, key_path: Path) -> bytes:
    """Sign ``data`` with the private key in ``key_path``.

    Returns:
        The raw 64-byte Ed25519 signature.

    Raises:
        SigningKeyError: the key cannot be loaded.
    """
    return load_private_key(Path(key_path)).sign(data)


def verify_signature(data: bytes, signature: bytes, pubkey_paths: Sequence[Path]) -> Path:
    """Check ``signature`` over ``data`` against each pinned public key in turn.

    Args:
        data: the signed bytes (a manifest, byte for byte).
        signature: raw 64-byte Ed25519 signature.
        pubkey_paths: pinned public key files; at least one.

    Returns:
        The path of the first key that verifies.

    Raises:
        BundleVerificationError: no key given, a malformed signature, or no key verifies.
        SigningKeyError: a pinned key file cannot be loaded (an operator error, not a bad bundle).
    """
    paths = [Path(p) for p in pubkey_paths]
    if not paths:
        raise BundleVerificationError("no public key given to verify the signature against")
    if len(signature) != SIGNATURE_BYTES:
        raise BundleVerificationError(
            f"signature is {len(signature)} bytes, expected a raw {SIGNATURE_BYTES}-byte Ed25519 signature"
        )
    keys = [(p, load_public_key(p)) for p in paths]
    for path, key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        logger.debug("signature verified with %s", path)
        return path
    ids = ", ".join(f"{p} ({key_id(p)})" for p in paths)
    raise BundleVerificationError(f"signature does not verify with any pinned public key: {ids}")
