"""Does the DELIFT subset beat random?  The quality study of issue 15, resumable.

Data: the demo model (SmolLM2-135M-Instruct, delift_ray.assets) on real ShareGPT first turns:
a pool of N_POOL samples scored densely and N_EVAL held-out samples, disjoint; plus a noisy
copy of the pool where half of the samples (chosen with a seed) have their responses swapped
among themselves (a derangement), scored into the same content-keyed cache (pairs of two
unchanged samples are reused).

Units, in the order they run (most informative first); each is stored as JSON under
``--results``/units as soon as it ends, and a re-run skips every unit already stored:

1. ``score-clean``: ``delift-ray select`` on the clean pool (dense kernel, the CLI users run);
2. ``eval-initial``: held-out NLL of the untuned model;
3. ``selections-clean``: every arm's subset at every budget, stored before any training;
4. the clean pool's DELIFT kernel-variant units at every budget (the kernel rule compares only
   them), then per budget (15%, then 5%) the random subsets, the baselines (self_utility,
   hardness, example_utility) and the job's keep-minmax selection with
   ``selection.min_prompt_gain`` (``--min-prompt-gain``, a ``delift-ray select`` run over the
   same cache); the 5% budget makes the pool's verdicts final;
5. ``score-noisy``, ``selections-noisy`` (each arm's share of swapped samples, no training
   needed) and ``selections-noisy-default-mpg`` (the config's default kernel with
   ``selection.min_prompt_gain``, selection only), then the noisy pool the same way.

A training unit fine-tunes the demo model with LoRA (delift_ray.evaluate.training.fine_tune,
the same function ``delift-ray evaluate`` uses) for the same number of optimiser steps at
every arm and budget, and stores the per-item held-out response NLL (the primary metric,
delift_ray.evaluate.metrics.response_nll). Deterministic arms train with ``--train-seeds``
seeds; random subset r is drawn and trained with seed r.

After every unit the summary (delift_ray.evaluate.statistics: rank p, effect size,
hierarchical bootstrap interval, Holm, verdicts) is rewritten to
benchmarks/results/quality_study.json and docs/quality.md (``--report`` does only that).

    OMP_WAIT_POLICY=PASSIVE setsid nice -n 19 .venv/bin/python -m benchmarks.quality_study \\
        > /work/notes/study.log 2>&1 &
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
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from benchmarks.results import write_result
from delift_ray.evaluate.arms import BASELINE_ARMS  # delift-ray evaluate's baselines
from delift_ray.evaluate.metrics import mismatched_responses
from delift_ray.rundir import read_run_document

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = "keep-minmax,drop-minmax,drop-clip"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# --------------------------------------------------------------------------- data


def prepare_data(work: Path, n_pool: int, n_eval: int, max_tokens: int, noise_share: float, seed: int) -> dict:
    """pool.jsonl, heldout.jsonl and noisy_pool.jsonl under ``work`` (deterministic)."""
    meta_path = work / "data.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    from transformers import AutoTokenizer

    from delift_ray import assets
    from delift_ray.data import sample_id

    model = assets.demo_model_dir()
    tok = AutoTokenizer.from_pretrained(model)
    work.mkdir(parents=True, exist_ok=True)
    both = assets.write_demo_dataset(
        work / "all.jsonl", n=n_pool + n_eval, tokenizer=tok, max_tokens=max_tokens, seed=seed, pool_factor=3
    )
    rows = [json.loads(x) for x in both.read_text().splitlines()]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    pool = [rows[i] for i in sorted(order[:n_pool])]
    held = [rows[i] for i in sorted(order[n_pool : n_pool + n_eval])]
    # Noisy pool: the responses of a seeded half are rotated among themselves (a derangement).
    swapped = sorted(random.Random(seed + 1).sample(range(n_pool), int(round(noise_share * n_pool))))
    noisy = [dict(r) for r in pool]
    for a, b in zip(swapped, swapped[1:] + swapped[:1]):
        noisy[a]["response"] = pool[b]["response"]

    def write(name, items):
        (work / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))

    write("pool.jsonl", pool)
    write("heldout.jsonl", held)
    write("noisy_pool.jsonl", noisy)
    meta = {
        "model": str(model),
        "n_pool": len(pool),
        "n_eval": len(held),
        "max_tokens": max_tokens,
        "swapped_rows": swapped,
        "swapped_ids": [sample_id(noisy[i]["prompt"], noisy[i]["response"]) for i in swapped],
        "seed": seed,
    }
    meta_path.write_text(json.dumps(meta))
    return meta


# --------------------------------------------------------------------------- units


class Units:
    """Finished units as JSON files (benchmarks/results.py format); a stored unit is skipped."""

    def __init__(self, root: Path):
        self.dir = root / "units"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> dict:
        return json.loads(self.path(name).read_text())["results"]

    def save(self, name: str, results: dict) -> None:
        write_result(name, results, out_dir=self.dir)

    def all(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.dir.glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
        return out


class JobStopped(Exception):
    """``delift-ray select`` stopped with a message that a retry cannot change."""


def select_run(
    out: Path, data: Path, budget: float, args, meta: dict, *extra: str, diagonal: str = "keep", final: str = ""
) -> dict:
    """``delift-ray select`` (dense, the CLI users run) into ``out``; returns its run.json (:class:`delift_ray.rundir.RunDocument`).

    ``diagonal`` keep: keep-minmax, the default when the study ran (the scoring runs and the
    min-prompt-gain arm were made with it, and their run dirs must resume as they were)."""
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
        str(out),
        "--cache",
        args.cache,
        "--stage",
        "instruction",
        "--budget",
        str(budget),
        "--engine.dtype",
        args.score_dtype,
        "--engine.max-model-len",
        "512",
        "--engine.max-num-batched-tokens",
        "4096",
        "--engine.kv-cache-space-gib",
        "1",
        "--scoring.block-size",
        str(args.block_size),
        "--kernel.diagonal",
        diagonal,
        *extra,
    ]
    log(f"{out.name}: delift-ray {' '.join(cmd[3:])}")
    # A re-run resumes from the stored shards. On a loaded machine at nice 19 the embedded
    # Ray node can miss its fixed 30 s start-up window, so a failed attempt is retried.
    for attempt in range(1, args.score_attempts + 1):
        done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(done.stderr)
        if done.returncode == 0:
            break
        if final and final in done.stderr:  # e.g. the noise gate kept no sample: not worth a retry
            raise JobStopped(next(line for line in done.stderr.splitlines() if final in line).strip())
        if attempt == args.score_attempts:
            raise SystemExit(f"{out.name}: delift-ray select failed {attempt} times; re-run to resume")
        log(f"{out.name}: attempt {attempt} failed; retrying in 60 s (stored shards are kept)")
        time.sleep(60)
    return read_run_document(str(out))


def score_unit(units: Units, name: str, args, work: Path, data: Path, meta: dict) -> None:
    """The pool's dense utilities (``delift-ray select``), also stored as .npz."""
    out = work / name
    stored = units.dir.parent / f"{name}_utilities.npz"
    if units.done(name) and (out / "run.json").exists():
        return
    from delift_ray.evaluate.arms import baseline_distances, raw_matrix, run_store
    from delift_ray.evaluate.inputs import load_run

    t0 = time.time()
    run_json = select_run(out, data, 0.15, args, meta)
    wall = time.time() - t0
    run = load_run(out)
    store = run_store(run)
    K = raw_matrix(run, "pool", "pool", store)
    d = baseline_distances(run, store)
    if units.done(name):
        # The run dir is not committed (a fresh machine has none): rebuilt from the committed
        # cache, it must reproduce the stored utilities exactly, and the unit keeps its timings.
        with np.load(stored) as z:
            same = (
                list(z["ids"]) == run.pool.sample_ids
                and np.array_equal(z["uf"], K, equal_nan=True)
                and np.array_equal(z["d_base"], d, equal_nan=True)
            )
        if not same:
            raise SystemExit(f"{out}: rebuilt from the cache, its utilities differ from {stored.name}")
        log(f"{name}: run dir rebuilt from the cache in {wall:.0f} s; utilities identical to {stored.name}")
        return
    np.savez_compressed(stored, ids=np.array(run.pool.sample_ids), uf=K, d_base=d)
    units.save(
        name,
        {
            "counts": run_json.counts,
            "timings": run_json.timings,
            "wall_s": round(wall, 1),
            "n_pool": len(run.pool),
            "run_dir": str(out),
        },
    )
    log(f"{name}: done in {wall:.0f} s ({run_json.timings.get('pairs_per_s')} pairs/s)")


