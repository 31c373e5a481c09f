"""`delift-ray report` on a real tiny-model run, opened in a real headless Chromium; the quiet
terminal of the same CLI run; the report's reading of runs without a profile."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from delift_ray.report.data import Curve, load
from delift_ray.report.page import SECTIONS, render
from delift_ray.rundir import CURVE, MAP, RUN_JSON, SAMPLES, SELECTION, SUBSET, RunDir, json_bytes, read_file
from tests.browser import Chromium
from tests.helpers import ROOT, write_rows

POOL = [
    {"instruction": f"Question {i}: what is {i} plus {i % 5}?", "input": "", "output": f"It is {i + i % 5}."}
    for i in range(14)
] + [
    {"instruction": "Name a colour of the sky.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit."},
    {"instruction": "Write a haiku about rain.", "input": "", "output": "Soft rain on the roof\nthe garden drinks."},
    {"instruction": "List two fruits.", "input": "", "output": "Apples and pears."},
    {"instruction": "", "input": "", "output": "a row with no prompt is skipped"},
]

# What stderr may hold on a quiet terminal: delift-ray's step lines, the engines' banners as
# Ray forwards them, and progress bars (tqdm's "<desc>: NN%|...| a/b [...]" frames).
ALLOWED = (
    re.compile(r"^(INFO|WARNING|ERROR) delift_ray: "),
    re.compile(r"^\(\w+ pid=\d+\) delift-ray scorer engine: "),
    re.compile(r"^[\w ]+:\s+\d+%\|.*\|\s*\d+/\d+ \["),
)


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    data = d / "pool.jsonl"
    write_rows(data, POOL)
    out = d / "run"
    cmd = [sys.executable, "-m", "delift_ray.cli", "select", "--data", str(data), "--model", str(tiny_model_dir)]
    cmd += ["--out", str(out), "--budget", "5", "--engine.dtype", "float32", "--engine.max-model-len", "256"]
    cmd += ["--engine.block-size", "32", "--engine.kv-cache-space-gib", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return out, p


# cli_run is a real `delift-ray select`: its own local Ray and a vLLM engine.
@pytest.mark.engine
@pytest.mark.ray
def test_quiet_terminal_shows_only_delift_rays_lines(cli_run):
    out, p = cli_run
    fragments = [f.strip() for f in re.split(r"[\r\n]", p.stderr) if f.strip()]
    others = [f for f in fragments if not any(a.search(f) for a in ALLOWED)]
    assert not others, others[:10]
    assert any(f.startswith("INFO delift_ray: select: 5 of budget 5 picked") for f in fragments)
    assert sum("delift-ray scorer engine" in f for f in fragments) == 1  # the engine's banner, once
    # The third-party lines went to the run's log file instead.
    log = (out / "delift-ray.log").read_text()
    assert "Token authentication is enabled" in log or "Triton" in log or "NUMA" in log
    assert "INFO delift_ray: write: committed" in log
    # The summary names the report command and the log.
    assert f"delift-ray report {out}" in p.stdout and f"other libraries' output: {out / 'delift-ray.log'}" in p.stdout


@pytest.mark.engine
@pytest.mark.ray
def test_report_in_a_real_browser(cli_run, tmp_path):
    out, _ = cli_run
    page = tmp_path / "report.html"
    p = subprocess.run(
        [sys.executable, "-m", "delift_ray.cli", "report", str(out), "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"report: {page}") and not p.stderr
    assert external_resources(page.read_text()) == []  # nothing fetched at view time

    browser = Chromium(str(tmp_path / "profile"))
    try:
        browser.open(page.as_uri())
        assert browser.errors() == []
        sections = browser.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        assert sections == [s for s in SECTIONS if s != "changes"]
        plotted = browser.evaluate("document.querySelectorAll('#map-plot .scatterlayer .point').length")
        stated = int(browser.evaluate("document.getElementById('map-count').textContent"))
        assert plotted == stated == pq.read_table(out / MAP).num_rows == 18  # every pool sample, at this size
        traces = browser.evaluate(
            "Array.from(document.querySelectorAll('#map-plot .scatterlayer .trace')).map(t => "
            "t.querySelectorAll('.point').length)"
        )
        assert traces == [13, 5]  # not selected, selected
        rows = browser.evaluate("document.getElementById('picks').tBodies[0].rows.length")
        assert rows == 5
        # The search filters the table.
        browser.evaluate("filterTable('picks', 'no such text anywhere')")
        assert browser.evaluate("document.getElementById('picks-shown').textContent") == "0"
        assert browser.evaluate("document.querySelectorAll('#curve-plot .scatterlayer .trace').length") == 2
        png = browser.screenshot()
        assert browser.errors() == []
    finally:
        browser.close()
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape[0] > 2000 and img.shape[1] >= 1200  # the whole page, not the viewport
    ink = (img < 200).any(axis=2).mean()
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert ink > 0.02 and colours > 100, (ink, colours)


def external_resources(html: str) -> list[str]:
    """src/href attributes of the page's tags (scripts, styles, images) that name another file."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for k, v in attrs:
                if k in ("src", "href") and v and not v.startswith("#"):
                    found.append(f"<{tag} {k}={v}>")

    Tags().feed(html)
    return found


