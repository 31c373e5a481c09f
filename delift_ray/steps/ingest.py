"""Ingest: read every dataset the stage needs, tokenise it, set aside what cannot fit."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.data import SampleSet, load_samples, sample_id, too_long_rows
from delift_ray.errors import DeliftError, one_line
from delift_ray.gate import mismatched_pairs, prompt_free_id
from delift_ray.prompts import TOO_LONG, IngestedSet, TokenizedSet, take, template_head_length, tokenize_set
from delift_ray.steps.base import StepStats


@dataclass
class IngestStats(StepStats):
    samples_by_set: dict[str, int] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        sets = ", ".join(f"{n} {k} samples of {self.rows_read[n]} rows" for n, k in self.samples_by_set.items())
        skipped = ", ".join(f"{r}={c}" for r, c in sorted(self.skipped.items()))
        return sets + (f"; skipped {skipped}" if skipped else "")


def stage_sources(cfg: DeliftConfig) -> dict[str, str]:
    """Set name -> data source of every dataset the stage reads."""
    sources = {"pool": cfg.data}
    if cfg.stage == "task":
        sources["target"] = cfg.target
    if cfg.stage == "continual":
        sources["existing"] = cfg.existing
    return sources


def load_tokenizer(cfg: DeliftConfig):
    from transformers import AutoTokenizer

    if not os.path.exists(cfg.model) and cfg.model.startswith((".", "/", "~")):
        raise DeliftError(f"model path does not exist: {cfg.model}")
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.engine.trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/... for unusable checkpoints
        raise DeliftError(f"cannot load a tokenizer from model {cfg.model!r}: {one_line(exc)}") from None
    if tok.eos_token_id is None:
        raise DeliftError(f"the tokenizer of {cfg.model!r} has no EOS token, which the utility needs")
    return tok


def fits_mask(tok: TokenizedSet, max_len: int, min_head: int) -> np.ndarray:
    """Samples that can be scored: query and response fit with and without an example."""
    resp = tok.response.lengths() + 2
    return (tok.no_example.lengths() + resp <= max_len) & (min_head + tok.tail.lengths() + resp <= max_len)


def ingest(cfg: DeliftConfig, tokenizer, progress: bool = False) -> tuple[dict[str, IngestedSet], IngestStats]:
    """Load, tokenise and length-check every dataset of the stage (``progress``: a bar over the rows read)."""
    max_len = cfg.engine.max_model_len - 1
    min_head = template_head_length(tokenizer, cfg.templates)
    sets: dict[str, IngestedSet] = {}
    stats = IngestStats()
    skipped: Counter = Counter()
    for name, src in stage_sources(cfg).items():
        s = load_samples(
            src,
            name,
            columns=cfg.columns,
            split=cfg.split,
            max_rows=cfg.max_samples,
            strict=cfg.strict,
            progress=progress,
        )
        # Rows far too long are screened out before full tokenisation (bounded memory and time).
        screened = too_long_rows(tokenizer, s.prompts, s.responses, max_len)
        cand = np.setdiff1d(np.arange(len(s)), np.asarray(screened, dtype=np.int64))
        if screened:
            tok = tokenize_set(
                tokenizer,
                [s.prompts[k] for k in cand],
                [s.responses[k] for k in cand],
                cfg.templates,
                progress=progress,
            )
        else:
            tok = tokenize_set(tokenizer, s.prompts, s.responses, cfg.templates, progress=progress)
        ok = fits_mask(tok, max_len, min_head)
        tok = take(tok, np.flatnonzero(ok)) if not ok.all() else tok
        keep = cand[ok]
        dropped = np.setdiff1d(np.arange(len(s)), keep)
        if dropped.size and cfg.strict:
            raise DeliftError(
                f"{name} data {src}: row {s.rows[dropped[0]]} does not fit max_model_len={cfg.engine.max_model_len}"
            )
        if not keep.size:
            raise DeliftError(f"{name} data {src}: no sample fits max_model_len={cfg.engine.max_model_len}")
        kept = s.subset(keep)
        if dropped.size:
            kept.skipped[TOO_LONG] += int(dropped.size)
        sets[name] = IngestedSet(kept, tok, s.subset(dropped))
        stats.samples_by_set[name] = len(kept)
        stats.rows_read[name] = kept.rows_read
        skipped.update(kept.skipped)
    stats.skipped = dict(skipped)
    return sets, stats


# The baseline-only sets: scored for their baselines only, never paired or embedded.
# selection.min_prompt_gain: every pool sample with its prompt left empty.
PROMPT_FREE = "prompt_free"
# selection.noise_gate: every pool response after gate_prompts other samples' prompts.
MISMATCHED = "mismatched"


def baseline_only_sets(cfg: DeliftConfig, sets: dict[str, IngestedSet], tokenizer) -> dict[str, IngestedSet]:
    """The baseline-only sets the selection options need ({} when both are off)."""
    out = {}
    if cfg.selection.min_prompt_gain is not None:
        out[PROMPT_FREE] = prompt_free_set(cfg, sets["pool"].samples, tokenizer)
    if cfg.selection.noise_gate == "contrastive":
        out[MISMATCHED] = mismatched_set(cfg, sets["pool"].samples, tokenizer)
    return out


def prompt_free_set(cfg: DeliftConfig, pool: SampleSet, tokenizer) -> IngestedSet:
    """The pool's responses after an empty prompt: d(r_i | empty prompt) beside d(r_i | p_i).

    Position k is pool sample k; a prompt-free copy is never longer than its sample, so all fit.
    """
    empty = [""] * len(pool)
    free = _copies(PROMPT_FREE, pool, [prompt_free_id(r) for r in pool.responses], empty, list(pool.responses))
    tok = tokenize_set(tokenizer, empty, free.responses, cfg.templates, progress=False)
    return IngestedSet(free, tok, free.subset([]))


def mismatched_set(cfg: DeliftConfig, pool: SampleSet, tokenizer) -> IngestedSet:
    """Every pool response after each of its ``selection.gate_prompts`` donors' prompts, where it fits.

    A copy that does not fit max_model_len is left out (the gate uses the sample's other
    mismatches); copies that coincide (duplicate prompts) are scored once.
    """
    seen: dict[str, tuple[int, int]] = {}
    for i, d in mismatched_pairs(pool, cfg.selection.gate_prompts, cfg.selection.gate_donors):
        seen.setdefault(sample_id(pool.prompts[d], pool.responses[i]), (i, d))
    ids = list(seen)
    prompts = [pool.prompts[d] for _, d in seen.values()]
    responses = [pool.responses[i] for i, _ in seen.values()]
    tok = tokenize_set(tokenizer, prompts, responses, cfg.templates, progress=False)
    fits = tok.no_example.lengths() + tok.response.lengths() + 2 <= cfg.engine.max_model_len - 1
    keep = np.flatnonzero(fits)
    copies = _copies(MISMATCHED, pool, ids, prompts, responses, [i for i, _ in seen.values()])
    return IngestedSet(copies.subset(keep), take(tok, keep) if not fits.all() else tok, copies.subset([]))


def _copies(name: str, pool: SampleSet, ids: list[str], prompts: list[str], responses: list[str], of=None) -> SampleSet:
    """A baseline-only set built from pool samples (``of``: the pool position of each; default 0..n-1)."""
    of = range(len(pool)) if of is None else of
    return SampleSet(
        name,
        sample_ids=ids,
        rows=[pool.rows[i] for i in of],
        prompts=prompts,
        responses=responses,
        originals=[pool.originals[i] for i in of],
        copies=[pool.copies[i] for i in of],
        rows_read=pool.rows_read,
    )