def prompt_gain_subset(pool: str, budget: float, args, work: Path, meta: dict, pool_ids: list[str]) -> list[int]:
    """The job's own selection with ``selection.min_prompt_gain`` (pool indices, pick order).

    A run over the scoring run's cache: only the pool's prompt-free baselines are new.
    """
    from delift_ray.evaluate.inputs import load_run

    out = work / f"select-{pool}-b{int(round(budget * 100)):02d}-mpg{args.min_prompt_gain:g}"
    if not (out / "run.json").exists():
        data = work / ("pool.jsonl" if pool == "clean" else "noisy_pool.jsonl")
        select_run(out, data, budget, args, meta, f"--selection.min-prompt-gain={args.min_prompt_gain}")
    run = load_run(out)
    if run.pool.sample_ids != pool_ids:
        raise SystemExit(f"{out}: its pool is not the scoring run's pool")
    return run.selected


# ``delift-ray select`` with a longer Ray start-up window. Ray 2.60 gives a new local node 30 s
# (hard-coded) to register with its GCS; on a 2-core machine at load 20+ and nice 19 it often
# misses that. The node's loop polls ``services.get_node`` and gives up only after an error, so
# retrying inside it for up to 10 minutes widens the window; nothing else changes.
PATIENT_RAY_CLI = """
import sys, time
import ray._private.services as services
_get_node = services.get_node
def patient_get_node(*a, **k):
    deadline = time.monotonic() + 600
    while True:
        try:
            return _get_node(*a, **k)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
services.get_node = patient_get_node
from delift_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Trainer:
    """Fine-tune + held-out NLL and margin (NLL of a mismatched response minus NLL of the right
    one, ``delift_ray.evaluate.metrics.mismatched_responses``), with the evaluate module's own functions."""

    def __init__(self, args, meta: dict, work: Path):
        import torch

        from delift_ray.evaluate.formatting import PromptEncoder
        from delift_ray.evaluate.inputs import load_eval_data
        from delift_ray.evaluate.training import TrainSettings, load_tokenizer, resolve_dtype

        torch.set_num_threads(args.threads)
        self.args = args
        self.model = meta["model"]
        self.tok = load_tokenizer(self.model)
        self.enc = PromptEncoder(self.tok, args.max_length)
        self.dtype = resolve_dtype(args.dtype, "cpu")
        ev = load_eval_data(work / "heldout.jsonl")
        self.eval_items = [self.enc.pair(p, r) for p, r in zip(ev.prompts, ev.responses)]
        wrong = mismatched_responses(ev.sample_ids, ev.responses)
        self.wrong_items = [self.enc.pair(p, r) for p, r in zip(ev.prompts, wrong)]
        self.settings = TrainSettings(
            epochs=1, steps=args.steps, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length
        )

    def nll(self, model, items=None) -> np.ndarray:
        from delift_ray.evaluate.metrics import response_nll

        items = self.eval_items if items is None else items
        return response_nll(model, items, pad_id=self.tok.pad_token_id, batch_size=self.args.eval_batch_size)

    def scores(self, model) -> dict:
        """Held-out NLL and margin per item, with their means."""
        nll = self.nll(model)
        if self.args.no_margin:
            return {"nll": nll.tolist(), "nll_mean": float(nll.mean())}
        margin = self.nll(model, self.wrong_items) - nll
        return {
            "nll": nll.tolist(),
            "nll_mean": float(nll.mean()),
            "margin": margin.tolist(),
            "margin_mean": float(margin.mean()),
        }

    def initial(self) -> dict:
        from delift_ray.evaluate.training import load_model

        t0 = time.time()
        m = load_model(self.model, dtype=self.dtype, device="cpu")
        return {**self.scores(m), "wall_s": round(time.time() - t0, 1)}

    def train_eval(self, pairs: list[tuple[str, str]], seed: int) -> dict:
        from delift_ray.evaluate.training import fine_tune

        t0 = time.time()
        items = [self.enc.pair(p, r, add_eos=True) for p, r in pairs]
        model, stats = fine_tune(
            self.model,
            items,
            self.settings,
            seed=seed,
            pad_id=self.tok.pad_token_id,
            dtype=self.dtype,
            device="cpu",
            progress=False,
        )
        t1 = time.time()
        scores = self.scores(model)
        del model
        return {
            **scores,
            "train": stats.to_dict(),
            "train_s": round(t1 - t0, 1),
            "eval_s": round(time.time() - t1, 1),
            "wall_s": round(time.time() - t0, 1),
        }


