"""Loading ``config.yaml`` and ``--set dotted.key=value`` overrides into a validated :class:`Config`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from namus_edge.core.config.base import ConfigError
from namus_edge.core.config.tree import Config

logger = logging.getLogger(__name__)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(Config, e["loc"][:-1])
            if parent is not None:
                msg += f"; allowed keys: {', '.join(sorted(parent.model_fields))}"
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    """Follow a pydantic error location to the sub-model class at that path, if any."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = None
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                nxt = c
                break
            for inner in getattr(c, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        current = nxt
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``dotted.key=value`` into the key path and the YAML-parsed value.

    Raises:
        ConfigError: if there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping (in place) and return it.

    A list element is addressed by its index (``cameras.0.fps_cap=5``).
    """
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError) as exc:
                    raise ConfigError(f"--set {'.'.join(parts)}: no list element {path}") from exc
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {path} is not a mapping")
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"--set {'.'.join(parts)}: no list element {'.'.join(parts)}") from exc
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: parent is not a mapping")
    return data


def config_from_mapping(data: Mapping[str, Any] | None, source: str = "<mapping>") -> Config:
    """Validate a raw mapping into a :class:`Config`.

    Raises:
        ConfigError: with one line per invalid key, each naming its dotted path.
    """
    try:
        return Config.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config file (default: the packaged default config) and apply overrides.

    Args:
        path: YAML file; ``None`` uses the built-in defaults (config.yaml documents exactly these;
            a test keeps the two equal).
        overrides: ``dotted.key=value`` strings, applied in order.

    Raises:
        ConfigError: the file is missing, unreadable, not a YAML mapping, or invalid.
    """
    if path is None:
        return config_from_mapping(apply_overrides({}, overrides), "<built-in defaults>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    apply_overrides(data, overrides)
    return config_from_mapping(data, str(p))
