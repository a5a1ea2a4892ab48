"""Operator training on several processes (torchrun, gloo on CPU): the same operators and scores as one process,
a worker killed mid-training resumes, and only the first process writes or speaks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from stride_engine import ConfigError, Stride, preset, read_documents, read_queries

from distributed_fit import TINY
from tiny import random_texts, save_tiny_model, write_jsonl

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    texts = random_texts(120, seed=5)
    model = save_tiny_model(root / "model", "llama", texts)
    train = write_jsonl(root / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    queries = write_jsonl(root / "queries.jsonl", [{"id": f"q{i}", "text": t} for i, t in enumerate(random_texts(6, seed=9))])
    single = root / "single"
    Stride.from_pretrained(model, preset("cpu-smoke", **TINY), single, progress=False).fit(read_documents([train])).attribute(read_queries(queries))
    return model, train, queries, single


def _torchrun(*args: str, processes: int = 2, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "OMP_NUM_THREADS": "1", **env_vars}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _reports(result: subprocess.CompletedProcess) -> list[dict]:
    """Each process's closing line; two that finish together can share a line of torchrun's output."""
    return [json.loads(report) for report in re.findall(r"\{[^{}]*\}", result.stdout)]


def _assert_same_run(run: Path, single: Path) -> None:
    """Equal to one process's run up to float summation order (gradients summed in another association)."""
    one, two = load_file(str(single / "operators" / "bank.safetensors")), load_file(str(run / "operators" / "bank.safetensors"))
    for name in one:
        np.testing.assert_allclose(two[name], one[name], atol=1e-6, rtol=0, err_msg=name)
        assert not np.array_equal(one[name], 0 * one[name]), name  # trained, not left at zero
    np.testing.assert_allclose(np.load(run / "responses" / "queries.npy"), np.load(single / "responses" / "queries.npy"), atol=1e-6, rtol=0)
    assert (run / "stages" / "scores-queries.json").is_file()


# The in-memory cache in the default run; the other two caches read the same rows another way (slow run).
@pytest.mark.parametrize("state_cache", ["memory", pytest.param("disk", marks=pytest.mark.slow),
                                         pytest.param("recompute", marks=pytest.mark.slow)])
def test_two_processes_train_the_operators_one_process_trains(inputs, tmp_path, state_cache):
    model, train, queries, single = inputs
    result = _torchrun(str(HERE / "distributed_fit.py"), str(model), str(train), str(queries), str(tmp_path / "run"),
                       STATE_CACHE=state_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted((r["rank"], r["world"]) for r in _reports(result)) == [(0, 2), (1, 2)]
    _assert_same_run(tmp_path / "run", single)
    assert not list((tmp_path / "run").rglob("*.tmp*"))  # nothing half-written by two writers
    assert not (tmp_path / "run" / "operators.partial").exists()  # the states' file went with it


@pytest.mark.slow
def test_a_worker_killed_mid_training_resumes_from_the_last_checkpoint(inputs, tmp_path):
    model, train, queries, single = inputs
    run = tmp_path / "run"
    killed = _torchrun(str(HERE / "distributed_fit.py"), str(model), str(train), str(queries), str(run), "1", "13")
    assert killed.returncode != 0  # torchrun stops the group when one worker dies
    assert not (run / "stages" / "operators.json").exists() and any((run / "operators.partial").rglob("progress.json"))

    resumed = _torchrun(str(HERE / "distributed_fit.py"), str(model), str(train), str(queries), str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {r["first_step"] for r in _reports(resumed)} == {9}  # both resumed after the checkpoint at step 8
    _assert_same_run(run, single)


@pytest.mark.slow
def test_the_cli_runs_under_torchrun_and_speaks_once(inputs, tmp_path):
    model, train, queries, single = inputs
    sets = [f"--set={key}={value}" for key, value in TINY.items()]
    result = _torchrun("-m", "curate", "attribute", "--model", str(model), "--train", str(train), "--queries", str(queries),
                       "--out", str(tmp_path / "run"), "--preset", "cpu-smoke", "--quiet", *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("scores: ") == 1
    _assert_same_run(tmp_path / "run", single)


def test_a_world_size_without_a_launcher_is_refused(inputs, tmp_path, monkeypatch):
    model, *_ = inputs
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_share_the_recovery_and_write_the_store_one_process_writes(inputs, tmp_path):
    """Under torchrun each process solves its share of the queries (cut at whole recovery batches, as
    Stride.attribute_part cuts them) and the first merges them: on the same operators and responses, the store one
    process writes. 130 queries: recovery's batches of 64 give both processes work."""
    import shutil

    import polars as pl

    from stride_engine import ScoreStore

    model, train, _, _ = inputs
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": f"q{i}", "text": " ".join(t.split()[:8])} for i, t in enumerate(random_texts(130, seed=11))])
    one = tmp_path / "one"
    stride = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), one, progress=False).fit(read_documents([train]))
    stride.responses(read_queries(queries))
    shutil.copytree(one, tmp_path / "two")  # the same operators and responses: only the recovery is left
    stride.recover()
    result = _torchrun(str(HERE / "distributed_fit.py"), str(model), str(train), str(queries), str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "stages" / "scores-queries.json").read_text())
    assert record["parts"] == 2 and record["queries"] == 130
    assert not (tmp_path / "two" / "parts").exists() or not any((tmp_path / "two" / "parts").iterdir())
    single, shared = ScoreStore(one / "scores" / "queries"), ScoreStore(tmp_path / "two" / "scores" / "queries")
    for table in ("queries", "chunk_scores"):
        assert getattr(shared, table)().equals(getattr(single, table)()), table
    assert pl.read_parquet(tmp_path / "two" / "scores" / "queries" / "top.parquet").equals(pl.read_parquet(one / "scores" / "queries" / "top.parquet"))
    np.testing.assert_allclose(shared.documents()["mean_score"].to_numpy(), single.documents()["mean_score"].to_numpy(), rtol=1e-12)
