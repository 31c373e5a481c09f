"""``evaluate_run``: fine-tune on each selection, evaluate on held-out data, write the report.

Rows (selections):

* ``initial``   -- the untuned model;
* ``delift``    -- the run's selection (``selection.parquet``);
* ``delift_se`` -- the same selection function on a sentence-embedding kernel (cos+1)/2;
* ``random``    -- a uniformly random subset of the same size, one per seed (mean +- std);
* ``full``      -- the whole pool (every ``samples.parquet`` row with set pool, status ok).

Columns (metrics), each a mean over held-out samples:

* ``nll`` / ``rouge_l`` -- the model fine-tuned on the selection (``initial``: untuned);
* ``margin`` -- the held-out margin of that model: NLL of another held-out item's response
  after the prompt minus NLL of the right one (:func:`~delift_ray.evaluate.metrics.mismatched_responses`);
  higher is better, and a model tuned on wrong answers must score lower on it;
* ``icl_nll`` / ``icl_rouge_l`` / ``icl_margin`` -- the untuned model with, for each held-out prompt, the
  ``icl_examples`` most similar samples of the selection (embedding cosine of the prompts)
  prepended as examples (the paper's in-context setting).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from delift_ray.config import TemplateConfig
from delift_ray.embedder import Embedder, TransformersEmbedder, encoder_spec, sample_text
from delift_ray.errors import DeliftError, one_line
from delift_ray.evaluate.formatting import PromptEncoder
from delift_ray.evaluate.inputs import EvalSet, RunData, load_eval_data, load_run
from delift_ray.evaluate.metrics import greedy_generate, mismatched_responses, response_nll, rouge_l_f1
from delift_ray.evaluate.report import SELECTIONS, build_report, write_report
from delift_ray.evaluate.similarity import cosine_kernel, top_k_similar
from delift_ray.evaluate.training import TrainSettings, fine_tune, load_model, load_tokenizer, resolve_dtype

log = logging.getLogger(__name__)


def _release() -> None:
    """Return the memory of models the caller has just deleted."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def open_encoder(embedding_model: Optional[str], model: str, device: Optional[str] = None) -> TransformersEmbedder:
    """The encoder of DELIFT-SE and example retrieval: the one embedder (:mod:`delift_ray.embedder`),
    ``embedding_model`` resolved as ``kernel.embedding`` is (default ``minilm``; ``model`` is the
    evaluated ``model``), at the encoder's own token limit, with transformers on ``device``."""
    return TransformersEmbedder(encoder_spec(embedding_model, model=model, what="--embedding-model"), device=device)


def select_se(run: RunData, encoder: Embedder, pool_emb: np.ndarray) -> tuple[list[int], str]:
    """DELIFT-SE: the run's stage's selection function on (cos+1)/2 embedding kernels."""
    from delift_ray import selection

    n, budget = len(run.pool), run.budget
    if budget >= n:
        return list(range(n)), "all (budget >= pool)"
    K = cosine_kernel(pool_emb)
    sel_cfg = (run.config.get("selection") or {}) if isinstance(run.config, dict) else {}

    def texts(p):
        return [sample_text(a, b) for a, b in p.pairs()]

    if run.stage == "task" and len(run.others.get("target", ())):
        Q = cosine_kernel(pool_emb, encoder.embed(texts(run.others["target"])))
        idx, _ = selection.fl_mutual_information(K, Q, budget, eta=float(sel_cfg.get("eta", 1.0)))
        fn = "fl_mutual_information"
    elif run.stage == "continual" and len(run.others.get("existing", ())):
        P = cosine_kernel(pool_emb, encoder.embed(texts(run.others["existing"])))
        idx, _ = selection.fl_conditional_gain(K, P, budget, nu=float(sel_cfg.get("nu", 1.0)))
        fn = "fl_conditional_gain"
    else:
        idx, _ = selection.facility_location(K, budget)
        fn = "facility_location"
    return [int(i) for i in idx], fn


