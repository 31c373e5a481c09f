"""The project's benchmark scripts, run from the repo root as ``python -m benchmarks.<name>``."""
