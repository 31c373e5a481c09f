"""bfloat16 against float32 utilities, split into body and LM head, and what it does to the selection.

    python -m benchmarks.precision [--n 48] [--families demo,qa] [--write-result NAME]

For each data family (``demo``: the demo's ShareGPT first turns; ``qa``: the 48 short factoid
questions of ``benchmarks/data/factoid_qa.jsonl``) the whole n x n matrix is scored by
``delift-ray select`` (the path users run, dense, the default kernel) three times over, each
into its own run and cache:

* ``float32``: ``engine.dtype: float32`` (the reference; it matched transformers teacher
  forcing to 1e-4 in tests/scoring/test_checkpoints.py);
* ``bf16_head_f32``: ``engine.dtype: bfloat16``, ``engine.head_dtype: float32`` (the default
  since issue 27): the transformer body in bfloat16, the LM head and log-sum-exp in float32;
* ``bf16``: ``engine.dtype: bfloat16``, ``engine.head_dtype: engine`` (the default before):
  everything in bfloat16 but the log-sum-exp.

Per family and precision it reports, against float32 over the off-diagonal pairs (the ones
the default ``drop`` kernel uses): the max and sd of the error, the sd of the float32
utilities themselves (the signal), their ratio and the correlation; then, at budgets 5%, 15%
and 30%, the default kernel's facility-location subset under each precision, its overlap with
the float32 subset and its FL value on the float32 kernel over the float32 subset's. A run
already finished is read again, not re-scored (re-running the script resumes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
PRECISIONS = {
    "float32": ["--engine.dtype", "float32"],
    "bf16_head_f32": ["--engine.dtype", "bfloat16", "--engine.head-dtype", "float32"],
    "bf16": ["--engine.dtype", "bfloat16", "--engine.head-dtype", "engine"],
}
BUDGETS = (0.05, 0.15, 0.3)
RESCORE_TOP = (2, 4)  # simulated mitigation: each row's top candidates re-scored in float32


def family_data(family: str, n: int, work: Path, model: str) -> Path:
    if family == "qa":
        return DATA / "factoid_qa.jsonl"
    if family == "code":
        return DATA / "code_functions.jsonl"
    from delift_ray import assets

    path = work / f"demo-{n}.jsonl"
    if not path.exists():
        assets.write_demo_dataset(path, n=n, tokenizer=model)
    return path


def score_run(data: Path, n: int, model: str, out: Path, flags: list[str]) -> Path:
    """A finished dense run of the default kernel over ``data`` (scored now unless already done)."""
    if not (out / "run" / "run.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "delift_ray.cli",
            "select",
            "--data",
            str(data),
            "--model",
            model,
            "--out",
            str(out / "run"),
            "--cache",
            str(out / "cache"),
            "--max-samples",
            str(n),
            "--budget",
            "0.3",
            "--engine.max-model-len",
            "512",
            "--engine.kv-cache-space-gib",
            "1",
            "--overwrite",
            *flags,
        ]
        print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return out / "run"


def error_stats(ref: np.ndarray, got: np.ndarray) -> dict:
    """Off-diagonal error of ``got`` against ``ref`` (raw UF), and the diagonal's largest error."""
    off = ~np.eye(len(ref), dtype=bool)
    err = (got - ref)[off]
    signal = float(ref[off].std())
    return {
        "max_abs_err": float(np.abs(err).max()),
        "sd_err": float(err.std()),
        "mean_err": float(err.mean()),
        "signal_sd": signal,
        "sd_err_over_signal": float(err.std() / signal) if signal else None,
        "corr": float(np.corrcoef(ref[off], got[off])[0, 1]),
        "diag_max_abs_err": float(np.abs(np.diag(got) - np.diag(ref)).max()),
    }


def rescore_top(ref: np.ndarray, got: np.ndarray, t: int) -> np.ndarray:
    """``got`` with each row's ``t`` largest off-diagonal entries replaced by ``ref``'s: what
    re-scoring in float32 only the candidates likeliest to win a row's max would give (a
    simulation from the two stored matrices; the job has no such pass)."""
    out = got.copy()
    ranked = np.where(np.eye(len(got), dtype=bool), -np.inf, got)
    top = np.argsort(-ranked, axis=1, kind="stable")[:, :t]
    rows = np.arange(len(got))[:, None]
    out[rows, top] = ref[rows, top]
    return out


def fl_value(K: np.ndarray, subset: list[int]) -> float:
    """Facility location sum_i max_{j in S} K[i, j]."""
    return float(K[:, subset].max(axis=1).sum())


LABELS = {
    "bf16_head_f32": "bfloat16 body, float32 LM head (default)",
    "bf16": "bfloat16 body and LM head (before)",
    **{f"bf16_rescore_top{t}": f"default, each row's top {t} re-scored in float32 (simulated)" for t in RESCORE_TOP},
}
FAMILIES = {"demo": "ShareGPT first turns (demo)", "qa": "short factoid QA", "code": "short Python functions"}


