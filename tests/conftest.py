"""Shared pytest fixtures."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama (float32) with a local byte-level BPE tokenizer, built once."""
    from delift_ray.assets import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


ALPACA_ROWS = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "Eat plenty of vegetables, exercise regularly and sleep at least seven hours a night.",
    },
    {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {
        "instruction": "Translate the sentence into French.",
        "input": "The cat sleeps on the sofa.",
        "output": "Le chat dort sur le canapé.",
    },
    {
        "instruction": "Summarize the text in one sentence.",
        "input": "The meeting was moved from Monday to Wednesday because the room was booked.",
        "output": "The meeting now takes place on Wednesday since the room was unavailable on Monday.",
    },
    {
        "instruction": "Write a haiku about the sea.",
        "input": "",
        "output": "Grey waves fold and break,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    },
    {
        "instruction": "Explain why the sky is blue.",
        "input": "",
        "output": "Air molecules scatter short blue wavelengths of sunlight more than long red ones.",
    },
    {"instruction": "Add the two numbers.", "input": "17 and 25", "output": "17 + 25 = 42."},
    {"instruction": "Name the largest planet in the solar system.", "input": "", "output": "Jupiter."},
    {
        "instruction": "Classify the sentiment of the review as positive or negative.",
        "input": "The battery died after two days and support never answered.",
        "output": "Negative.",
    },
    {
        "instruction": "Write a Python function that reverses a string.",
        "input": "",
        "output": "def reverse(s):\n    return s[::-1]",
    },
    {"instruction": "Suggest a name for a bakery.", "input": "", "output": "The Rolling Pin."},
    {
        "instruction": "Convert the temperature to Fahrenheit.",
        "input": "20 degrees Celsius",
        "output": "20 degrees Celsius is 68 degrees Fahrenheit.",
    },
]


@pytest.fixture
def alpaca_jsonl(tmp_path):
    """A 12-row Alpaca-style JSONL file (instruction, input, output; 5 rows with an input)."""
    path = tmp_path / "alpaca.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in ALPACA_ROWS:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
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
