"""Run directories: the CLI round trip, resuming an interrupted run, and refusing a stale stage."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from curate.cli import main
from stride_engine import OutOfMemory, ScoreStore, StageMismatchError, Stride, preset, read_documents, read_queries

from tiny import random_texts, save_tiny_model, write_jsonl

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=24, checkpoint_every=8,
            operators_per_step=4, linearity_every=6, linearity_operators=12, top_k=20)


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    texts = random_texts(120, seed=5)
    model = save_tiny_model(root / "model", "llama", texts)
    train = write_jsonl(root / "train.jsonl", [{"id": f"doc{i}", "text": t, "domain": "greek"} for i, t in enumerate(texts)])
    queries = write_jsonl(root / "queries.jsonl", [
        {"id": "q1", "prompt": "alpha beta", "completion": " gamma delta"},
        {"id": "q2", "text": "iota kappa lambda mu"},
    ])
    return model, train, queries


def _attribute_args(tiny_inputs, run_dir, *extra):
    model, train, queries = tiny_inputs
    sets = [f"--set={key}={value}" for key, value in TINY.items()]
    return ["attribute", "--model", str(model), "--train", str(train), "--queries", str(queries),
            "--out", str(run_dir), "--preset", "cpu-smoke", "--quiet", *sets, *extra]


def test_cli_round_trip(tiny_inputs, tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir))
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "chunks.parquet", "design.npz", "operators/bank.safetensors",
                 "operators/curves.safetensors", "operators/curves.png", "responses/queries.npy", "scores/queries/top.parquet", "inputs.json"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "operators.partial").exists()
    responses = np.load(run_dir / "responses" / "queries.npy")
    assert responses.shape == (2, 16) and np.isfinite(responses).all() and np.abs(responses).max() > 0

    shown = CliRunner().invoke(main, ["top", str(run_dir), "--query", "q1", "-k", "5"])
    assert shown.exit_code == 0, shown.output
    assert "most influential documents for query 'q1'" in shown.output
    top = pl.read_parquet(run_dir / "scores" / "queries" / "top.parquet")
    shown_ids = ScoreStore(run_dir / "scores" / "queries").top("q1", k=5)["doc_id"].to_list()
    assert shown_ids, "the tiny run gives query q1 no positive score: the round trip shows nothing"
    listed = [line.split()[2] for line in shown.output.splitlines()[1:] if line.strip()]
    assert listed == shown_ids  # every ranked document, by id, in rank order

    # The saved config repeats the run: every stage is found finished and the scores are unchanged.
    again = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir, "--config", str(run_dir / "config.yaml")))
    assert again.exit_code == 0, again.output
    assert pl.read_parquet(run_dir / "scores" / "queries" / "top.parquet").equals(top)

    unknown = CliRunner().invoke(main, ["top", str(run_dir), "--query", "nope"])
    assert unknown.exit_code != 0 and "query 'nope' is not in" in unknown.output


def test_changed_configuration_is_detected_not_reused(tiny_inputs, tmp_path):
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir)).exit_code == 0
    changed = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir, "--set", "rank=6"))
    assert changed.exit_code != 0
    assert "stage 'operators'" in changed.output and "rank" in changed.output
    forced = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir, "--set", "rank=6", "--force"))
    assert forced.exit_code == 0, forced.output
    assert json.loads((run_dir / "stages" / "operators.json").read_text())["inputs"]["rank"] == 6


class Interrupt(Exception):
    pass


def test_resuming_an_interrupted_run_gives_the_same_scores(tiny_inputs, tmp_path):
    model, train, queries = tiny_inputs
    config = preset("cpu-smoke", **TINY)
    documents, query_set = read_documents([train]), read_queries(queries)

    straight = Stride.from_pretrained(model, config, tmp_path / "straight", progress=False).fit(documents)
    expected = straight.attribute(query_set)

    def crash(step):
        if step == 13:  # after the checkpoint at step 8, before the one at 16
            raise Interrupt

    interrupted = Stride.from_pretrained(model, config, tmp_path / "resumed", progress=False)
    with pytest.raises(Interrupt):
        interrupted.fit(documents, on_step=crash)
    assert not (tmp_path / "resumed" / "stages" / "operators.json").exists()  # not marked finished
    assert not (tmp_path / "resumed" / "operators").exists()
    assert any((tmp_path / "resumed" / "operators.partial").rglob("progress.json"))

    steps_run = []
    resumed = Stride.from_pretrained(model, config, tmp_path / "resumed", progress=False)
    resumed.fit(documents, on_step=steps_run.append)
    assert steps_run[0] == 9  # resumed from the checkpoint at step 8
    store = resumed.attribute(query_set)
    np.testing.assert_allclose(
        np.load(tmp_path / "resumed" / "responses" / "queries.npy"),
        np.load(tmp_path / "straight" / "responses" / "queries.npy"), rtol=1e-5, atol=1e-7,
    )
    assert store.top(k=20).select("query_id", "doc_id", "rank").equals(expected.top(k=20).select("query_id", "doc_id", "rank"))


def test_states_kept_on_disk_train_the_same_operators(tiny_inputs, tmp_path):
    """state_cache="disk" maps the states from a file instead of holding them: bit-identical operators and responses,
    the file is gone once the operators are written, and the setting is no part of the run's fingerprint."""
    model, train, queries = tiny_inputs
    documents, query_set = read_documents([train]), read_queries(queries)
    seen = []

    def look(step):
        if step == 1:
            seen.extend(p.stat().st_size for p in (tmp_path / "disk" / "operators.partial").glob("states-*.bin"))

    in_memory = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "memory", progress=False).fit(documents)
    on_disk = Stride.from_pretrained(model, preset("cpu-smoke", **TINY, state_cache="disk"), tmp_path / "disk", progress=False)
    on_disk.fit(documents, on_step=look)
    assert len(seen) == 1 and seen[0] > 0
    assert not (tmp_path / "disk" / "operators.partial").exists()
    bank = "operators/bank.safetensors"
    assert (tmp_path / "disk" / bank).read_bytes() == (tmp_path / "memory" / bank).read_bytes()
    np.testing.assert_array_equal(on_disk.responses(query_set), in_memory.responses(query_set))
    reopened = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "disk", progress=False)
    reopened.fit(documents)  # the memory setting reuses the disk run's stages: nothing is stale