def random_subset(n: int, k: int, r: int) -> list[int]:
    return sorted(int(i) for i in np.random.default_rng(r).choice(n, size=k, replace=False))


def prompt_gain_arm(args) -> Optional[str]:
    return None if args.min_prompt_gain is None else f"delift:min-prompt-gain-{args.min_prompt_gain:g}"


def plan_arms(pool: str, budget: float, args) -> list[tuple[str, int]]:
    """(arm, seed) in run order: variants and random interleaved, then the baselines, then
    the keep-minmax kernel (the default when the study ran) with ``selection.min_prompt_gain``."""
    variants = [f"delift:{v}" for v in args.variants.split(",") if v]
    seeds = list(range(args.train_seeds))
    R = args.randoms
    chunks = np.array_split(np.arange(R), len(seeds))
    order: list[tuple[str, int]] = []
    for s, chunk in zip(seeds, chunks):
        order += [(v, s) for v in variants] + [("random", int(r)) for r in chunk]
    order += [(b, s) for s in seeds for b in BASELINE_ARMS]
    if prompt_gain_arm(args):
        order += [(prompt_gain_arm(args), s) for s in seeds]
    return order


def baseline_subsets(run, k: int, names) -> dict[str, list[int]]:
    """Each baseline's subset where the run's shards can rank it; one they cannot (``ifd``
    without the prompt-free baselines) is left out with a log line, and its units are skipped."""
    from delift_ray.errors import DeliftError
    from delift_ray.evaluate.arms import arm_subsets

    out: dict[str, list[int]] = {}
    for name in names:
        try:
            out |= arm_subsets(run, k, [], (name,))
        except DeliftError as exc:
            log(f"baseline {name} left out: {exc}")
    return out


