"""Shared pytest fixtures, and the ``slow`` marker derived from the others (docs/testing.md)."""

from __future__ import annotations

import pytest

from benchmarks.alpaca import ALPACA_ROWS
from tests.helpers import write_rows


def pytest_collection_modifyitems(config, items):
    """A test that uses the ``ray_cluster`` fixture is a ``ray`` test, and every ``engine`` or
    ``ray`` test is ``slow``: ``-m "not slow"`` starts no vLLM engine and no Ray cluster. Tests
    that start another real server (moto_server, a Ray head, Chromium) are marked ``slow`` where
    they are defined."""
    for item in items:
        if "ray_cluster" in item.fixturenames and item.get_closest_marker("ray") is None:
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("engine") or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama (float32) with a local byte-level BPE tokenizer, built once."""
    from benchmarks.fixtures import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture
def alpaca_jsonl(tmp_path):
    """A 12-row Alpaca-style JSONL file (instruction, input, output; 5 rows with an input)."""
    path = tmp_path / "alpaca.jsonl"
    write_rows(path, ALPACA_ROWS, ensure_ascii=False)  # non-ASCII text as UTF-8, not escapes
    return path


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A real local Ray cluster per test module (2 CPUs; address="local": its own instance, never a
    `ray start` cluster that happens to run on this machine). A module sets its object-store
    size with ``RAY_OBJECT_STORE`` (default 150 MiB)."""
    import ray

    store = getattr(request.module, "RAY_OBJECT_STORE", 150 * 1024**2)
    ray.init(address="local", num_cpus=2, object_store_memory=store, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def lock_holder():
    """``hold(out)``: start a separate live process that holds the run lock of ``out``.

    Returns its ``Popen`` once the lock is taken; every holder is killed after the test.
    """
    import subprocess
    import sys

    procs = []

    def hold(out):
        code = (
            "import time, pyarrow.fs as fs; from delift_ray.lock import RunLock; "
            f"RunLock(fs.LocalFileSystem(), {str(out)!r}, {str(out)!r}).acquire(); "
            "print('locked', flush=True); time.sleep(300)"
        )
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()