def extra_arms(run: RunData, variants: Optional[str], baselines: Optional[str]) -> dict[str, list[int]]:
    """Subsets of the kernel-variant and baseline rows (name -> pool indices), from the run's shards.

    ``auto`` leaves out, with a warning, every baseline the run's cache cannot rank (a run
    without readable shards has none); a baseline asked for by name raises instead."""
    from delift_ray.evaluate.arms import BASELINE_ARMS, BaselineScores, arm_subsets, parse_variants

    wanted = parse_variants(variants)
    b = (baselines or "none").strip()
    chosen: tuple[str, ...] = ()
    if b not in ("auto", "none"):
        chosen = tuple(x.strip() for x in b.split(",") if x.strip())
        bad = [x for x in chosen if x not in BASELINE_ARMS]
        if bad:
            raise DeliftError(f"unknown baseline {bad[0]!r}; choose from {', '.join(BASELINE_ARMS)}, none or auto")
    out = arm_subsets(run, run.budget, wanted, chosen) if wanted or chosen else {}
    if b == "auto":
        try:
            scores = BaselineScores(run)
        except DeliftError:  # a hand-made run names no cache
            return out
        for name in BASELINE_ARMS:
            try:
                out[name] = scores.subset(name, run.budget)
            except DeliftError as exc:
                log.warning("--baselines auto: %s; left out", exc)
    return out


