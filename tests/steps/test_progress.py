"""Progress bars of the long steps: same results with and without them, and the bars count the work."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from delift_ray import neighbours, selection
from delift_ray.data import load_samples
from tests.helpers import write_rows


def bar_lines(err: str, desc: str) -> list[str]:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith(desc)]


@pytest.mark.parametrize("sparse", [False, True])
def test_selection_progress_counts_picks_and_changes_nothing(capsys, sparse):
    rng = np.random.default_rng(0)
    K = rng.random((300, 300)).astype(np.float32)
    K = sp.csr_matrix(np.where(K > 0.9, K, 0)) if sparse else K
    quiet = selection.facility_location(K, 40)
    capsys.readouterr()
    shown = selection.facility_location(K, 40, progress=True)
    assert np.array_equal(quiet[0], shown[0]) and np.array_equal(quiet[1], shown[1])
    assert "40/40" in bar_lines(capsys.readouterr().err, "select")[-1]


def test_selection_progress_reraises_the_engines_error():
    K = np.ones((5, 5))
    K[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        selection.facility_location(K, 2, progress=True)


def test_neighbours_and_ingest_bars(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    quiet = neighbours.candidates(x, x, 5, 2, exact_max=1000, seed=0)
    capsys.readouterr()
    assert np.array_equal(quiet, neighbours.candidates(x, x, 5, 2, exact_max=1000, seed=0, progress=True))
    assert "500/500" in bar_lines(capsys.readouterr().err, "neighbours")[-1]
    p = tmp_path / "d.jsonl"
    write_rows(p, [{"prompt": f"p{i}", "response": "r"} for i in range(30)] + ["not json"])
    s = load_samples(str(p), "pool", progress=True)
    assert len(s) == 30 and "31/31" in bar_lines(capsys.readouterr().err, "reading pool")[-1]
