"""The kernel rule that sets the default (benchmarks/quality_report.py ``kernel_evidence``) and
the page's answer (``answer_lines``), on comparisons made up by hand with known answers."""

from __future__ import annotations

from benchmarks.quality_report import answer_lines, kernel_evidence

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
    assert answer_lines(s)[2].startswith("Interim")
    s = _summary()
    s["progress"]["units_done"] = 8
    assert answer_lines(s)[2].startswith("Interim")


def test_the_answer_flags_a_default_not_applied_and_waits_for_the_default():
    s = _summary()
    s["kernel_evidence"]["config_default"] = "delift:keep-minmax"
    assert "**not yet** the config's default" in "\n".join(answer_lines(s))
    s["kernel_evidence"]["default"] = None
    assert answer_lines(s) == []
