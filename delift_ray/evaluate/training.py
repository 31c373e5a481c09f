"""Fine-tuning a causal LM on a list of (prompt, response) pairs.

LoRA through ``peft`` by default (r=8, alpha=32, dropout 0.1, every linear layer except the
LM head: ``target_modules="all-linear"``), or full fine-tuning. AdamW, linear learning-rate
decay to 0 after a short warm-up, loss on the response tokens (and the final EOS) only,
right padding. Every random choice (adapter initialisation, dropout, batch order) follows
``seed``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from delift_ray.errors import DeliftError, one_line

LORA_R = 8
LORA_ALPHA = 32
LORA_DROPOUT = 0.1
DEFAULT_LR_LORA = 3e-4
DEFAULT_LR_FULL = 2e-5


@dataclass
class TrainSettings:
    """Hyper-parameters shared by every fine-tuned row of the evaluation."""

    epochs: int = 2
    # Fixed optimiser steps, cycling over the subset in fresh shuffles (None: epochs x
    # ceil(n / batch_size)). Equal steps make arms of different sizes comparable.
    steps: Optional[int] = None
    lr: Optional[float] = None  # None: 3e-4 with LoRA, 2e-5 for full fine-tuning
    batch_size: int = 4
    max_length: int = 256
    full_finetune: bool = False
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = LORA_R
    lora_alpha: int = LORA_ALPHA
    lora_dropout: float = LORA_DROPOUT

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_LR_FULL if self.full_finetune else DEFAULT_LR_LORA


@dataclass
class TrainStats:
    samples: int
    steps: int
    seconds: float
    tokens: int
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    losses: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "tokens": self.tokens,
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
        }


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise DeliftError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_model(path: str, *, dtype, device: str):
    """A causal LM in eval mode on ``device``; DeliftError when it cannot be loaded."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise DeliftError(f"cannot load model {path}: {one_line(exc)}") from None
    model.to(device)
    model.eval()
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise DeliftError(f"cannot load the tokenizer of {path}: {one_line(exc)}") from None
    if tok.eos_token_id is None:
        raise DeliftError(f"the tokenizer of {path} has no eos token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _set_seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fine_tune(
    model_path: str,
    items: Sequence[tuple[list[int], list[int]]],
    settings: TrainSettings,
    *,
    seed: int,
    pad_id: int,
    dtype,
    device: str,
    desc: str = "train",
    progress: bool = True,
):
    """Fine-tune a fresh copy of ``model_path`` on ``items = [(context_ids, response_ids)]``.

    Returns ``(model in eval mode, TrainStats)``. With LoRA the returned model is the
    ``peft`` wrapper (adapters not merged).
    """
    import torch
    from tqdm.auto import tqdm

    if not items:
        raise DeliftError("cannot fine-tune on an empty subset")
    _set_seed(seed)
    model = load_model(model_path, dtype=dtype, device=device)
    if not settings.full_finetune:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)

    rng = np.random.default_rng(seed)
    bs = max(1, int(settings.batch_size))
    steps_per_epoch = math.ceil(len(items) / bs)
    total = int(settings.steps) if settings.steps else steps_per_epoch * max(1, int(settings.epochs))
    warm = int(round(settings.warmup_ratio * total))

    def lr_factor(step: int) -> float:  # step counts from 0
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    stats = TrainStats(samples=len(items), steps=0, seconds=0.0, tokens=0)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    while stats.steps < total:
        order = rng.permutation(len(items))
        for s in range(0, len(order), bs):
            if stats.steps >= total:
                break
            batch = [items[k] for k in order[s : s + bs]]
            T = max(len(c) + len(r) for c, r in batch)
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), T), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for row, (c, r) in enumerate(batch):
                seq = c + r
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                labels[row, len(c) : len(seq)] = torch.tensor(r, dtype=torch.long)
                mask[row, : len(seq)] = 1
                stats.tokens += len(seq)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            loss = out.loss
            if not torch.isfinite(loss):
                raise DeliftError(f"{desc}: the training loss became {loss.item()}; lower --lr")
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            stats.steps += 1
            v = float(loss.detach())
            stats.losses.append(v)
            bar.update(1)
            bar.set_postfix(loss=f"{v:.3f}")
    bar.close()
    stats.seconds = time.perf_counter() - t0
    stats.first_loss = stats.losses[0]
    stats.last_loss = stats.losses[-1]
    model.eval()
    return model, stats
