"""delift-ray: DELIFT data selection for LLM fine-tuning as a distributed Ray + vLLM job.

One obvious entry point::

    import delift_ray
    result = delift_ray.run({"data": "pool.jsonl", "model": "my/model", "out": "runs/x"})
    result.selected_ids
"""

__version__ = "0.1.0"


def run(config, **options):
    """Run a selection job from a DeliftConfig, a dict or a YAML path; see delift_ray.job.run."""
    from delift_ray.job import run as _run

    return _run(config, **options)


__all__ = ["run", "__version__"]
