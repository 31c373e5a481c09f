"""Committed benchmark results: one JSON file per benchmark run under ``benchmarks/results/``.

Every figure the docs quote comes from such a file, so a figure carries its machine, date
and command and cannot drift from the measurement. A file holds::

    {"benchmark": NAME, "date": ISO-8601, "command": "python -m benchmarks.NAME ...",
     "machine": {...}, "results": {...}}

``write_result`` is the only writer; ``read_results`` the only reader.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figure was measured on: CPU model, cores, memory, accelerator, load."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info["cpu_flags"] = cpu_flags()
    info["load_avg_1m"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    try:
        import torch

        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["accelerator"] = None
    return info


def cpu_flags() -> list[str]:
    """The CPU's matmul-relevant instruction sets: a timing compares only with one taken on the same."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def write_result(name: str, results: dict, *, command: str | None = None, out_dir: Path | str | None = None) -> Path:
    """Write ``results`` as ``<out_dir>/<name>.json`` (default ``benchmarks/results``)."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or invocation(),
        "machine": machine(),
        "results": results,
    }
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def invocation() -> str:
    """How this process was started: ``python -m benchmarks.X args`` under ``-m``, else
    ``python <script, relative to the cwd> args``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name else [os.path.relpath(sys.argv[0])]
    return "python " + " ".join(shlex.quote(a) for a in head + sys.argv[1:])


def read_results(out_dir: Path | str | None = None) -> dict[str, dict]:
    """Every committed result, by benchmark name."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def emit(results: dict, name: str | None = None) -> dict:
    """Print ``results`` as one JSON line; with ``name``, also write it as ``benchmarks/results/<name>.json``."""
    if name:
        write_result(name, results)
    print(json.dumps(results, default=str), flush=True)
    return results
