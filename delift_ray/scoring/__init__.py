"""Building prompts into requests and scoring them with a vLLM engine (inside a Ray actor).

* ``engine.Scorer``: the plain-Python engine wrapper (usable without Ray) and its logprob
  paths (hidden, full, suffix);
* ``lm_head.LMHead``: the model's LM head applied to the response rows of the hidden path;
* ``actor.BlockScorer``: scores one block and writes its shard (the job wraps it in a Ray actor);
* ``embed_actor.BlockEmbedder``: the knn kernel's embeddings on the same kind of actor (the
  vLLM backend of :mod:`delift_ray.embedder`).
"""
