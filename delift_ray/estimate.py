"""``delift-ray estimate``: what a job will cost before anything expensive runs.

From the job's config it reads and tokenises the data (no model forward pass) and
reports, for dense and for knn candidate pruning:

* pairs to score: dense ``sum_m |H_m| |E_m|``; knn ``sum_m |H_m| min(k + r, |E_m|)``
  (an upper bound: pairs shared by two matrices are scored once);
* tokens to prefill: a pair (i <- j) is ``len(head_j) + len(tail_i) + len(r_i) + 2``
  tokens (capped at max_model_len - 1), so dense sums to
  ``|E| sum_i (tail_i + r_i + 2) + |H| sum_j head_j`` and knn to ``(k + r)`` times the
  per-row mean of that; baselines add ``sum_i (no_example_i + r_i + 2)``; prefix-cache
  savings are not subtracted;
* kernel memory: dense float32 ``rows x cols x 4`` bytes (assembly peaks at about 10
  bytes a pair, see kernel.DENSE_ASSEMBLY_BYTES_PER_ENTRY); knn CSR ``nnz x 8 + (rows + 1) x 8``;
* hours per engine: tokens / (tokens per second of one engine), and the wall time
  with ``ray.num_scorers`` engines (1 if unset). The rate is ``--tokens-per-s`` or is
  measured by a short calibration run of the configured model (one in-process vLLM
  engine scoring a few real pairs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.kernel import dense_assembly_bytes, kernel_bytes, sparse_kernel_bytes


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


def compute_estimate(cfg: DeliftConfig, lengths: dict[str, SetLengths], tokens_per_s: float, *, rate_source: str) -> dict:
    from delift_ray.stages import STAGE_MATRICES

    max_len = cfg.engine.max_model_len - 1
    per_row = min(cfg.kernel.k + cfg.kernel.random, 1 << 62)
    out: dict = {"stage": cfg.stage, "samples": {n: s.n for n, s in lengths.items()}, "k": cfg.kernel.k,
                 "random": cfg.kernel.random, "tokens_per_s_per_engine": round(tokens_per_s, 1), "rate_source": rate_source}
    engines = cfg.ray.num_scorers or 1
    out["engines"] = engines
    base_tokens = int(sum(lengths[n].baseline.sum() for n in dict.fromkeys(m.helped for m in STAGE_MATRICES[cfg.stage])))
    for mode in ("dense", "knn"):
        pairs = tokens = mem = mem_peak = 0
        for m in STAGE_MATRICES[cfg.stage]:
            H, E = lengths[m.helped], lengths[m.example]
            c = E.n if mode == "dense" else min(per_row, E.n)
            pairs += H.n * c
            # mean pair length per helped row, capped at the engine limit
            row_tokens = np.minimum(H.tail_resp + float(E.head.mean()), max_len)
            tokens += int(c * row_tokens.sum())
            if mode == "dense":
                mem += kernel_bytes(H.n, E.n)
                mem_peak += dense_assembly_bytes(H.n, E.n)
            else:
                mem += sparse_kernel_bytes(H.n * c, H.n)
                mem_peak += sparse_kernel_bytes(H.n * c, H.n) * 3  # positions + values and their sort keys, the CSR, the selector's CSC copy
        tokens += base_tokens
        hours = tokens / tokens_per_s / 3600
        out[mode] = {"pairs": int(pairs), "prefill_tokens": int(tokens), "kernel_bytes": int(mem),
                     "assembly_peak_bytes": int(mem_peak), "engine_hours": float(f"{hours:.4g}"),
                     "wall_hours": float(f"{hours / engines:.4g}")}
    return out


def _time_scoring(model: str, engine_cfg: dict, requests: list) -> float:
    """Seconds one fresh engine takes to score ``requests`` (after a short warm-up)."""
    from delift_ray.config import EngineConfig
    from delift_ray.scoring.engine import Scorer

    scorer = Scorer(model, EngineConfig(**engine_cfg))
    try:
        scorer.score(requests[:4])  # warm-up: first-call allocations
        t0 = time.perf_counter()
        scorer.score(requests)
        return time.perf_counter() - t0
    finally:
        scorer.shutdown()


def calibrate(cfg: DeliftConfig, sets: dict, eos: int, pairs: int = 48) -> float:
    """Prompt tokens per second of one engine of the configured model on random real pairs.

    The engine runs in a fresh spawned process: vLLM's CPU kernel registration walks
    every loaded module and can trip over unrelated ones already imported by the caller.
    """
    import multiprocessing

    from delift_ray.prompts import pair_sequence
    from delift_ray.scoring.engine import ScoreRequest

    pool = sets["pool"].tokens
    n = len(pool)
    rng = np.random.default_rng(cfg.seed)
    hs, es = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    reqs = [ScoreRequest(*pair_sequence(pool, int(h), pool, int(e), eos, cfg.engine.max_model_len - 1)) for h, e in zip(hs, es)]
    with multiprocessing.get_context("spawn").Pool(1) as proc:
        seconds = proc.apply(_time_scoring, (cfg.model, cfg.engine.model_dump(), reqs))
    return sum(len(r.tokens) for r in reqs) / seconds


def fmt_bytes(b: int) -> str:
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


def format_table(est: dict) -> str:
    rows = [("", "dense", f"knn (k={est['k']}, r={est['random']})")]
    for key, label, f in (("pairs", "pairs to score", lambda v: f"{v:,}"), ("prefill_tokens", "tokens to prefill", lambda v: f"{v:,}"),
                          ("kernel_bytes", "kernel memory", fmt_bytes), ("assembly_peak_bytes", "assembly peak", fmt_bytes),
                          ("engine_hours", "engine-hours", lambda v: f"{v:,.3g}"),
                          ("wall_hours", f"wall hours ({est['engines']} engine{'s' if est['engines'] > 1 else ''})", lambda v: f"{v:,.3g}")):
        rows.append((label, f(est["dense"][key]), f(est["knn"][key])))
    w = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = [f"stage {est['stage']}, samples " + ", ".join(f"{k}={v:,}" for k, v in est["samples"].items())
             + f"; {est['tokens_per_s_per_engine']:,} prompt tokens/s per engine ({est['rate_source']})"]
    lines += ["  ".join(r[c].ljust(w[c]) if c == 0 else r[c].rjust(w[c]) for c in range(3)) for r in rows]
    return "\n".join(lines)
