"""Optional extras: one clear line instead of a raw ``ModuleNotFoundError`` when an extra is missing.

The runtime needs only the base install. Export (onnx, onnxslim), GPU (tensorrt, pycuda), demo
(amqtt, scikit-image), review console and training each come with an extra of ``setup.py``; code
that needs one calls :func:`require_extra` before it imports the module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from namus_edge.core.errors import NamusEdgeError


class MissingExtraError(NamusEdgeError):
    """An optional dependency is not installed; the message says which ``pip install`` to run."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``, e.g. ``pip install "namus-edge[export]"``."""
    return f'pip install "namus-edge[{extra}]"'


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or explain in one line which extra provides it.

    Args:
        module: dotted module name, e.g. ``"onnx"`` or ``"pycuda.driver"``.
        extra: the ``setup.py`` extra that installs it, e.g. ``"export"``.
        feature: what needs it, for the message, e.g. ``"namus-edge export onnx"``.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: ``module`` (or a package it is part of) is not installed. An import
            error raised *inside* an installed module is not masked: it propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise MissingExtraError(f"{feature} needs the Python package {missing!r}: {install_hint(extra)}") from exc
        raise