def unit_name(pool: str, budget: float, arm: str, seed: int) -> str:
    return f"train-{pool}-b{int(round(budget * 100)):02d}-{arm.replace(':', '_')}-s{seed}"


def swapped_share(ids: list[str], idx: list[int], swapped: set[str]) -> float:
    """The share of a subset's samples whose responses were swapped (noisy pool)."""
    return sum(ids[i] in swapped for i in idx) / len(idx)


def selections_unit(units: Units, pool: str, args, work: Path, meta: dict, budgets: list[float]) -> dict:
    """``selections-<pool>``: every arm's subset at every budget, stored before any training.

    The training units train exactly these subsets. On the noisy pool each arm's share of
    swapped samples is known here already, with no training (random: the shares of the
    ``--randoms`` subsets the random units train).
    """
    name = f"selections-{pool}"
    stored = units.load(name) if units.done(name) else None
    complete = stored and all(f"{b:g}" in stored["budgets"] for b in budgets)
    if complete and all(a in v["arms"] for v in stored["budgets"].values() for a in BASELINE_ARMS):
        return stored
    from delift_ray.evaluate.arms import arm_subsets, parse_variants
    from delift_ray.evaluate.inputs import load_run

    run = load_run(work / f"score-{pool}")
    n = len(run.pool)
    swapped = set(meta["swapped_ids"]) if pool == "noisy" else set()

    def share(idx):
        return swapped_share(run.pool.sample_ids, idx, swapped) if pool == "noisy" else None

    if complete:
        # A baseline joined the design after these subsets were stored: add it, keep the rest as stored.
        for v in stored["budgets"].values():
            new = baseline_subsets(run, v["k"], [a for a in BASELINE_ARMS if a not in v["arms"]])
            v["arms"].update(new)
            v["swapped_share"].update({a: share(idx) for a, idx in new.items()})
        units.save(name, stored)
        log(f"{name}: added the missing baselines to the stored subsets")
        return stored

    out: dict = {"pool": pool, "n": n, "sample_ids": run.pool.sample_ids, "budgets": {}}
    for budget in budgets:
        k = max(1, int(round(budget * n)))
        arms = arm_subsets(run, k, parse_variants(args.variants), ()) | baseline_subsets(run, k, BASELINE_ARMS)
        if prompt_gain_arm(args):
            arms[prompt_gain_arm(args)] = prompt_gain_subset(pool, budget, args, work, meta, run.pool.sample_ids)
        short = {a: len(idx) for a, idx in arms.items() if len(idx) != k}
        if short:  # every arm of a budget must train on the same number of samples
            raise SystemExit(f"{name}: budget {budget:g} wants {k} samples per arm; got {short}")
        randoms = [random_subset(n, k, r) for r in range(args.randoms)]
        out["budgets"][f"{budget:g}"] = {
            "k": k,
            "arms": arms,
            "swapped_share": {a: share(idx) for a, idx in arms.items()},
            "random_swapped_share": [share(idx) for idx in randoms] if pool == "noisy" else None,
        }
    units.save(name, out)
    log(f"{name}: stored the subsets of {len(out['budgets'])} budget(s)")
    write_summary(units, args, meta)
    return out


