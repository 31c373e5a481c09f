"""Regenerate the generated blocks of README.md and docs/*.md; ``--check`` only compares.

    python docs/generate.py            # rewrite them in place
    python docs/generate.py --check    # exit 1 and name the stale blocks (what tests/docs/test_docs.py asserts)

A generated block sits between two markers and is never edited by hand::

    <!-- generated:NAME -->
    ...
    <!-- /generated:NAME -->

NAME is one of:

* ``figures``: every figure, from ``benchmarks/results/*.json`` (``benchmarks/figures.py``);
* ``figures:TOPIC``: the rows of one topic page (``scoring``, ``scale``, ``versions``, ...);
* ``config``: the config reference, from the schema in ``delift_ray/config.py``;
* ``scale-steps``: the per-step table of the 1M run (``benchmarks/results/scale_1m.json``,
  rendered by ``benchmarks/scale.py``);
* ``precision``: bfloat16 against float32 (``benchmarks/precision.py``);
* ``noise-gate``: the noise gate's swapped shares (``benchmarks/noise_gate.py``);
* ``baselines-study``: DELIFT against the cheap baselines and knn against dense (``benchmarks/baselines_study.py``);
* ``margin-check``: the held-out margin on an all-clean against an all-swapped subset (``benchmarks/margin_check.py``);
* ``knn-default``: knn against dense under the default kernel (``benchmarks/knn_default.py``);
* ``report-1m``: the report of a synthetic 1M-sample run (``benchmarks/report_1m.py``);
* ``estimate-1m``: ``delift-ray estimate`` at 1M with the measured machinery constants (``benchmarks/estimate_1m.py``);
* ``job-scale``: the whole knn job at 100k against 2k, killed, resumed and cached (``benchmarks/job_scale.py``);
* ``driver-sim``: the dispatcher against stand-in scorers (``benchmarks/driver_sim.py``);
* ``s3-store``: requests and times of the shard store on S3, before and after (``benchmarks/s3_store.py``);
* ``quality:SECTION``: one section's figures and tables of docs/quality.md, the quality study
  (``benchmarks/results/quality_study.json`` and ``noise_probe.json``, rendered by
  ``benchmarks/quality_report.py``; ``python -m benchmarks.quality_study --report`` also redraws
  docs/quality.png).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def render_block(name: str, path: Path, results: dict, root: Path = ROOT) -> str:
    """The content of block ``name`` in file ``path`` under ``root`` (ends with a newline)."""
    from benchmarks.figures import render_table
    from delift_ray.config import config_reference_markdown

    up = os.path.relpath(root, path.parent)
    prefix = "" if up == "." else up.replace(os.sep, "/") + "/"
    if name == "figures":
        return render_table(results, None, link_prefix=prefix) + "\n"
    if name.startswith("figures:"):
        return render_table(results, name.split(":", 1)[1], link_prefix=prefix) + "\n"
    if name == "config":
        return config_reference_markdown()
    if name == "scale-steps":
        from benchmarks.scale import markdown

        return markdown(results["scale_1m"]) + "\n"
    if name == "precision":
        from benchmarks.precision import markdown

        return markdown(results["precision_bf16"]) + "\n"
    if name == "knn-default":
        from benchmarks.knn_default import markdown

        return markdown(results["knn_default"]) + "\n"
    if name == "report-1m":
        from benchmarks.report_1m import markdown

        return markdown(results["report_1m"]) + "\n"
    if name == "job-scale":
        from benchmarks.job_scale import markdown

        return markdown(results["job_scale"], results.get("scale_1m")) + "\n"
    if name == "estimate-1m":
        from benchmarks.estimate_1m import markdown

        return markdown(results["estimate_1m"]) + "\n"
    if name == "driver-sim":
        from benchmarks.driver_sim import markdown

        return markdown(results["driver_sim"]) + "\n"
    if name == "s3-store":
        from benchmarks.s3_store import markdown

        return markdown(results["s3_store_5000_before"], results["s3_store_5000_after"]) + "\n"
    if name.startswith("quality:"):
        from benchmarks.quality_report import render_block as quality_block

        if "quality_study" not in results:
            raise ValueError(f"{path}: block {name!r} needs benchmarks/results/quality_study.json")
        return quality_block(name.split(":", 1)[1], results["quality_study"]["results"], results.get("noise_probe"))
    if name == "noise-gate":
        from benchmarks.noise_gate import markdown

        return markdown(results["noise_gate"]) + "\n"
    if name == "baselines-study":
        from benchmarks.baselines_study import markdown

        return markdown(results["baselines_study"]) + "\n"
    if name == "margin-check":
        from benchmarks.margin_check import markdown

        return markdown(results["margin_check"]) + "\n"
    raise ValueError(f"{path}: unknown generated block {name!r}")


def regenerate(text: str, path: Path, results: dict, root: Path = ROOT) -> str:
    """``text`` with every generated block re-rendered (links relative to ``root``)."""
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), path, results, root) + m.group(4), text)


def stale_files(root: Path = ROOT, results: dict | None = None) -> list[Path]:
    """Files whose generated blocks differ from what the schema and the result JSON render."""
    from benchmarks.results import read_results

    results = read_results(root / "benchmarks" / "results") if results is None else results
    return [
        p for p in markdown_files(root) if p.exists() and regenerate(p.read_text(), p, results, root) != p.read_text()
    ]


CITED = re.compile(r"benchmarks/results/([\w.-]+)\.json")
DECIMAL = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)\.(\d+)(?![\w.])")


def _numbers(tree) -> list[float]:
    if isinstance(tree, bool):
        return []
    if isinstance(tree, (int, float)):
        return [float(tree)]
    if isinstance(tree, dict):
        tree = list(tree.values())
    return [x for v in tree for x in _numbers(v)] if isinstance(tree, list) else []


def unsupported_numbers(text: str, results: dict) -> list[str]:
    """Figures in hand-written prose that the result files they cite do not hold.

    A paragraph outside the generated blocks that links ``benchmarks/results/NAME.json``
    may state a decimal figure only if one of the cited files holds it, at the precision
    shown (as is, as a percentage of a fraction, or bytes as GiB). A figure that drifted
    from its measurement is reported; whole numbers (counts, sizes) are not checked.
    """
    out = []
    for para in re.split(r"\n\s*\n", BLOCK.sub("", text)):
        cited = sorted(set(CITED.findall(para)))
        values = [x for name in cited for x in _numbers(results.get(name, {}))]
        if not cited:
            continue
        for m in DECIMAL.finditer(para):
            digits = len(m.group(2))
            x = float(m.group(1).replace(",", "") + "." + m.group(2))
            if not any(
                round(v, digits) == x or round(100 * v, digits) == x or round(v / 2**30, digits) == x for v in values
            ):
                out.append(f"{m.group(0)} (the paragraph cites {', '.join(cited)})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when a block is stale")
    args = ap.parse_args(argv)
    from benchmarks.results import read_results

    results = read_results()
    stale = stale_files(ROOT, results)
    unsupported = [
        f"{p.relative_to(ROOT)}: {n}" for p in markdown_files(ROOT) for n in unsupported_numbers(p.read_text(), results)
    ]
    for line in unsupported:  # prose is hand-written: reported, never rewritten
        print(f"figure not in the result it cites: {line}", file=sys.stderr)
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run: python docs/generate.py)", file=sys.stderr)
        return 1 if stale or unsupported else 0
    for p in stale:
        p.write_text(regenerate(p.read_text(), p, results))
        print(f"rewrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
