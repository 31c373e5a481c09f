"""Does ``selection.noise_gate: contrastive`` keep swapped (wrong) responses out of the subset?

For each pool, ``delift-ray select`` (dense, the default kernel drop-minmax, the CLI users
run) without the gate and with it, at budgets 5%, 15% and 30%, over one content-keyed
cache (the utilities are scored once; the gate's mismatched baselines once per pool).
Pools, two families, each clean and with a seeded half of the responses swapped among
themselves (a derangement):

* ``sharegpt``: the quality study's 240-sample pools (benchmarks/quality_study.py; their
  utilities are in its committed cache, scored in float32);
* ``qa``: the 48 short factoid QA items of benchmarks/data/factoid_qa.jsonl.

Reported per pool and budget: picks, share of swapped samples among all picks and among
the first half of them; the gate's exclusions, its estimated null share and, on noisy
pools, the AUROC of the contrastive gain as a detector of swapped samples; on clean
pools, the share of intact samples the gate excluded. The gate's rule (4 mismatched
prompts, fdr 0.05, Storey lambda 0.5) was fixed before any of these pools was scored.

    .venv/bin/python -m benchmarks.noise_gate            # resumable: finished pools are kept
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np

from benchmarks.quality_report import auroc
from benchmarks.quality_study import prepare_data, select_run
from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parent.parent

BUDGETS = (0.05, 0.15, 0.30)
RESULT = "noise_gate"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def swap_half(rows: list[dict], seed: int) -> tuple[list[dict], list[int]]:
    """A seeded half of the rows with their responses rotated among themselves."""
    swapped = sorted(random.Random(seed).sample(range(len(rows)), len(rows) // 2))
    noisy = [dict(r) for r in rows]
    for a, b in zip(swapped, swapped[1:] + swapped[:1]):
        noisy[a]["response"] = rows[b]["response"]
    return noisy, swapped


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def pools(work: Path, seed: int) -> dict[str, tuple[Path, set[str]]]:
    """name -> (data file, sample ids of its swapped rows)."""
    from delift_ray.data import normalise_text, sample_id

    def ids(rows, idx):
        return {sample_id(normalise_text(rows[i]["prompt"]), normalise_text(rows[i]["response"])) for i in idx}

    study = work / "sharegpt"
    meta = prepare_data(study, 240, 400, 128, 0.5, seed)
    out = {
        "sharegpt-clean": (study / "pool.jsonl", set()),
        "sharegpt-noisy": (study / "noisy_pool.jsonl", set(meta["swapped_ids"])),
    }
    qa = [json.loads(x) for x in (ROOT / "benchmarks" / "data" / "factoid_qa.jsonl").read_text().splitlines()]
    noisy, swapped = swap_half(qa, seed + 7)
    out["qa-clean"] = (write_jsonl(work / "qa_clean.jsonl", qa), set())
    out["qa-noisy"] = (write_jsonl(work / "qa_noisy.jsonl", noisy), ids(noisy, swapped))
    return out


def measure_pool(name: str, data: Path, swapped: set[str], args, work: Path, meta: dict) -> dict:
    import pyarrow.parquet as pq

    from delift_ray.evaluate.inputs import load_run
    from delift_ray.rundir import read_run_document

    rows = {}
    t0 = time.perf_counter()
    for budget in BUDGETS:
        tag = f"b{int(round(budget * 100)):02d}"
        for arm, extra in (("default", ()), ("gate", ("--selection.noise-gate", "contrastive"))):
            out = work / "runs" / f"{name}-{tag}-{arm}"
            if not (out / "run.json").exists():  # a finished run dir is read, not re-run (its timings stay)
                select_run(out, data, budget, args, meta, *extra, diagonal="drop")
            run = load_run(out)
            ids = run.pool.sample_ids
            picks = [ids[i] for i in run.selected]
            half = picks[: max(1, len(picks) // 2)]
            row = {
                "k": len(picks),
                "swapped_share": round(float(np.mean([s in swapped for s in picks])), 4),
                "swapped_share_first_half": round(float(np.mean([s in swapped for s in half])), 4),
            }
            if arm == "gate":
                counts = read_run_document(str(out)).counts
                samples = pq.read_table(out / "samples.parquet").to_pylist()
                pool = [x for x in samples if x["set"] == "pool"]
                gain = np.array([x["gate_gain"] for x in pool])
                is_sw = np.array([x["sample_id"] in swapped for x in pool])
                excluded = np.array([x["status"] == "excluded_noise_gate" for x in pool])
                row.update(
                    excluded=counts["excluded_noise_gate"],
                    untested=counts["untested_noise_gate"],
                    null_share=counts["noise_gate_null_share"],
                    kept=int((~excluded).sum()),
                    kept_swapped_share=round(float(is_sw[~excluded].mean()), 4) if (~excluded).any() else None,
                    intact_excluded_share=round(float(excluded[~is_sw].mean()), 4),
                    baselines_scored=counts["baselines_scored"],
                    score_s=read_run_document(str(out)).timings.get("score_s", 0.0),
                    # The swapped samples the gate let through, by contrastive gain.
                    kept_swapped=[
                        {
                            "gain": round(float(x["gate_gain"]), 4),
                            "prompt": x["prompt"][:80],
                            "response": x["response"][:80],
                        }
                        for x in sorted(pool, key=lambda x: -x["gate_gain"])
                        if x["sample_id"] in swapped and x["status"] == "ok"
                    ][:6],
                )
                if is_sw.any():
                    row["gain_auroc"] = round(auroc(-gain, is_sw), 4)
            rows[f"{tag}-{arm}"] = row
            log(f"{name} {tag} {arm}: {row}")
    return {
        "n": len(load_run(work / "runs" / f"{name}-b05-default").pool),
        "swapped": len(swapped),
        "wall_s": round(time.perf_counter() - t0, 1),
        "budgets": rows,
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def markdown(doc: dict) -> str:
    """The generated block of docs/noise-gate.md: one row per pool and budget."""
    res = doc["results"]
    rule = res["rule"]
    lines = [
        f"Measured {doc['date'][:10]} on {doc['machine'].get('cpu')} ({doc['machine'].get('cpus')} cores, "
        f"{', '.join(doc['machine'].get('cpu_flags') or []) or 'no listed CPU flags'}), "
        f"`{doc['command']}`; scoring dtype {res['score_dtype']}, kernel {rule['kernel']}, gate: "
        f"{rule['gate_prompts']} mismatched prompts, fdr {rule['gate_fdr']}.",
        "",
        "| pool | budget | default: swapped (first half) | gate: picks | gate: swapped (first half) "
        "| gate kept / excluded | swapped among kept | intact excluded | gain AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pool in res["pools"].items():
        for b in BUDGETS:
            tag = f"b{int(round(b * 100)):02d}"
            d, g = pool["budgets"][f"{tag}-default"], pool["budgets"][f"{tag}-gate"]
            lines.append(
                f"| {name} ({pool['n']}, {pool['swapped']} swapped) | {b:.0%} ({d['k']}) "
                f"| {_pct(d['swapped_share'])} ({_pct(d['swapped_share_first_half'])}) | {g['k']} "
                f"| {_pct(g['swapped_share'])} ({_pct(g['swapped_share_first_half'])}) "
                f"| {g['kept']} / {g['excluded']} | {_pct(g['kept_swapped_share'])} "
                f"| {_pct(g['intact_excluded_share'])} | {g.get('gain_auroc', 'n/a')} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "noise_gate"))
    p.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "quality" / "cache"))
    p.add_argument("--pools", default="qa-noisy,qa-clean,sharegpt-noisy,sharegpt-clean")
    p.add_argument("--score-dtype", default="float32", help="engine.dtype (the study's pools were scored in float32).")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--score-attempts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from delift_ray import assets

    meta = {"model": str(assets.demo_model_dir())}
    path = ROOT / "benchmarks" / "results" / f"{RESULT}.json"
    done = json.loads(path.read_text())["results"] if path.exists() else {"pools": {}}
    done.setdefault("pools", {})
    done["rule"] = {"gate_prompts": 4, "gate_fdr": 0.05, "storey_lambda": 0.5, "kernel": "drop-minmax"}
    done["score_dtype"] = args.score_dtype
    available = pools(work, args.seed)
    for name in args.pools.split(","):
        if name in done["pools"]:
            log(f"{name}: stored, skipped")
            continue
        data, swapped = available[name]
        done["pools"][name] = measure_pool(name, data, swapped, args, work, meta)
        write_result(RESULT, done)  # each pool is kept as it finishes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