def default_prompt_gain_unit(units: Units, args, work: Path, meta: dict, budgets: list[float]) -> None:
    """``selections-noisy-default-mpg``: on the noisy pool, the job's selection with today's
    default kernel (drop-minmax) and ``selection.min_prompt_gain``, and its share of swapped
    samples at each budget. Selection only, never trained: it was added after the default
    changed, when the trained design and its Holm family were fixed and partly seen."""
    name = "selections-noisy-default-mpg"
    if units.done(name) or args.min_prompt_gain is None:
        return
    from benchmarks.quality_report import config_default_options
    from delift_ray.evaluate.inputs import load_run

    default = config_default_options()
    ids = load_run(work / "score-noisy").pool.sample_ids
    swapped = set(meta["swapped_ids"])
    res: dict = {
        "kernel": f"{default['diagonal']}-{default['scaling']}",
        "min_prompt_gain": args.min_prompt_gain,
        "budgets": {},
    }
    for budget in budgets:
        out = work / f"select-noisy-b{int(round(budget * 100)):02d}-mpg{args.min_prompt_gain:g}-{res['kernel']}"
        if not (out / "run.json").exists():
            select_run(
                out,
                work / "noisy_pool.jsonl",
                budget,
                args,
                meta,
                f"--selection.min-prompt-gain={args.min_prompt_gain}",
                diagonal=default["diagonal"],
            )
        run = load_run(out)
        if (
            run.pool.sample_ids != ids
            or {f: run.config["kernel"][f] for f in default} != default
            or run.config["selection"]["min_prompt_gain"] != args.min_prompt_gain
        ):
            raise SystemExit(f"{out}: not the noisy pool's run with the default kernel and min_prompt_gain")
        res["budgets"][f"{budget:g}"] = {
            "k": len(run.selected),
            "subset": run.selected,
            "excluded": run.doc.counts["excluded_low_prompt_gain"],
            "swapped_share": swapped_share(ids, run.selected, swapped),
        }
    units.save(name, res)
    log(
        f"{name}: swapped share "
        + ", ".join(f"{100 * v['swapped_share']:.0f}% at {b}" for b, v in res["budgets"].items())
    )


