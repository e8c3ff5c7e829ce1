"""Recording benchmark results: the machine, repeated timings, peak memory, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from blindlink.matching import kernel

# src/blindlink/benchmarking/results.py in a checkout; site-packages/... when installed.
_CHECKOUT = Path(__file__).resolve().parents[3]

T = TypeVar("T")


def results_dir() -> Path:
    """Where results go by default: the checkout's benchmarks/results when running from a
    checkout, else benchmarks/results under the current directory (never next to an
    installed package)."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "src" / "blindlink").is_dir():
        return _CHECKOUT / "benchmarks" / "results"
    return Path.cwd() / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and the Dice kernel path matching uses on it (chosen
    as in the server: BLINDLINK_DICE_KERNEL, else the fastest this CPU runs)."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dice_kernel": f"{kernel.active()}: {kernel.describe(kernel.active())}",
        # Other work on a shared machine slows a run: the load when the result was written.
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
    }


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "runs": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def peak_rss_gib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children), in GiB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def write_result(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write <name>.json (in `results_dir()` by default) with the machine and time of
    measurement."""
    out_dir = out_dir or results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **data,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