def test_curve_reports_where_picks_stop_adding():
    c = Curve(np.array([10.0, 5.0, 1.0, 0.05, 0.01, 0.0]), budget=3, pool=10)
    assert c.flat_from() == 4  # from pick 4 on every gain is < 1% of the first's
    assert c.after_budget_share() == pytest.approx(0.06 / 16.0)
    assert Curve(np.array([3.0, 2.0, 1.0]), 2, 5).flat_from() is None
    assert Curve(np.array([3.0, 2.0]), 2, 5).after_budget_share() is None
    assert Curve(np.zeros(3), 2, 5).flat_from() is None


@pytest.mark.engine
@pytest.mark.ray
def test_report_of_a_run_made_before_the_profile_step(cli_run, tmp_path):
    """A run without map.parquet and curve.parquet (an older version): the report says so per
    section and draws the subset's own gains."""
    out, _ = cli_run
    old = tmp_path / "old"
    meta = json.loads(read_file(str(out), RUN_JSON))
    meta["steps"] = [s for s in meta["steps"] if s["name"] != "profile"]
    RunDir(str(old)).commit(
        {name: read_file(str(out), name) for name in (SAMPLES, SELECTION, SUBSET)} | {RUN_JSON: json_bytes(meta)}
    )
    data = load(str(old))
    assert data.map is None and data.curve.gains.size == 5 and data.profile == {}
    html = render(data)
    assert "This run has no map" in html and "no profile" in html
    assert html.count("<section") == len(SECTIONS) - 1


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "delift_ray.cli", "report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2 and p.stderr.startswith("delift-ray: error: run ") and p.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "report.html")
    assert shutil.which("chromium"), "the browser tests need chromium: make setup installs it"


@pytest.mark.engine
@pytest.mark.ray
def test_report_files_belong_to_the_run(cli_run, tmp_path):
    """A map.parquet of another commit is refused like any run file."""
    out, _ = cli_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    pq.write_table(pq.read_table(copy / CURVE).slice(0, 2), copy / CURVE)
    with pytest.raises(Exception, match="curve.parquet does not belong to its run.json"):
        load(str(copy))


@pytest.mark.slow  # a real Chromium draws the million-sample page
def test_report_of_a_synthetic_million_sample_knn_run(tmp_path):
    """benchmarks/report_1m.py's run (the job's select, profile and write steps over a synthetic
    1M x 36 knn kernel): a page of at most 16 MiB whose map holds every selected sample and
    5,000 others, drawn in a real browser with no console error. Its time is the benchmark's
    figure (benchmarks/results/report_1m.json), not asserted here."""
    # In a child process: the million-sample kernel must not stay in this test process's memory.
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.report_1m", "--n", "1000000", "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    assert figures["page_mib"] <= 16 and figures["map_points"] == 305_000
    assert pq.read_table(tmp_path / "run" / MAP).num_rows == 300_000 + 5_000

    browser = Chromium(str(tmp_path / "profile"))
    try:
        browser.open((tmp_path / "report.html").as_uri(), timeout=300)
        drawn = browser.evaluate("document.getElementById('map-plot')._fullData.map(t => t._length)")
        assert drawn == [5_000, 300_000]
        assert int(browser.evaluate("document.getElementById('map-count').textContent")) == 305_000
        assert browser.evaluate("document.getElementById('picks').tBodies[0].rows.length") == 1000
        assert browser.errors() == []
    finally:
        browser.close()


def test_the_quiet_terminal_is_undone_when_a_command_ends(capsys):
    """In-process commands (tests, notebooks) get their logging back: handlers, levels, warnings."""
    import logging

    from delift_ray import cli, terminal

    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("delift_ray").level)
    for _ in range(2):
        assert cli.main(["config-reference"]) == 0
        assert (list(root.handlers), root.level, logging.getLogger("delift_ray").level) == before
        assert terminal.log_path() is None
    capsys.readouterr()