def run_pool(
    units: Units,
    trainer,
    pool: str,
    args,
    work: Path,
    meta: dict,
    selections: dict,
    budget: float,
    only: Optional[set[str]] = None,
) -> None:
    """Train and evaluate every (arm, seed) of one pool and budget not stored yet (of ``only``'s arms, if given)."""
    from delift_ray.evaluate.inputs import load_run

    run = load_run(work / f"score-{pool}")
    ids = run.pool.sample_ids
    if ids != selections["sample_ids"]:
        raise SystemExit(f"selections-{pool} was stored for another pool; remove it to recompute")
    sel = selections["budgets"][f"{budget:g}"]
    k, n = sel["k"], len(ids)
    swapped = set(meta["swapped_ids"]) if pool == "noisy" else set()
    for arm, seed in plan_arms(pool, budget, args):
        name = unit_name(pool, budget, arm, seed)
        if units.done(name) or (only is not None and arm not in only) or (arm != "random" and arm not in sel["arms"]):
            continue
        # Sorted: a training run is a function of the subset as a set and the seed, not of the
        # greedy pick order, so two arms that pick the same set train the same model.
        idx = random_subset(n, k, seed) if arm == "random" else sorted(sel["arms"][arm])
        twin = trained_twin(units, pool, budget, seed, idx, train_settings(args))
        if twin:
            res = {key: v for key, v in units.load(twin).items() if key in TWIN_KEYS}
            res["same_subset_as"] = twin
        else:
            res = trainer.train_eval(run.pool.pairs(idx), seed)
            res.update(settings=train_settings(args), load_avg_1m=round(os.getloadavg()[0], 2))
        res.update(
            {
                "pool": pool,
                "budget": budget,
                "k": k,
                "arm": arm,
                "seed": seed,
                "subset": idx,
                "swapped_share": swapped_share(ids, idx, swapped) if pool == "noisy" else None,
            }
        )
        units.save(name, res)
        how = (
            f"same subset and seed as {twin}, not retrained"
            if twin
            else f"train {res['train_s']} s, eval {res['eval_s']} s"
        )
        log(f"{name}: NLL {res['nll_mean']:.4f} ({how})")
        write_summary(units, args, meta)