def test_states_recomputed_per_batch_train_the_operators_the_cache_trains(tiny_inputs, tmp_path, monkeypatch):
    """state_cache="recompute" holds no states: the prefix runs on the rows a step reads, never on the whole pool at
    once, and the operators equal the cached run's within float rounding (the same scores for the queries)."""
    from safetensors.numpy import load_file

    from stride_engine.adapters import CausalLMAdapter

    model, train, queries = tiny_inputs
    documents, query_set = read_documents([train]), read_queries(queries)
    cached = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "memory", progress=False).fit(documents)
    rows_seen = []
    capture = CausalLMAdapter.capture
    monkeypatch.setattr(CausalLMAdapter, "capture", lambda self, batch, *a: rows_seen.append(len(batch["input_ids"])) or capture(self, batch, *a))
    recomputed = Stride.from_pretrained(model, preset("cpu-smoke", **TINY, state_cache="recompute"), tmp_path / "recompute", progress=False)
    recomputed.fit(documents)
    monkeypatch.setattr(CausalLMAdapter, "capture", capture)
    assert rows_seen and max(rows_seen) < len(recomputed._examples)  # never the whole pool in one go
    assert not (tmp_path / "recompute" / "operators.partial").exists()
    ours = load_file(tmp_path / "recompute" / "operators" / "bank.safetensors")
    theirs = load_file(tmp_path / "memory" / "operators" / "bank.safetensors")
    for name, values in theirs.items():
        np.testing.assert_allclose(ours[name], values, rtol=1e-3, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(recomputed.responses(query_set), cached.responses(query_set), rtol=1e-3, atol=1e-6)


def test_a_finished_run_reopens_from_its_saved_chunks_without_tokenising(tiny_inputs, tmp_path, monkeypatch):
    model, train, queries = tiny_inputs
    documents, query_set = read_documents([train]), read_queries(queries)
    config = preset("cpu-smoke", **TINY)
    fitted = Stride.from_pretrained(model, config, tmp_path / "run", progress=False).fit(documents)
    expected = fitted.attribute(query_set)
    assert (tmp_path / "run" / "chunks.tokens.npy").is_file()

    import stride_engine.stride as engine

    def no_tokenising(*args, **kwargs):
        raise AssertionError("a finished run was tokenised again")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "chunk_documents", no_tokenising)
        reopened = Stride.from_pretrained(model, config, tmp_path / "run", progress=False).fit(documents)
        for key, value in fitted._examples.batch.items():
            assert torch.equal(reopened._examples.batch[key], value), key
        store = reopened.attribute(query_set, name="again")
    assert store.top(k=20).select("query_id", "doc_id", "rank").equals(expected.top(k=20).select("query_id", "doc_id", "rank"))

    # A run fitted before the tokens were kept is tokenised once more, and keeps them from then on; a changed corpus
    # is still refused.
    (tmp_path / "run" / "chunks.tokens.npy").unlink()
    Stride.from_pretrained(model, config, tmp_path / "run", progress=False).fit(documents)
    assert (tmp_path / "run" / "chunks.tokens.npy").is_file()
    records = [{"id": i, "text": t} for i, t in zip(documents.ids, documents.texts)]
    records[0]["text"] = "alpha beta gamma"
    changed = read_documents([write_jsonl(tmp_path / "changed.jsonl", records)])
    with pytest.raises(StageMismatchError):
        Stride.from_pretrained(model, config, tmp_path / "run", progress=False).fit(changed)


