"""Does ``selection.noise_gate: contrastive`` keep swapped (wrong) responses out of the subset?

For each pool and arm, one ``delift-ray select`` (dense, the default kernel drop-minmax, the
CLI users run) at a 30% budget; the 5% and 15% subsets are its first picks (the greedy's
picks do not depend on its budget). One content-keyed cache: the utilities are scored
once, the gate's mismatched baselines once per pool and donor rule. Pools, three families,
each clean and with a seeded half of the responses swapped among themselves (a
derangement):

* ``sharegpt``: the quality study's 240-sample pools (benchmarks/quality_study.py; their
  utilities are in its committed cache, scored in float32);
* ``qa``: the 48 short factoid QA items of benchmarks/data/factoid_qa.jsonl;
* ``trivia``: 96 short-answer trivia items, a seeded draw from the 260 of the
  ``chatterbot-corpus`` package (BSD, ``data/english/trivia.yml``).

Arms: ``default`` (no gate), ``gate`` (random donors, ``selection.gate_donors: random``)
and ``gate-similar`` (``selection.gate_donors: similar``). Where the gate is on, its
excluded samples leave the objective (neither picked nor covered).

Which pools informed which design, stated so that no figure is read as held out when it
was not: the contrastive rule (4 donors, fdr 0.05, Storey lambda 0.5) was fixed before any
pool was scored with it. Taking excluded samples out of the objective, and similar donors,
were designed after reading the random-donor gate's picks on qa-noisy. The trivia pools
were first scored after both were fixed.

Reported per pool and budget: picks, share of swapped samples among all picks and among
the first half of them; the gate's exclusions, its estimated null share and, on noisy
pools, the AUROC of the contrastive gain as a detector of swapped samples; on clean
pools, the share of intact samples the gate excluded.

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
from benchmarks.quality_study import JobStopped, prepare_data, select_run
from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parent.parent

BUDGETS = (0.05, 0.15, 0.30)
RESULT = "noise_gate"
NOTHING_KEPT = "the noise gate excluded all"  # the job's one-line stop when the gate keeps no sample
GATE = ("--selection.noise-gate", "contrastive")
ARMS = (
    ("default", ()),
    ("gate", (*GATE, "--selection.gate-donors", "random")),
    ("gate-similar", (*GATE, "--selection.gate-donors", "similar")),
)


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
    trivia = trivia_rows(TRIVIA_POOL, seed)
    noisy, swapped = swap_half(trivia, seed + 11)
    out["trivia-clean"] = (write_jsonl(work / "trivia_clean.jsonl", trivia), set())
    out["trivia-noisy"] = (write_jsonl(work / "trivia_noisy.jsonl", noisy), ids(noisy, swapped))
    return out


TRIVIA_POOL = 96


def trivia_rows(n: int, seed: int) -> list[dict]:
    """A seeded draw of ``n`` question/answer pairs from chatterbot-corpus's English trivia, in file order."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the trivia pools need the chatterbot-corpus package: pip install -e '.[demo]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "english" / "trivia.yml"
    pairs = [c for c in yaml.safe_load(path.read_text())["conversations"] if len(c) >= 2]
    rows = [{"prompt": str(c[0]).strip(), "response": str(c[1]).strip()} for c in pairs]
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def measure_pool(name: str, data: Path, swapped: set[str], args, work: Path, meta: dict) -> dict:
    import pyarrow.parquet as pq

    from delift_ray.evaluate.inputs import load_run
    from delift_ray.rundir import read_run_document

    rows = {}
    t0 = time.perf_counter()
    n = sum(1 for line in data.read_text().splitlines() if line.strip())
    for arm, extra in ARMS:
        # One run at the largest budget: the greedy's picks do not depend on its budget, so
        # each smaller budget's subset is the first picks of this one.
        out = work / "runs" / f"{name}-{arm}"
        if not (out / "run.json").exists():  # a finished run dir is read, not re-run (its timings stay)
            try:
                select_run(out, data, max(BUDGETS), args, meta, *extra, diagonal="drop", final=NOTHING_KEPT)
            except JobStopped as stop:  # a measured outcome: the subset is empty at every budget
                for budget in BUDGETS:
                    tag = f"b{int(round(budget * 100)):02d}"
                    rows[f"{tag}-{arm}"] = {
                        "k": 0,
                        "budget_k": max(1, int(round(budget * n))),
                        "stopped": str(stop),
                        "kept": 0,
                        "excluded": n,
                        "kept_swapped_share": None,
                        "intact_excluded_share": 1.0,
                    }
                log(f"{name} {arm}: {stop}")
                continue
        run = load_run(out)
        ids = run.pool.sample_ids
        for budget in BUDGETS:
            tag = f"b{int(round(budget * 100)):02d}"
            budget_k = max(1, int(round(budget * len(ids))))
            picks = [ids[i] for i in run.selected[:budget_k]]
            half = picks[: max(1, len(picks) // 2)]
            row = {
                "k": len(picks),
                "budget_k": budget_k,
                "swapped_share": round(float(np.mean([s in swapped for s in picks])), 4),
                "swapped_share_first_half": round(float(np.mean([s in swapped for s in half])), 4),
            }
            if arm != "default":
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
        "n": len(load_run(work / "runs" / f"{name}-default").pool),
        "rows": n,
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
        f"{rule['gate_prompts']} mismatched prompts, fdr {rule['gate_fdr']}; excluded samples leave the objective.",
        "",
        "| pool | budget | default: swapped (first half) | gate, random donors: swapped (first half) "
        "| gate, similar donors: swapped (first half) | similar: kept / excluded | similar: swapped among kept "
        "| similar: intact excluded | gain AUROC, random / similar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pool in res["pools"].items():
        for b in BUDGETS:
            tag = f"b{int(round(b * 100)):02d}"
            d, g, s = (pool["budgets"][f"{tag}-{arm}"] for arm, _ in ARMS)
            lines.append(
                f"| {name} ({pool['n']}, {pool['swapped']} swapped) | {b:.0%} ({d['k']}) "
                f"| {_share(d)} | {_share(g)} | {_share(s)} "
                f"| {s['kept']} / {s['excluded']} | {_pct(s['kept_swapped_share'])} "
                f"| {_pct(s['intact_excluded_share'])} | {g.get('gain_auroc', 'n/a')} / {s.get('gain_auroc', 'n/a')} |"
            )
    return "\n".join(lines)


def _share(row: dict) -> str:
    if row.get("stopped"):
        return "none kept: the job stops"
    short = f", {row['k']} picks" if "kept" in row and row["k"] < row.get("budget_k", row["k"]) else ""
    return f"{_pct(row['swapped_share'])} ({_pct(row['swapped_share_first_half'])}){short}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "noise_gate"))
    p.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "quality" / "cache"))
    p.add_argument("--pools", default="qa-noisy,qa-clean,trivia-noisy,trivia-clean,sharegpt-noisy,sharegpt-clean")
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
    rule = {
        "gate_prompts": 4,
        "gate_fdr": 0.05,
        "storey_lambda": 0.5,
        "kernel": "drop-minmax",
        "arms": [arm for arm, _ in ARMS],
        "excluded_leave_objective": True,
    }
    done = json.loads(path.read_text())["results"] if path.exists() else {}
    if done.get("rule") != rule:  # pools measured under another rule or other arms are measured again
        done = {"pools": {}}
    done["rule"] = rule
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
