"""The job's steps, in the order :func:`delift_ray.job.run` runs them::

    ingest -> embed (knn) -> plan -> score -> assemble -> select -> write

Each step is a function of its inputs that returns its result and a typed stats object
(:class:`~delift_ray.steps.base.StepStats`); :class:`~delift_ray.steps.base.StepLog`
times it, logs one line when it ends and keeps the figures for ``run.json["steps"]``.
Kernel types (dense, knn) differ only in :mod:`delift_ray.kernel_types`, which the plan and
assemble steps ask; a type that needs candidate pairs adds the embed step.

* :mod:`.ingest`: read every dataset the stage needs, tokenise, set aside what cannot fit;
* :mod:`.embed`: (knn) sample embeddings and each helped sample's candidate examples;
* :mod:`.plan`: the scorer fingerprint, the pairs the store lacks, cut into blocks;
* :mod:`.score`: baselines and pair blocks on the scorer actors, written as shards;
* :mod:`.assemble`: the stage's kernels from the stored shards;
* :mod:`.select`: the stage's submodular maximisation;
* :mod:`.write`: the run's files, committed together (:mod:`delift_ray.rundir`).
"""
