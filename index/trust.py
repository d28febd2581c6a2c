"""Freshness and origin rules for signed bundles: monotonic sequence, expiry, allowed announce URLs.

A valid signature proves who built a bundle, not that it is the one a device should search now.
The signed manifest therefore carries:

* ``sequence``: an integer that grows with every bundle the operator builds (Unix time in
  milliseconds at build, or the base bundle's plus one when that is larger). A device refuses a
  bundle whose sequence is lower than the one it runs (rollback to an older, validly signed
  bundle that still holds resolved cases).
* ``valid_until``: an ISO-8601 UTC time after which the bundle is stale. Sync refuses to install
  an expired bundle; a running device keeps searching the one it has but reports it as expired
  (status ``index_expired`` and a degraded ``index``), which is what a freeze attack (updates
  withheld) looks like from the fleet.

Index announcements over MQTT are hints: a device only fetches from URLs under its configured
``sync.url`` (:func:`announce_url_allowed`).
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from namus_edge.core.errors import BundleVerificationError


def manifest_sequence(manifest: Mapping[str, Any]) -> int:
    """The signed ``sequence`` of a parsed manifest."""
    return int(manifest["sequence"])


def manifest_valid_until(manifest: Mapping[str, Any]) -> datetime:
    """The signed ``valid_until`` of a parsed manifest, timezone-aware UTC."""
    return parse_utc(str(manifest["valid_until"]))


def parse_utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` (or any ISO-8601 with an offset) into an aware UTC datetime.

    Raises:
        ValueError: not ISO-8601, or without a timezone.
    """
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    return value.astimezone(timezone.utc)


def is_expired(manifest: Mapping[str, Any], now: datetime | None = None) -> bool:
    """Whether the bundle's ``valid_until`` has passed."""
    return (now or datetime.now(timezone.utc)) > manifest_valid_until(manifest)


def check_not_older(manifest: Mapping[str, Any], live_sequence: int | None, where: str) -> None:
    """Refuse a bundle whose sequence is lower than the live one's.

    Raises:
        BundleVerificationError: naming both sequences.
    """
    if live_sequence is None:
        return
    seq = manifest_sequence(manifest)
    if seq < live_sequence:
        raise BundleVerificationError(
            f"{where}: bundle {manifest.get('bundle_version')} has sequence {seq}, lower than the live bundle's "
            f"{live_sequence}; refusing a rollback to an older bundle"
        )


def check_not_expired(manifest: Mapping[str, Any], where: str, now: datetime | None = None) -> None:
    """Refuse to install a bundle past its ``valid_until``.

    Raises:
        BundleVerificationError: naming the expiry time.
    """
    if is_expired(manifest, now):
        raise BundleVerificationError(
            f"{where}: bundle {manifest.get('bundle_version')} expired at {manifest['valid_until']}; "
            "the operator must publish a fresh one"
        )


def announce_url_allowed(url: str, base: str) -> bool:
    """Whether an announced bundle URL lies under the configured ``sync.url``.

    Same scheme, same host and port (user-info in either is refused), and a path inside the
    base path after resolving ``.`` and ``..``.

    Args:
        url: the URL named by the announcement.
        base: ``sync.url``.
    """
    try:
        u, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
        u_port, b_port = u.port, b.port
    except ValueError:
        return False
    if u.scheme.lower() not in ("http", "https") or u.scheme.lower() != b.scheme.lower():
        return False
    if "@" in u.netloc or "@" in b.netloc:
        return False
    if (u.hostname or "").lower() != (b.hostname or "").lower() or u_port != b_port:
        return False
    if ".." in urllib.parse.unquote(u.path).split("/"):
        return False
    base_path = posixpath.normpath(b.path or "/")
    path = posixpath.normpath(u.path or "/")
    if base_path == "/":
        return True
    return path == base_path or path.startswith(base_path.rstrip("/") + "/")
