"""Reading credentials: systemd credentials first, then the environment.

Called from ``main()`` (never at import, never from config objects). Error messages name the
file or variable, never the secret itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from namus_edge.core.config import MqttConfig, TlsConfig
from namus_edge.core.errors import NamusEdgeError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretError(NamusEdgeError):
    """A configured credential cannot be read; the message names the file, not the content."""


def _strip_newline(text: str) -> str:
    # Exactly one trailing newline (what `echo` and editors add); other whitespace may be part of it.
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def resolve_credential_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """Resolve a credential file name as systemd's ``LoadCredential=`` places it.

    A relative name is looked up in ``$CREDENTIALS_DIRECTORY`` when that is set (otherwise
    relative to the working directory). A literal ``$CREDENTIALS_DIRECTORY`` or
    ``${CREDENTIALS_DIRECTORY}`` prefix is expanded too.

    Args:
        name: ``mqtt.password_file`` (or another credential path).
        environ: The environment to use; ``None`` means ``os.environ``.

    Returns:
        The path to read (not checked for existence).
    """
    env = os.environ if environ is None else environ
    cred_dir = env.get(CREDENTIALS_ENV)
    for token in ("${" + CREDENTIALS_ENV + "}", "$" + CREDENTIALS_ENV):
        if name.startswith(token) and cred_dir:
            return Path(cred_dir) / name[len(token):].lstrip("/")
    path = Path(name).expanduser()
    if not path.is_absolute() and cred_dir:
        return Path(cred_dir) / path
    return path


def read_mqtt_password(cfg: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the MQTT password, or ``None`` when none is configured.

    Order: ``mqtt.password_file`` (resolved by :func:`resolve_credential_path`; when set it must
    be readable), else the environment variable named by ``mqtt.password_env`` (unset or empty
    means no password). One trailing newline is removed.

    Args:
        cfg: The ``mqtt`` config section.
        environ: The environment to read; ``None`` means ``os.environ``.

    Raises:
        SecretError: the password file is missing, unreadable, not UTF-8 or empty.
    """
    env = os.environ if environ is None else environ
    if cfg.password_file:
        path = resolve_credential_path(cfg.password_file, env)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SecretError(
                f"mqtt.password_file: cannot read {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"mqtt.password_file: {path} is not UTF-8 text") from None
        password = _strip_newline(text)
        if not password:
            raise SecretError(f"mqtt.password_file: {path} is empty")
        return password
    if cfg.password_env:
        value = env.get(cfg.password_env)
        if value:
            return _strip_newline(value) or None
    return None


def mqtt_tls_files(tls: TlsConfig) -> dict[str, str | None]:
    """The CA, certificate and key files of ``mqtt.tls`` as paths, each checked to exist.

    ``key_file`` may name a systemd credential (resolved in ``$CREDENTIALS_DIRECTORY``).

    Returns:
        ``{"ca_file", "cert_file", "key_file"}`` -> path string, or ``None`` where not configured.

    Raises:
        SecretError: naming ``mqtt.tls.<key>`` when a configured file does not exist.
    """
    paths: dict[str, str | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, key)
        if value is None:
            paths[key] = None
            continue
        path = resolve_credential_path(value) if key == "key_file" else Path(value).expanduser()
        if not path.is_file():
            raise SecretError(f"mqtt.tls.{key}: {path} does not exist or is not a file")
        paths[key] = str(path)
    return paths
