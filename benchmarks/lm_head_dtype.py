"""The hidden path's LM head in each dtype on this CPU: speed and accuracy, side by side in one process.

    python -m benchmarks.lm_head_dtype [--model DIR] [--rows 64] [--write-result NAME]

Runs :meth:`delift_ray.scoring.lm_head.LMHead.gold_logprobs` (the job's own LM head) with
the model's head weight in float32, bfloat16 and float16 on ``rows`` random hidden states,
one thread, and reports rows per CPU second and the largest |logprob| error against
float64. ``float32`` is the job's float32 head (numpy's BLAS); ``float32_torch`` runs the
same head through torch's matmul instead, the path the job takes for half precisions. This is why the scorer runs the head in float32 when float16 is forced on a CPU
(:func:`delift_ray.scoring.engine.head_dtype`), and why ``engine.dtype: auto`` picks
bfloat16 on a CPU only where it has bfloat16 instructions
(:func:`delift_ray.scoring.engine.cpu_has_bf16`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint (default: the demo model)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--write-result", metavar="NAME")
    args = ap.parse_args(argv)

    import torch

    from delift_ray import assets
    from delift_ray.scoring.engine import cpu_has_bf16
    from delift_ray.scoring.lm_head import LMHead, load_head_weight, load_hf_config

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # numpy's BLAS too
    model = args.model or str(assets.demo_model_dir())
    cfg = load_hf_config(model)
    w = load_head_weight(model, bool(getattr(cfg, "tie_word_embeddings", False))).float()
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(args.rows, w.shape[1])), dtype=torch.float32)
    gold = rng.integers(0, w.shape[0], size=args.rows)
    ref = LMHead(w.double(), device="cpu").gold_logprobs(h.double(), gold)
    out: dict = {
        "model": Path(model).name,
        "vocab": int(w.shape[0]),
        "hidden": int(w.shape[1]),
        "rows": args.rows,
        "threads": 1,
        "cpu_has_bf16": cpu_has_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    for name in ("float32", "float32_torch", "bfloat16", "float16"):
        dt = getattr(torch, name.removesuffix("_torch"))
        head = LMHead(w, device="cpu").to_dtype(dt)
        if name.endswith("_torch"):
            head._weight_np = None
        head.gold_logprobs(h[:2].to(dt), gold[:2])  # warm-up
        c0 = time.process_time()
        lp = head.gold_logprobs(h.to(dt), gold)
        secs = time.process_time() - c0
        out[f"{name}_rows_per_cpu_s"] = round(args.rows / secs, 2)
        out[f"{name}_max_abs_logprob_err"] = float(np.abs(lp - ref).max())
    out["numpy_blas_over_torch"] = round(out["float32_rows_per_cpu_s"] / out["float32_torch_rows_per_cpu_s"], 2)
    out["float32_over_float16"] = round(out["float32_rows_per_cpu_s"] / out["float16_rows_per_cpu_s"], 1)
    out["float32_over_bfloat16"] = round(out["float32_rows_per_cpu_s"] / out["bfloat16_rows_per_cpu_s"], 1)
    from benchmarks.results import emit

    return emit(out, args.write_result)


if __name__ == "__main__":
    main()