def test_an_application_reopens_a_run_without_reading_its_corpus_and_still_refuses_a_changed_one(tiny_inputs, tmp_path, monkeypatch):
    """What every worker of a scoring, selection or audit job does: `Run(RUN).engine`. It reads the run's saved chunks,
    not the corpus (millions of documents in real pools); a training file edited since the fit is read and refused."""
    import shutil

    import curate.core.run as run_module
    from curate.core.run import Run, RunInputs
    from curate.errors import CurateError

    model, train, queries = tiny_inputs
    corpus = tmp_path / "train.jsonl"
    shutil.copy(train, corpus)
    documents, query_set = read_documents([corpus]), read_queries(queries)
    fitted = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "run", progress=False).fit(documents)
    expected = fitted.attribute(query_set).top(k=20).select("query_id", "doc_id", "rank")
    RunInputs(model, [corpus]).save(tmp_path / "run")

    def no_corpus(*args, **kwargs):
        raise AssertionError("the corpus was read to reopen a finished run")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "read_documents", no_corpus)
        reopened = Run(tmp_path / "run").engine
        assert reopened._examples.doc_ids == fitted._examples.doc_ids
        for key, value in fitted._examples.batch.items():
            assert torch.equal(reopened._examples.batch[key], value), key
        store = reopened.attribute(query_set, name="again")
        assert store.top(k=20).select("query_id", "doc_id", "rank").equals(expected)
        corpus.rename(tmp_path / "moved.jsonl")  # the run scores its saved chunks even when the files are gone
        assert Run(tmp_path / "run").engine.attribute(query_set, name="moved").top(k=20).select("query_id", "doc_id", "rank").equals(expected)

    records = [json.loads(line) for line in (tmp_path / "moved.jsonl").read_text().splitlines()]
    records[0]["text"] = "alpha beta gamma"
    write_jsonl(corpus, records)
    with pytest.raises(CurateError, match="cannot reopen run .*corpus"):
        Run(tmp_path / "run").engine


def test_running_out_of_memory_names_the_settings_to_lower_and_keeps_the_finished_stages(tiny_inputs, tmp_path, monkeypatch):
    model, train, _ = tiny_inputs
    documents = read_documents([train])
    stride = Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "run", progress=False)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(stride.adapter, "capture", exhausted)
    with pytest.raises(OutOfMemory, match=r"micro_batch \(now \d+\).*state_cache=disk"):
        stride.fit(documents)
    assert (tmp_path / "run" / "stages" / "design.json").is_file()  # the stages before it are kept
    assert not (tmp_path / "run" / "stages" / "operators.json").exists()
    monkeypatch.undo()
    Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "run", progress=False).fit(documents)


