"""Reading a selection run directory and the held-out evaluation data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from delift_ray.errors import DeliftError
from delift_ray.rundir import RunDocument


@dataclass
class Pool:
    """Samples of one set of a run (``samples.parquet`` rows with status ok), in file order."""

    sample_ids: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def pairs(self, idx=None) -> list[tuple[str, str]]:
        idx = range(len(self)) if idx is None else idx
        return [(self.prompts[i], self.responses[i]) for i in idx]


@dataclass
class RunData:
    run_dir: str  # a local path or a URI
    config: dict
    stage: str
    budget: int
    pool: Pool
    selected: list[int]  # indices into pool, in selection order
    others: dict[str, Pool]  # "target" / "existing" sets, where present
    doc: Optional[RunDocument] = None  # run.json (cache, model fingerprint, ...)


def load_run(run_dir: str | Path) -> RunData:
    """A finished ``delift-ray select`` run, local or remote (:func:`delift_ray.rundir.read_run`)."""
    from delift_ray.rundir import read_run

    d = str(run_dir)
    if "://" not in d:
        d = str(Path(d).expanduser())
        if not Path(d).is_dir():
            raise DeliftError(f"run directory not found: {d}")
    run = read_run(d, what="run")
    need = {"sample_id", "set", "prompt", "response", "status"}
    if not need <= set(run.samples.column_names):
        raise DeliftError(f"{d}/samples.parquet lacks columns {sorted(need - set(run.samples.column_names))}")
    sets: dict[str, Pool] = {}
    from delift_ray.rundir import POOL_STATUSES

    for row in run.samples.select(sorted(need)).to_pylist():
        if row["status"] not in POOL_STATUSES:  # too long or otherwise never scored
            continue
        p = sets.setdefault(row["set"], Pool())
        p.sample_ids.append(row["sample_id"])
        p.prompts.append(row["prompt"])
        p.responses.append(row["response"])
    pool = sets.pop("pool", Pool())
    if not len(pool):
        raise DeliftError(f"{d}/samples.parquet has no usable pool samples")
    selection = run.selection.to_pylist()
    if selection and "rank" in selection[0]:
        selection = sorted(selection, key=lambda r: r["rank"])
    where = {sid: i for i, sid in enumerate(pool.sample_ids)}
    selected = []
    for row in selection:
        i = where.get(row["sample_id"])
        if i is None:
            raise DeliftError(f"selected sample {row['sample_id']} is not a usable pool sample of {d}")
        selected.append(i)
    if not selected:
        raise DeliftError(f"{d}/selection.parquet selects no sample")
    if len(set(selected)) != len(selected):
        raise DeliftError(f"{d}/selection.parquet selects a sample twice")
    cfg = run.config
    return RunData(
        run_dir=d,
        config=cfg,
        stage=run.doc.selection.stage if run.doc.selection else str(cfg.get("stage") or "instruction"),
        budget=len(selected),
        pool=pool,
        selected=selected,
        others=sets,
        doc=run.doc,
    )


@dataclass
class EvalSet:
    prompts: list[str]
    responses: list[str]
    sample_ids: list[str]
    dropped_overlap: int = 0
    rows_read: int = 0
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def load_eval_data(path: str | Path, *, pool_ids: Optional[set[str]] = None, max_eval: Optional[int] = None) -> EvalSet:
    """Held-out (prompt, response) pairs from a JSONL/JSON/Parquet/CSV file or folder.

    Columns are detected like the pool's (chat ``messages``, Alpaca
    ``instruction``/``input``/``output``, or ``prompt``/``response``). Rows that also occur in
    the pool (same normalised prompt and response) are dropped so that no fine-tuned model
    is evaluated on its own training data. ``max_eval`` keeps the first N remaining rows.
    """
    from delift_ray.data import load_samples

    p = Path(path).expanduser()
    if not p.exists():
        raise DeliftError(f"evaluation data not found: {path}")
    s = load_samples(str(p), name="evaluation")  # DataError (a DeliftError) names the problem
    keep = [k for k, sid in enumerate(s.sample_ids) if not pool_ids or sid not in pool_ids]
    dropped = len(s.sample_ids) - len(keep)
    if max_eval is not None:
        if max_eval < 1:
            raise DeliftError(f"--max-eval must be at least 1, got {max_eval}")
        keep = keep[:max_eval]
    if not keep:
        raise DeliftError(
            f"evaluation data {path}: no held-out sample left"
            + (f" ({dropped} rows also occur in the pool and were dropped)" if dropped else "")
        )
    return EvalSet(
        prompts=[s.prompts[k] for k in keep],
        responses=[s.responses[k] for k in keep],
        sample_ids=[s.sample_ids[k] for k in keep],
        dropped_overlap=dropped,
        rows_read=s.rows_read,
        skipped=sum(s.skipped.values()),
    )
