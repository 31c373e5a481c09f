"""The model's LM head applied outside vLLM, to the scored rows only (the ``hidden`` path).

vLLM's pooling runner (``runner="pooling"``, ``ALL`` token pooling) returns the final,
normed hidden state h_t of every computed prompt position. For a model whose logits are
plain ``z_t = W h_t`` (no scaling, soft-capping or bias), the gold log-probability of
token x_{t+1} is

    log p(x_{t+1} | x_{<=t}) = z_t[x_{t+1}] - logsumexp_v z_t[v],

so the LM head runs on the response rows only, in chunks of ``chunk_rows`` rows whose
logits stay under ``HEAD_CHUNK_BYTES``, and never on the context (vLLM's ``prompt_logprobs`` runs it,
a float32 log-softmax and a rank count on every computed position).

``unsupported_reason`` lists what this needs of a checkpoint; anything it does not
recognise keeps the ``full`` path.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from delift_ray.errors import DeliftError

# Families whose vLLM implementation computes logits as lm_head(h) with nothing else.
PLAIN_HEAD_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
# HF config fields that would change the logits after the matmul.
_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "final_logit_softcapping")
LM_HEAD_KEYS = ("lm_head.weight",)
TIED_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight")


def load_hf_config(model: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)


def unsupported_reason(hf_config) -> Optional[str]:
    """None when logits are ``W h`` for this config's model, else why the hidden path cannot run."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if not archs or archs[0] not in PLAIN_HEAD_ARCHITECTURES:
        return (
            f"architecture {archs[0] if archs else '(none)'} is not one with a plain LM head "
            f"({', '.join(sorted(PLAIN_HEAD_ARCHITECTURES))})"
        )
    if getattr(hf_config, "quantization_config", None):
        return "the checkpoint is quantized (its LM head may not be a plain float matrix)"
    for name in _LOGIT_TRANSFORMS:
        value = getattr(hf_config, name, None)
        if value not in (None, False, 1, 1.0):
            return f"the config sets {name}={value!r}, which changes the logits after the LM head"
    return None


def checkpoint_dir(model: str) -> str:
    """Local directory of the checkpoint: the path itself, or its Hugging Face cache snapshot."""
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download

    # The engine has downloaded the weights already; this resolves the same cache entry.
    return snapshot_download(model, allow_patterns=["*.json", "*.safetensors"])


def _weight_file(ckpt: str, keys: tuple[str, ...]) -> tuple[str, str] | None:
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for key in keys:
            if key in weight_map:
                return os.path.join(ckpt, weight_map[key]), key
        return None
    from safetensors import safe_open

    for name in sorted(os.listdir(ckpt)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(ckpt, name), framework="pt") as f:
                for key in keys:
                    if key in f.keys():
                        return os.path.join(ckpt, name), key
    return None


def load_head_weight(model: str, tied: bool):
    """The [vocab, hidden] LM-head matrix of a safetensors checkpoint (tied: the input embedding)."""
    from safetensors import safe_open

    ckpt = checkpoint_dir(model)
    found = _weight_file(ckpt, LM_HEAD_KEYS) or (_weight_file(ckpt, TIED_KEYS) if tied else None)
    if found is None:
        raise DeliftError(
            f"no LM-head weight ({', '.join(LM_HEAD_KEYS + (TIED_KEYS if tied else ()))}) "
            f"in the safetensors files of {model}"
        )
    path, key = found
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(key)


