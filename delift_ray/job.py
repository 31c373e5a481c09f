"""The job: a DELIFT selection from corpus to subset, as named steps run top to bottom.

    ingest -> embed (knn) -> plan -> score -> assemble -> gate -> select -> profile -> write

:func:`run` is a thin executor: each step is a function of :mod:`delift_ray.steps` that
returns its result and typed stats; :class:`~delift_ray.steps.base.StepLog` logs one line
per step and keeps its time and peak RSS for ``run.json["steps"]``. Nothing is written
into the out dir before every check that can refuse the run has passed (data, budget,
model, engine start); the run's files are then committed together
(:meth:`delift_ray.rundir.RunDir.commit`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from delift_ray import kernel_types, metrics, stages
from delift_ray.config import DeliftConfig, load_config, validate_config
from delift_ray.errors import DeliftError
from delift_ray.estimate import DryRunReport, dry_run_report
from delift_ray.lock import RunLock
from delift_ray.planning import Plan
from delift_ray.rundir import (
    CURVE,
    MAP,
    RUN_JSON,
    SAMPLES,
    SELECTION,
    SUBSET,
    RunCounts,
    RunDir,
    inputs_digest,
    parquet_bytes,
    run_document,
    samples_table,
    selection_table,
    subset_bytes,
)
from delift_ray.steps.assemble import assemble
from delift_ray.steps.base import StepLog
from delift_ray.steps.embed import embed, neighbours
from delift_ray.steps.gate import gate
from delift_ray.steps.ingest import baseline_only_sets, ingest, load_tokenizer, stage_sources
from delift_ray.steps.plan import open_store, plan, sample_ids, scorer_identity
from delift_ray.steps.profile import profile
from delift_ray.steps.score import score
from delift_ray.steps.select import select
from delift_ray.steps.write import write
from delift_ray.storage import UTILITY, set_endpoint

log = logging.getLogger("delift_ray")

# A hook that adds files to the run's commit (reselect's selection_diff): it gets the
# files about to be committed (name -> bytes, run.json included) and returns them.
Finalize = Callable[[dict[str, bytes]], dict[str, bytes]]


@dataclass
class RunResult:
    out: str
    selected_ids: list[str]
    gains: list[float]
    counts: RunCounts
    timings: dict
    paths: dict
    steps: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"RunResult(out={self.out!r}, selected={len(self.selected_ids)}, counts={self.counts.as_dict()})"


@dataclass
class DryRunResult:
    """What a run would do, stopped before scoring (``select --dry-run``): the plan's
    counts, the tokens to compute and their cost (``report``), each step's time and memory.
    ``planned`` and ``candidates`` are the plan and knn candidates themselves."""

    out: str
    plan: dict
    steps: list[dict]
    report: Optional[DryRunReport] = None
    sets: dict = field(repr=False, default_factory=dict)
    planned: Optional[Plan] = field(repr=False, default=None)
    candidates: Optional[dict] = field(repr=False, default=None)


def coerce_config(config: DeliftConfig | dict | str | os.PathLike) -> DeliftConfig:
    if isinstance(config, DeliftConfig):
        return config
    if isinstance(config, dict):
        return validate_config(config)
    return load_config(config)


def run(
    config: DeliftConfig | dict | str | os.PathLike,
    *,
    progress: bool = True,
    lock: Optional[RunLock] = None,
    overwrite: bool = False,
    dry_run: bool = False,
    finalize: Optional[Finalize] = None,
    tokens_per_s: Optional[float] = None,
) -> RunResult | DryRunResult:
    """Run a DELIFT selection job; returns the selected ids, counts and output paths.

    The job holds the output directory's lock while it runs. ``lock``: that lock, already
    held by the caller. ``overwrite``: replace a finished run of other data or settings
    in the out dir (refused otherwise). ``dry_run``: stop after planning and return a
    :class:`DryRunResult`; nothing is written. ``finalize``: adds files to the commit.
    ``tokens_per_s``: computed tokens per second of one engine, for the dry run's hours.
    """
    cfg = coerce_config(config)
    set_endpoint(cfg.storage.endpoint)
    out = RunDir(cfg.out)
    check_out_outside_data(cfg)
    if dry_run:
        return _dry_run(cfg, out, progress, tokens_per_s)
    if lock is not None:
        if not lock.holds(out.path):
            raise ValueError(f"the lock passed to run() is not the held lock of {cfg.out}")
        return _execute(cfg, out, lock, progress, overwrite, finalize)
    out.create()
    with RunLock(out.fs, out.path, cfg.out) as held:  # one run per output directory
        return _execute(cfg, out, held, progress, overwrite, finalize)


def _candidates(steps: StepLog, cfg: DeliftConfig, sets: dict, progress: bool) -> tuple[Optional[dict], Optional[dict]]:
    """(candidates, vectors): the embed and neighbours steps for a kernel type that needs
    candidate pairs (knn); (None, None) when it scores every pair."""
    if not kernel_types.get(cfg.kernel.type).needs_candidates:
        return None, None
    vectors = steps.run("embed", embed, cfg, sets, progress)
    return steps.run("neighbours", neighbours, cfg, vectors, progress=progress), vectors


def _execute(
    cfg: DeliftConfig, out: RunDir, lock: RunLock, progress: bool, overwrite: bool, finalize: Optional[Finalize]
) -> RunResult:
    out.recover()  # a commit interrupted after its commit point is finished first
    metrics.set_run(cfg.out)
    steps = StepLog()
    tokenizer = load_tokenizer(cfg)
    sets = steps.run("ingest", ingest, cfg, tokenizer, progress=progress)
    budget = stages.budget_count(cfg.budget, len(sets["pool"].samples))
    scorer = scorer_identity(cfg)
    store = open_store(cfg, scorer)
    settings = cfg.model_dump(mode="json")
    digest = inputs_digest(settings, store.fingerprint, sample_ids(sets))
    out.check_reusable(digest, overwrite, settings)  # before any work, let alone any write

    candidates, vectors = _candidates(steps, cfg, sets, progress)
    # Baseline-only sets (the gate's) are planned and scored, never paired or embedded.
    scored = {**sets, **baseline_only_sets(cfg, sets, tokenizer)}
    planned = steps.run("plan", plan, cfg, scored, store, candidates)
    steps.run("score", score, cfg, scored, store, planned, tokenizer.eos_token_id, progress)
    kernels = steps.run("assemble", assemble, cfg, sets, store, candidates, progress=progress)
    excluded = steps.run("gate", gate, cfg.selection, sets["pool"].samples, store)
    selection = steps.run(
        "select", select, cfg, kernels, budget, excluded.mask, excluded.noise_gate, progress=progress, curve=True
    )
    pool_vectors = vectors["pool"] if vectors else None
    shown = steps.run("profile", profile, cfg, sets, store, kernels, selection, excluded.mask, candidates, pool_vectors)

    pool = sets["pool"].samples
    selected = [pool.sample_ids[i] for i in selection.indices]
    counts = RunCounts.from_steps(
        steps.stats("ingest"),
        steps.stats("plan"),
        steps.stats("score"),
        steps.stats("select"),
        steps.stats("embed"),
        steps.stats("assemble"),
        steps.stats("gate"),
    )
    timings = run_timings(steps, counts)
    meta = run_document(
        config=cfg.model_dump(mode="json"),
        model=scorer.record,
        cache=store.root_uri,
        stage=cfg.stage,
        budget=budget,
        counts=counts,
        steps=steps.as_list(),
        timings=timings,
        inputs_digest=digest,
        scorers=steps.stats("score").scorers,
        lock=lock.protocol,
    )
    files = {
        SAMPLES: parquet_bytes(samples_table(sets, excluded)),
        SELECTION: parquet_bytes(selection_table(selected, selection.gains)),
        SUBSET: subset_bytes([pool.originals[i] for i in selection.indices]),
        MAP: parquet_bytes(shown.map),
        CURVE: parquet_bytes(shown.curve),
        RUN_JSON: meta.to_bytes(),
    }
    if finalize is not None:
        files = finalize(files)
    written = steps.run("write", write, out, files)
    paths = {
        "selection": written[SELECTION],
        "subset": written[SUBSET],
        "samples": written[SAMPLES],
        "utility": store.kind_dir(UTILITY),
        "run": written[RUN_JSON],
        **written,
    }
    return RunResult(cfg.out, selected, [float(g) for g in selection.gains], counts, timings, paths, steps.as_list())


def _dry_run(cfg: DeliftConfig, out: RunDir, progress: bool, tokens_per_s: Optional[float] = None) -> DryRunResult:
    """ingest -> embed -> plan (with the memory guard) -> estimate; nothing is scored or written."""
    steps = StepLog()
    tokenizer = load_tokenizer(cfg)
    sets = steps.run("ingest", ingest, cfg, tokenizer, progress=progress)
    stages.budget_count(cfg.budget, len(sets["pool"].samples))
    store = open_store(cfg)
    candidates, _ = _candidates(steps, cfg, sets, progress)
    scored = {**sets, **baseline_only_sets(cfg, sets, tokenizer)}
    planned = steps.run("plan", plan, cfg, scored, store, candidates)
    report = steps.run("estimate", dry_run_report, cfg, scored, planned, tokens_per_s)
    return DryRunResult(cfg.out, steps.stats("plan").as_dict(), steps.as_list(), report, sets, planned, candidates)


def run_timings(steps: StepLog, counts: RunCounts) -> dict:
    """``<step>_s`` for every step, the total, and the scoring rate."""
    timings = {f"{r['name']}_s": r["seconds"] for r in steps.as_list()}
    timings["total_s"] = round(sum(timings.values()), 3)
    if timings.get("score_s", 0) > 0 and counts.pairs_scored:
        timings["pairs_per_s"] = round(counts.pairs_scored / timings["score_s"], 3)
    return timings


def check_out_outside_data(cfg: DeliftConfig) -> None:
    """An out dir inside a data folder would be read back as data by the next run: refused."""
    if "://" in cfg.out:
        return
    out = os.path.realpath(os.path.expanduser(cfg.out))
    for name, src in stage_sources(cfg).items():
        if not src or "://" in src or not os.path.isdir(os.path.expanduser(src)):
            continue
        data = os.path.realpath(os.path.expanduser(src))
        if out == data or out.startswith(data.rstrip(os.sep) + os.sep):
            raise DeliftError(f"--out {cfg.out} lies inside the {name} data folder {src}; choose an out dir outside it")
