"""The job's progress as Ray metrics, read back from a real local cluster's Prometheus endpoint."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from delift_ray import metrics
from tests.helpers import write_rows

ROWS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."} for i in range(8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_cluster():
    """A local Ray whose metrics agent serves Prometheus text on a known port."""
    import ray

    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=150 * 1024**2,
        include_dashboard=False,
        logging_level="WARNING",
        _metrics_export_port=port,
    )
    yield port
    ray.shutdown()


def scrape(port: int, name: str, run: str) -> dict[str, float]:
    """``{tags: value}`` of the Prometheus samples of ``ray_<name>`` tagged with this run."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(rf"^ray_{name}(?:_total)?\{{(.*)\}} (\S+)$", line)
        if m and f'run="{run}"' in m.group(1):
            tags = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[tags.get("work") or tags.get("step") or ""] = float(m.group(2))
    return out


def test_metrics_do_nothing_without_ray():
    code = (
        "import sys; from delift_ray import metrics; metrics.step('score', True); metrics.block_done('x', 3); "
        "metrics.block_retried('x'); print('ray' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


@pytest.mark.engine
@pytest.mark.ray
def test_job_progress_reaches_the_prometheus_endpoint(metrics_cluster, tiny_model_dir, tmp_path):
    from delift_ray.job import run

    data = tmp_path / "pool.jsonl"
    write_rows(data, ROWS)
    out = str(tmp_path / "run")
    r = run(
        {
            "data": str(data),
            "model": str(tiny_model_dir),
            "out": out,
            "budget": 3,
            "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
            "scoring": {"block_size": 4},
        },
        progress=False,
    )
    assert r.counts["pairs_scored"] == 64
    wanted = {"score", "assemble", "select", "profile", "write"}

    def exported() -> bool:  # the agent exports every few seconds, the later steps in a later round
        return (
            units == {"score_pairs": 64.0, "score_baseline": 8.0} and wanted <= set(steps) and not any(steps.values())
        )

    deadline, units, steps = time.monotonic() + 120, {}, {}
    while time.monotonic() < deadline and not exported():
        time.sleep(2)
        units = scrape(metrics_cluster, "delift_ray_units_done", out)
        steps = scrape(metrics_cluster, "delift_ray_step", out)
    assert units == {"score_pairs": 64.0, "score_baseline": 8.0}
    blocks = scrape(metrics_cluster, "delift_ray_blocks_done", out)
    assert blocks["score_pairs"] == 4  # 8 x 8 pairs in blocks of 4 x 4
    # Every step after Ray started was seen, and none runs now.
    assert wanted <= set(steps) and not any(steps.values()), steps
    assert scrape(metrics_cluster, "delift_ray_blocks_retried", out) == {}


def test_metric_names_are_documented():
    names = set(re.findall(r"``(delift_ray_\w+)``", metrics.__doc__))
    assert names == {
        "delift_ray_blocks_done",
        "delift_ray_units_done",
        "delift_ray_blocks_retried",
        "delift_ray_actor_deaths",
        "delift_ray_node_losses",
        "delift_ray_step",
    }
