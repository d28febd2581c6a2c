"""Ed25519 operator keys: generation, loading, signing and verification with real keys."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from namus_edge.core.errors import BundleVerificationError
from namus_edge.index.signing import (
    SigningKeyError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bytes,
    verify_signature,
)


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "op.key")


def test_generate_keypair_writes_pem_files_with_private_mode_0600(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert public == private.with_name("op.key.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    # The two files are one pair.
    derived = (
        load_private_key(private).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    pinned = load_public_key(public).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert derived == pinned


@pytest.mark.parametrize("existing", ["op.key", "op.key.pub"])
def test_generate_keypair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "op.key")
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_key_id_is_sha256_of_raw_public_key(keys: tuple[Path, Path], tmp_path: Path) -> None:
    _, public = keys
    raw = load_public_key(public).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    _, other = generate_keypair(tmp_path / "other.key")
    assert key_id(other) != key_id(public)


def test_sign_and_verify_returns_the_key_that_verified(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    _, other_pub = generate_keypair(tmp_path / "other.key")
    sig = sign_bytes(b"manifest bytes", private)
    assert len(sig) == 64
    assert verify_signature(b"manifest bytes", sig, [other_pub, public]) == public


def test_verify_rejects_tampered_data_wrong_key_and_malformed_signature(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    _, other_pub = generate_keypair(tmp_path / "other.key")
    sig = sign_bytes(b"manifest bytes", private)
    with pytest.raises(BundleVerificationError, match="does not verify"):
        verify_signature(b"manifest bytez", sig, [public])
    with pytest.raises(BundleVerificationError, match=key_id(other_pub)):
        verify_signature(b"manifest bytes", sig, [other_pub])
    with pytest.raises(BundleVerificationError, match="63 bytes"):
        verify_signature(b"manifest bytes", sig[:-1], [public])
    with pytest.raises(BundleVerificationError, match="no public key"):
        verify_signature(b"manifest bytes", sig, [])


def test_load_errors_name_the_file(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    with pytest.raises(SigningKeyError, match=r"missing\.key"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(SigningKeyError, match=re.escape(str(public))):
        load_private_key(public)  # a public key is not a private key
    with pytest.raises(SigningKeyError, match=re.escape(str(private))):
        load_public_key(private)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(SigningKeyError, match=r"garbage\.pub"):
        load_public_key(garbage)
    with pytest.raises(SigningKeyError, match=r"garbage\.pub"):
        verify_signature(b"x", b"\0" * 64, [garbage])
