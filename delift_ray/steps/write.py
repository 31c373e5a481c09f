"""Write: commit the run's files together (:meth:`delift_ray.rundir.RunDir.commit`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from delift_ray.rundir import RunDir
from delift_ray.steps.base import StepStats


@dataclass
class WriteStats(StepStats):
    out: str = ""
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes

    def summary(self) -> str:
        return f"committed {', '.join(self.files)} ({sum(self.files.values()) / 2**20:.1f} MiB) to {self.out}"


def write(out: RunDir, files: dict[str, bytes]) -> tuple[dict[str, str], WriteStats]:
    """Replace the run's files in ``out`` together; name -> path."""
    return out.commit(files), WriteStats(out.uri, {name: len(data) for name, data in files.items()})