# Bytes of one chunk's float32 logits: 1,024 rows of a 49k vocabulary (SmolLM2), 512 of a
# 128k one (Llama 3). Wide chunks keep the GEMM efficient: SmolLM2's head over 4,096 random
# rows on 2 AVX2 cores took 5.5 s in 128-row chunks and 3.3 s in 1,024-row ones (with the
# in-place log-sum-exp below; a one-off timing, the scoring benchmark rows are the figure).
HEAD_CHUNK_BYTES = 256 * 1024**2


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per LM-head chunk: as many as keep the logits under HEAD_CHUNK_BYTES, 16 to 1,024."""
    return int(max(16, min(1024, HEAD_CHUNK_BYTES // (4 * max(vocab_size, 1)))))


class LMHead:
    """Gold-token log-probabilities from final hidden states: ``z = W h``, ``z[gold] - logsumexp(z)``.

    ``weight``: [vocab, hidden]. The matmul runs in its dtype (the scorer moves it to the
    engine's model dtype with :meth:`to_dtype`, as vLLM's own LM head runs); the
    log-sum-exp runs in float32, as vLLM's log-softmax does.
    """

    def __init__(self, weight, chunk_rows: Optional[int] = None, device: Optional[str] = None):
        import torch

        if weight.ndim != 2:
            raise ValueError(f"LM-head weight must be [vocab, hidden], got shape {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise ValueError(f"LM-head weight must be a float matrix, got {weight.dtype}")
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(int(weight.shape[0]))
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # The transposed VIEW of the [vocab, hidden] weight, not a contiguous [hidden, vocab] copy:
        # with torch 2.13 on CPU a bf16 matmul against the contiguous copy falls back to the
        # generic cpublas gemm, measured 39x slower (292 s vs 7.5 s for 256 rows x 49,152 vocab;
        # float32 6% either way; same values).
        self.weight_t = weight.to(self.device).contiguous().t()
        self.chunk_rows = chunk_rows
        self._weight_np = self._numpy_weight()

    @classmethod
    def from_checkpoint(cls, model: str, hf_config, **kw) -> "LMHead":
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        return cls(load_head_weight(model, tied), **kw)

    def to_dtype(self, dtype) -> "LMHead":
        """Run the matmul in ``dtype`` (the engine's model dtype, as vLLM's own LM head does)."""
        self.weight_t = self.weight_t.t().to(dtype).contiguous().t()  # keep the fast layout (see __init__)
        self._weight_np = self._numpy_weight()
        return self

    def _numpy_weight(self) -> Optional[np.ndarray]:
        """The [vocab, hidden] weight as a numpy array where numpy's BLAS runs the matmul, else None.

        On CPU in float32 (or float64) the matmul goes through numpy's BLAS (OpenBLAS in
        numpy's wheels), which ran SmolLM2's head 1.2-1.5x as fast as torch's MKL sgemm on an
        AMD EPYC with AVX2 (``numpy_blas_over_torch`` of benchmarks/lm_head_dtype.py). Same values to float32 rounding. OpenBLAS reads
        OMP_NUM_THREADS, which the dispatcher sets per scorer. Half precisions have no numpy GEMM.
        """
        import torch

        if self.device.type != "cpu" or self.weight_t.dtype not in (torch.float32, torch.float64):
            return None
        return self.weight_t.t().numpy()

    @property
    def hidden_size(self) -> int:
        return int(self.weight_t.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.weight_t.shape[1])

    def gold_logprobs(self, hidden, gold) -> np.ndarray:
        """log softmax(W h_r)[gold_r] for each row r of ``hidden`` [rows, hidden_size], as float64."""
        import torch

        hidden = torch.as_tensor(hidden)
        gold = torch.as_tensor(np.asarray(gold, dtype=np.int64))
        if hidden.ndim != 2 or hidden.shape[1] != self.hidden_size:
            raise ValueError(f"hidden states must be [rows, {self.hidden_size}], got {tuple(hidden.shape)}")
        if gold.shape != (hidden.shape[0],):
            raise ValueError(f"need one gold token per row: {hidden.shape[0]} rows, {tuple(gold.shape)} tokens")
        if gold.numel() and (int(gold.min()) < 0 or int(gold.max()) >= self.vocab_size):
            raise ValueError(f"gold token ids must lie in [0, {self.vocab_size})")
        out = torch.empty(hidden.shape[0], dtype=torch.float64)
        with torch.inference_mode():
            for s in range(0, hidden.shape[0], self.chunk_rows):
                h = hidden[s : s + self.chunk_rows].to(self.device, self.weight_t.dtype)
                g = gold[s : s + self.chunk_rows].to(self.device)
                z = self._logits(h)
                gold_z = z.gather(1, g[:, None])[:, 0]
                # logsumexp in place: the chunk's logits are the largest buffer here, and
                # torch.logsumexp writes two more of that size (same values, less memory traffic).
                m = z.amax(dim=1, keepdim=True)
                lse = z.sub_(m).exp_().sum(dim=1).log_() + m[:, 0]
                out[s : s + self.chunk_rows] = (gold_z - lse).double().cpu()
        return out.numpy()

    def _logits(self, h):
        """``h @ W^T`` in the weight's dtype, as float32 [rows, vocab] (see ``_numpy_weight``)."""
        import torch

        if self._weight_np is not None:
            return torch.from_numpy(h.numpy() @ self._weight_np.T).float()
        return (h @ self.weight_t).float()
