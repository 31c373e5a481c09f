"""The steps are a pipeline, not a web: a step imports no other step (only steps.base)."""

from __future__ import annotations

import ast
from pathlib import Path

import delift_ray.steps

STEPS = Path(delift_ray.steps.__file__).parent


def imported_steps(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            mod, names = "", [a.name for a in node.names]
        else:
            continue
        for full in [mod] + [f"{mod}.{n}" if mod else n for n in names]:
            if full.startswith("delift_ray.steps."):
                found.add(full.split(".")[2])
    return found


def test_no_step_imports_another_step():
    steps = sorted(p for p in STEPS.glob("*.py") if p.name != "__init__.py")
    assert len(steps) >= 8
    crossing = {p.stem: sorted(imported_steps(p) - {"base", p.stem}) for p in steps}
    assert {k: v for k, v in crossing.items() if v} == {}


def test_the_scan_sees_a_step_import(tmp_path):
    bad = tmp_path / "select.py"
    bad.write_text("from delift_ray.steps.score import x\nfrom delift_ray.steps import plan\n")
    assert imported_steps(bad) == {"score", "plan"}
