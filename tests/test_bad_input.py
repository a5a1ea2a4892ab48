"""Bad input gets a clear error naming the problem, and nothing is left half-written in the run directory."""

import pytest
from click.testing import CliRunner

from curate.cli import main

from tiny import random_texts, save_tiny_model, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("bad") / "model", "gpt2", random_texts(100))


@pytest.fixture
def good_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(random_texts(40))])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q", "prompt": "alpha", "completion": " beta"}])
    return train, queries


def _run(model_dir, train, queries, run_dir, *extra):
    args = ["attribute", "--model", str(model_dir), "--train", str(train), "--queries", str(queries), "--out", str(run_dir),
            "--preset", "cpu-smoke", "--quiet", "--set", "num_subsets=8", "--set", "subsets_per_example=2", "--set", "steps=4", *extra]
    return CliRunner().invoke(main, args)


def _assert_nothing_written(run_dir):
    assert not run_dir.exists() or not any(run_dir.rglob("*")), sorted(map(str, run_dir.rglob("*")))


def test_empty_corpus(model_dir, good_files, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _run(model_dir, empty, good_files[1], tmp_path / "run")
    assert result.exit_code != 0 and "corpus is empty" in result.output
    _assert_nothing_written(tmp_path / "run")


def test_record_without_text_field(model_dir, good_files, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "text": "alpha beta"}, {"id": "b", "body": "gamma"}])
    result = _run(model_dir, train, good_files[1], tmp_path / "run")
    assert result.exit_code != 0
    assert "record 2 has no 'text' field" in result.output and "--text-field" in result.output
    _assert_nothing_written(tmp_path / "run")
    # Naming the field fixes it (and the message said how).
    train2 = write_jsonl(tmp_path / "t2.jsonl", [{"id": f"d{i}", "body": t} for i, t in enumerate(random_texts(40))])
    assert _run(model_dir, train2, good_files[1], tmp_path / "run2", "--text-field", "body").exit_code == 0


def test_undecodable_line(model_dir, good_files, tmp_path):
    train = tmp_path / "broken.jsonl"
    train.write_bytes(b'{"id": "a", "text": "alpha beta"}\n{"id": "b", "text": "gam\xff\xfe"}\n')
    result = _run(model_dir, train, good_files[1], tmp_path / "run")
    assert result.exit_code != 0 and "line 2" in result.output and "not valid JSON" in result.output
    _assert_nothing_written(tmp_path / "run")


def test_model_folder_that_does_not_exist(good_files, tmp_path):
    result = _run(tmp_path / "no-model", *good_files, tmp_path / "run")
    assert result.exit_code != 0 and "no-model does not exist" in result.output
    _assert_nothing_written(tmp_path / "run")


def test_layer_out_of_range(model_dir, good_files, tmp_path):
    result = _run(model_dir, *good_files, tmp_path / "run", "--set", "layer=7")
    assert result.exit_code != 0 and "layer 7 is out of range" in result.output
    _assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("setting, message", [
    ("subsets_per_example=9", "cannot exceed num_subsets"),
    ("num_subsets=0", "num_subsets must be a positive integer"),
    ("num_subsets=500", "received no example"),
])
def test_k_or_d_out_of_range(model_dir, good_files, tmp_path, setting, message):
    result = _run(model_dir, *good_files, tmp_path / "run", "--set", setting)
    assert result.exit_code != 0 and message in result.output, result.output
    _assert_nothing_written(tmp_path / "run")


def test_missing_and_empty_query_files(model_dir, good_files, tmp_path):
    result = _run(model_dir, good_files[0], tmp_path / "nope.jsonl", tmp_path / "run")
    assert result.exit_code != 0 and "nope.jsonl does not exist" in result.output
    empty = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "prompt": "alpha"}])
    result = _run(model_dir, good_files[0], empty, tmp_path / "run")
    assert result.exit_code != 0 and "needs a 'completion'" in result.output
    _assert_nothing_written(tmp_path / "run")
