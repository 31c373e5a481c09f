"""Does any kernel variant keep swapped (wrong) responses out of the subset?  A small, quick probe.

The quality study's noisy pool needs hours of scoring before its training units; the share
of swapped samples in a subset needs no training at all. This probe takes the first N
samples of the study's pool (benchmarks/quality_study.py writes it), swaps the responses of
a seeded half among themselves (a derangement), scores the pool densely with
``delift-ray select`` (the path users run) and reports, per arm and budget:

* the share of swapped samples in the subset (random: 50% in expectation);
* for the scores that can be computed from the stored utilities alone, their AUROC as a
  detector of swapped samples (benchmarks/quality_report.py: noise_signals);
* one signal that needs one more forward pass per sample, not the utilities: the
  pointwise mutual information of prompt and response, PMI_i = d(r_i | no prompt) -
  d(r_i | p_i) (mean response NLL, nats/token, teacher-forced with transformers through
  delift_ray.evaluate's own response_nll). A response swapped in from another sample is
  no more likely under its prompt than without one, so its PMI is near 0;
* the share of swapped samples left in DELIFT's subset when the most suspect quarter or
  half of the pool (by self-utility, the best stored signal, and by low PMI) may not be
  picked (their kernel columns set to 0);
* the job's own option for it, ``selection.min_prompt_gain`` (d(r | empty prompt) -
  d(r | prompt) in the utility's distance, from one more baseline per sample): the
  gain's AUROC, and, from ``delift-ray select`` runs over the same cache at each threshold
  of ``--min-prompt-gains`` and each budget, the samples excluded and the swapped share.

    .venv/bin/python -m benchmarks.noise_probe --n 48
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np

from benchmarks.quality_report import auroc, noise_signals
from benchmarks.quality_study import PATIENT_RAY_CLI
from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = "keep-minmax,drop-minmax,keep-clip,drop-clip"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality_study"))
    p.add_argument(
        "--cache",
        default=str(ROOT / "benchmarks" / "results" / "quality" / "cache"),
        help="Shard cache, shared with benchmarks/quality_study.py.",
    )
    p.add_argument("--budgets", default="0.15,0.3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-prompt-gains", default="0,0.01,0.02", help="selection.min_prompt_gain values to run.")
    args = p.parse_args(argv)
    work = Path(args.work)
    meta = json.loads((work / "data.json").read_text())
    pool = [json.loads(x) for x in (work / "pool.jsonl").read_text().splitlines()][: args.n]
    swapped_rows = sorted(random.Random(args.seed + 7).sample(range(len(pool)), len(pool) // 2))
    noisy = [dict(r) for r in pool]
    for a, b in zip(swapped_rows, swapped_rows[1:] + swapped_rows[:1]):
        noisy[a]["response"] = pool[b]["response"]
    out = work / f"probe-{args.n}"
    out.mkdir(parents=True, exist_ok=True)
    data = out / "noisy.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in noisy))

    from delift_ray.data import sample_id

    swapped_ids = {sample_id(noisy[i]["prompt"], noisy[i]["response"]) for i in swapped_rows}
    cmd = [
        sys.executable,
        "-c",
        PATIENT_RAY_CLI,
        "select",
        "--data",
        str(data),
        "--model",
        meta["model"],
        "--out",
        str(out / "run"),
        "--cache",
        args.cache,
        "--budget",
        "0.3",
        "--engine.dtype",
        "float32",
        "--engine.max-model-len",
        "512",
        "--engine.kv-cache-space-gib",
        "1",
        "--scoring.block-size",
        "16",
        "--kernel.diagonal",
        "keep",
        "--overwrite",
    ]  # the default when it ran
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0

    from delift_ray.evaluate.arms import arm_subsets, baseline_distances, parse_variants, raw_matrix, run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.rundir import read_run_document

    run = load_run(out / "run")
    store = run_store(run)
    uf = raw_matrix(run, "pool", "pool", store)
    d = baseline_distances(run, store)
    is_swapped = np.array([s in swapped_ids for s in run.pool.sample_ids])
    n = len(run.pool)
    shares: dict[str, dict[str, float]] = {}
    for b in (float(x) for x in args.budgets.split(",")):
        k = max(1, int(round(b * n)))
        arms = arm_subsets(run, k, parse_variants(VARIANTS), ("self_utility", "hardness"))
        rnd = [np.random.default_rng(r).choice(n, size=k, replace=False) for r in range(200)]
        shares[f"{int(round(100 * b))}%"] = {
            **{name: round(float(is_swapped[idx].mean()), 3) for name, idx in arms.items()},
            "random (mean of 200)": round(float(np.mean([is_swapped[i].mean() for i in rnd])), 3),
        }
    diag = np.diag(uf)
    off = uf[~np.eye(n, dtype=bool)]
    res = {
        "n": n,
        "swapped": int(is_swapped.sum()),
        "scoring_wall_s": round(wall, 1),
        "uf": {
            "diag_mean": float(diag.mean()),
            "offdiag_mean": float(off.mean()),
            "offdiag_sd": float(off.std()),
            "offdiag_mean_swapped_as_example": float(
                np.nanmean(np.where(np.eye(n, dtype=bool), np.nan, uf)[:, is_swapped])
            ),
            "offdiag_mean_intact_as_example": float(
                np.nanmean(np.where(np.eye(n, dtype=bool), np.nan, uf)[:, ~is_swapped])
            ),
        },
        "swapped_share": shares,
        "noise_signal_auroc": noise_signals(uf, d, is_swapped),
        **prior_signal(run, meta["model"], uf, is_swapped, args.budgets),
        "min_prompt_gain": job_prompt_gain(cmd, out, is_swapped, run.pool.sample_ids, args),
        "counts": read_run_document(str(out / "run")).counts,
    }
    write_result("noise_probe", res)
    print(json.dumps(res, indent=2))
    return 0


def job_prompt_gain(cmd: list[str], out: Path, is_swapped: np.ndarray, ids: list[str], args) -> dict:
    """``delift-ray select`` with ``--selection.min-prompt-gain`` per threshold and budget (same cache)."""
    from delift_ray.evaluate.arms import run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.gate import prompt_free_id
    from delift_ray.rundir import read_run_document

    swapped = {s for s, w in zip(ids, is_swapped) if w}
    res: dict = {"runs": {}}
    for t in (float(x) for x in args.min_prompt_gains.split(",")):
        for b in (float(x) for x in args.budgets.split(",")):
            run_dir = out / f"pg-{t:g}-b{b:g}"
            base = [c for c in cmd if c != str(out / "run")]
            at = base.index("--out")
            sel = base[:at] + ["--out", str(run_dir)] + base[at + 1 :]
            sel[sel.index("--budget") + 1] = str(b)
            t0 = time.time()
            subprocess.run(sel + [f"--selection.min-prompt-gain={t}"], check=True)
            r = load_run(run_dir)
            if "auroc_low_gain" not in res:
                from delift_ray.steps.gate import prompt_gains

                g = prompt_gains(r.pool.sample_ids, [prompt_free_id(x) for x in r.pool.responses], run_store(r))
                sw = np.array([s in swapped for s in r.pool.sample_ids])
                res.update(
                    {
                        "auroc_low_gain": round(auroc(-g, sw), 4),
                        "gain_swapped": np.round(np.sort(g[sw]), 4).tolist(),
                        "gain_intact": np.round(np.sort(g[~sw]), 4).tolist(),
                    }
                )
            counts = read_run_document(str(run_dir)).counts
            res["runs"][f"{t:g} @ {int(round(100 * b))}%"] = {
                "excluded": counts["excluded_low_prompt_gain"],
                "selected": len(r.selected),
                "swapped_share": round(sum(r.pool.sample_ids[i] in swapped for i in r.selected) / len(r.selected), 3),
                "baselines_scored": counts["baselines_scored"],
                "wall_s": round(time.time() - t0, 1),
            }
    return res


def prompt_free_pmi(model_dir: str, prompts: list[str], responses: list[str]) -> np.ndarray:
    """PMI_i = d(r_i | empty prompt) - d(r_i | p_i): mean response NLL in nats/token, float32."""
    import torch

    from delift_ray.evaluate.formatting import PromptEncoder
    from delift_ray.evaluate.metrics import response_nll
    from delift_ray.evaluate.training import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    enc = PromptEncoder(tok, 512)
    model = load_model(model_dir, dtype=torch.float32, device="cpu")
    cond = response_nll(model, [enc.pair(p, r) for p, r in zip(prompts, responses)], pad_id=tok.pad_token_id)
    free = response_nll(model, [enc.pair("", r) for r in responses], pad_id=tok.pad_token_id)
    return free - cond


def prior_signal(run, model_dir: str, uf: np.ndarray, is_swapped: np.ndarray, budgets: str) -> dict:
    """PMI's AUROC, and DELIFT's swapped share with the most suspect samples excluded."""
    from delift_ray import selection
    from delift_ray.kernel import finish_dense

    t0 = time.time()
    pmi = prompt_free_pmi(model_dir, run.pool.prompts, run.pool.responses)
    wall = time.time() - t0
    n = len(pmi)
    suspect = {"self-utility (stored)": np.diag(uf), "low PMI (one more pass)": -pmi}
    K = finish_dense(uf.copy(), run.pool.sample_ids, run.pool.sample_ids, diagonal="keep", scaling="minmax")
    table: dict[str, dict[str, float]] = {}
    for name, score in [("none", None)] + list(suspect.items()):
        for q in (0.0,) if score is None else (0.25, 0.5):
            Kq = K.copy()
            if score is not None:
                Kq[:, np.argsort(-score, kind="stable")[: int(round(q * n))]] = 0.0
            row = {}
            for b in (float(x) for x in budgets.split(",")):
                idx, _ = selection.facility_location(Kq, max(1, int(round(b * n))))
                row[f"{int(round(100 * b))}%"] = round(float(is_swapped[idx].mean()), 3)
            table["no exclusion" if score is None else f"{name}, most suspect {int(q * 100)}% excluded"] = row
    return {
        "pmi": {
            "auroc_low_pmi": round(auroc(-pmi, is_swapped), 4),
            "mean_swapped": float(pmi[is_swapped].mean()),
            "mean_intact": float(pmi[~is_swapped].mean()),
            "wall_s": round(wall, 1),
        },
        "delift_keep_minmax_swapped_share_with_exclusion": table,
    }


if __name__ == "__main__":
    sys.exit(main())
