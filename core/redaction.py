"""Masking secrets in text meant for people: URL credentials and password-like query values.

Used for logs (camera URLs) and for ``config show``, so an RTSP URL such as
``rtsp://admin:secret@10.0.0.5/stream`` is printed as ``rtsp://***@10.0.0.5/stream``.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_PARAM = re.compile(r"([?&;](?:password|passwd|pwd|pass|token|secret|key|auth)=)[^&;#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask ``user:password@`` in every URL of ``text`` and password-like query values.

    Strings without them are returned unchanged.
    """
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, scalars) with :func:`redact` applied to every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value