def recheck_unit(units: Units, trainer, name: str, work: Path) -> dict:
    """``recheck-<name>``: train a stored unit's subset with its seed again and compare the
    held-out NLLs item by item. Identical NLLs show that a unit is a function of (subset, seed)
    alone in this environment, which is what lets an arm with a trained twin skip training."""
    from delift_ray.evaluate.inputs import load_run

    if not name.startswith("train-") or not units.done(name):
        raise SystemExit(f"--recheck wants a stored training unit; {name!r} is not one")
    stored = units.load(name)
    if "same_subset_as" in stored:
        raise SystemExit(f"{name} was not trained (same subset as {stored['same_subset_as']}); recheck that unit")
    if stored.get("settings") not in (None, train_settings(trainer.args)):
        raise SystemExit(f"{name} was trained with {stored['settings']}; pass the same settings to recheck it")
    run = load_run(work / f"score-{stored['pool']}")
    res = trainer.train_eval(run.pool.pairs(stored["subset"]), stored["seed"])
    diff = np.abs(np.array(res["nll"]) - np.array(stored["nll"]))
    out = {
        "unit": name,
        "items": int(diff.size),
        "max_abs_diff": float(diff.max()),
        "identical": bool(diff.max() == 0),
        "settings": train_settings(trainer.args),
        "stored_settings": stored.get("settings"),
        "nll_mean": res["nll_mean"],
        "stored_nll_mean": stored["nll_mean"],
        "wall_s": res["wall_s"],
    }
    units.save(f"recheck-{name}", out)
    log(f"recheck-{name}: max |NLL difference| {out['max_abs_diff']:.3g} over {out['items']} items")
    return out


# A twin's unit carries the trained model's measurements, not its own compute.
TWIN_KEYS = ("nll", "nll_mean", "margin", "margin_mean", "train", "settings")


def train_settings(args) -> dict:
    """What, besides the subset and the seed, a training unit's NLLs depend on."""
    return {
        k: getattr(args, k) for k in ("steps", "batch_size", "lr", "max_length", "dtype", "eval_batch_size", "threads")
    }


def trained_twin(
    units: Units, pool: str, budget: float, seed: int, idx: list[int], settings: dict, prefixes=("train-",)
) -> Optional[str]:
    """A stored, actually trained unit (named with one of ``prefixes``) of this pool, budget and
    seed with the same subset and training settings (a unit that recorded no settings is never a twin)."""
    for name, doc in units.all().items():
        res = doc.get("results", {})
        if (
            name.startswith(tuple(prefixes))
            and res.get("pool") == pool
            and res.get("budget") == budget
            and res.get("seed") == seed
            and res.get("subset") == idx
            and "same_subset_as" not in res
            and res.get("settings") == settings
        ):
            return name
    return None


def planned_units(args) -> dict[str, list[str]]:
    """Pool -> the names of its training units in the design (both budgets)."""
    pools = ["clean"] + ([] if args.no_noisy else ["noisy"])
    return {
        pool: [
            unit_name(pool, float(b), arm, seed)
            for b in args.budgets.split(",")
            for arm, seed in plan_arms(pool, float(b), args)
        ]
        for pool in pools
    }


# --------------------------------------------------------------------------- summary


def total_units(args) -> int:
    training = sum(len(names) for names in planned_units(args).values())
    return 2 + 2 + 1 + training  # scoring, selections, eval-initial, training


