"""Reselection for a new data version, scoring only the utilities the cache lacks.

``reselect(previous_run_dir, new_data, out)`` reads the previous run's ``run.json``
(model, engine, templates, columns, budget, cache), its ``samples.parquet`` and
``selection.parquet``, and compares the versions by sample hash:

    added = new \\ old,   removed = old \\ new,   unchanged = old ∩ new

It never enumerates pairs itself. It runs the ordinary job against the previous run's
content-keyed cache, and the job's planner scores exactly the keys the cache lacks.
Whatever the kernel type, the new work is "the missing keys": in dense mode, the pairs
that touch an added sample (2·N·Δ + Δ² of (N+Δ)² for Δ added to N); under a sparse
(knn) kernel, the new or changed candidate pairs.

Modes:

* ``full``: the previous stage (FL for ``instruction``) over the whole new version. The
  kernels are assembled from the same cached numbers a from-scratch run would compute
  and scaled over the whole matrix, so the selection equals a from-scratch run's.
* ``continual``: FL conditional gain, Σ_i max(max_{j∈A} K[i][j] − ν·max_{e∈E} P[i][e], 0),
  over the added samples (K: added × added, P[i][e] = UF(i <- e)), where E is the
  previously selected subset (``condition_on="selected"``) or every previous sample
  (``"all"``). The new selection is the previous selection that is still in the data,
  followed by the picks.

Outputs under ``out``, committed together (:mod:`delift_ray.rundir`): ``run.json`` (whose
``config`` is the new version's config, so a later reselect can chain on it, plus a
``reselect`` section), ``samples.parquet``, ``selection.parquet``, ``subset.jsonl`` and
``selection_diff.parquet`` / ``.json`` (``entered``, ``left``, ``kept`` relative to the
previous selection). Continual mode runs its FLCG job in ``out/continual/``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from delift_ray.config import DeliftConfig, validate_config
from delift_ray.errors import DeliftError
from delift_ray.lock import RunLock
from delift_ray.rundir import (
    RUN_JSON,
    SAMPLES,
    SELECTION,
    SUBSET,
    RunCounts,
    RunDir,
    RunDocument,
    SelectionRecord,
    json_bytes,
    parquet_bytes,
    parse_run_document,
    read_run,
    selection_table,
    subset_bytes,
    versions,
)
from delift_ray.storage import atomic_write, resolve_fs

MODES = ("full", "continual")
CONDITION_ON = ("selected", "all")


# --------------------------------------------------------------------------- pure diffs


@dataclass
class DataDiff:
    """Sample ids of two versions: added and unchanged in the new order, removed in the old."""

    added: list[str]
    removed: list[str]
    unchanged: list[str]

    def counts(self) -> dict:
        return {"added": len(self.added), "removed": len(self.removed), "unchanged": len(self.unchanged)}


def diff_ids(previous: Sequence[str], new: Sequence[str]) -> DataDiff:
    old, cur = set(previous), set(new)
    return DataDiff(
        added=[s for s in new if s not in old],
        removed=[s for s in previous if s not in cur],
        unchanged=[s for s in new if s in old],
    )


def selection_diff(before: Sequence[str], after: Sequence[str]) -> pa.Table:
    """One row per sample in either selection: change is entered, left or kept; ranks are 0-based or -1."""
    rank_b = {s: r for r, s in enumerate(before)}
    rank_a = {s: r for r, s in enumerate(after)}
    ids = list(after) + [s for s in before if s not in rank_a]
    change = ["kept" if s in rank_b and s in rank_a else "entered" if s in rank_a else "left" for s in ids]
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "change": pa.array(change, pa.string()),
            "rank_before": pa.array([rank_b.get(s, -1) for s in ids], pa.int64()),
            "rank_after": pa.array([rank_a.get(s, -1) for s in ids], pa.int64()),
        }
    )


def continual_budget(budget: Union[int, float], prev_selected: int, prev_samples: int, n_added: int) -> int:
    """Picks among the added samples: the previous selected fraction of them, within [1, n_added - 1]."""
    frac = budget if isinstance(budget, float) else prev_selected / max(prev_samples, 1)
    return int(min(max(round(frac * n_added), 1), n_added - 1))


# --------------------------------------------------------------------------- the previous run


@dataclass
class PreviousRun:
    dir: str
    config: dict
    pool: pa.Table  # samples.parquet rows of set 'pool'
    selected: list[str]
    cache: str

    @property
    def pool_ids(self) -> list[str]:
        return self.pool.column("sample_id").to_pylist()


def read_previous(run_dir: str) -> PreviousRun:
    """The previous run's config, pool samples and selection; a one-line error if it is not a finished run."""
    run = read_run(run_dir, what="--previous")
    config = run.config
    # Without a shared cache the previous run's shards live in its own dir.
    cache = run.doc.cache or run_dir
    return PreviousRun(run_dir, config, run.pool, run.selected, cache)


