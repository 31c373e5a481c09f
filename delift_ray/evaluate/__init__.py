"""Evaluation of a selection run: does the DELIFT subset hold up?

:func:`evaluate_run` fine-tunes the same model on the DELIFT subset, on random subsets of
the same size (one per seed), on the full pool and on the DELIFT-SE subset (the same
selection function on a sentence-embedding kernel), evaluates each on held-out data
(response NLL, ROUGE-L F1 of greedy generations, and both again in-context with the
untuned model), and writes ``<run_dir>/eval/report.{json,md,png}``.

Heavy imports (torch, transformers, peft, matplotlib) happen inside the functions.
"""

from delift_ray.evaluate.runner import evaluate_run

__all__ = ["evaluate_run"]
