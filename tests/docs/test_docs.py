"""The user docs: short README, generated figures and config reference, links that resolve.

No Ray, no engine: these tests read files and render Markdown.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from benchmarks import figures
from benchmarks.results import read_results
from tests.helpers import ROOT

README = ROOT / "README.md"

# Pages other branches of this round write; README links them before they land. Shrink this
# list as they merge: test_pending_pages_are_still_pending fails once a listed page exists.
PENDING_PAGES: set[str] = set()

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _generate_module():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _user_docs() -> list[Path]:
    return [README] + sorted((ROOT / "docs").glob("*.md"))


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- generated:{re.escape(name)} -->\n(.*?)<!-- /generated:{re.escape(name)} -->", text, re.S)
    assert m, f"no generated block {name!r}"
    return m.group(1)


# --------------------------------------------------------------------------- README


def test_readme_is_at_most_250_lines():
    n = len(README.read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; move detail into docs/"


def test_generated_blocks_are_current():
    gen = _generate_module()
    stale = gen.stale_files(ROOT)
    assert not stale, (
        f"stale generated blocks in {[str(p.relative_to(ROOT)) for p in stale]}: run python docs/generate.py"
    )


def test_prose_states_only_figures_its_cited_results_hold():
    gen = _generate_module()
    results = read_results(ROOT / "benchmarks" / "results")
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _user_docs() for n in gen.unsupported_numbers(p.read_text(), results)]
    assert bad == []
    # The check itself, on a made-up page: a drifted figure is caught, a held one (as is, as a
    # percentage, or GiB) passes, a figure inside a generated block or an uncited paragraph is not read.
    made_up = {"run_x": {"results": {"pairs_per_s": 2.0612, "share": 0.253, "rss": 3 * 2**30}}}
    page = (
        "Scoring ran at 27.08 pairs/s ([run_x.json](benchmarks/results/run_x.json)).\n\n"
        "It ran at 2.06 pairs/s, 25.3% kept, 3.0 GiB ([run_x.json](benchmarks/results/run_x.json)).\n\n"
        "An uncited 9.99.\n\n<!-- generated:figures -->\n1.23 benchmarks/results/run_x.json\n<!-- /generated:figures -->\n"
    )
    assert gen.unsupported_numbers(page, made_up) == ["27.08 (the paragraph cites run_x)"]


def test_readme_figures_table_is_what_the_json_renders():
    want = figures.render_table(read_results(), None, link_prefix="", warn=lambda m: None) + "\n"
    assert _block(README.read_text(), "figures") == want


def test_config_page_is_what_the_schema_renders_and_its_yaml_is_the_defaults():
    from delift_ray.config import DeliftConfig, config_reference_markdown, iter_leaf_fields

    body = _block((ROOT / "docs" / "config.md").read_text(), "config")
    assert body == config_reference_markdown()
    for dotted, _ in iter_leaf_fields():
        assert f"| `{dotted}` |" in body, dotted
    shown = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    defaults = DeliftConfig.model_fields["templates"].get_default(call_default_factory=True)
    assert shown["templates"] == defaults.model_dump()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_in_user_docs_resolve():
    """Relative links and their #anchors resolve; links to PENDING_PAGES wait for their branch."""
    missing = []
    for page in _user_docs():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
            if not path.exists():
                if rel not in PENDING_PAGES:
                    missing.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                missing.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not missing, missing


def test_pending_pages_are_still_pending():
    landed = sorted(p for p in PENDING_PAGES if (ROOT / p).exists())
    assert not landed, f"{landed} exist now: remove them from PENDING_PAGES so their links are checked"


def test_user_docs_state_no_internal_targets_or_machine_anecdotes():
    banned = [
        r"\btargets?\s*(?:>=|≥|<=|≤|of\s+\d|not met|is met|are met)",
        r"\bengineers?\b",
        r"machine (?:was )?shared",
        r"other (?:engineers|agents)",
        r"\bthe loaded machine\b",
        r"\bminute budget\b",
        r"\bbudget of \d+ minutes",
    ]
    hits = []
    for page in _user_docs():
        for n, line in enumerate(page.read_text().splitlines(), 1):
            hits += [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for pat in banned if re.search(pat, line, re.I)]
    assert not hits, hits


# --------------------------------------------------------------------------- the figures generator


def _doc(name: str, results: dict) -> dict:
    return {
        "benchmark": name,
        "date": "2026-11-30T10:00:00+00:00",
        "command": f"python benchmarks/{name}.py",
        "machine": {"cpus": 2, "memory_gib": 23.4, "accelerator": None, "load_avg_1m": 1.5},
        "results": results,
    }


