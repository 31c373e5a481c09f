"""The estimate's machinery costs: constants that match the benchmark results they cite, and
the formulas of ``estimate.machinery`` on known answers (the pair and token counts are in
tests/job/test_knn.py)."""

import json
import math

import numpy as np
import pytest

from delift_ray import estimate
from delift_ray.config import validate_config
from tests.helpers import ROOT

RESULTS = ROOT / "benchmarks" / "results"


def result(name):
    return json.loads((RESULTS / name).read_text())["results"]


def test_measured_costs_are_the_committed_figures():
    m = estimate.MEASURED
    assert set(m.sources) == {"driver_sim.json", "s3_store_5000_after.json", "scale_1m.json"}
    sim = result("driver_sim.json")
    assert m.driver_cpu_s_per_block == pytest.approx(max(r["driver_cpu_ms_per_block"] for r in sim["runs"]) / 1000)
    s3 = result("s3_store_5000_after.json")["s3"]
    assert m.s3_requests_per_shard_written == sum(s3["write_requests_per_shard"].values())
    assert m.s3_requests_per_shard_resumed == sum(s3["resume_requests_per_shard"].values())
    assert m.s3_resume_s_per_shard == pytest.approx(s3["resume_ms_per_shard"] / 1000)
    big = result("scale_1m.json")
    steps = {s["name"]: s["seconds"] for s in big["after_scoring"]["steps"]}
    pairs = big["n"] * (big["k"] + big["random"])
    assert m.assemble_s_per_pair == pytest.approx(steps["assemble"] / pairs, rel=1e-3)
    assert m.select_s_per_pair == pytest.approx(steps["select"] / pairs, rel=1e-3)


def test_machinery_on_known_answers():
    m = estimate.MEASURED
    # 100 blocks of 4e5 computed tokens at 1e5 tokens/s: 4 s a block of GPU time.
    got = estimate.machinery(blocks=100, shards=120, pairs=10**6, computed=4 * 10**7, tokens_per_s=1e5, engines=64)
    assert got["block_s"] == 4.0 and got["blocks"] == 100 and got["shards"] == 120
    assert got["driver_cpu_s"] == pytest.approx(100 * m.driver_cpu_s_per_block, rel=1e-3)
    assert got["driver_core_share"] == pytest.approx(64 / 4.0 * m.driver_cpu_s_per_block, rel=1e-2)
    assert got["engines_fed_at_90pct"] == int(0.9 * 4.0 / m.driver_cpu_s_per_block)
    assert got["s3_write_requests"] == 120 * 3 and got["s3_resume_requests"] == 120 * 2
    assert got["first_bottleneck"] == "GPUs"
    # Blocks ten thousand times shorter: more engines than one core can feed.
    fast = estimate.machinery(blocks=100, shards=120, pairs=10**6, computed=4 * 10**3, tokens_per_s=1e5, engines=64)
    assert fast["first_bottleneck"] == "driver" and fast["engines_fed_at_90pct"] < 64


def test_estimate_counts_blocks_and_shards_per_kernel_type():
    n = 1000
    L = estimate.SetLengths(n, np.full(n, 50), np.full(n, 20), np.full(n, 10))
    cfg = validate_config(
        {
            "data": "d",
            "model": "m",
            "out": "o",
            "scoring": {"block_size": 32},
            "kernel": {"type": "knn", "k": 8, "random": 2},
        }
    )
    est = estimate.compute_estimate(cfg, {"pool": L}, 1000.0, rate_source="given")
    baseline_shards = math.ceil(n / 256)
    assert est["knn"]["blocks"] == math.ceil(n * 10 / 32**2) and est["dense"]["blocks"] == math.ceil(n * n / 32**2)
    assert est["knn"]["shards"] == est["knn"]["blocks"] + baseline_shards
    table = estimate.format_table(est)
    for label in ("shards", "driver core share", "first bottleneck", "S3 requests to resume"):
        assert label in table
