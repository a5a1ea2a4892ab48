"""The command line's conventions: version, commands in workflow order, one meaning per flag, settings read back,
long queries checked (and windowed) before the operators train."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from curate import __version__
from curate.cli import main
from stride_engine import PRESETS, ScoreStore, Stride

from tiny import random_texts, save_tiny_model, write_jsonl

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12, operators_per_step=4,
            linearity_every=6, linearity_operators=12, top_k=20)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    texts = random_texts(60, seed=11)
    model = save_tiny_model(root / "model", "llama", texts)
    train = write_jsonl(root / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    return model, train


def _args(inputs, out, *extra):
    model, train = inputs
    return ["--model", str(model), "--train", str(train), "--out", str(out), "--preset", "cpu-smoke", "--quiet",
            *[f"--set={k}={v}" for k, v in TINY.items()], *extra]


def test_version_and_commands_in_workflow_order():
    assert CliRunner().invoke(main, ["--version"]).output.strip() == f"curate, version {__version__}"
    listed = CliRunner().invoke(main, ["--help"]).output.split("Commands:")[1].split()
    commands = [word for word in listed if word in main.commands]
    assert commands[:8] == ["fit", "attribute", "top", "select", "contamination", "reweight", "retrain", "eval"]


def test_every_long_command_has_quiet_and_every_model_command_a_device():
    for name in ("fit", "attribute", "select", "contamination", "reweight", "retrain", "eval", "recipe", "demo"):
        assert "--quiet" in {o for p in main.commands[name].params for o in p.opts}, name
    for name in ("fit", "attribute", "retrain", "eval"):
        assert "--device" in {o for p in main.commands[name].params for o in p.opts}, name


def test_the_selection_preset_is_the_default_with_grouped_recovery():
    assert PRESETS["select"] == {**PRESETS["default"], "groups": 16, "lambda_rule": "cv"}


def test_the_lm_preset_is_the_benchmark_row_it_was_measured_as():
    """`--preset lm` is the attribution benchmark's K = 1,024 row on the language models, field for field."""
    from benchmarks.suites import FULL
    from stride_engine import preset

    rows = [m for plan in FULL.settings if plan.setting in ("pretrain", "finetune", "deep") for m in plan.methods
            if m.label == "stride-logit K=1024 steps=1000 positions=32 ops=64"]
    assert len(rows) == 3
    for row in rows:
        options = dict(row.options)
        assert preset("lm") == preset(options.pop("preset_name"), **options)


def test_select_names_its_datatrove_options_apart_from_lm_eval_tasks():
    options = {o for p in main.commands["select"].params for o in p.opts}
    assert {"--executor-tasks", "--executor-workers", "--tasks", "--workers"} <= options  # old spellings kept
    help_text = CliRunner().invoke(main, ["select", "--help"]).output
    assert "--executor-tasks" in help_text and "--resume" not in help_text  # a rerun resumes anyway


def test_fit_takes_a_layers_path_for_an_unknown_architecture(inputs, tmp_path):
    result = CliRunner().invoke(main, ["fit", *_args(inputs, tmp_path / "run", "--set=form=activation",
                                                     "--layers-path", "model.layers")])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["fit", *_args(inputs, tmp_path / "bad", "--set=form=activation",
                                                  "--layers-path", "model.nowhere")])
    assert bad.exit_code != 0 and "model.nowhere" in bad.output


def test_long_queries_become_windows_and_are_checked_before_the_fit(inputs, tmp_path, monkeypatch):
    long_text = " ".join(random_texts(30, seed=2))  # far longer than the tiny model's 64 positions
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "long", "text": long_text}, {"id": "short", "text": "alpha beta"}])
    result = CliRunner().invoke(main, ["attribute", *_args(inputs, tmp_path / "run", "--queries", str(queries))])
    assert result.exit_code == 0, result.output
    assert "became windows" in result.output
    ids = ScoreStore(str(tmp_path / "run" / "scores" / "queries")).queries()["query_id"].to_list()
    assert "short" in ids and {"long#0", "long#1"} <= set(ids)

    cut = CliRunner().invoke(main, ["attribute", *_args(inputs, tmp_path / "cut", "--queries", str(queries),
                                                        "--long-queries", "cut")])
    assert cut.exit_code == 0, cut.output
    assert sorted(ScoreStore(tmp_path / "cut" / "scores" / "queries").queries()["query_id"]) == ["long", "short"]

    # A query the engine refuses stops the command before any operator is trained.
    def refuse(self, queries):
        raise __import__("stride_engine").StrideError("query 'short' is refused")

    monkeypatch.setattr(Stride, "check_queries", refuse)
    refused = CliRunner().invoke(main, ["attribute", *_args(inputs, tmp_path / "refused", "--queries", str(queries))])
    assert refused.exit_code != 0 and "refused" in refused.output
    assert not (tmp_path / "refused" / "operators").exists() and not (tmp_path / "refused" / "operators.partial").exists()


def test_a_run_is_repeated_from_its_saved_config_and_top_takes_run_as_an_option(inputs, tmp_path):
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q1", "text": "alpha beta gamma delta"}])
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["attribute", *_args(inputs, run, "--queries", str(queries))]).exit_code == 0
    stages = {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    again = CliRunner().invoke(main, ["attribute", "--config", str(run / "config.yaml"), "--out", str(run), "--quiet"])
    assert again.exit_code == 0, again.output  # model, training files and queries from RUN/inputs.json
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")} == stages  # nothing was redone
    assert json.loads((run / "inputs.json").read_text())["queries"] == str(queries)

    by_option = CliRunner().invoke(main, ["top", "--run", str(run), "--query", "q1", "-k", "3"])
    by_argument = CliRunner().invoke(main, ["top", str(run), "--query", "q1", "-k", "3"])
    assert by_option.exit_code == 0 and by_option.output == by_argument.output
    both = CliRunner().invoke(main, ["top", str(run), "--run", str(run), "--query", "q1"])
    assert both.exit_code != 0 and "give the run once" in both.output


def test_overwrite_rebuilds_a_changed_run_and_force_is_its_alias(inputs, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["fit", *_args(inputs, run)]).exit_code == 0
    changed = CliRunner().invoke(main, ["fit", *_args(inputs, run, "--set", "rank=6")])
    assert changed.exit_code != 0 and "rank" in changed.output and "--overwrite" in changed.output
    for flag in ("--overwrite", "--force"):
        rank = {"--overwrite": 6, "--force": 5}[flag]
        result = CliRunner().invoke(main, ["fit", *_args(inputs, run, "--set", f"rank={rank}", flag)])
        assert result.exit_code == 0, result.output
        assert json.loads((run / "operators" / "bank.json").read_text())["rank"] == rank
