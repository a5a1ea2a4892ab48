"""Run by the distributed tests under torchrun: fit and attribute a tiny run, optionally killing one process mid-way.

    torchrun --standalone --nproc-per-node 2 distributed_fit.py MODEL TRAIN QUERIES RUN_DIR [KILL_RANK KILL_STEP]

STATE_CACHE=disk in the environment keeps the states in a file every process maps.
"""

import json
import os
import signal
import sys

from stride_engine import Stride, distributed, preset, read_documents, read_queries

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=24, checkpoint_every=8,
            operators_per_step=4, linearity_every=6, linearity_operators=12, top_k=20, loss_positions=4, micro_batch=8)


def main(model: str, train: str, queries: str, run_dir: str, kill_rank: int = -1, kill_step: int = -1) -> None:
    steps = []

    def on_step(step: int) -> None:
        steps.append(step)
        if distributed.rank() == kill_rank and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dies without a word, as an out-of-memory kill does

    config = preset("cpu-smoke", **TINY, state_cache=os.environ.get("STATE_CACHE", "memory"))
    stride = Stride.from_pretrained(model, config, run_dir, progress=False)
    stride.fit(read_documents([train]), on_step=on_step)
    stride.attribute(read_queries(queries))
    print(json.dumps({"rank": distributed.rank(), "world": distributed.world_size(), "first_step": steps[0] if steps else None}))


if __name__ == "__main__":
    main(*sys.argv[1:5], *map(int, sys.argv[5:7]))