def markdown(doc: dict) -> str:
    """The error table and the selection table of docs/checkpoints.md, from a result file."""
    r = doc["results"]
    lines = [
        "| data | precision | max \\|error\\| | sd of the error | sd of the signal | error sd / signal sd | correlation |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam, f in r["families"].items():
        for name, row in f["precisions"].items():
            if name in LABELS:
                lines.append(
                    f"| {FAMILIES.get(fam, fam)}, {f['samples']} samples | {LABELS[name]} | "
                    f"{row['max_abs_err']:.1e} | {row['sd_err']:.1e} | {row['signal_sd']:.1e} | "
                    f"{100 * row['sd_err_over_signal']:.1f}% | {row['corr']:.4f} |"
                )
    lines += [
        "",
        "| data | budget (k) | precision | overlap with the float32 subset | FL on the float32 kernel, "
        "relative to the float32 subset's |",
        "|---|---|---|---|---|",
    ]
    for fam, f in r["families"].items():
        for b, sel in f["selection"].items():
            for name in (n for n in LABELS if n in sel):
                lines.append(
                    f"| {FAMILIES.get(fam, fam)} | {100 * float(b):g}% ({sel['k']}) | {LABELS[name]} | "
                    f"{100 * sel[name]['overlap']:.0f}% | {sel[name]['fl_on_float32_kernel_ratio']:.4f} |"
                )
    m = doc.get("machine", {})
    lines += [
        "",
        f"Off-diagonal pairs against `engine.dtype: float32`, kernel {r['kernel']}, model {r['model']}; "
        f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cores, CPU flags {', '.join(m.get('cpu_flags') or []) or '?'}; "
        f"{doc['date'][:10]}; `{doc['command']}` "
        f"([{doc['benchmark']}.json](../benchmarks/results/{doc['benchmark']}.json)).",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--families", default="demo,qa")
    ap.add_argument("--model", help="checkpoint (default: the demo model)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "precision"))
    ap.add_argument("--write-result", metavar="NAME")
    args = ap.parse_args(argv)

    from delift_ray import assets
    from delift_ray.config import KernelConfig
    from delift_ray.evaluate.arms import Variant, delift_variant, raw_matrix, run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.kernel import finish_dense

    model = args.model or str(assets.demo_model_dir())
    default = Variant(KernelConfig().diagonal, KernelConfig().scaling)
    out: dict = {
        "model": Path(model).name,
        "n": args.n,
        "kernel": f"{default.diagonal}-{default.scaling}",
        "reference": "float32",
        "families": {},
    }
    for family in args.families.split(","):
        work = Path(args.work) / family
        work.mkdir(parents=True, exist_ok=True)
        data = family_data(family, args.n, work, model)
        runs = {
            name: load_run(score_run(data, args.n, model, work / name, flags)) for name, flags in PRECISIONS.items()
        }
        raw = {}
        for name, run in runs.items():
            raw[name] = raw_matrix(run, "pool", "pool", run_store(run)).astype(np.float64)
            assert run.pool.sample_ids == runs["float32"].pool.sample_ids, "runs differ in their pool"
        ids = runs["float32"].pool.sample_ids
        K32 = finish_dense(
            raw["float32"].astype(np.float32), ids, ids, diagonal=default.diagonal, scaling=default.scaling
        )
        fam: dict = {"samples": len(ids), "precisions": {}}
        for name, run in runs.items():
            counts = run.doc.counts
            row = {
                "dtypes": counts.get("dtypes"),
                "head_dtypes": counts.get("head_dtypes"),
                "logprob_paths": counts.get("logprob_paths"),
            }
            if name != "float32":
                row.update(error_stats(raw["float32"], raw[name]))
            fam["precisions"][name] = row
        for t in RESCORE_TOP:
            raw[f"bf16_rescore_top{t}"] = rescore_top(raw["float32"], raw["bf16_head_f32"], t)
            fam["precisions"][f"bf16_rescore_top{t}"] = {
                "simulated": True,
                "pairs_rescored_share": t / (len(ids) - 1),
                **error_stats(raw["float32"], raw[f"bf16_rescore_top{t}"]),
            }
        fam["selection"] = {}
        for b in BUDGETS:
            k = max(1, round(b * len(ids)))
            picks = {
                name: delift_variant(runs["float32"], default, k, raw={"K": M.astype(np.float32)})
                for name, M in raw.items()
            }
            ref_fl = fl_value(K32, picks["float32"])
            fam["selection"][str(b)] = {
                "k": k,
                **{
                    name: {
                        "overlap": len(set(p) & set(picks["float32"])) / k,
                        "fl_on_float32_kernel_ratio": fl_value(K32, p) / ref_fl,
                    }
                    for name, p in picks.items()
                    if name != "float32"
                },
            }
        out["families"][family] = fam
        print(json.dumps({family: fam}, indent=1), file=sys.stderr, flush=True)
    from benchmarks.results import emit

    return emit(out, args.write_result)


if __name__ == "__main__":
    main()
