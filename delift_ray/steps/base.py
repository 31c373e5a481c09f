"""Step bookkeeping: typed stats, one log line per step, per-step wall time and peak RSS."""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from delift_ray import metrics

log = logging.getLogger("delift_ray")

T = TypeVar("T")


@dataclass
class StepStats:
    """What a step did; subclasses add their counters and say it in one line."""

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items())

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class StepReport:
    name: str
    seconds: float
    peak_rss_gib: float
    stats: StepStats

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "peak_rss_gib": self.peak_rss_gib, **self.stats.as_dict()}


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS of this process since start, or since the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepLog:
    """Runs steps, timing each and recording its driver-process peak RSS.

    A step is ``fn(*args, **kwargs) -> (result, stats)`` or ``-> stats``; :meth:`run`
    returns the result (or the stats when there is no result).
    """

    def __init__(self) -> None:
        self.reports: list[StepReport] = []

    def run(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        reset_peak_rss()
        start = time.perf_counter()
        metrics.step(name, True)
        try:
            out = fn(*args, **kwargs)
        finally:
            metrics.step(name, False)
        seconds = round(time.perf_counter() - start, 3)
        result, stats = (
            out if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], StepStats) else (out, out)
        )
        if not isinstance(stats, StepStats):
            raise TypeError(f"step {name} returned no StepStats")
        report = StepReport(name, seconds, round(peak_rss_bytes() / 2**30, 3), stats)
        self.reports.append(report)
        log.info("%s: %s (%.1f s, peak RSS %.2f GiB)", name, stats.summary(), seconds, report.peak_rss_gib)
        return result

    def stats(self, name: str) -> StepStats | None:
        return next((r.stats for r in self.reports if r.name == name), None)

    def as_list(self) -> list[dict]:
        return [r.as_dict() for r in self.reports]


def id_list(ids: list[str], show: int = 8) -> str:
    """Ids for a message: the first few, then how many more."""
    return ", ".join(ids[:show]) + (f" and {len(ids) - show} more" if len(ids) > show else "")
