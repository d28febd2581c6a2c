"""Render the documented default ``config.yaml`` and the README's configuration reference.

Both are generated from the pydantic config tree, so the documentation cannot drift from the
code: ``namus-edge config defaults > config.yaml`` writes the file, ``namus-edge config
reference`` prints the Markdown table, and a test checks that the committed ``config.yaml``
equals the rendering.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from namus_edge.core.config import CameraConfig, Config

HEADER = """\
# namus-edge configuration: every key with its default and meaning.
# Generated from core/config/ (one module per section) by `namus-edge config defaults` (a test keeps them equal).
# Unknown keys are errors. Override any key on the command line with
#   --set dotted.key=value   (e.g. --set detection.input_size=[640,384])
"""

CAMERA_EXAMPLE = {
    "id": "front-door",
    "source": "rtsp://user@192.0.2.10:554/stream1",
    "kind": "auto",
    "fps_cap": 10,
}


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def render_yaml(model: BaseModel | None = None, indent: int = 0) -> str:
    """The documented YAML of a config model (default: the whole default :class:`Config`)."""
    model = model if model is not None else Config()
    lines: list[str] = [] if indent else HEADER.splitlines()
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.description:
            for dl in _wrap(field.description, 100 - len(pad)):
                lines.append(f"{pad}# {dl}")
        sub = _model_class(field.annotation)
        if sub is not None and isinstance(value, BaseModel):
            if not indent and lines and lines[-1] != "":
                lines.append("")
            lines.append(f"{pad}{name}:")
            lines.append(render_yaml(value, indent + 1))
        elif name == "cameras" and value == []:
            lines.append("")
            lines.append(f"{pad}# Video sources; none by default (`namus-edge scan` needs none). Example:")
            example = yaml.safe_dump([CAMERA_EXAMPLE], sort_keys=False).strip().splitlines()
            lines.append(f"{pad}# cameras:")
            lines.extend(f"{pad}#   {ln}" for ln in example)
            lines.append(f"{pad}cameras: []")
        else:
            dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else _jsonable(value)
            lines.append(f"{pad}{name}: {_yaml_value(dumped)}")
    return "\n".join(lines) + ("\n" if not indent else "")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _wrap(text: str, width: int) -> list[str]:
    words, out, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        out.append(cur)
    return out


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def render_reference(model_cls: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, description) of every config key."""
    rows: list[str] = []
    if not prefix:
        rows += ["| key | type | default | meaning |", "|---|---|---|---|"]
    defaults = model_cls() if model_cls is not CameraConfig else None
    for name, field in model_cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_class(field.annotation)
        if sub is not None:
            rows += render_reference(sub, key + ".")
            continue
        if name == "cameras":
            rows.append("| `cameras` | list | `[]` | video sources, each with the keys `cameras[].*` below |")
            rows += render_reference(CameraConfig, "cameras[].")
            continue
        default = "required" if defaults is None and field.is_required() else (
            _yaml_value(_jsonable(getattr(defaults, name))) if defaults is not None else _yaml_value(
                _jsonable(field.default)))
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | `{default}` | {desc} |")
    return rows
