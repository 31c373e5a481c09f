"""Building prompts into requests and scoring them with a vLLM engine (inside a Ray actor).

``engine.Scorer`` is the plain-Python engine wrapper (usable without Ray);
``actor.ScorerActor`` is the Ray actor that scores one block and writes its shard.
"""
