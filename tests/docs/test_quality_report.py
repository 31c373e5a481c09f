"""The kernel rule that sets the default (benchmarks/quality_report.py ``kernel_evidence``) and
the page's answer (``answer_lines``), on comparisons made up by hand with known answers; and
docs/quality.md, hand-written with generated blocks that ``render_block`` fills."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.quality_report import BLOCK, BLOCKS, answer_lines, kernel_evidence, render_block, write_docs
from benchmarks.results import read_results
from tests.helpers import ROOT

PAGE = ROOT / "docs" / "quality.md"

VARIANTS = ["keep-minmax", "drop-minmax", "drop-clip"]
BUDGETS = [0.15, 0.05]
POOLS = {"clean", "noisy"}


def _c(arm: str, ref: str, pool: str, budget: float, lo: float, hi: float) -> dict:
    return {
        "arm": f"delift:{arm}",
        "reference": f"delift:{ref}",
        "pool": pool,
        "budget": budget,
        "delta": (lo + hi) / 2,
        "ci_low": lo,
        "ci_high": hi,
    }


def _cells(vs_keep: dict, clip_vs_drop: tuple[float, float] = (-0.01, 0.01)):
    """vs_keep: (pool, budget) -> (lo, hi) of both drop variants against keep-minmax."""
    vs_default = [
        _c(a, "keep-minmax", p, b, lo, hi) for (p, b), (lo, hi) in vs_keep.items() for a in ("drop-minmax", "drop-clip")
    ]
    each = [_c("drop-clip", "drop-minmax", p, b, *clip_vs_drop) for (p, b) in vs_keep]
    return vs_default, each


def test_a_variant_worse_in_one_cell_is_out_and_ties_go_to_fewer_changed_options():
    vs_keep = {
        ("clean", 0.15): (0.02, 0.05),
        ("clean", 0.05): (-0.001, 0.02),
        ("noisy", 0.15): (0.03, 0.05),
        ("noisy", 0.05): (0.01, 0.04),
    }
    ke = kernel_evidence(*_cells(vs_keep), BUDGETS, POOLS, VARIANTS, POOLS)
    assert ke["variants"]["delift:keep-minmax"]["status"] == "out"
    assert ke["variants"]["delift:keep-minmax"]["cells"]["clean 5%"] == "no worse"  # a tie is not worse
    assert {ke["variants"][a]["status"] for a in ("delift:drop-minmax", "delift:drop-clip")} == {"candidate"}
    # Equal mean deltas: drop-minmax changes one option from keep-minmax, drop-clip two.
    assert ke["default"] == "delift:drop-minmax"
    assert ke["comparisons_per_variant"] == 8 and ke["chance_out_if_equal"] == round(1 - 0.975**8, 3)


def test_no_candidate_falls_back_to_the_papers_kernel():
    # drop-minmax loses to keep-minmax on the noisy pool, and drop-clip loses to drop-minmax there.
    vs_keep = {
        ("clean", 0.15): (0.02, 0.05),
        ("clean", 0.05): (-0.01, 0.02),
        ("noisy", 0.15): (-0.05, -0.01),
        ("noisy", 0.05): (-0.01, 0.01),
    }
    ke = kernel_evidence(*_cells(vs_keep, clip_vs_drop=(-0.03, -0.01)), BUDGETS, POOLS, VARIANTS, POOLS)
    assert [ke["variants"][f"delift:{v}"]["status"] for v in VARIANTS] == ["out", "out", "out"]
    assert ke["default"] == "delift:keep-minmax"


def test_the_default_waits_for_every_pools_variant_units():
    vs_keep = {("clean", 0.15): (0.02, 0.05), ("clean", 0.05): (0.01, 0.02)}
    ke = kernel_evidence(*_cells(vs_keep), BUDGETS, {"clean"}, VARIANTS, POOLS)
    assert ke["default"] is None
    assert ke["variants"]["delift:drop-minmax"]["cells"]["noisy 15%"] == "not yet"
    assert ke["variants"]["delift:drop-minmax"]["status"] == "pending"
    # keep-minmax is worse on the clean pool, whose variant units are all in: out for good.
    assert ke["variants"]["delift:keep-minmax"]["status"] == "out" and ke["variants"]["delift:keep-minmax"]["final"]


def _row(arm: str, pool: str, budget: float, verdict: str, lo: float, hi: float, interim: bool = False) -> dict:
    return {
        "arm": arm,
        "pool": pool,
        "budget": budget,
        "interim": interim,
        "comparison": {"verdict": verdict, "delta": (lo + hi) / 2, "ci_low": lo, "ci_high": hi},
    }


def _summary(default_share: float = 0.6) -> dict:
    """Two budgets, rows listed out of order; the answer orders them by pool, then budget high to low."""
    rows = [
        _row("delift:drop-minmax", "noisy", 0.15, "inconclusive", -0.01, 0.02),
        _row("delift:drop-minmax", "clean", 0.05, "better than random", 0.01, 0.03),
        _row("delift:drop-minmax", "clean", 0.15, "better than random", 0.02, 0.04),
        _row("delift:keep-minmax", "clean", 0.15, "no better than random", -0.03, -0.01),
        _row("delift:keep-minmax", "noisy", 0.15, "no better than random", -0.02, -0.01),
    ]
    ranking = [
        {
            "arm": "delift:drop-minmax",
            "reference": "example_utility",
            "pool": p,
            "budget": 0.15,
            "delta": (lo + hi) / 2,
            "ci_low": lo,
            "ci_high": hi,
        }
        for p, lo, hi in (("noisy", -0.03, -0.01), ("clean", 0.01, 0.03))
    ]
    noisy = {
        b: {
            "k": k,
            "arms": {"delift:drop-minmax": default_share, "example_utility": 0.3},
            "random": {"mean": 0.5, "min": 0.4, "max": 0.6, "n": 20},
        }
        for b, k in (("0.05", 12), ("0.15", 36))
    }
    noisy["0.05"]["arms"]["delift:drop-minmax"] = 0.5
    return {
        "kernel_evidence": {"default": "delift:drop-minmax", "config_default": "delift:drop-minmax"},
        "rows": rows,
        "design": {"n_pool": 240, "steps": 18},
        "progress": {"units_done": 9, "units_total": 9},
        "variants_vs_simplest_ranking": ranking,
        "noisy_selections": noisy,
    }


def test_the_answer_counts_each_verdict_from_the_rows():
    text = "\n".join(answer_lines(_summary()))
    assert "Every unit is in" in text and "Interim" not in text
    assert (
        '`drop-minmax`, the kernel the evidence supports ("Which kernel?"; the config\'s default), against '
        "random subsets of the same size: better than random in 2 of 3 (clean 15%, clean 5%); inconclusive in "
        "1 of 3 (noisy 15%): clean 15% +0.030 [0.020, 0.040], clean 5% +0.020 [0.010, 0.030], "
        "noisy 15% +0.005 [-0.010, 0.020]."
    ) in text
    assert "`keep-minmax`: no better than random in 2 of 2 (clean 15%, noisy 15%)" in text
    assert "the greedy better in 1 of 2 (clean 15%); `example_utility` better in 1 of 2 (noisy 15%)" in text
    assert "kept at 15% / 5%: `drop-minmax` 60% / 50%, random 50% / 50%, `example_utility` 30% / 30%." in text
    # 0.5 against random's 0.5 at 5% counts as "at least random's share"; 0.49 does not.
    assert "keeps at least random's share" in text
    assert "keeps at least random's share" not in "\n".join(answer_lines(_summary(default_share=0.49)))
    assert "selection only" not in text  # no stored selection of the default with the noise option


def test_the_answer_is_interim_while_a_unit_is_missing_even_without_a_comparison():
    s = _summary()
    s["rows"].append({"arm": "random", "pool": "noisy", "budget": 0.05, "interim": True})
    assert answer_lines(s)[0].startswith("Interim")
    s = _summary()
    s["progress"]["units_done"] = 8
    assert answer_lines(s)[0].startswith("Interim")


def test_the_answer_flags_a_default_not_applied_and_waits_for_the_default():
    s = _summary()
    s["kernel_evidence"]["config_default"] = "delift:keep-minmax"
    assert "**not yet** the config's default" in "\n".join(answer_lines(s))
    s["kernel_evidence"]["default"] = None
    assert answer_lines(s) == []
    assert render_block("answer", s).endswith(
        'Not decided yet: the answer is read once the evidence supports a default kernel ("Which kernel?" below).\n'
    )


# --------------------------------------------------------------------------- docs/quality.md


def _generate_module():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_page_is_hand_written_around_one_block_per_renderer():
    text = PAGE.read_text()
    assert "do not edit" not in text and "STATIC_SECTIONS" not in text
    blocks = list(_generate_module().BLOCK.finditer(text))
    assert [m.group("name") for m in blocks] == [f"quality:{n}" for n in BLOCKS]  # in the page's order
    for m in blocks:  # each block names what renders it
        assert m.group("body").startswith("<!-- rendered by benchmarks/quality_report.py"), m.group("name")
    prose = BLOCK.sub("", text)
    for heading in ("## Status", "## Answer", "## Which kernel?", "## The kernel options", "## Reproduce or resume"):
        assert f"\n{heading}" in prose, heading
    with pytest.raises(ValueError, match="unknown generated block"):
        render_block("nope", {})


def test_the_prose_outside_the_blocks_survives_a_regeneration_and_a_stale_block_is_caught(tmp_path):
    gen = _generate_module()
    results = read_results(ROOT / "benchmarks" / "results")
    text = PAGE.read_text()
    hand = text
    for heading in ("## Answer\n", "## The kernel options\n"):  # beside a block, and in the fixed sections
        hand = hand.replace(heading, heading + "\nA sentence added by hand.\n", 1)
    assert hand.count("A sentence added by hand.") == 2
    # A block out of date (a result changed since it was rendered), next to the hand edits.
    stale = BLOCK.sub(lambda m: m.group(1) + "an old figure\n" + m.group(4), hand, count=1)
    page = tmp_path / "docs" / "quality.md"
    page.parent.mkdir()
    page.write_text(stale)
    assert gen.stale_files(tmp_path, results) == [page]  # what docs/generate.py --check reports
    out = gen.regenerate(stale, page, results, tmp_path)
    assert "an old figure" not in out and BLOCK.sub("", out) == BLOCK.sub("", stale)  # prose byte for byte
    assert out == hand
    page.write_text(out)
    assert gen.stale_files(tmp_path, results) == []
    # python -m benchmarks.quality_study --report fills the same blocks in place, the prose left alone.
    page.write_text(stale)
    write_docs(results["quality_study"]["results"], page.parent, probe=results["noise_probe"])
    assert page.read_text() == hand
    assert (page.parent / "quality.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_write_docs_needs_the_hand_written_page(tmp_path):
    summary = read_results(ROOT / "benchmarks" / "results")["quality_study"]["results"]
    with pytest.raises(FileNotFoundError, match="hand-written"):
        write_docs(summary, tmp_path)
    (tmp_path / "quality.md").write_text("# A page without blocks\n")
    with pytest.raises(ValueError, match="no <!-- generated:quality:NAME --> block"):
        write_docs(summary, tmp_path)
