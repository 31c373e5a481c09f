"""Helpers shared by the test modules (the browser's are in browser.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: delift_ray/, benchmarks/, docs/ ...

ERROR_PREFIX = "delift-ray: error:"


def write_rows(path, rows, *, ensure_ascii: bool = True) -> str:
    """A JSONL file of ``rows``, parent folders created; its path as a string.

    Each row is a JSON value written on its own line (``json.dumps``; ``ensure_ascii=False``
    writes non-ASCII text as UTF-8 instead of ``\\u`` escapes), except a string, which is
    written as the line itself: a malformed line, or a value dumped by the caller.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=ensure_ascii)) + "\n")
    return str(path)


def assert_one_line_error(
    result: subprocess.CompletedProcess | tuple[int, str],
    *needles: str,
    alone: bool = False,
    ignore: re.Pattern | None = None,
) -> str:
    """The CLI contract: exit status 2, one ``delift-ray: error:`` line holding every needle, no
    traceback. Returns that line.

    ``result``: a finished ``subprocess.run`` (its stderr captured as text) or ``(code, stderr)``.
    ``alone``: stderr holds nothing else but blank lines and lines matching ``ignore`` (a
    subprocess that joins Ray prints Ray's own log records there, say).
    """
    if isinstance(result, subprocess.CompletedProcess):
        code, err, out = result.returncode, result.stderr, result.stdout or ""
    else:
        (code, err), out = result, ""
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if alone:
        lines = [ln for ln in err.splitlines() if ln.strip() and not (ignore and ignore.match(ln))]
        assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err[-3000:]
    else:
        lines = [ln for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]
        assert len(lines) == 1, err[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
