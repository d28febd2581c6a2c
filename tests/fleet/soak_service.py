"""`namus-edge run` for the soak test, with one fault this CPU cannot produce by itself.

A GPU's fp16 overflow yields a non-finite embedding; on this CPU it cannot happen, so when the
file named by ``SOAK_POISON`` appears, the next embedding batch gets one NaN value and the file is
deleted (the test sees that it was used). Everything else is the real service.

    python tests/fleet/soak_service.py --config CONFIG
"""

from __future__ import annotations

import os
import sys

import numpy as np

from namus_edge.cli import main
from namus_edge.models.analyzer import FaceAnalyzer

_real_embed = FaceAnalyzer.embed
_flag = os.environ["SOAK_POISON"]


def _embed(self: FaceAnalyzer, faces):  # type: ignore[no-untyped-def]
    out = _real_embed(self, faces)
    if len(out) and os.path.exists(_flag):
        out = np.array(out, copy=True)
        out[0, 0] = np.nan
        os.unlink(_flag)
    return out


FaceAnalyzer.embed = _embed  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