CHAOS = {
    "completed": True,
    "error": None,
    "kills": [[1.0, 11], [9.0, 12]],
    "pairs_total": 256,
    "pairs_redone": 40,
    "pairs_missing": 0,
    "matrix_equal": True,
    "selection_equal": True,
    "calm_s": 61.2,
    "chaos_s": 150.0,
}


def test_a_spec_row_carries_the_json_figures_machine_date_and_command(tmp_path):
    doc = dict(_doc("chaos", CHAOS), command="python benchmarks/chaos.py --n 16")
    (tmp_path / "chaos.json").write_text(json.dumps(doc))
    results = read_results(tmp_path)
    table = figures.render_table(results, None, warn=pytest.fail)
    row = table.splitlines()[2]
    assert "2 scorer kills" in row and "40 pairs redone" in row and "2 min 30 s with kills" in row
    assert "`python benchmarks/chaos.py --n 16`" in row and "(benchmarks/results/chaos.json)" in row
    assert results["chaos"]["date"][:10] in row
    # A figure follows its JSON: change the file, the row changes.
    changed = copy.deepcopy(results)
    changed["chaos"]["results"]["pairs_redone"] = 41
    assert "41 pairs redone" in figures.render_table(changed, None, warn=pytest.fail)


def test_topic_pages_get_their_rows_and_links_from_docs(tmp_path):
    results = {
        "chaos": _doc("chaos", CHAOS),
        "reducer_sparse_fl": _doc(
            "reducer_sparse_fl",
            {
                "case": "sparse_fl",
                "n": 1000,
                "k": 8,
                "budget": 300,
                "seconds": 0.5,
                "cpu_seconds": 0.4,
                "peak_rss_gb": 0.2,
            },
        ),
    }
    rel = figures.render_table(results, "reliability", link_prefix="../", warn=pytest.fail)
    assert "chaos" in rel and "sparse FL" not in rel and "(../benchmarks/results/chaos.json)" in rel
    assert "sparse FL" in figures.render_table(results, "scale", warn=pytest.fail)
    assert figures.render_table(results, "versions").startswith("No result file")


def test_unknown_or_malformed_results_still_get_a_row_and_a_warning():
    warnings: list[str] = []
    results = {
        "brand_new": _doc("brand_new", {"pairs_per_s": 12.5, "nested": {"x": 1}}),
        "chaos": _doc("chaos", {"completed": True}),
    }  # the spec's keys are missing
    table = figures.render_table(results, None, warn=warnings.append)
    assert "`brand_new`" in table and "pairs_per_s 12.5" in table and "`chaos`" in table
    assert (
        len(warnings) == 2
        and "chaos.json failed (KeyError" in warnings[0]
        and "no row spec matches brand_new" in warnings[1]
    )
    assert table.index("`chaos`") < table.index("`brand_new`")  # spec'd rows first, by topic


def test_every_committed_result_has_a_spec_that_renders_it():
    warnings: list[str] = []
    figures.render_table(read_results(), None, warn=warnings.append)
    assert not warnings, warnings


def test_regenerate_rewrites_only_between_markers(tmp_path):
    gen = _generate_module()
    page = tmp_path / "docs" / "x.md"
    page.parent.mkdir()
    text = "intro\n<!-- generated:figures:reliability -->\nold\n<!-- /generated:figures:reliability -->\noutro\n"
    out = gen.regenerate(text, page, {"chaos": _doc("chaos", CHAOS)}, tmp_path)
    assert out.startswith("intro\n<!-- generated:figures:reliability -->\n| what |") and out.endswith(
        "<!-- /generated:figures:reliability -->\noutro\n"
    )
    assert "(../benchmarks/results/chaos.json)" in out and "old" not in out
    assert gen.regenerate(out, page, {"chaos": _doc("chaos", CHAOS)}, tmp_path) == out
    with pytest.raises(ValueError, match="unknown generated block"):
        gen.regenerate("<!-- generated:nope -->\n<!-- /generated:nope -->\n", page, {}, tmp_path)


def test_result_files_hold_machine_date_and_command():
    for name, doc in read_results().items():
        assert doc["benchmark"] == name and doc["date"] and doc["command"].startswith(("python", "PYTHONPATH")), name
        assert {"cpus", "load_avg_1m"} <= set(doc["machine"]), name
        json.dumps(doc["results"])