def test_a_full_disk_while_writing_the_operators_is_a_clear_error_and_a_rerun_resumes(tiny_inputs, tmp_path, monkeypatch):
    import errno

    import stride_engine.stride as engine

    run_dir = tmp_path / "run"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "operators"))

    with monkeypatch.context() as patch:
        patch.setattr(engine, "save_file", no_space)  # the training curves, written beside the bank
        result = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir))
    assert result.exit_code != 0 and "No space left on device" in result.output and "rerun the same command" in result.output
    assert not isinstance(result.exception, OSError) or result.exit_code == 1  # a message, not a traceback
    assert "Traceback" not in result.output
    assert (run_dir / "stages" / "design.json").is_file() and not (run_dir / "stages" / "operators.json").exists()
    assert not (run_dir / "operators").exists() and not list(run_dir.glob(".*.tmp"))  # nothing half-written
    assert any((run_dir / "operators.partial").rglob("progress.json"))  # the last checkpoint is kept
    again = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir))
    assert again.exit_code == 0, again.output
    assert (run_dir / "stages" / "scores-queries.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["stages/design.json", "operators.partial/*/progress.json", "stages/operators.json"])
def test_a_run_killed_in_any_stage_finishes_with_the_scores_of_an_uninterrupted_one(tiny_inputs, tmp_path, kill_when):
    """SIGKILL as soon as a stage's mark appears (during the states and training, after a checkpoint, during the
    responses), then the same command again: the same responses and rankings as a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(run_dir):
        return [sys.executable, "-m", "curate", *_attribute_args(tiny_inputs, run_dir, "--set=steps=60")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(command(tmp_path / "straight"), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(command(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not list(run_dir.glob(kill_when)):
        time.sleep(0.005)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert killed, f"the run finished before {kill_when} appeared"
    assert not (run_dir / "stages" / "scores-queries.json").exists()
    again = subprocess.run(command(run_dir), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    np.testing.assert_allclose(np.load(run_dir / "responses" / "queries.npy"),
                               np.load(tmp_path / "straight" / "responses" / "queries.npy"), rtol=1e-5, atol=1e-7)
    ranks = [ScoreStore(folder / "scores" / "queries").top(k=20).select("query_id", "doc_id", "rank") for folder in (run_dir, tmp_path / "straight")]
    assert ranks[0].equals(ranks[1])


def test_python_api_rejects_a_stale_stage(tiny_inputs, tmp_path):
    model, train, _ = tiny_inputs
    documents = read_documents([train])
    Stride.from_pretrained(model, preset("cpu-smoke", **TINY), tmp_path / "run", progress=False).fit(documents)
    with pytest.raises(StageMismatchError, match="stage 'design'.*num_subsets"):
        Stride.from_pretrained(model, preset("cpu-smoke", **{**TINY, "num_subsets": 20}), tmp_path / "run", progress=False).fit(documents)


def test_changed_solver_is_refused_before_the_saved_config_is_rewritten(tiny_inputs, tmp_path):
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir)).exit_code == 0
    saved = (run_dir / "config.yaml").read_text()
    changed = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir, "--set", "solver=ridge"))
    assert changed.exit_code != 0 and "stage 'scores'" in changed.output and "solver" in changed.output
    assert (run_dir / "config.yaml").read_text() == saved  # the run directory still describes what it holds
    # A value no stage depends on (the micro-batch size) changes nothing that was computed.
    same = CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir, "--set", "micro_batch=32"))
    assert same.exit_code == 0, same.output


def _folder_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("found, says", [(2, "newer version"), (0, "older version"), ("two", "does not say")])
def test_a_run_folder_another_version_laid_out_is_refused_untouched(tiny_inputs, tmp_path, found, says):
    """A fitted run records its layout (format.json). A folder whose layout this version cannot read is refused by
    every command that opens it, naming the versions, and nothing in it changes; one without the file (written before
    the layout was recorded) still opens."""
    from curate.core.run import Run

    run_dir = tmp_path / "run"
    assert CliRunner().invoke(main, _attribute_args(tiny_inputs, run_dir)).exit_code == 0
    assert json.loads((run_dir / "format.json").read_text()) == {"format": 1}
    (run_dir / "format.json").unlink()
    Run(run_dir).config  # a run from before the file opens as layout 1
    (run_dir / "format.json").write_text(json.dumps({"format": found}))
    before = _folder_bytes(run_dir)
    _, _, queries = tiny_inputs
    for args in (_attribute_args(tiny_inputs, run_dir), _attribute_args(tiny_inputs, run_dir, "--overwrite"),
                 ["top", str(run_dir), "--query", "q1"],
                 ["select", "--run", str(run_dir), "--target", str(queries), "--budget", "10", "--out", str(tmp_path / "sel")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and says in result.output and "format" in result.output, (args, result.output)
    assert _folder_bytes(run_dir) == before and not (tmp_path / "sel").exists()


def test_states_stored_in_bfloat16_take_half_the_file_and_train_nearly_the_same_operators(tiny_inputs, tmp_path):
    """state_dtype="bfloat16": the cached states take half the bytes (here the disk cache's file), the operators
    train on them widened back to float32, and the queries' responses stay those of a float32 cache up to the
    rounding of the stored states. The setting is part of the operators' fingerprint; with nothing cached it is refused."""
    from stride_engine import ConfigError
    from stride_engine.config import stage_fields

    model, train, queries = tiny_inputs
    documents, query_set = read_documents([train]), read_queries(queries)
    sizes = {}
    runs = {}
    for dtype in ("float32", "bfloat16"):
        def look(step, dtype=dtype):
            if step == 1:
                sizes[dtype] = sum(p.stat().st_size for p in (tmp_path / dtype / "operators.partial").glob("states-*.bin"))
        config = preset("cpu-smoke", **TINY, state_cache="disk", state_dtype=dtype)
        runs[dtype] = Stride.from_pretrained(model, config, tmp_path / dtype, progress=False).fit(documents, on_step=look)
    assert sizes["bfloat16"] * 2 == sizes["float32"] > 0
    full, narrow = runs["float32"].responses(query_set), runs["bfloat16"].responses(query_set)
    assert np.corrcoef(full.ravel(), narrow.ravel())[0, 1] > 0.99, np.corrcoef(full.ravel(), narrow.ravel())
    assert np.abs(narrow - full).max() < 0.1 * np.abs(full).max()
    assert "state_dtype" not in stage_fields(runs["float32"].config, "operators")
    assert stage_fields(runs["bfloat16"].config, "operators")["state_dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="caches none"):
        preset("cpu-smoke", state_cache="recompute", state_dtype="bfloat16")


def test_a_model_run_in_bfloat16_keeps_float32_operators_and_follows_the_float32_responses(tiny_inputs, tmp_path):
    """model_dtype="bfloat16": the frozen model is loaded in bfloat16 (half the memory of its weights), while the
    operators, their saved bank and the responses stay float32 and follow a float32 model's. It is part of the
    operators' fingerprint: a float32 run reopened in bfloat16 is refused as stale, never mixed."""
    from safetensors.torch import load_file

    from stride_engine.config import stage_fields

    model, train, queries = tiny_inputs
    documents, query_set = read_documents([train]), read_queries(queries)
    runs = {dtype: Stride.from_pretrained(model, preset("cpu-smoke", **TINY, model_dtype=dtype), tmp_path / dtype,
                                          progress=False).fit(documents) for dtype in ("float32", "bfloat16")}
    narrow_model = runs["bfloat16"].adapter.model
    assert {p.dtype for p in narrow_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in runs["float32"].adapter.model.parameters()} == {torch.float32}
    bank = load_file(str(tmp_path / "bfloat16" / "operators" / "bank.safetensors"))
    assert {t.dtype for t in bank.values()} == {torch.float32}
    full, narrow = runs["float32"].responses(query_set), runs["bfloat16"].responses(query_set)
    assert narrow.dtype == full.dtype and np.isfinite(narrow).all() and np.ptp(narrow) > 0
    assert np.corrcoef(full.ravel(), narrow.ravel())[0, 1] > 0.99, np.corrcoef(full.ravel(), narrow.ravel())
    assert "model_dtype" not in stage_fields(runs["float32"].config, "operators")
    with pytest.raises(StageMismatchError, match="stage 'operators'.*model_dtype"):
        Stride.from_pretrained(model, preset("cpu-smoke", **TINY, model_dtype="bfloat16"), tmp_path / "float32",
                               progress=False).fit(documents)
