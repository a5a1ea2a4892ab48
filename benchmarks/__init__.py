"""Attribution benchmark: quality (LDS, top-k removal) and cost (seconds, peak memory) of STRIDE and its peers.

`python -m benchmarks run --suite smoke|full` (or `make bench-smoke` / `make bench`) runs every setting and method
and writes benchmarks/results/<suite>.{json,md} and plots; ground truth from explicit retraining is cached.
"""
