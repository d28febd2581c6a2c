"""Publishing signed bundles as a static tree any web server or object store can serve.

Layout written by :func:`publish_bundle` under the publish directory ``DIR``::

    DIR/latest.json              the pointer devices poll (written last)
    DIR/<version>/manifest.json  exact bytes the operator signed
    DIR/<version>/manifest.sig   raw 64-byte Ed25519 signature
    DIR/<version>/index.faiss    device files listed under the manifest's ``files``
    DIR/<version>/meta.sqlite3
    DIR/<version>/...            operator files only with ``include_operator_files``

``latest.json`` is ``{"version", "path": "<version>/", "files": {relpath: {"sha256", "size"}},
"manifest_sha256", "signature": base64, "embedding_model": {...}, "published": ISO-8601}``;
``files`` includes ``manifest.json`` and ``manifest.sig`` so a device knows every byte count before
it downloads anything. ``latest.json`` itself is not signed: a device trusts only the signed
manifest it points to (see :mod:`index.sync`).

Every file is written to a temporary sibling, fsynced and renamed, so a reader (a device, a
CDN pulling the tree) never sees a half-written file; ``latest.json`` is renamed into place only
after every file of the version is complete. A published version directory is immutable:
publishing the same version again with different content is refused.

The optional MQTT announcement is a retained QoS 1 message on ``<prefix>/index/announce``
holding ``{"version", "url", "manifest_sha256"}`` so devices sync at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from namus_edge.core.config import MqttConfig
from namus_edge.core.errors import BundleError, NamusEdgeError
from namus_edge.core.fsutil import copy_atomic, fsync_dir, sha256_file, write_atomic
from namus_edge.core.secrets import resolve_credential_path
from namus_edge.core.topics import announce_topic
from namus_edge.index.manifest import MANIFEST_NAME, SIGNATURE_NAME, check_relpath, read_manifest, verify_bundle

logger = logging.getLogger(__name__)

LATEST_NAME = "latest.json"
#: A bundle version must be a plain directory name (it becomes ``DIR/<version>/`` on servers and devices).
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PublishError(NamusEdgeError):
    """A bundle cannot be published (unverifiable, version clash, unwritable destination, broker error)."""


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_bundle` wrote.

    Attributes:
        version: the bundle version (``DIR/<version>/``).
        latest_path: the ``latest.json`` written.
        latest: its content.
        copied: relative paths copied in this run (already identical files are skipped).
    """

    version: str
    latest_path: Path
    latest: dict[str, Any]
    copied: tuple[str, ...]


@dataclass(frozen=True)
class Announcement:
    """The payload of ``<prefix>/index/announce``.

    Attributes:
        version: the bundle version now in ``latest.json``.
        url: where devices fetch it (the ``latest.json`` URL or the tree's base URL).
        manifest_sha256: hex sha256 of the signed ``manifest.json``.
    """

    version: str
    url: str
    manifest_sha256: str

    def to_json(self) -> bytes:
        """UTF-8 JSON bytes of the payload."""
        return json.dumps(
            {"version": self.version, "url": self.url, "manifest_sha256": self.manifest_sha256}, sort_keys=True
        ).encode("utf-8")

    @classmethod
    def from_json(cls, payload: bytes) -> Announcement:
        """Parse and validate an announcement payload.

        Raises:
            BundleError: not a JSON object with a safe ``version``, an http(s) ``url`` and a
                64-hex ``manifest_sha256``.
        """
        data = _json_object(payload, "announcement")
        version, url, digest = data.get("version"), data.get("url"), data.get("manifest_sha256")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise BundleError(f"announcement has an invalid version {version!r}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BundleError(f"announcement url must be http(s)://..., got {url!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BundleError(f"announcement manifest_sha256 must be 64 lowercase hex digits, got {digest!r}")
        return cls(version=version, url=url, manifest_sha256=digest)


def _json_object(payload: bytes, source: str) -> dict[str, Any]:
    """Decode ``payload`` as a UTF-8 JSON object.

    Raises:
        BundleError: naming ``source`` when it is not UTF-8 JSON or not an object.
    """
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source} is not UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{source}: must be a JSON object, got {type(data).__name__}")
    return data


