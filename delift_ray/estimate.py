"""``delift-ray estimate``: what a job will cost before anything expensive runs.

From the job's config it reads and tokenises the data (no model forward pass) and
reports, for dense and for knn candidate pruning:

* pairs to score: dense ``sum_m |H_m| |E_m|``; knn ``sum_m |H_m| min(k + r, |E_m|)``
  (an upper bound: pairs shared by two matrices are scored once);
* prompt tokens: a pair (i <- j) is ``len(head_j) + len(tail_i) + len(r_i) + 2``
  tokens (capped at max_model_len - 1), so dense sums to
  ``|E| sum_i (tail_i + r_i + 2) + |H| sum_j head_j`` and knn to ``(k + r)`` times the
  per-row mean of that; baselines add ``sum_i (no_example_i + r_i + 2)``;
* tokens to compute: with prefix reuse (``scoring.prefix_reuse`` and prefix caching on)
  each example head is computed once, and each pair computes its own tail, response and
  the part of the head past the head's last full KV block, on average
  ``(engine.block_size - 1) / 2`` tokens; so a pair costs
  ``tail_i + r_i + 2 + min((B - 1) / 2, mean head)`` plus ``sum_j head_j`` once per
  matrix. Without prefix reuse it equals the prompt tokens;
* kernel memory: dense float32 ``rows x cols x 4`` bytes (assembly peaks at about 10
  bytes a pair, see kernel.DENSE_ASSEMBLY_BYTES_PER_ENTRY); knn CSR ``nnz x 8 + (rows + 1) x 8``;
* hours per engine: tokens to compute / (computed tokens per second of one engine),
  and the wall time with ``ray.num_scorers`` engines (1 if unset). The rate is
  ``--tokens-per-s`` or is measured by a short calibration run of the configured model:
  one vLLM engine scores a small grid of real pairs (a few examples x several helped
  samples, example-major, with the job's prefix reuse setting) and the rate is the
  tokens it computed (prompt tokens minus those read from the prefix cache) per second;
* what the machinery around the GPUs costs, from the constants in :data:`MEASURED`
  (measured by benchmarks/, each citing its result file): blocks ``sum_m ceil(pairs_m /
  scoring.block_size^2)`` and shards (the blocks plus ``ceil(|H| / 256)`` baseline
  shards); a block's GPU time ``computed tokens / blocks / tokens_per_s``; the driver's
  CPU, ``blocks x`` its CPU per dispatched block, and its share of one core with the
  engines busy, ``engines / block time x`` that CPU; the engines one driver core feeds at
  90% (``0.9 x block time / CPU per block``); the S3 requests to write every shard and
  to list and validate them at a resume, and that resume's time; assembly and selection
  time per pair. The first bottleneck is the driver when the engines outnumber the ones
  it feeds, else the GPUs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from delift_ray import kernel_types
from delift_ray.config import DeliftConfig
from delift_ray.planning import BASELINE_CHUNK
from delift_ray.steps.base import StepStats


@dataclass(frozen=True)
class MeasuredCosts:
    """The machinery's costs, measured by benchmarks/ on the path users run (figures from the
    result files in ``sources``; tests/test_estimate.py checks each against its file)."""

    driver_cpu_s_per_block: float  # the dispatcher's CPU per block, worst of the 8-256 stand-in sweep
    s3_requests_per_shard_written: float  # one shard's upload through ShardStore.write
    s3_requests_per_shard_resumed: float  # the plan's stored-pair lookup, per shard
    s3_resume_s_per_shard: float  # its time per shard, moto on loopback
    assemble_s_per_pair: float  # the assemble step at 1M samples, k 32 + r 4
    select_s_per_pair: float  # the select step there
    sources: tuple[str, ...]


MEASURED = MeasuredCosts(
    driver_cpu_s_per_block=5.02e-3,
    s3_requests_per_shard_written=3.0,
    s3_requests_per_shard_resumed=2.0,
    s3_resume_s_per_shard=5.37e-3,
    assemble_s_per_pair=100.2 / 36_000_000,
    select_s_per_pair=10.6 / 36_000_000,
    sources=("driver_sim.json", "s3_store_5000_after.json", "scale_1m.json"),
)


@dataclass
class SetLengths:
    n: int
    head: np.ndarray  # tokens of the example part when the sample is the example
    tail_resp: np.ndarray  # tail + response + 2 EOS when the sample is helped
    baseline: np.ndarray  # no-example context + response + 2 EOS


def set_lengths(scored) -> SetLengths:
    t = scored.tokens
    resp = t.response.lengths()
    return SetLengths(len(t), t.head.lengths(), t.tail.lengths() + resp + 2, t.no_example.lengths() + resp + 2)


def compute_estimate(
    cfg: DeliftConfig, lengths: dict[str, SetLengths], tokens_per_s: float, *, rate_source: str
) -> dict:
    from delift_ray.stages import STAGE_MATRICES

    max_len = cfg.engine.max_model_len - 1
    out_kernel = cfg.kernel.model_dump()
    out: dict = {
        "stage": cfg.stage,
        "samples": {n: s.n for n, s in lengths.items()},
        "k": cfg.kernel.k,
        "random": cfg.kernel.random,
        "tokens_per_s_per_engine": round(tokens_per_s, 1),
        "rate_source": rate_source,
    }
    engines = cfg.ray.num_scorers or 1
    out["engines"] = engines
    base_tokens = int(
        sum(lengths[n].baseline.sum() for n in dict.fromkeys(m.helped for m in STAGE_MATRICES[cfg.stage]))
    )
    reuse = cfg.scoring.prefix_reuse and cfg.engine.enable_prefix_caching
    # KV block of the engine's prefix cache (vLLM's CPU default is 128 when unset).
    kv_block = cfg.engine.block_size or 128
    per_block = cfg.scoring.block_size**2
    helped_sets = dict.fromkeys(m.helped for m in STAGE_MATRICES[cfg.stage])
    baseline_shards = sum(math.ceil(lengths[n].n / BASELINE_CHUNK) for n in helped_sets)
    for kind in kernel_types.all_types():
        pairs = tokens = computed = mem = mem_peak = blocks = 0
        for m in STAGE_MATRICES[cfg.stage]:
            H, E = lengths[m.helped], lengths[m.example]
            c = kind.candidates_per_row(cfg.kernel, E.n)
            pairs += H.n * c
            blocks += math.ceil(H.n * c / per_block)
            # mean pair length per helped row, capped at the engine limit
            row_tokens = np.minimum(H.tail_resp + float(E.head.mean()), max_len)
            tokens += int(c * row_tokens.sum())
            if reuse:
                row_own = np.minimum(H.tail_resp + min((kv_block - 1) / 2, float(E.head.mean())), row_tokens)
                computed += int(c * row_own.sum() + E.head.sum())
            else:
                computed += int(c * row_tokens.sum())
            mem += kind.kernel_bytes(H.n, E.n, c)
            mem_peak += kind.assembly_peak_bytes(H.n, E.n, c)
        pair_computed = computed
        tokens += base_tokens
        computed += base_tokens
        hours = computed / tokens_per_s / 3600
        out[kind.name] = {
            "label": kind.label(out_kernel),
            "pairs": int(pairs),
            "prefill_tokens": int(tokens),
            "computed_tokens": int(computed),
            "kernel_bytes": int(mem),
            "assembly_peak_bytes": int(mem_peak),
            "engine_hours": float(f"{hours:.4g}"),
            "wall_hours": float(f"{hours / engines:.4g}"),
            **machinery(blocks, blocks + baseline_shards, pairs, pair_computed, tokens_per_s, engines),
        }
    return out


def machinery(blocks: int, shards: int, pairs: int, computed: int, tokens_per_s: float, engines: int) -> dict:
    """The costs around the GPUs of a job with ``blocks`` pair blocks (see the module docstring)."""
    c = MEASURED
    block_s = computed / max(blocks, 1) / tokens_per_s
    fed = int(0.9 * block_s / c.driver_cpu_s_per_block)
    return {
        "blocks": int(blocks),
        "shards": int(shards),
        "block_s": float(f"{block_s:.4g}"),
        "driver_cpu_s": float(f"{blocks * c.driver_cpu_s_per_block:.4g}"),
        "driver_core_share": float(f"{engines / block_s * c.driver_cpu_s_per_block:.3g}") if block_s else 0.0,
        "engines_fed_at_90pct": fed,
        "s3_write_requests": int(shards * c.s3_requests_per_shard_written),
        "s3_resume_requests": int(shards * c.s3_requests_per_shard_resumed),
        "s3_resume_s": float(f"{shards * c.s3_resume_s_per_shard:.4g}"),
        "assemble_select_s": float(f"{pairs * (c.assemble_s_per_pair + c.select_s_per_pair):.4g}"),
        "first_bottleneck": "driver" if engines > fed else "GPUs",
    }


def _time_scoring(model: str, engine_cfg: dict, requests: list, read_cache: bool) -> tuple[float, int]:
    """(seconds, tokens computed) of one fresh engine scoring ``requests`` (after a short warm-up)."""
    from delift_ray.config import EngineConfig
    from delift_ray.scoring.engine import Scorer

    scorer = Scorer(model, EngineConfig(**engine_cfg))
    try:
        scorer.score(requests[:8])  # warm-up: first-call allocations
        scorer.llm.reset_prefix_cache()  # the timed run computes every head itself
        before = scorer.stats.as_dict()
        t0 = time.perf_counter()
        scorer.score(requests, read_cache=read_cache)
        seconds = time.perf_counter() - t0
        st = scorer.stats.delta(before)
        return seconds, int(st["prompt_tokens"] - st["cached_tokens"])
    finally:
        scorer.shutdown()


def calibration_grid(n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(helped, example) indices of about ``pairs`` pairs: a few examples x several helped
    samples, example-major, as the job's blocks send them."""
    rng = np.random.default_rng(seed)
    n_ex = max(1, min(n, int(round(np.sqrt(pairs / 2)))))
    n_h = max(1, min(n, pairs // n_ex))
    ex = rng.choice(n, size=n_ex, replace=False)
    helped = rng.choice(n, size=n_h, replace=False)
    return np.tile(helped, n_ex), np.repeat(ex, n_h)


def calibrate(cfg: DeliftConfig, sets: dict, eos: int, pairs: int = 96) -> float:
    """Computed tokens per second of one engine of the configured model on a grid of real pairs.

    The engine runs in a fresh spawned process: vLLM's CPU kernel registration walks
    every loaded module and can trip over unrelated ones already imported by the caller.
    """
    import multiprocessing

    from delift_ray.prompts import pair_sequence
    from delift_ray.scoring.engine import ScoreRequest

    pool = sets["pool"].tokens
    hs, es = calibration_grid(len(pool), pairs, cfg.seed)
    reqs = [
        ScoreRequest(*pair_sequence(pool, int(h), pool, int(e), eos, cfg.engine.max_model_len - 1))
        for h, e in zip(hs, es)
    ]
    with multiprocessing.get_context("spawn").Pool(1) as proc:
        seconds, computed = proc.apply(
            _time_scoring, (cfg.model, cfg.engine.model_dump(), reqs, cfg.scoring.prefix_reuse)
        )
    return computed / seconds


def fmt_bytes(b: int) -> str:
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


def format_table(est: dict) -> str:
    kinds = [n for n in kernel_types.names() if n in est]
    rows = [("", *(est[n].get("label", n) for n in kinds))]
    for key, label, f in (
        ("pairs", "pairs to score", lambda v: f"{v:,}"),
        ("prefill_tokens", "prompt tokens", lambda v: f"{v:,}"),
        ("computed_tokens", "tokens to compute", lambda v: f"{v:,}"),
        ("kernel_bytes", "kernel memory", fmt_bytes),
        ("assembly_peak_bytes", "assembly peak", fmt_bytes),
        ("engine_hours", "engine-hours", lambda v: f"{v:,.3g}"),
        (
            "wall_hours",
            f"wall hours ({est['engines']} engine{'s' if est['engines'] > 1 else ''})",
            lambda v: f"{v:,.3g}",
        ),
        ("blocks", "blocks", lambda v: f"{v:,}"),
        ("shards", "shards", lambda v: f"{v:,}"),
        ("block_s", "GPU s a block", lambda v: f"{v:,.3g}"),
        ("driver_core_share", "driver core share", lambda v: f"{100 * v:.1f}%"),
        ("engines_fed_at_90pct", "engines 1 driver core feeds", lambda v: f"{v:,}"),
        ("first_bottleneck", "first bottleneck", str),
        ("s3_write_requests", "S3 requests to write", lambda v: f"{v:,}"),
        ("s3_resume_requests", "S3 requests to resume", lambda v: f"{v:,}"),
        ("s3_resume_s", "resume listing s (S3)", lambda v: f"{v:,.3g}"),
        ("assemble_select_s", "assemble + select s", lambda v: f"{v:,.3g}"),
    ):
        rows.append((label, *(f(est[n][key]) for n in kinds)))
    w = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        f"stage {est['stage']}, samples "
        + ", ".join(f"{k}={v:,}" for k, v in est["samples"].items())
        + f"; {est['tokens_per_s_per_engine']:,} computed tokens/s per engine ({est['rate_source']})"
    ]
    lines += ["  ".join(r[c].ljust(w[c]) if c == 0 else r[c].rjust(w[c]) for c in range(len(r))) for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- dry run


@dataclass
class DryRunReport(StepStats):
    """What a planned job would score, and what that costs: ``delift-ray select --dry-run``.

    Computed from the job's own plan (exact pairs, not the means :func:`compute_estimate`
    uses). For a pair (i <- j) to score, ``prompt = min(tail_resp_i + head_j, L)``
    (L = max_model_len - 1); with prefix reuse it computes
    ``min(tail_resp_i + min((B - 1) / 2, head_j), prompt)`` tokens itself, and every
    example head of a matrix is computed once more (B = the KV block size). A baseline
    to score adds ``no_example_i + r_i + 2`` tokens. Hours are computed tokens /
    ``tokens_per_s`` (of one engine) / 3600, and wall hours divide by the engines.
    """

    stage: str
    kernel: str
    samples: dict[str, int]
    pairs_total: int
    pairs_to_score: int
    pairs_reused: int
    blocks: int
    baselines_total: int
    baselines_to_score: int
    baselines_reused: int
    prompt_tokens: int
    computed_tokens: int
    prefix_reuse: bool
    engines: int
    tokens_per_s: float | None = None
    rate_source: str = ""
    kernel_label: str = ""  # the kernel type's options in one phrase (kernel_types.KernelType.label)

    @property
    def engine_hours(self) -> float | None:
        return None if not self.tokens_per_s else self.computed_tokens / self.tokens_per_s / 3600

    @property
    def wall_hours(self) -> float | None:
        h = self.engine_hours
        return None if h is None else h / self.engines

    def as_dict(self) -> dict:
        return {**super().as_dict(), "engine_hours": self.engine_hours, "wall_hours": self.wall_hours}

    def summary(self) -> str:
        return f"{self.prompt_tokens} prompt tokens, {self.computed_tokens} to compute" + (
            f", {self.engine_hours:.4g} engine-hours at {self.tokens_per_s:g} tokens/s" if self.tokens_per_s else ""
        )

    def format(self) -> str:
        """The report's lines (below the dry run's header line)."""
        lines = ["  samples: " + ", ".join(f"{n} {v:,}" for n, v in self.samples.items()) + f"; {self.kernel_label}"]
        lines.append(
            f"  pairs: {self.pairs_total:,} total, {self.pairs_to_score:,} to score, {self.pairs_reused:,} reused "
            f"({self.blocks:,} blocks)"
        )
        lines.append(
            f"  baselines: {self.baselines_total:,} total, {self.baselines_to_score:,} to score, "
            f"{self.baselines_reused:,} reused"
        )
        lines.append(f"  prompt tokens: {self.prompt_tokens:,} (pairs and baselines to score)")
        lines.append(
            f"  tokens to compute: {self.computed_tokens:,} ("
            + (
                "prefix reuse: each example head once, per pair its own part and half a KV block"
                if self.prefix_reuse
                else "no prefix reuse"
            )
            + ")"
        )
        if self.tokens_per_s:
            s = "s" if self.engines > 1 else ""
            lines.append(
                f"  estimate: {self.engine_hours:,.3g} engine-hours at {self.tokens_per_s:,.0f} computed tokens/s "
                f"per engine ({self.rate_source}); {self.wall_hours:,.3g} wall hours on {self.engines} engine{s}"
            )
        else:
            lines.append(
                "  estimate: give --tokens-per-s (computed tokens/s of one engine) for hours; "
                "`delift-ray estimate` can measure it"
            )
        return "\n".join(lines)


def plan_tokens(plan, lengths: dict[str, SetLengths], max_len: int, kv_block: int, reuse: bool) -> tuple[int, int]:
    """(prompt tokens, tokens to compute) of the plan's pairs and baselines to score.

    One pass per block (vectorised inside a block), so the pairs' token counts are never
    all in memory at once.
    """
    prompt = computed = 0
    heads_seen: dict[tuple[str, str], np.ndarray] = {}
    half_block = (kv_block - 1) / 2
    for b in plan.blocks:
        H, E = lengths[b.helped_set], lengths[b.example_set]
        own = H.tail_resp[b.h_idx]
        head = E.head[b.e_idx]
        row = np.minimum(own + head, max_len)
        prompt += int(row.sum())
        if reuse:
            computed += int(np.minimum(own + np.minimum(half_block, head), row).sum())
            seen = heads_seen.setdefault((b.helped_set, b.example_set), np.zeros(E.n, dtype=bool))
            seen[b.e_idx] = True
        else:
            computed += int(row.sum())
    for (_, example_set), seen in heads_seen.items():
        computed += int(lengths[example_set].head[seen].sum())
    for set_name, chunks in plan.baseline.items():
        idx = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
        base = int(lengths[set_name].baseline[idx.astype(np.int64)].sum())
        prompt += base
        computed += base
    return prompt, computed


def dry_run_report(
    cfg: DeliftConfig, sets: dict, plan, tokens_per_s: float | None = None, *, rate_source: str = "given"
) -> DryRunReport:
    """The dry run's report from the job's ``plan`` and every set it scores (name -> ScoredSet).

    ``sets`` includes baseline-only sets (the prompt-free copies of ``selection.min_prompt_gain``):
    their baselines are tokens to compute too.
    """
    lengths = {n: set_lengths(s) for n, s in sets.items()}
    reuse = bool(cfg.scoring.prefix_reuse and cfg.engine.enable_prefix_caching)
    prompt, computed = plan_tokens(plan, lengths, cfg.engine.max_model_len - 1, cfg.engine.block_size or 128, reuse)
    return DryRunReport(
        stage=cfg.stage,
        kernel=cfg.kernel.type,
        samples={n: s.n for n, s in lengths.items()},
        pairs_total=plan.pairs_total,
        pairs_to_score=plan.pairs_to_score,
        pairs_reused=plan.pairs_reused,
        blocks=len(plan.blocks),
        baselines_total=plan.baselines_total,
        baselines_to_score=plan.baselines_to_score,
        baselines_reused=plan.baselines_reused,
        prompt_tokens=prompt,
        computed_tokens=computed,
        prefix_reuse=reuse,
        engines=cfg.ray.num_scorers or 1,
        tokens_per_s=tokens_per_s,
        rate_source=rate_source if tokens_per_s else "",
        kernel_label=kernel_types.get(cfg.kernel.type).label(cfg.kernel.model_dump()),
    )
