"""Evaluation metrics: response NLL, ROUGE-L F1 of greedy generations, paired bootstrap.

* :func:`response_nll` -- per held-out sample, the mean negative log-likelihood (nats per
  token) of the reference response tokens given the context (teacher forcing).
* :func:`mismatched_responses` -- for each held-out prompt another item's response, for the
  held-out margin: NLL(mismatched response | prompt) - NLL(right response | prompt), which a
  model trained on wrong answers loses even where its NLL on fluent text does not suffer.
* :func:`greedy_generate` -- greedy continuations of the contexts.
* :func:`rouge_l_f1` -- ROUGE-L F1 from the longest common subsequence (LCS) of lowercased
  word tokens (runs of letters/digits, so punctuation does not count).
* :func:`paired_bootstrap` -- percentile interval of the mean per-sample difference of two
  systems evaluated on the same held-out samples.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

_TOKEN = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- ROUGE-L


def rouge_tokens(text: str) -> list[str]:
    """Lowercased word tokens: maximal runs of word characters (``\\w+``)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else (prev[j] if prev[j] >= cur[j - 1] else cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 (beta = 1) of one prediction against one reference.

    Two empty texts score 1.0; one empty text scores 0.0.
    """
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    if not p and not r:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    lcs = lcs_length(p, r)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    prec, rec = lcs / len(p), lcs / len(r)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec)}


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction against one reference (see :func:`rouge_l`)."""
    return rouge_l(prediction, reference)["f1"]


# --------------------------------------------------------------------------- bootstrap


@dataclass
class BootstrapResult:
    """Mean of ``a - b`` over paired samples and its percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    n: int
    resamples: int
    confidence: float

    @property
    def within_noise(self) -> bool:
        """True when the interval contains 0: the data do not tell the two apart."""
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        d = asdict(self)
        d["within_noise"] = self.within_noise
        return d


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> BootstrapResult:
    """Paired bootstrap over samples of ``mean(a - b)``.

    ``a[k]`` and ``b[k]`` are two systems' metric on held-out sample k. Samples are
    redrawn with replacement ``resamples`` times with ``numpy.random.default_rng(seed)``;
    the interval is the (1-confidence)/2 and (1+confidence)/2 percentiles of the
    resampled means.
    """
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty 1-D sequences")
    if not np.all(np.isfinite(x)):
        raise ValueError("paired_bootstrap got non-finite values")
    rng = np.random.default_rng(seed)
    n = x.size
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, resamples, chunk):
        m = min(chunk, resamples - s)
        idx = rng.integers(0, n, size=(m, n))
        means[s : s + m] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapResult(float(x.mean()), float(low), float(high), int(n), int(resamples), float(confidence))


# --------------------------------------------------------------------------- model metrics


def _batches(order: Sequence[int], size: int):
    for s in range(0, len(order), size):
        yield list(order[s : s + size])


def response_nll(
    model,
    items: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Per sample, the mean NLL (nats/token) of the response tokens given the context.

    ``items[k] = (context_ids, response_ids)``; each response needs at least one token.
    Sequences are left-padded and batched by length; only the logits of the last
    ``max response length + 1`` positions are computed (``logits_to_keep``).
    """
    import torch

    device = next(model.parameters()).device
    out = np.full(len(items), np.nan, dtype=np.float64)
    order = sorted(range(len(items)), key=lambda k: len(items[k][0]) + len(items[k][1]))
    model.eval()
    with torch.no_grad():
        for batch in _batches(order, batch_size):
            seqs = [items[k][0] + items[k][1] for k in batch]
            rlen = [len(items[k][1]) for k in batch]
            if min(rlen) < 1:
                raise ValueError("response_nll: a response has no token")
            T = max(len(s) for s in seqs)
            keep = max(rlen) + 1
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, T - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[row, T - len(s) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                logits_to_keep=keep,
            ).logits
            logits = logits[:, -keep:, :].float()
            logp = torch.log_softmax(logits[:, :-1, :], dim=-1)  # predicts the last keep-1 tokens
            targets = ids[:, T - keep + 1 :].to(device)
            tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, keep-1)
            for row, k in enumerate(batch):
                n = rlen[row]
                out[k] = float(-tok_lp[row, -n:].mean())
            if progress is not None:
                progress(len(batch))
    return out


def mismatched_responses(sample_ids: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Item k's mismatched response: that of the item after k in the id order (the noise
    gate's fixed, seedless derangement, :func:`delift_ray.gate.derangements`)."""
    from delift_ray.gate import derangements

    if len(sample_ids) < 2:
        raise ValueError("the held-out margin needs at least two held-out items")
    donors = derangements(list(sample_ids), 1)[0]
    return [responses[int(d)] for d in donors]


def greedy_generate(
    model,
    tokenizer,
    contexts: Sequence[list[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
) -> list[str]:
    """Greedy continuations (decoded, special tokens removed, stripped) of each context."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    texts: list[str] = [""] * len(contexts)
    order = sorted(range(len(contexts)), key=lambda k: len(contexts[k]))
    model.eval()
    with torch.no_grad():
        for batch in _batches(order, batch_size):
            T = max(len(contexts[k]) for k in batch)
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for row, k in enumerate(batch):
                c = contexts[k]
                ids[row, T - len(c) :] = torch.tensor(c, dtype=torch.long)
                mask[row, T - len(c) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
            new = gen[:, T:].cpu().tolist()
            for row, k in enumerate(batch):
                toks = new[row]
                if eos_id is not None and eos_id in toks:
                    toks = toks[: toks.index(eos_id)]
                texts[k] = tokenizer.decode(toks, skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(batch))
    return texts