def write_summary(units: Units, args, meta: dict) -> dict:
    """benchmarks/results/quality_study.json and docs/quality.md from the stored units."""
    from benchmarks.quality_report import summarise, write_docs

    summary = summarise(units.all(), args=vars(args), meta=meta, total=total_units(args), planned=planned_units(args))
    write_result("quality_study", summary, command="python -m benchmarks.quality_study " + " ".join(sys.argv[1:]))
    write_docs(summary, ROOT / "docs")
    return summary


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--work", default=str(ROOT / "runs" / "quality_study"), help="Run dirs and the shard cache (not committed)."
    )
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "quality"), help="Unit JSON (committed).")
    p.add_argument(
        "--cache",
        default=str(ROOT / "benchmarks" / "results" / "quality" / "cache"),
        help="The scoring runs' shard cache. Committed, so scoring resumes on another machine "
        "(a few MB: one small Parquet file per block).",
    )
    p.add_argument("--n-pool", type=int, default=240)
    p.add_argument("--n-eval", type=int, default=400)
    p.add_argument("--max-tokens", type=int, default=128, help="Longest prompt+response of a sample (tokens).")
    p.add_argument("--noise-share", type=float, default=0.5)
    p.add_argument("--budgets", default="0.15,0.05")
    p.add_argument("--randoms", type=int, default=20)
    p.add_argument("--train-seeds", type=int, default=3)
    p.add_argument("--variants", default=VARIANTS)
    p.add_argument(
        "--min-prompt-gain",
        type=lambda v: None if v.lower() == "none" else float(v),
        default=0.01,
        help="One more arm: the job's keep-minmax selection with selection.min_prompt_gain at this value "
        "(none: no such arm). 0.01 is the value the noise probe pointed to.",
    )
    p.add_argument(
        "--steps", type=int, default=18, help="Optimiser steps of every training run (all arms, all budgets)."
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=16)
    # float32: this machine's CPU (AMD EPYC, AVX2) has no native bf16; bf16 matmuls were many
    # times slower here (see docs/quality.md). Use bfloat16 on CPUs with AVX-512-bf16 / AMX.
    p.add_argument("--dtype", default="float32", help="Training and held-out NLL dtype.")
    p.add_argument("--score-dtype", default="float32", help="engine.dtype of the scoring runs.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-attempts", type=int, default=30, help="Attempts of each scoring run before giving up.")
    p.add_argument("--no-noisy", action="store_true", help="Skip the noisy-pool half.")
    p.add_argument(
        "--no-margin",
        action="store_true",
        help="Held-out NLL only (halves evaluation): for arms whose references were trained without the margin.",
    )
    p.add_argument("--stop-after-scoring", action="store_true")
    p.add_argument("--report", action="store_true", help="Only rewrite the summary JSON and docs/quality.md.")
    p.add_argument(
        "--recheck",
        metavar="UNIT",
        help="Only train a stored training unit again and store whether its "
        "held-out NLLs came out identical (recheck-UNIT).",
    )
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    work, results = Path(args.work), Path(args.results)
    units = Units(results)
    budgets = [float(b) for b in args.budgets.split(",")]
    meta = prepare_data(work, args.n_pool, args.n_eval, args.max_tokens, args.noise_share, args.seed)
    if args.report:
        write_summary(units, args, meta)
        return 0
    if args.recheck:
        recheck_unit(units, Trainer(args, meta, work), args.recheck, work)
        return 0
    log(f"pool {meta['n_pool']}, held-out {meta['n_eval']}; {len(units.all())} of {total_units(args)} units stored")
    score_unit(units, "score-clean", args, work, work / "pool.jsonl", meta)
    if args.stop_after_scoring:
        return 0
    trainer = Trainer(args, meta, work)
    if not units.done("eval-initial"):
        res = trainer.initial()
        units.save("eval-initial", res)
        log(f"eval-initial: NLL {res['nll_mean']:.4f} ({res['wall_s']} s)")
    # Pool-major: Holm's family is a pool's arms at every budget, so a pool's verdicts are final
    # only once all its budgets are in; finishing the clean pool first gives final answers a
    # session earlier than interleaving the pools would.
    pools = ["clean"] + ([] if args.no_noisy else ["noisy"])
    for pool in pools:
        if pool == "noisy":
            score_unit(units, "score-noisy", args, work, work / "noisy_pool.jsonl", meta)
        selections = selections_unit(units, pool, args, work, meta, budgets)
        if pool == "noisy":
            default_prompt_gain_unit(units, args, work, meta, budgets)
        # The kernel variants' units first, at every budget: the kernel rule compares only them,
        # so the default is settled before the random subsets and baselines are in. Run order
        # never changes a unit's result (each is a function of its subset, seed and settings).
        variants = {f"delift:{v}" for v in args.variants.split(",") if v}
        for budget in budgets:
            run_pool(units, trainer, pool, args, work, meta, selections, budget, only=variants)
        for budget in budgets:
            run_pool(units, trainer, pool, args, work, meta, selections, budget)
    write_summary(units, args, meta)
    log("study complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
