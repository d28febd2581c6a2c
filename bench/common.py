"""Shared helpers for the benchmarks under bench/: machine description, memory, latency statistics, tables.

Benchmarks measure; they never assert. Everything here is read-only with respect to the machine.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import platform
import resource
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_VERSIONED = ("numpy", "faiss-cpu", "onnxruntime", "opencv-python-headless")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """SIMD flags relevant to FAISS/ONNX kernels (avx2, avx512f, avx512_fp16, ...) present on this CPU."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f in {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                                    "avx512_vnni", "avx512_fp16", "avx512_bf16", "amx_tile"})
    return []


def usable_cores() -> int:
    """CPU cores this process may run on (sched_getaffinity), falling back to os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def total_ram_gb() -> float:
    """Total RAM in GiB from /proc/meminfo (0.0 if unknown)."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (other sessions share the CPUs: record it with every run)."""
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
    return (round(a, 2), round(b, 2), round(c, 2))


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the numeric libraries (and `extra` distributions); missing ones are omitted."""
    out: dict[str, str] = {"python": platform.python_version()}
    for name in (*_VERSIONED, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine_info(extra_libraries: Iterable[str] = ()) -> dict[str, Any]:
    """Everything a results table needs to be read correctly on another machine."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "ram_gb": round(total_ram_gb(), 1),
        "kernel": platform.release(),
        "load_avg": load_average(),
        "versions": library_versions(extra_libraries),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """Render machine_info() as a short markdown bullet list."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    la = info["load_avg"]
    return "\n".join([
        f"- CPU: {info['cpu']}, {info['cores']} usable cores ({' '.join(info['cpu_flags'])})",
        f"- RAM: {info['ram_gb']} GiB total (shared with other sessions)",
        f"- Kernel {info['kernel']}; {versions}",
        f"- Load average at start: {la[0]} / {la[1]} / {la[2]} (1/5/15 min)",
    ])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    VmHWM from /proc/self/status where available: ``getrusage`` ``ru_maxrss`` survives ``execve``, so in a
    subprocess it is at least the parent's RSS at fork time. Elsewhere resource.getrusage (Linux KiB).
    """
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process, MiB (VmRSS from /proc/self/status; peak RSS elsewhere)."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim) so the next RSS delta measures new allocations only."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and count of latency samples in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": int(a.size)}


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows (dicts) as a GitHub markdown table with the given column order; floats get 3 significant places."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return "-" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def emit_summary(summary: dict[str, Any], out: str | None, as_json: bool) -> bool:
    """Write ``summary`` as indented JSON to ``out`` (if given); with ``as_json`` also print it as one
    JSON line. Returns ``as_json`` (the caller then prints no markdown)."""
    if out:
        Path(out).write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    if as_json:
        print(json.dumps(summary, default=float))
    return as_json
