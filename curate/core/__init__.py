"""What the applications share: the open run, targets and query sets, model-free baselines, budgets, executors.

    run.py        Run: a fitted run directory (config, inputs, pool, tokenizer, engine, score stores)
    targets.py    Target: the examples a job is for, as the engine's queries (files, lm-eval tasks, parts, windows)
    baselines.py  model-free scores of a pool against a target (random, BM25, embeddings, DSIR)
    budget.py     budgets ("20%", "500", "50M-tokens") and the allocation of one across documents
    executors.py  datatrove executors (local, Slurm, Ray) and their chaining
    readers.py    datatrove readers of a run's pool that name documents as the engine does
    outputs.py    writing into a datatrove folder atomically
"""
