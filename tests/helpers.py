"""Helpers shared by the test modules (the browser's are in browser.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: delift_ray/, benchmarks/, docs/ ...


def write_rows(path, rows) -> str:
    """A JSONL file of ``rows`` (dicts, or lines given as strings), parent folders created; its path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def one_line_error(code: int, err: str, *needles: str) -> str:
    """The CLI contract: exit 2, one ``delift-ray: error:`` line holding every needle, no traceback."""
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("delift-ray: error:")]
    assert len(lines) == 1, err[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