# --------------------------------------------------------------------------- reselect


@dataclass
class ReselectResult:
    out: str
    mode: str
    selected_ids: list[str]
    diff: DataDiff
    counts: RunCounts  # of the job that scored and selected (continual: over the added samples)
    changes: dict[str, int]  # entered / left / kept relative to the previous selection
    paths: dict = field(default_factory=dict)


def version_config(
    prev: PreviousRun, data: str, out: str, *, cache: Optional[str] = None, budget: Union[int, float, None] = None
) -> DeliftConfig:
    """The previous config with the new data, out dir and (shared) cache."""
    tree = dict(prev.config)
    tree.update(data=data, out=out, cache=cache or prev.cache)
    if budget is not None:
        tree["budget"] = budget
    return validate_config(tree)


def reselect(
    previous: str,
    data: str,
    out: str,
    *,
    mode: str = "full",
    condition_on: str = "selected",
    budget: Union[int, float, None] = None,
    cache: Optional[str] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ReselectResult:
    """Select on a new data version, reusing every cached utility; see the module docstring."""
    if mode not in MODES:
        raise DeliftError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if condition_on not in CONDITION_ON:
        raise DeliftError(f"--condition-on must be one of {', '.join(CONDITION_ON)}, got {condition_on!r}")
    od = RunDir(out)
    od.create()
    # One writer per output directory: the lock covers the job and the commit of its files.
    with RunLock(od.fs, od.path, out) as lock:
        return _reselect_locked(
            previous,
            data,
            out,
            od,
            lock,
            mode=mode,
            condition_on=condition_on,
            budget=budget,
            cache=cache,
            progress=progress,
            overwrite=overwrite,
        )


def _reselect_locked(
    previous: str,
    data: str,
    out: str,
    od: RunDir,
    lock: RunLock,
    *,
    mode: str,
    condition_on: str,
    budget: Union[int, float, None],
    cache: Optional[str],
    progress: bool,
    overwrite: bool,
) -> ReselectResult:
    from delift_ray.data import load_samples
    from delift_ray.job import run

    prev = read_previous(previous)
    cfg = version_config(prev, data, out, cache=cache, budget=budget if mode == "full" else None)
    new = load_samples(
        cfg.data, "pool", columns=cfg.columns, split=cfg.split, max_rows=cfg.max_samples, strict=cfg.strict
    )
    diff = diff_ids(prev.pool_ids, new.sample_ids)
    report: dict = {}

    def add_diff(files: dict[str, bytes], selected: list[str], extra: dict) -> dict[str, bytes]:
        """selection_diff.* and run.json's reselect section, in the same commit as the selection."""
        sdiff = selection_diff(prev.selected, selected)
        changes = sdiff.column("change").to_pylist()
        report["changes"] = {c: changes.count(c) for c in ("entered", "left", "kept")}
        ids = sdiff.column("sample_id").to_pylist()
        by_change = {c: [s for s, x in zip(ids, changes) if x == c] for c in ("entered", "left", "kept")}
        doc = parse_run_document(files[RUN_JSON], out)
        doc.reselect = {
            "previous": previous,
            "mode": mode,
            "condition_on": condition_on if mode == "continual" else None,
            "data": diff.counts(),
            **report["changes"],
            **extra,
        }
        return {
            **files,
            "selection_diff.parquet": parquet_bytes(sdiff),
            "selection_diff.json": json_bytes(
                {"previous": previous, "mode": mode, "data": diff.counts(), **report["changes"], **by_change}
            ),
            RUN_JSON: doc.to_bytes(),
        }

    if mode == "full":
        result = run(
            cfg,
            progress=progress,
            lock=lock,
            overwrite=overwrite,
            finalize=lambda files: add_diff(files, read_selection(files), {}),
        )
        selected, counts, paths = result.selected_ids, result.counts, result.paths
    else:
        selected, counts, paths = _continual(cfg, prev, new, diff, od, lock, condition_on, budget, progress, add_diff)
    return ReselectResult(out, mode, selected, diff, counts, report["changes"], paths)


def read_selection(files: dict[str, bytes]) -> list[str]:
    return pq.read_table(pa.BufferReader(files[SELECTION])).column("sample_id").to_pylist()


def _continual(
    cfg: DeliftConfig,
    prev: PreviousRun,
    new,
    diff: DataDiff,
    od: RunDir,
    lock: RunLock,
    condition_on: str,
    budget: Union[int, float, None],
    progress: bool,
    add_diff,
) -> tuple[list[str], RunCounts, dict]:
    """FLCG over the added samples conditioned on the previous selection (or all previous data)."""
    from delift_ray.job import run

    present = set(new.sample_ids)
    kept = [s for s in prev.selected if s in present]
    pos = {s: k for k, s in enumerate(new.sample_ids)}
    picks, gains, counts, note, status = [], [], RunCounts(), None, {}
    # Without an FLCG run there are no shards of this version: the previous run's store stands.
    cache, model = prev.cache, {}
    if len(diff.added) < 2:
        note = f"{len(diff.added)} added sample(s): nothing to choose between, the previous selection carries over"
    else:
        cond_ids = set(prev.selected) if condition_on == "selected" else set(prev.pool_ids)
        cond = prev.pool.filter(
            pc.is_in(prev.pool.column("sample_id"), value_set=pa.array(sorted(cond_ids), pa.string()))
        )
        # Inputs of the FLCG run, as prompt/response rows (same content hashes), in its own folder.
        sub = f"{od.uri.rstrip('/')}/continual"
        added = _write_jsonl(
            sub, "added.jsonl", [new.prompts[pos[s]] for s in diff.added], [new.responses[pos[s]] for s in diff.added]
        )
        existing = _write_jsonl(
            sub, "condition.jsonl", cond.column("prompt").to_pylist(), cond.column("response").to_pylist()
        )
        k = (
            budget
            if budget is not None
            else continual_budget(
                prev.config.get("budget", 0.3), len(prev.selected), len(prev.pool_ids), len(diff.added)
            )
        )
        tree = cfg.model_dump(mode="json")
        tree.update(
            data=added, existing=existing, stage="continual", budget=k, out=f"{sub}/run", cache=cfg.cache, columns={}
        )
        result = run(validate_config(tree), progress=progress, overwrite=True)
        picks, gains, counts = result.selected_ids, result.gains, result.counts
        inner_run = read_run(f"{sub}/run", what="the continual run")
        inner, cache, model = inner_run.samples, inner_run.doc.cache, inner_run.doc.model
        status = {
            sid: st
            for sid, st, name in zip(*(inner.column(c).to_pylist() for c in ("sample_id", "status", "set")))
            if name == "pool" and st != "ok"
        }
    selected = kept + picks
    counts = dataclasses.replace(counts, samples=len(new), selected=len(selected))
    meta = RunDocument(
        config=cfg.model_dump(mode="json"),
        versions=versions(),
        model=model,
        cache=cache,
        # The version's selection serves the base config's stage (kept + FLCG picks), as before.
        selection=SelectionRecord(stage=cfg.stage, budget=len(selected)),
        counts=counts.as_dict(),
        argv=sys.argv,
        lock=lock.protocol,
    )
    files = {
        SAMPLES: parquet_bytes(version_samples(new, status)),
        SELECTION: parquet_bytes(
            selection_table(
                selected, [np.nan] * len(kept) + list(gains), ["kept"] * len(kept) + ["picked"] * len(picks)
            )
        ),
        SUBSET: subset_bytes([new.originals[pos[s]] for s in selected]),
        RUN_JSON: meta.to_bytes(),
    }
    paths = od.commit(add_diff(files, selected, {"picked": len(picks), "note": note}))
    return selected, counts, paths


def _write_jsonl(folder: str, name: str, prompts: Sequence[str], responses: Sequence[str]) -> str:
    text = "".join(
        json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n" for p, r in zip(prompts, responses)
    )
    fs, path = resolve_fs(folder)
    atomic_write(fs, f"{path}/{name}", text.encode("utf-8"))
    return f"{folder}/{name}"


def version_samples(new, status: Optional[dict[str, str]] = None) -> pa.Table:
    """samples.parquet of a whole version (continual mode tokenises only the added part: token counts are -1).

    ``status``: sample id -> the status the FLCG run gave an added sample (why its gate excluded it).
    """
    n = len(new)
    status = status or {}
    return pa.table(
        {
            "sample_id": new.sample_ids,
            "row": new.rows,
            "set": ["pool"] * n,
            "prompt": new.prompts,
            "response": new.responses,
            "prompt_tokens": [-1] * n,
            "response_tokens": [-1] * n,
            "copies": new.copies,
            "status": [status.get(sid, "ok") for sid in new.sample_ids],
        }
    )
