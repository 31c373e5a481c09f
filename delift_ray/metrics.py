"""The job's progress as Ray metrics: the Ray dashboard and its Prometheus endpoint show them.

Exported through ``ray.util.metrics`` from the driver, once Ray is up (before that, and
without Ray, every call here does nothing). Prometheus sees each name with Ray's ``ray_``
prefix and a ``run`` tag (the out dir):

* ``delift_ray_blocks_done`` (counter, tag ``work``: the actor method, e.g. ``score_block``)
* ``delift_ray_units_done`` (counter, tag ``work``): pairs (or samples, for embedding) in
  the blocks done: pairs scored
* ``delift_ray_blocks_retried``, ``delift_ray_actor_deaths``, ``delift_ray_node_losses`` (counters)
* ``delift_ray_step`` (gauge, tag ``step``): 1 while that step runs, else 0
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional

log = logging.getLogger(__name__)
_lock = threading.Lock()
_metrics: Optional[dict] = None
_session: Optional[str] = None  # the Ray node the metric objects were made on
_run = ""
_current: Optional[str] = None


def set_run(out: str) -> None:
    """Tag every later metric with this run's out dir."""
    global _run
    _run = out


def _get() -> Optional[dict]:
    """The metric objects, made once per Ray session; None while Ray is not up."""
    global _metrics, _session
    ray = sys.modules.get("ray")  # never imports Ray: a job that has not started it exports nothing
    if ray is None or not ray.is_initialized():
        return None
    with _lock:
        node = ray.get_runtime_context().get_node_id()
        if _metrics is None or node != _session:  # a new Ray (ray.shutdown, then ray.init)
            _session = node
            from ray.util.metrics import Counter, Gauge

            def counter(name: str, what: str, tags: tuple = ()):
                return Counter(name, description=what, tag_keys=("run", *tags))

            _metrics = {
                "blocks": counter("delift_ray_blocks_done", "Blocks finished by the job's actors.", ("work",)),
                "units": counter("delift_ray_units_done", "Pairs (or samples) in the finished blocks.", ("work",)),
                "retried": counter("delift_ray_blocks_retried", "Blocks sent again after a failure.", ("work",)),
                "deaths": counter("delift_ray_actor_deaths", "Actors that died and were replaced.", ("work",)),
                "lost": counter("delift_ray_node_losses", "Nodes lost while holding the job's actors.", ("work",)),
                "step": Gauge(
                    "delift_ray_step", description="1 while this step of the job runs.", tag_keys=("run", "step")
                ),
            }
            if _current is not None:
                _metrics["step"].set(1, tags={"run": _run, "step": _current})
        return _metrics


def _record(fn) -> None:
    """Progress reporting never fails the job: an error of Ray's metrics is logged and dropped."""
    try:
        m = _get()
        if m is not None:
            fn(m)
    except Exception as exc:  # noqa: BLE001 (any failure of the metrics path)
        log.debug("Ray metrics not recorded: %s", exc)


def step(name: str, running: bool) -> None:
    """A step starts (``running``) or ends."""
    global _current
    _current = name if running else None
    _record(lambda m: m["step"].set(1 if running else 0, tags={"run": _run, "step": name}))


def block_done(work: str, units: int) -> None:
    def record(m):
        tags = {"run": _run, "work": work}
        m["blocks"].inc(1, tags=tags)
        m["units"].inc(max(int(units), 0), tags=tags)

    _record(record)


def _count(key: str, work: str) -> None:
    _record(lambda m: m[key].inc(1, tags={"run": _run, "work": work}))


def block_retried(work: str) -> None:
    _count("retried", work)


def actor_died(work: str) -> None:
    _count("deaths", work)


def node_lost(work: str) -> None:
    _count("lost", work)
