"""Fetching a published bundle onto a device and switching to it atomically.

State directory layout (``sync.state_dir``, e.g. ``/var/lib/namus-edge/index``)::

    current -> versions/<v>      relative symlink; the bundle the service searches
    versions/<v>/                complete, verified bundles (device files + manifest + signature)
    tmp/<v>.partial/             a download in progress (resumed with HTTP Range requests)
    tmp/trash-*                  versions being deleted (renamed here first, then removed)
    rejected.json                versions that verified but failed to load: {version: {manifest_sha256, reason}}
    .sync.lock                   flock held by whichever process is syncing (timer or service)

Order of one sync (:func:`sync_once`), chosen so that killing the process (or losing power) at
any instant leaves ``current`` pointing at a complete, verified bundle:

1. fetch ``latest.json`` (small, size-capped); nothing to do when ``current`` already holds it;
2. download ``manifest.json`` and ``manifest.sig`` first and check, before any large download,
   the signature against the pinned keys, the signed ``sequence`` (never lower than the live
   bundle's: no rollback) and ``valid_until`` (not expired), the embedding model and the total size against
   ``max_bytes`` and the free disk space; the list of files to fetch comes from the signed
   manifest, never from the unsigned ``latest.json``;
3. download every device file into ``tmp/<v>.partial/`` (resuming from partial sizes), capped at
   its manifest size; verify every hash and the signature again (:func:`verify_bundle`);
4. fsync files and directories, rename the directory to ``versions/<v>/``;
5. point a fresh symlink ``current.tmp-<pid>`` at it and ``os.replace`` it onto ``current``
   (atomic), fsync the state directory;
6. load the bundle through ``current``; if that fails, switch back to the previous target;
7. prune versions beyond ``keep_versions`` (never ``current`` or the previous one).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from namus_edge.core.config import Config
from namus_edge.core.errors import BundleError, NamusEdgeError
from namus_edge.core.fsutil import fsync_dir, fsync_tree, sha256_file, write_atomic
from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ModelIdentity,
    check_model,
    check_relpath,
    parse_manifest,
    read_manifest,
    verify_bundle,
)
from namus_edge.index.publish import check_version, latest_url, parse_latest
from namus_edge.index.signing import verify_signature
from namus_edge.index.trust import check_not_expired, check_not_older, manifest_sequence
from namus_edge.models.registry import get_spec

logger = logging.getLogger(__name__)

CURRENT_NAME = "current"
VERSIONS_DIR = "versions"
TMP_DIR = "tmp"
LOCK_NAME = ".sync.lock"
REJECTED_NAME = "rejected.json"
#: ``latest.json`` larger than this is refused (it lists a handful of files).
LATEST_MAX_BYTES = 1 << 20
#: Resume attempts per file within one sync when the connection drops mid-body.
RESUME_ATTEMPTS = 3
_CHUNK = 1 << 16

SyncStatus = Literal["updated", "unchanged", "refused", "rolled_back"]


class SyncError(NamusEdgeError):
    """A sync cannot even start (no pinned key, unusable state directory, bad arguments)."""


class DownloadError(BundleError):
    """A download failed: HTTP error, timeout, truncated body, or more bytes than announced."""


@dataclass(frozen=True)
class SyncResult:
    """Outcome of :func:`sync_once`.

    Attributes:
        status: ``updated`` (new version live), ``unchanged`` (already live), ``refused`` (nothing
            changed; ``reason`` says why) or ``rolled_back`` (switched, failed to load, switched back).
        version: the version ``latest.json`` offered (``None`` when it could not be read).
        current: the version live after the sync (``None`` when none is installed).
        reason: why it was refused or rolled back; empty otherwise.
        downloaded_bytes: bytes received over HTTP in this run.
    """

    status: SyncStatus
    version: str | None
    current: str | None
    reason: str = ""
    downloaded_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True for ``updated`` and ``unchanged``."""
        return self.status in ("updated", "unchanged")