def _log(progress: bool, msg: str) -> None:
    """One line to stderr between progress bars (only when progress output is on)."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"evaluate: {msg}", file=sys.stderr)


def run_templates(run: RunData) -> TemplateConfig:
    """The prompt templates the run scored with (its config's ``templates``; defaults if absent)."""
    raw = run.config.get("templates") if isinstance(run.config, dict) else None
    try:
        return TemplateConfig(**(raw or {}))
    except (TypeError, ValueError) as exc:
        raise DeliftError(f"{run.run_dir}/run.json has invalid templates: {one_line(exc, 500)}") from None


def _evaluate_model(
    model,
    tok,
    enc: PromptEncoder,
    ev: EvalSet,
    *,
    examples,
    max_new_tokens: int,
    batch_size: int,
    desc: str,
    progress: bool,
) -> dict:
    """Per-sample NLL and ROUGE-L F1 (and generations) of one model in one mode."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()

    n = len(ev)
    ex = examples if examples is not None else [None] * n
    items = [enc.pair(ev.prompts[k], ev.responses[k], examples=ex[k]) for k in range(n)]
    wrong = mismatched_responses(ev.sample_ids, ev.responses)
    wrong_items = [enc.pair(ev.prompts[k], wrong[k], examples=ex[k]) for k in range(n)]
    ctxs = [enc.generation_context(ev.prompts[k], examples=ex[k], max_new_tokens=max_new_tokens) for k in range(n)]
    bar = tqdm(total=3 * n, desc=desc, unit="sample", disable=not progress, leave=False, dynamic_ncols=True)
    nll = response_nll(model, items, pad_id=tok.pad_token_id, batch_size=batch_size, progress=bar.update)
    margin = response_nll(model, wrong_items, pad_id=tok.pad_token_id, batch_size=batch_size, progress=bar.update) - nll
    gens = greedy_generate(model, tok, ctxs, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar.update)
    bar.close()
    rouge = np.array([rouge_l_f1(g, r) for g, r in zip(gens, ev.responses)], dtype=np.float64)
    _log(
        progress,
        f"{desc}: NLL {np.mean(nll):.3f}, margin {np.mean(margin):.3f}, ROUGE-L F1 {100 * np.mean(rouge):.2f} "
        f"({n} samples, {time.perf_counter() - t0:.0f} s)",
    )
    return {
        "nll": nll,
        "margin": margin,
        "rouge_l": rouge,
        "generations": gens,
        "context_tokens": float(np.mean([len(c) for c, _ in items])),
    }


def evaluate_run(
    run_dir: str | Path,
    eval_data: str | Path,
    *,
    model: Optional[str] = None,
    seeds: int = 3,
    epochs: int = 2,
    lr: Optional[float] = None,
    max_length: int = 256,
    batch_size: int = 4,
    full_finetune: bool = False,
    max_eval: Optional[int] = None,
    max_new_tokens: int = 64,
    embedding_model: Optional[str] = None,
    icl_examples: int = 5,
    icl_example_tokens: int = 128,
    eval_batch_size: int = 8,
    dtype: str = "auto",
    device: Optional[str] = None,
    seed: Optional[int] = None,
    bootstrap_resamples: int = 1000,
    out_dir: Optional[str | Path] = None,
    progress: bool = True,
    train_seeds: int = 1,
    variants: Optional[str] = None,
    baselines: Optional[str] = "auto",
    steps: Optional[int] = None,
) -> dict:
    """Evaluate a selection run; writes ``report.json``, ``report.md``, ``report.png`` and
    ``generations.jsonl`` to ``out_dir`` (default ``<run_dir>/eval``) and returns the report.

    ``model`` defaults to the run's scoring model; ``seed`` to the run's seed. Random subset
    s (s = 0 .. seeds-1) is drawn, and its model trained, with seed ``seed + s``; every
    deterministic selection (DELIFT, its kernel variants, the baselines, DELIFT-SE, the full
    pool) is trained with seeds ``seed .. seed + train_seeds - 1``.

    ``variants`` ('keep-minmax,drop-clip'): one extra DELIFT row per kernel variant, selected
    again from the run's stored utilities (:mod:`delift_ray.evaluate.arms`). ``baselines``:
    'self_utility,hardness,example_utility,ifd,longest' or a part of it, 'none', or 'auto' (every one the
    run's shards can rank).
    ``steps``: fixed optimiser steps per training run (default: ``epochs`` passes).
    With two or more random subsets, every fine-tuned arm is tested against random on the
    primary metric, held-out NLL (:mod:`delift_ray.evaluate.statistics`).
    """
    import torch

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if seeds < 1:
        raise DeliftError(f"--seeds must be at least 1, got {seeds}")
    if epochs < 1:
        raise DeliftError(f"--epochs must be at least 1, got {epochs}")
    if max_length < 16:
        raise DeliftError(f"--max-length must be at least 16, got {max_length}")
    if max_new_tokens < 1:
        raise DeliftError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if icl_examples < 1:
        raise DeliftError(f"--icl-examples must be at least 1, got {icl_examples}")
    if train_seeds < 1:
        raise DeliftError(f"--train-seeds must be at least 1, got {train_seeds}")
    run = load_run(run_dir)
    extra_subsets = extra_arms(run, variants, baselines)
    model_path = model or run.config.get("model")
    if not model_path:
        raise DeliftError(f"{run.run_dir}/run.json names no model; pass --model")
    model_path = str(model_path)
    templates = run_templates(run)
    ev = load_eval_data(eval_data, pool_ids=set(run.pool.sample_ids), max_eval=max_eval)
    base_seed = int(seed if seed is not None else run.config.get("seed", 0) or 0)
    if out_dir is None and "://" in run.run_dir:
        raise DeliftError(f"the run {run.run_dir} is remote; pass --out for the evaluation report")
    out = Path(out_dir) if out_dir is not None else Path(run.run_dir) / "eval"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeliftError(f"cannot create the output directory {out}: {exc}") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, dev)
    settings = TrainSettings(
        epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, full_finetune=full_finetune
    )
    n_pool, budget = len(run.pool), run.budget
    tok = load_tokenizer(model_path)  # a bad --model fails here, before any embedding work

    # -- embeddings: DELIFT-SE selection and ICL retrieval
    t = time.perf_counter()
    encoder = open_encoder(embedding_model, model_path, dev)
    spec = encoder.spec
    pool_emb = encoder.embed([sample_text(p, r) for p, r in run.pool.pairs()])
    se_idx, se_fn = select_se(run, encoder, pool_emb)
    pool_q = encoder.embed(run.pool.prompts)
    eval_q = encoder.embed(ev.prompts)
    emb_name = spec.label
    embedder_record = spec.record(pool_emb.shape[1])
    encoder.close()
    del encoder
    gc.collect()
    timings["embeddings_s"] = time.perf_counter() - t
    overlap = len(set(run.selected) & set(se_idx))
    _log(
        progress,
        f"pool {n_pool}, subset {budget}, held-out {len(ev)}"
        + (f" ({ev.dropped_overlap} dropped: also in the pool)" if ev.dropped_overlap else "")
        + f"; DELIFT-SE ({se_fn}) shares {overlap} samples with DELIFT",
    )

    subsets: dict[str, list[list[int]]] = {
        "delift": [list(run.selected)],
        "delift_se": [se_idx],
        "random": [],
        "full": [list(range(n_pool))],
    }
    subsets.update({name: [idx] for name, idx in extra_subsets.items()})
    seed_list = [base_seed + s for s in range(seeds)]
    det_seeds = [base_seed + t for t in range(train_seeds)]
    for s in seed_list:
        rng = np.random.default_rng(s)
        subsets["random"].append(sorted(int(i) for i in rng.choice(n_pool, size=budget, replace=False)))

    enc = PromptEncoder(
        tok,
        max_length,
        example_tokens=icl_example_tokens,
        no_example=templates.no_example,
        with_example=templates.with_example,
    )
    train_items = {i: enc.pair(p, r, add_eos=True) for i, (p, r) in enumerate(run.pool.pairs())}
    ekw = dict(max_new_tokens=max_new_tokens, batch_size=eval_batch_size, progress=progress)

    # results[name] = list over seeds of {"nll": arr, ...}
    results: dict[str, list[dict]] = {k: [] for k in (*SELECTIONS, *extra_subsets)}
    train_stats: dict[str, list[dict]] = {k: [] for k in (*SELECTIONS, *extra_subsets)}
    generations: list[dict] = []

    def keep(name: str, seed_: Optional[int], mode: str, r: dict, slot: dict) -> None:
        slot.setdefault("seed", seed_)
        prefix = "icl_" if mode == "icl" else ""
        slot[prefix + "nll"] = r["nll"]
        slot[prefix + "margin"] = r["margin"]
        slot[prefix + "rouge_l"] = r["rouge_l"]
        slot[prefix + "context_tokens"] = r["context_tokens"]
        for k in range(len(ev)):
            generations.append(
                {
                    "selection": name,
                    "seed": seed_,
                    "mode": mode,
                    "index": k,
                    "sample_id": ev.sample_ids[k],
                    "generation": r["generations"][k],
                    "nll": float(r["nll"][k]),
                    "margin": float(r["margin"][k]),
                    "rouge_l": float(r["rouge_l"][k]),
                }
            )

    # -- the untuned model: "initial" row and every in-context row
    t = time.perf_counter()
    base = load_model(model_path, dtype=torch_dtype, device=dev)
    slot: dict = {}
    keep(
        "initial",
        None,
        "finetuned",
        _evaluate_model(base, tok, enc, ev, examples=None, desc="eval initial", **ekw),
        slot,
    )
    results["initial"].append(slot)
    timings["eval_initial_s"] = time.perf_counter() - t
    t = time.perf_counter()
    icl_slots: dict[str, list[dict]] = {}
    for name in ("delift", "delift_se", "random", "full"):
        icl_slots[name] = []
        for j, idx in enumerate(subsets[name]):
            seed_ = seed_list[j] if name == "random" else base_seed
            nearest = top_k_similar(eval_q, pool_q[idx], icl_examples)
            examples = [[run.pool.pairs([idx[c]])[0] for c in row] for row in nearest]
            slot = {}
            label = f"icl {name}" + (f" seed {seed_}" if name == "random" else "")
            keep(name, seed_, "icl", _evaluate_model(base, tok, enc, ev, examples=examples, desc=label, **ekw), slot)
            icl_slots[name].append(slot)
    del base
    _release()
    timings["eval_icl_s"] = time.perf_counter() - t

    # -- fine-tuned rows
    t_train = t_eval = 0.0
    runs = [
        (name, j, idx, seed_)
        for name in ("delift", *extra_subsets, "delift_se", "random", "full")
        for j, idx in enumerate(subsets[name])
        for seed_ in ([seed_list[j]] if name == "random" else det_seeds)
    ]
    for name, j, idx, seed_ in runs:
        label = name + (f" seed {seed_}" if name == "random" or train_seeds > 1 else "")
        t = time.perf_counter()
        tuned, stats = fine_tune(
            model_path,
            [train_items[i] for i in idx],
            settings,
            seed=seed_,
            pad_id=tok.pad_token_id,
            dtype=torch_dtype,
            device=dev,
            desc=f"train {label}",
            progress=progress,
        )
        t_train += time.perf_counter() - t
        _log(
            progress,
            f"train {label}: {stats.samples} samples, {stats.steps} steps, loss "
            f"{stats.first_loss:.3f} -> {stats.last_loss:.3f} ({stats.seconds:.0f} s)",
        )
        t = time.perf_counter()
        # The in-context rows belong to the first training seed of each subset.
        first = seed_ == (seed_list[j] if name == "random" else det_seeds[0])
        slot = icl_slots[name][j] if name in icl_slots and first else {}
        keep(
            name,
            seed_,
            "finetuned",
            _evaluate_model(tuned, tok, enc, ev, examples=None, desc=f"eval {label}", **ekw),
            slot,
        )
        t_eval += time.perf_counter() - t
        results[name].append(slot)
        train_stats[name].append({"seed": seed_, **stats.to_dict()})
        del tuned
        _release()
    timings["train_s"] = t_train
    timings["eval_finetuned_s"] = t_eval

    report = build_report(
        results=results,
        train_stats=train_stats,
        subsets=subsets,
        meta={
            "run_dir": str(run.run_dir),
            "eval_data": str(eval_data),
            "model": model_path,
            "embedding_model": emb_name,
            "embedder": embedder_record,
            "stage": run.stage,
            "n_pool": n_pool,
            "budget": budget,
            "n_eval": len(ev),
            "eval_rows_read": ev.rows_read,
            "eval_rows_skipped": ev.skipped,
            "eval_dropped_pool_overlap": ev.dropped_overlap,
            "seeds": seed_list,
            "train_seeds": det_seeds,
            "arms": {name: idx for name, idx in extra_subsets.items()},
            "se_selection_function": se_fn,
            "delift_se_overlap": overlap,
            "settings": {
                "finetune": "full" if full_finetune else "lora",
                "lora": None
                if full_finetune
                else {
                    "r": settings.lora_r,
                    "alpha": settings.lora_alpha,
                    "dropout": settings.lora_dropout,
                    "target_modules": "all-linear",
                },
                "epochs": epochs,
                "steps": steps,
                "lr": settings.learning_rate,
                "batch_size": batch_size,
                "max_length": max_length,
                "max_new_tokens": max_new_tokens,
                "icl_examples": icl_examples,
                "icl_example_tokens": icl_example_tokens,
                "dtype": str(torch_dtype).replace("torch.", ""),
                "device": dev,
                "bootstrap_resamples": bootstrap_resamples,
                "bootstrap_confidence": 0.95,
                "bootstrap_seed": base_seed,
                "templates": templates.model_dump(),
            },
        },
        bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=base_seed,
    )
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    write_report(report, out, generations=generations, eval_set=ev)
    return report