def latest_url(url: str) -> str:
    """``url`` itself when it names a ``.json`` file, else ``<url>/latest.json``."""
    if urllib.parse.urlsplit(url).path.endswith(".json"):
        return url
    return url.rstrip("/") + "/" + LATEST_NAME


def check_version(version: object) -> str:
    """Return ``version`` if it is a safe directory name.

    Raises:
        BundleError: not a string of letters, digits, ``.``, ``_``, ``-`` (1-128 chars, no leading dot).
    """
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise BundleError(
            f"bundle version {version!r} is not a safe directory name (letters, digits, '.', '_', '-'; max 128)"
        )
    return version


def publish_bundle(
    bundle_dir: Path,
    dest_dir: Path,
    *,
    include_operator_files: bool = False,
    pubkeys: Sequence[Path] | None = None,
) -> PublishResult:
    """Copy a verified bundle into ``dest_dir/<version>/`` and point ``dest_dir/latest.json`` at it.

    Args:
        bundle_dir: a bundle written by ``namus-edge index build``.
        dest_dir: the static publish tree (created if needed).
        include_operator_files: also publish ``operator_files`` (embeddings, thumbnails, reports);
            devices never download them.
        pubkeys: public keys to check the signature against before publishing (``None``: hashes
            only; the signature file must exist either way).

    Returns:
        What was written.

    Raises:
        PublishError: the bundle does not verify, has no signature, its version is unsafe, or
            ``dest_dir/<version>/`` already holds different content for a file.
    """
    bundle_dir, dest_dir = Path(bundle_dir), Path(dest_dir)
    try:
        manifest = verify_bundle(bundle_dir, pubkeys, None, include_operator_files=include_operator_files)
        _, raw = read_manifest(bundle_dir)
        version = check_version(manifest.get("bundle_version"))
    except BundleError as exc:
        raise PublishError(f"cannot publish {bundle_dir}: {exc}") from exc
    sig_path = bundle_dir / SIGNATURE_NAME
    if not sig_path.is_file():
        raise PublishError(f"cannot publish {bundle_dir}: {SIGNATURE_NAME} is missing (sign the bundle first)")
    signature = sig_path.read_bytes()

    entries: dict[str, dict[str, Any]] = {
        MANIFEST_NAME: {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)},
        SIGNATURE_NAME: {"sha256": hashlib.sha256(signature).hexdigest(), "size": len(signature)},
    }
    tables: list[Mapping[str, Any]] = [manifest["files"]]
    if include_operator_files:
        tables.append(manifest["operator_files"])
    for table in tables:
        for rel, entry in table.items():
            entries[check_relpath(rel)] = {"sha256": entry["sha256"], "size": entry["size"]}

    version_dir = dest_dir / version
    copied: list[str] = []
    try:
        for rel in sorted(entries):
            target = version_dir / rel
            if target.is_file():
                if target.stat().st_size == entries[rel]["size"] and sha256_file(target) == entries[rel]["sha256"]:
                    continue
                raise PublishError(
                    f"{target} already exists with different content: version {version} was published "
                    "before from another bundle (versions are immutable; build a new version)"
                )
            copy_atomic(bundle_dir / rel, target)
            copied.append(rel)
        fsync_dir(dest_dir)
        latest = {
            "version": version,
            "path": f"{version}/",
            "files": entries,
            "manifest_sha256": entries[MANIFEST_NAME]["sha256"],
            "signature": base64.b64encode(signature).decode("ascii"),
            "embedding_model": manifest["embedding_model"],
            "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        latest_path = dest_dir / LATEST_NAME
        write_atomic(latest_path, (json.dumps(latest, sort_keys=True, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise PublishError(f"cannot write to {dest_dir}: {exc.strerror or exc}") from exc
    logger.info("published bundle %s to %s (%d file(s) copied)", version, dest_dir, len(copied))
    return PublishResult(version=version, latest_path=latest_path, latest=latest, copied=tuple(copied))


def parse_latest(data: bytes, source: str = LATEST_NAME) -> dict[str, Any]:
    """Decode and validate ``latest.json``.

    Returns:
        The mapping, with ``version`` checked as a safe name, ``files`` as ``{relpath: {sha256, size}}``
        with safe relative paths (``manifest.json`` and ``manifest.sig`` among them) and
        ``manifest_sha256`` matching the ``manifest.json`` entry.

    Raises:
        BundleError: naming ``source`` and the bad field.
    """
    latest = _json_object(data, source)
    check_version(latest.get("version"))
    path = latest.get("path", f"{latest['version']}/")
    if not isinstance(path, str) or not path.endswith("/"):
        raise BundleError(f"{source}: path must be a relative directory ending in '/', got {path!r}")
    check_relpath(path.rstrip("/"))
    files = latest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{source}: files must be an object")
    for rel, entry in files.items():
        check_relpath(rel)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise BundleError(f"{source}: files[{rel!r}] must be {{'sha256': str, 'size': int >= 0}}")
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        if name not in files:
            raise BundleError(f"{source}: files does not list {name}")
    if latest.get("manifest_sha256") != files[MANIFEST_NAME]["sha256"]:
        raise BundleError(f"{source}: manifest_sha256 does not match files[{MANIFEST_NAME!r}]")
    sig = latest.get("signature")
    if sig is not None:
        try:
            base64.b64decode(sig, validate=True)
        except (binascii.Error, TypeError) as exc:
            raise BundleError(f"{source}: signature is not base64") from exc
    return latest


def announce(
    mqtt: MqttConfig,
    announcement: Announcement,
    *,
    password: str | None = None,
    client_id: str | None = None,
    timeout_s: float = 10.0,
) -> str:
    """Publish ``announcement`` retained with QoS 1 on ``<mqtt.topic_prefix>/index/announce``.

    Connects with the host, port, TLS and username of ``mqtt``, waits for the broker's PUBACK and
    disconnects.

    Args:
        mqtt: the ``mqtt`` config section.
        announcement: the payload.
        password: the MQTT password (read by the caller from a credential file or the environment).
        client_id: MQTT client id (default ``namus-edge-publisher-<pid>``).
        timeout_s: bound on connecting and on the acknowledgement.

    Returns:
        The topic published on.

    Raises:
        PublishError: the broker cannot be reached, refuses the connection, or does not
            acknowledge in time.
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    topic = announce_topic(mqtt.topic_prefix)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"namus-edge-publisher-{os.getpid()}")
    if mqtt.username:
        client.username_pw_set(mqtt.username, password)
    if mqtt.tls.enabled:
        key_file = str(resolve_credential_path(mqtt.tls.key_file)) if mqtt.tls.key_file else None
        try:
            client.tls_set(
                ca_certs=mqtt.tls.ca_file, certfile=mqtt.tls.cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise PublishError(f"mqtt.tls: cannot load the CA, certificate or key: {exc}") from exc
        client.tls_insecure_set(mqtt.tls.insecure)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    try:
        code = client.connect(mqtt.host, mqtt.port, keepalive=max(5, int(timeout_s)))
    except (OSError, ssl.SSLError) as exc:
        raise PublishError(f"cannot connect to MQTT broker {mqtt.host}:{mqtt.port}: {exc}") from exc
    if code != paho.MQTT_ERR_SUCCESS:
        raise PublishError(f"cannot connect to MQTT broker {mqtt.host}:{mqtt.port}: {paho.error_string(code)}")
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"MQTT broker {mqtt.host}:{mqtt.port} did not answer CONNECT within {timeout_s:g} s")
        if refused:
            raise PublishError(f"MQTT broker {mqtt.host}:{mqtt.port} refused the connection: {refused[0]}")
        info = client.publish(topic, announcement.to_json(), qos=1, retain=True)
        info.wait_for_publish(timeout=timeout_s)
        if not info.is_published():
            raise PublishError(
                f"MQTT broker {mqtt.host}:{mqtt.port} did not acknowledge {topic} within {timeout_s:g} s "
                f"({paho.error_string(info.rc)})"
            )
    except (RuntimeError, ValueError) as exc:
        raise PublishError(f"MQTT publish on {topic} failed: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
    logger.info("announced bundle %s on %s", announcement.version, topic)
    return topic