def expected_model_from_config(config: Config) -> ModelIdentity:
    """The embedding model this device runs, from ``models`` (preset or custom) and the registry.

    Raises:
        ModelError: the embedder is not a registered model.
        SyncError: the registry entry has no output dimension.
    """
    _, embedder, _ = config.models.selected()
    spec = get_spec(embedder)
    if spec.output_dim is None:
        raise SyncError(f"model {embedder} has no output_dim in the registry; it is not an embedder")
    return ModelIdentity(name=spec.name, sha256=spec.sha256, dim=spec.output_dim)


def current_version(state_dir: Path) -> str | None:
    """The version ``state_dir/current`` points at, or ``None`` when nothing is installed."""
    link = Path(state_dir) / CURRENT_NAME
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return Path(target).name or None


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise SyncError(f"sync URL must be http:// or https://, got {url!r}")


def _open(url: str, timeout_s: float, headers: Mapping[str, str] | None = None) -> http.client.HTTPResponse:
    req = urllib.request.Request(url, headers={"User-Agent": "namus-edge-sync", **(headers or {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"GET {url}: {reason}") from exc
    return resp


def fetch_bytes(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """GET a small resource whole, refusing more than ``max_bytes``.

    Raises:
        DownloadError: HTTP error, timeout, or a body larger than ``max_bytes``.
    """
    resp = _open(url, timeout_s)
    with resp:
        try:
            data = resp.read(max_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"GET {url}: {exc}") from exc
    if len(data) > max_bytes:
        raise DownloadError(f"GET {url}: larger than the {max_bytes}-byte limit")
    return data


def download_file(url: str, dest: Path, size: int, sha256: str, timeout_s: float) -> int:
    """Download ``url`` into ``dest``, resuming a partial file with a Range request.

    A complete file with the right hash is kept as is; a larger one, or one whose hash is wrong
    once complete, is restarted from zero. The body is never written past ``size``. When the
    connection drops mid-body the download resumes from what arrived, up to
    :data:`RESUME_ATTEMPTS` times; the partial file is kept for the next sync either way.

    Args:
        url: the file's URL.
        dest: the partial file (created with its parents).
        size: expected size in bytes (from the signed manifest).
        sha256: expected hex sha256.
        timeout_s: connect and per-read timeout.

    Returns:
        Bytes received over the network.

    Raises:
        DownloadError: HTTP error, timeout, a server sending more than ``size`` bytes, a body
            still short after the resume attempts, or a hash mismatch after a fresh download.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    received = 0
    restarted = False
    attempts = 0
    while True:
        have = dest.stat().st_size if dest.exists() else 0
        if have > size:
            logger.warning("%s: %d bytes, larger than the expected %d; downloading again", dest, have, size)
            dest.unlink()
            have = 0
        if have == size:
            digest = sha256_file(dest)
            if digest == sha256:
                return received
            if restarted:
                raise DownloadError(
                    f"GET {url}: sha256 of the downloaded file is {digest[:16]}…, expected {sha256[:16]}… "
                    "(the file was changed after signing)"
                )
            logger.warning("%s: complete but its sha256 is not the expected one; downloading again", dest)
            dest.unlink()
            restarted = True
            continue
        if attempts > RESUME_ATTEMPTS:
            raise DownloadError(
                f"GET {url}: truncated download, got {have} of {size} bytes after {RESUME_ATTEMPTS} resume attempt(s)"
            )
        attempts += 1
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp = _open(url, timeout_s, headers)
        with resp:
            if have and resp.status != 206:
                logger.info("%s: server ignored the Range request (HTTP %d); restarting", url, resp.status)
                have = 0
            mode = "ab" if have else "wb"
            with dest.open(mode) as out:
                try:
                    while True:
                        block = resp.read(_CHUNK)
                        if not block:
                            break
                        if have + len(block) > size:
                            raise DownloadError(f"GET {url}: server sent more than the {size} bytes the manifest lists")
                        out.write(block)
                        have += len(block)
                        received += len(block)
                except (OSError, http.client.HTTPException) as exc:
                    # IncompleteRead, reset, timeout: keep what arrived and resume.
                    logger.warning("GET %s: interrupted at %d of %d bytes (%s)", url, have, size, exc)
                out.flush()
                os.fsync(out.fileno())


# ------------------------------------------------------------------------------------------
# state directory
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sync_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``state_dir/.sync.lock`` (blocks while another sync runs)."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def switch_current(state_dir: Path, version: str) -> None:
    """Atomically point ``state_dir/current`` at ``versions/<version>`` and make it durable."""
    tmp = state_dir / f"{CURRENT_NAME}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"{VERSIONS_DIR}/{version}", tmp)
    os.replace(tmp, state_dir / CURRENT_NAME)
    fsync_dir(state_dir)
    logger.info("current -> %s/%s", VERSIONS_DIR, version)


def _remove_dir(state_dir: Path, path: Path) -> None:
    """Delete a directory by renaming it into ``tmp/`` first, so no half-deleted bundle stays visible."""
    trash = state_dir / TMP_DIR / f"trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def recover(state_dir: Path) -> None:
    """Clean what a killed sync left behind: stale ``current.tmp-*`` links and ``tmp/trash-*``.

    Partial downloads under ``tmp/`` are kept (they are resumed).
    """
    for stale in state_dir.glob(f"{CURRENT_NAME}.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    for trash in (state_dir / TMP_DIR).glob("trash-*"):
        shutil.rmtree(trash, ignore_errors=True)


def prune(state_dir: Path, keep_versions: int, protect: Sequence[str]) -> list[str]:
    """Delete the oldest versions beyond ``keep_versions``, never those in ``protect``.

    Returns:
        The versions removed.
    """
    versions_dir = state_dir / VERSIONS_DIR
    entries = sorted(
        (p for p in versions_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    keep = set(protect)
    for p in entries:
        if len(keep) >= max(keep_versions, len(protect)):
            break
        keep.add(p.name)
    removed = []
    for p in entries:
        if p.name not in keep:
            _remove_dir(state_dir, p)
            removed.append(p.name)
    return removed


def _load_rejected(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / REJECTED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _reject(state_dir: Path, version: str, manifest_sha256: str, reason: str) -> None:
    data = _load_rejected(state_dir)
    data[version] = {"manifest_sha256": manifest_sha256, "reason": reason}
    write_atomic(state_dir / REJECTED_NAME, json.dumps(data, sort_keys=True, indent=2).encode("utf-8"))


def live_sequence(state_dir: Path) -> int | None:
    """The signed ``sequence`` of the bundle ``current`` points at (None when none is installed or readable)."""
    try:
        manifest, _ = read_manifest(Path(state_dir) / CURRENT_NAME)
    except BundleError:
        return None
    return manifest_sequence(manifest)


def check_fresh(manifest: Mapping[str, Any], state_dir: Path, where: str) -> None:
    """Refuse a signed manifest older than the live bundle (rollback) or already expired.

    Raises:
        BundleVerificationError: naming the sequences or the expiry time.
    """
    check_not_older(manifest, live_sequence(state_dir), where)
    check_not_expired(manifest, where)


def default_load_check(pubkeys: Sequence[Path], expected_model: ModelIdentity) -> Callable[[Path], object]:
    """The load check used after switching: open the bundle through ``current`` with ``Bundle.load``."""

    def check(path: Path) -> object:

        bundle = Bundle.load(path, pubkeys=pubkeys, expected_model=expected_model)
        version = bundle.version
        bundle.close()
        return version

    return check


# ------------------------------------------------------------------------------------------
# one sync
# ------------------------------------------------------------------------------------------


def sync_once(
    url: str,
    state_dir: Path,
    pubkeys: Sequence[Path],
    expected_model: ModelIdentity,
    *,
    timeout_s: float = 30.0,
    max_bytes: int = 2_000_000_000,
    keep_versions: int = 3,
    load_check: Callable[[Path], object] | None = None,
) -> SyncResult:
    """Bring ``state_dir/current`` to the version published at ``url``, safely.

    Safe to call from a service thread and from the timer at once (an flock serialises them).
    See the module docstring for the order of steps and the state directory layout.

    Args:
        url: the publish tree's base URL, or its ``latest.json`` URL (http or https).
        state_dir: the device's bundle state directory (created if missing).
        pubkeys: pinned operator public key files; at least one.
        expected_model: the embedding model the device runs.
        timeout_s: connect and per-read timeout of every HTTP request.
        max_bytes: refuse a bundle whose files add up to more than this.
        keep_versions: complete versions kept on disk (``current`` and the previous one always are).
        load_check: called with ``state_dir/current`` after the switch; raising rolls back. Default:
            ``Bundle.load`` with the pinned keys and expected model.

    Returns:
        The outcome; a refused or rolled-back sync leaves the previous ``current`` live.

    Raises:
        SyncError: no pinned key, a non-http(s) URL, or an unusable state directory.
    """
    if not pubkeys:
        raise SyncError("no pinned operator public key: pass --pubkey or set sync.pubkeys")
    for key in pubkeys:
        if not Path(key).is_file():
            raise SyncError(f"pinned public key {key} does not exist")
    if keep_versions < 1:
        raise SyncError(f"keep_versions must be >= 1, got {keep_versions}")
    _check_scheme(url)
    state_dir = Path(state_dir)
    try:
        for sub in (state_dir, state_dir / VERSIONS_DIR, state_dir / TMP_DIR):
            sub.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SyncError(f"cannot create state directory {state_dir}: {exc.strerror or exc}") from exc
    check = load_check or default_load_check(pubkeys, expected_model)
    with sync_lock(state_dir):
        recover(state_dir)
        return _sync_locked(url, state_dir, list(pubkeys), expected_model, timeout_s, max_bytes, keep_versions, check)


def _sync_locked(
    url: str,
    state_dir: Path,
    pubkeys: list[Path],
    expected_model: ModelIdentity,
    timeout_s: float,
    max_bytes: int,
    keep_versions: int,
    load_check: Callable[[Path], object],
) -> SyncResult:
    live = current_version(state_dir)
    received = 0

    def refused(version: str | None, reason: str) -> SyncResult:
        logger.error("sync refused%s: %s", f" (version {version})" if version else "", reason)
        return SyncResult("refused", version, live, reason, received)

    # 1. latest.json
    lurl = latest_url(url)
    try:
        latest = parse_latest(fetch_bytes(lurl, timeout_s, LATEST_MAX_BYTES), lurl)
    except BundleError as exc:
        return refused(None, str(exc))
    version = check_version(latest["version"])
    if live == version and (state_dir / CURRENT_NAME).is_dir():
        logger.info("bundle %s is already current", version)
        return SyncResult("unchanged", version, live, "", 0)
    rejected = _load_rejected(state_dir).get(version)
    if isinstance(rejected, dict) and rejected.get("manifest_sha256") == latest["manifest_sha256"]:
        return refused(version, f"version {version} failed to load before: {rejected.get('reason')}")

    base = urllib.parse.urljoin(lurl, latest["path"])
    final = state_dir / VERSIONS_DIR / version
    partial = state_dir / TMP_DIR / f"{version}.partial"
    try:
        if final.is_dir():
            # Downloaded and renamed by a sync stopped before the switch (or an older version
            # offered again): use it if it still verifies, else fetch it again.
            try:
                verify_bundle(final, pubkeys, expected_model, include_operator_files=False)
            except BundleError as exc:
                logger.warning("%s does not verify (%s); downloading it again", final, exc)
                _remove_dir(state_dir, final)
        if final.is_dir():
            check_fresh(read_manifest(final)[0], state_dir, str(final))
        if not final.is_dir():
            received = _download(latest, base, partial, pubkeys, expected_model, timeout_s, max_bytes, state_dir)
            verify_bundle(partial, pubkeys, expected_model, include_operator_files=False)
            fsync_tree(partial)
            os.rename(partial, final)
            fsync_dir(final.parent)
    except BundleError as exc:
        return refused(version, str(exc))
    except OSError as exc:  # disk full, permissions: the previous bundle stays live
        return refused(version, f"cannot write under {state_dir}: {exc.strerror or exc} ({exc.filename})")

    # 5. switch, 6. load check, rollback
    previous = live
    switch_current(state_dir, version)
    try:
        load_check(state_dir / CURRENT_NAME)
    except (NamusEdgeError, OSError, RuntimeError, ValueError) as exc:
        reason = f"bundle {version} verified but failed to load: {exc}"
        logger.error("%s; rolling back to %s", reason, previous)
        if previous is not None and (state_dir / VERSIONS_DIR / previous).is_dir():
            switch_current(state_dir, previous)
        else:
            (state_dir / CURRENT_NAME).unlink()
            fsync_dir(state_dir)
        _reject(state_dir, version, latest["manifest_sha256"], str(exc))
        _remove_dir(state_dir, final)
        return SyncResult("rolled_back", version, current_version(state_dir), reason, received)

    # 7. prune
    protect = [version] + ([previous] if previous else [])
    removed = prune(state_dir, keep_versions, protect)
    for stale in (state_dir / TMP_DIR).glob("*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    if removed:
        logger.info("pruned old version(s): %s", ", ".join(removed))
    logger.info("bundle %s is live (previous: %s, %d bytes downloaded)", version, previous, received)
    return SyncResult("updated", version, version, "", received)


def _download(
    latest: Mapping[str, Any],
    base: str,
    partial: Path,
    pubkeys: list[Path],
    expected_model: ModelIdentity,
    timeout_s: float,
    max_bytes: int,
    state_dir: Path,
) -> int:
    """Fetch and check the signed manifest, then every device file into ``partial``; return bytes received."""
    files = latest["files"]
    received = 0
    # 2. manifest + signature first: refuse a wrong key, model or size before any large download.
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        entry = files[name]
        if entry["size"] > LATEST_MAX_BYTES * 64:
            raise DownloadError(f"{name} is {entry['size']} bytes; refusing anything that large")
        received += download_file(base + name, partial / name, entry["size"], entry["sha256"], timeout_s)
    raw = (partial / MANIFEST_NAME).read_bytes()
    manifest = parse_manifest(raw, f"{base}{MANIFEST_NAME}")
    try:
        verify_signature(raw, (partial / SIGNATURE_NAME).read_bytes(), pubkeys)
    except BundleError as exc:
        raise BundleError(f"{base}{SIGNATURE_NAME}: {exc}") from exc
    if check_version(manifest["bundle_version"]) != latest["version"]:
        raise BundleError(
            f"latest.json offers version {latest['version']} but its signed manifest is {manifest['bundle_version']}"
        )
    check_model(manifest, expected_model)
    check_fresh(manifest, state_dir, f"{base}{MANIFEST_NAME}")
    device_files: dict[str, Any] = manifest["files"]
    total = sum(int(e["size"]) for e in device_files.values()) + files[MANIFEST_NAME]["size"]
    if total > max_bytes:
        raise BundleError(f"bundle {latest['version']} is {total} bytes, over the sync.max_bytes limit of {max_bytes}")
    missing = sum(
        max(0, int(e["size"]) - ((partial / rel).stat().st_size if (partial / rel).is_file() else 0))
        for rel, e in device_files.items()
    )
    free = shutil.disk_usage(state_dir).free
    if missing > free:
        raise BundleError(f"bundle {latest['version']} needs {missing} more bytes, only {free} free in {state_dir}")
    # 3. device files, as listed in the signed manifest
    for rel in sorted(device_files):
        entry = device_files[check_relpath(rel)]
        received += download_file(
            base + urllib.parse.quote(rel), partial / rel, int(entry["size"]), entry["sha256"], timeout_s
        )
    # files a previous, different download left in the partial directory would fail verification
    listed = {MANIFEST_NAME, SIGNATURE_NAME, *device_files}
    for root, _dirs, names in os.walk(partial):
        for name in names:
            rel_path = Path(root, name).relative_to(partial).as_posix()
            if rel_path not in listed:
                Path(root, name).unlink()
    return received

