"""Peak resident memory of a device while its index bundle is swapped (issue 12).

A device holds one index; a swap loads the new bundle beside the live one, then releases the
old one as soon as no batch uses it (``IndexHolder.lease``). The claim measured here: peak
RSS during a swap stays within 2x the resident size of one bundle, even with a batch holding
the old bundle while the new one loads, and across repeated swaps.

Method: three signed bundles of ``--faces`` random 512-D vectors are built once. A fresh child
process (nothing else resident) imports everything, reads ``VmRSS`` (base), loads bundle A
through an :class:`IndexHolder` (one bundle = RSS - base), resets the peak with
``/proc/self/clear_refs`` (``5``), swaps to B while a lease pins A, releases it, swaps to C,
and reads ``VmHWM``: ``peak ratio = (VmHWM - base) / one bundle``.

Reference, in a second fresh child: the previous policy, where the retired bundle stayed open
until the *next* swap, so the third load happens with two bundles resident (A retired, B live,
C loading).

Usage::

    python -m bench.index_swap                       # 200k faces, fp16 flat (the default config)
    python -m bench.index_swap --faces 30000 --fp32 --json /tmp/swap.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit_summary, machine_info, machine_markdown

DIM = 512


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_bundles(root: Path, n: int, fp16: bool) -> tuple[list[Path], Path]:
    """Three signed bundles (increasing sequence) of ``n`` random unit vectors; returns them and the public key."""
    from namus_edge.index.bundle_writer import BundleWriter
    from namus_edge.index.manifest import ModelIdentity
    from namus_edge.index.signing import generate_keypair

    key, pub = generate_keypair(root / "op.key")
    model = ModelIdentity("bench", "0" * 64, DIM)
    out = []
    for b in range(3):
        rng = np.random.default_rng(b)
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        path = root / f"bundle{b}"
        # no hub offsets: 4 bytes a face (0.2 % of a fp32 index) cost an O(N^2) pass per build here
        with BundleWriter(path, model, {"name": "det"}, flat_max=n + 1, flat_fp16=fp16, sequence=b + 1,
                          hub_k=None) as w:
            for i in range(0, n, 4):
                w.add_case({"id_formatted": f"MP{i + 1}"})
            for i in range(n):
                w.add_face(f"MP{(i // 4) * 4 + 1}", f"k{b}x{i}", vecs[i], quality=0.9, det_score=0.9,
                           bbox=[0, 0, 1, 1], category="FacialCaseId", is_rendering=False,
                           file_sha256=hashlib.sha256(f"{b}-{i}".encode()).hexdigest())
            w.finish(key)
        out.append(path)
    return out, pub


def child(bundles: list[str], pub: str, mode: str) -> dict[str, Any]:
    """Run in a fresh process: measure base, one bundle, and the peak over two swaps."""
    from namus_edge.edge.index_holder import IndexHolder
    from namus_edge.index.bundle import Bundle
    from namus_edge.index.manifest import ModelIdentity

    model = ModelIdentity("bench", "0" * 64, DIM)
    q = np.eye(1, DIM, dtype=np.float32)
    base = _status_kib("VmRSS")
    state = Path(tempfile.mkdtemp(prefix="swap-"))

    def point(target: str) -> Path:
        tmp = state / "current.tmp"
        os.symlink(target, tmp)
        os.replace(tmp, state / "current")
        return state / "current"

    if mode == "lease":
        holder = IndexHolder(point(bundles[0]), [Path(pub)], model)
        assert holder.refresh()
        one = _status_kib("VmRSS") - base
        Path("/proc/self/clear_refs").write_text("5")
        with holder.lease() as pinned:  # a batch is searching A during the swap
            point(bundles[1])
            assert holder.refresh()
            assert pinned is not None and pinned.search(q)
        point(bundles[2])
        assert holder.refresh()
        holder.close()
    else:  # the old policy: retired kept open until the next swap
        a = Bundle.load(Path(bundles[0]), [Path(pub)], model)
        one = _status_kib("VmRSS") - base
        Path("/proc/self/clear_refs").write_text("5")
        b = Bundle.load(Path(bundles[1]), [Path(pub)], model)
        c = Bundle.load(Path(bundles[2]), [Path(pub)], model)  # A (retired) + B (live) + C loading
        for x in (a, b, c):
            x.close()
    peak = _status_kib("VmHWM") - base
    return {"mode": mode, "base_mib": base / 1024, "one_bundle_mib": one / 1024, "peak_mib": peak / 1024,
            "peak_ratio": peak / one}


def measure(n: int, fp16: bool, workdir: Path) -> dict[str, Any]:
    """Build the bundles, run both children, return every number."""
    bundles, pub = build_bundles(workdir, n, fp16)
    index_mib = (bundles[0] / "index.faiss").stat().st_size / 2**20
    rows = []
    for mode in ("lease", "reference"):
        res = subprocess.run([sys.executable, "-m", "bench.index_swap", "--child", mode, "--pub", str(pub),
                              *map(str, bundles)], capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"faces": n, "fp16": fp16, "index_file_mib": index_mib, "runs": rows, "machine": machine_info(["faiss"])}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=200_000)
    ap.add_argument("--fp32", action="store_true", help="fp32 flat vectors (default fp16, as config.index.flat_fp16)")
    ap.add_argument("--json", dest="out", help="write every number to this file")
    ap.add_argument("--child", choices=("lease", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--pub", help=argparse.SUPPRESS)
    ap.add_argument("bundles", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.bundles, args.pub, args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        summary = measure(args.faces, not args.fp32, Path(tmp))
    if emit_summary(summary, args.out, False):
        return 0
    print(machine_markdown(summary["machine"]))
    print(f"\n{summary['faces']} faces x {DIM}, {'fp16' if summary['fp16'] else 'fp32'} flat, "
          f"index file {summary['index_file_mib']:.1f} MiB\n")
    print("| policy | one bundle resident (MiB) | peak over 2 swaps above base (MiB) | peak / one bundle |")
    print("| --- | --- | --- | --- |")
    for r in summary["runs"]:
        name = "lease (retired freed when unused)" if r["mode"] == "lease" else "reference (retired kept 1 swap)"
        print(f"| {name} | {r['one_bundle_mib']:.1f} | {r['peak_mib']:.1f} | {r['peak_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
