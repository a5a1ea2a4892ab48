"""Proxy retraining and lm-eval checks: a proxy trained on a selection learns it, the comparison report shows
which proxy fits a target domain, offline task YAMLs resolve wherever they are run from, bad input is refused.

Two synthetic domains with disjoint vocabularies (Greek letters vs colours) make the planted behaviour clear:
a proxy trained on domain A must have a lower perplexity on held-out domain-A text than one trained on B.
"""

from __future__ import annotations

import json
import random
import shutil

import polars as pl
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import SHARED_DATA
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from tiny import save_tiny_model, write_jsonl

from curate.errors import CurateError
from curate.proxy.evaluate import (
    TASKS_DIR,
    available_tasks,
    evaluate_models,
    prepare_tasks,
    target_task,
    task_examples,
    task_items,
)
from curate.cli.proxy import eval_command, retrain
from curate.proxy.retrain import train_proxy

GREEK = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "indigo", "violet", "black", "white", "grey"]
SEQ_LEN = 64  # the tiny test models have 64 positions
STEPS = 30


def domain_texts(words: list[str], count: int, seed: int) -> list[str]:
    """Short documents that walk through `words` in order with small random jumps: learnable in a few steps."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        i, text = rng.randrange(len(words)), []
        for _ in range(rng.randint(8, 20)):
            text.append(words[i])
            i = (i + rng.choice([1, 1, 2])) % len(words)
        texts.append(" ".join(text))
    return texts


def write_selection(folder, texts: list[str]) -> None:
    """A dataset folder as datatrove writes a selection (gzipped `00000.jsonl.gz`)."""
    with JsonlWriter(str(folder)) as writer:
        for i, text in enumerate(texts):
            writer.write(Document(text=text, id=f"doc-{i}"), rank=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    base = save_tiny_model(root / "base", "llama", texts=domain_texts(GREEK, 100, 0) + domain_texts(COLOURS, 100, 1))
    write_selection(root / "selection_greek", domain_texts(GREEK, 100, 2))
    write_selection(root / "selection_colours", domain_texts(COLOURS, 100, 3))
    heldout = write_jsonl(root / "heldout_greek.jsonl", [{"id": i, "text": t} for i, t in enumerate(domain_texts(GREEK, 20, 9))])
    proxies = {
        name: train_proxy(root / f"selection_{name}", root / f"proxy_{name}", base, steps=STEPS, seq_len=SEQ_LEN, progress=False)
        for name in ("greek", "colours")
    }
    return {"root": root, "base": base, "heldout": heldout, **{f"proxy_{k}": v for k, v in proxies.items()}}


@pytest.fixture(scope="module")
def evaluation(world):
    target = target_task("target", world["heldout"], folder=world["root"] / "targets")
    out = world["root"] / "eval"
    table = evaluate_models(
        {"on_greek": world["proxy_greek"], "on_colours": world["proxy_colours"]},
        ["target", "curate_fixture_ppl", "curate_fixture_mc"], out, task_dirs=[target], limit=10,
    )
    return table, out


# ------------------------------------------------------------------------------------------------ retraining


def test_proxy_reloads_and_records_its_training(world):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    proxy = world["proxy_greek"]
    model = AutoModelForCausalLM.from_pretrained(proxy, local_files_only=True)
    assert (proxy / "model.safetensors").is_file()
    assert model.config.hidden_size == AutoConfig.from_pretrained(world["base"]).hidden_size
    tokenizer = AutoTokenizer.from_pretrained(proxy)
    record = json.loads((proxy / "training.json").read_text())
    texts = domain_texts(GREEK, 100, 2)
    expected_tokens = sum(len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])  # + bos, eos
    assert record["documents"] == 100 and record["tokens"] == expected_tokens
    assert record["steps"] == STEPS and len(record["losses"]) == STEPS and record["seed"] == 0
    assert [p.rsplit("/", 1)[-1] for p in record["data_files"]] == ["00000.jsonl.gz"]
    assert record["final_train_loss"] < record["first_train_loss"] - 0.5
    assert not list(world["root"].glob(".proxy_*"))  # no temporary sibling left


def test_proxy_weights_depend_on_seed_only(world, tmp_path):
    from safetensors.torch import load_file

    runs = {name: train_proxy(world["root"] / "selection_greek", tmp_path / name, world["base"], steps=3, seed=seed,
                              seq_len=SEQ_LEN, progress=False)
            for name, seed in [("first", 1), ("again", 1), ("other", 2)]}
    weights = {name: load_file(path / "model.safetensors") for name, path in runs.items()}
    assert all(torch.equal(weights["first"][k], weights["again"][k]) for k in weights["first"])
    assert not all(torch.equal(weights["first"][k], weights["other"][k]) for k in weights["first"])


def test_retrain_refuses_bad_input(world, tmp_path):
    base, selection = world["base"], world["root"] / "selection_greek"
    out = tmp_path / "proxy"
    with pytest.raises(CurateError, match="data not found"):
        train_proxy(tmp_path / "missing", out, base, steps=2, seq_len=SEQ_LEN, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no dataset files"):
        train_proxy(tmp_path / "empty", out, base, steps=2, seq_len=SEQ_LEN, progress=False)
    write_jsonl(tmp_path / "wrong.jsonl", [{"content": "alpha beta"}])
    with pytest.raises(CurateError, match="no 'text' field"):
        train_proxy(tmp_path / "wrong.jsonl", out, base, steps=2, seq_len=SEQ_LEN, progress=False)
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(CurateError, match="not a Hugging Face model folder"):
        train_proxy(selection, out, tmp_path / "not_a_model", steps=2, seq_len=SEQ_LEN, progress=False)
    with pytest.raises(CurateError, match="positions"):
        train_proxy(selection, out, base, steps=2, seq_len=1024, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".proxy*"))

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CurateError, match="already exists"):
        train_proxy(selection, out, base, steps=2, seq_len=SEQ_LEN, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    train_proxy(selection, out, base, steps=2, seq_len=SEQ_LEN, progress=False, overwrite=True)
    assert (out / "training.json").is_file() and not (out / "keep.txt").exists()


# ------------------------------------------------------------------------------------------------ lm-eval checks


def test_proxy_of_the_target_domain_has_the_lower_target_perplexity(evaluation):
    table, _ = evaluation
    target = table.filter(pl.col("task") == "target")
    for metric in ("word_perplexity", "byte_perplexity"):
        values = dict(target.filter(pl.col("metric") == metric).select("model", "value").iter_rows())
        assert values["on_greek"] < values["on_colours"] / 2, (metric, values)
    assert set(table["task"]) == {"target", "curate_fixture_ppl", "curate_fixture_mc"}
    accuracy = table.filter((pl.col("task") == "curate_fixture_mc") & (pl.col("metric") == "acc"))
    assert accuracy.height == 2 and accuracy["value"].is_between(0, 1).all() and accuracy["stderr"].is_not_null().all()
    assert set(table["samples"]) == {10}


def test_report_and_results_name_both_models(evaluation):
    table, out = evaluation
    report = (out / "report.md").read_text()
    assert "on_greek (reference)" in report and "on_colours vs on_greek" in report
    target_row = next(line for line in report.splitlines() if line.startswith("| target | word_perplexity"))
    assert "(worse)" in target_row  # the colours proxy is worse than the reference on the Greek target
    assert pl.read_parquet(out / "results.parquet").equals(table)
    assert set(json.loads((out / "results.json").read_text())) == {"on_greek", "on_colours"}
    assert (out / "report.png").stat().st_size > 1000
    prepared = (out / "tasks" / "target" / "target.yaml").read_text()
    assert str(out.parent / "heldout_greek.jsonl") in prepared


def test_task_data_files_resolve_against_the_yaml_not_the_working_directory(world, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    tasks = tmp_path / "my_tasks"
    (tasks / "data").mkdir(parents=True)
    write_jsonl(tasks / "data" / "lines.jsonl", [{"body": t} for t in domain_texts(GREEK, 7, 5)])
    # the data file is named in an included template, relative to the template's folder
    (tasks / "_base_template_yaml").write_text("dataset_kwargs:\n  data_files:\n    test: data/lines.jsonl\n")
    (tasks / "my_lines.yaml").write_text(
        "task: my_lines\ninclude: _base_template_yaml\ndataset_path: json\ntest_split: test\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{body}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )
    assert "my_lines" in available_tasks([tasks]) and "curate_fixture_mc" in available_tasks([tasks])
    folder = prepare_tasks(["my_lines"], tmp_path / "prepared", [tasks])
    monkeypatch.chdir(tmp_path)  # elsewhere: a relative data file would now point nowhere
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(["my_lines"])
    assert len(loaded["tasks"]["my_lines"].eval_docs) == 7


def test_eval_refuses_bad_tasks_before_writing(world, tmp_path):
    models = {"on_greek": world["proxy_greek"]}
    out = tmp_path / "eval"
    with pytest.raises(CurateError, match="unknown task 'no_such_task'.*curate_fixture_ppl"):
        evaluate_models(models, ["curate_fixture_ppl", "no_such_task"], out)
    assert not out.exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gone.yaml").write_text(
        "task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/gone.jsonl\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_target: '{{text}}'\n"
    )
    with pytest.raises(CurateError, match=r"task 'gone' .* reads .*broken/data/gone\.jsonl, which does not exist"):
        evaluate_models(models, ["gone"], out, task_dirs=[broken])
    assert not out.exists()

    with pytest.raises(CurateError, match="not a Hugging Face model folder"):
        evaluate_models({"nothing": tmp_path / "nothing"}, ["curate_fixture_ppl"], out)
    with pytest.raises(CurateError, match="target file not found"):
        target_task("target", tmp_path / "missing.jsonl", folder=tmp_path)
    out.mkdir()
    with pytest.raises(CurateError, match="already exists"):
        evaluate_models(models, ["curate_fixture_ppl"], out)


def test_task_documents_become_attribution_queries(tmp_path):
    choice = task_examples("curate_fixture_mc", limit=3)
    assert len(choice) == 3 and choice.ids[0] == "curate_fixture_mc-00000"
    assert choice.prompts[0] == "Question: What colour is the sky on a clear day?\nAnswer:" and choice.completions[0] == " blue"
    rolling = task_examples(str(TASKS_DIR / "curate_fixture_ppl.yaml"))  # a YAML path works as well as a name
    assert len(rolling) == 24 and set(rolling.prompts) == {""}
    assert rolling.completions[0] == "The sun rises in the east and sets in the west."
    with pytest.raises(CurateError, match="unknown task 'nope'"):
        task_examples("nope")


@pytest.mark.skipif(not (SHARED_DATA / "benchmarks" / "gsm8k_test.jsonl").is_file(), reason="needs ../shared/data")
@pytest.mark.slow
def test_shipped_shared_data_tasks_load(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    folder = prepare_tasks(["curate_gsm8k_ppl", "curate_domains_ppl"], tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(["curate_gsm8k_ppl", "curate_domains_ppl"])
    gsm8k = loaded["tasks"]["curate_gsm8k_ppl"]
    docs = list(gsm8k.eval_docs)
    assert len(docs) == 1319 and gsm8k.doc_to_target(docs[0]).startswith("Question: Janet")
    assert "\nAnswer: " in gsm8k.doc_to_target(docs[0])
    assert set(loaded["group_map"]["curate_domains_ppl"]) == {f"curate_{d}_ppl" for d in ("wiki", "shakespeare", "tales", "math")}
    assert all(len(loaded["tasks"][name].eval_docs) > 500 for name in loaded["group_map"]["curate_domains_ppl"])
    # As a selection target, a group's tasks are its parts (balanced allocation gives each an equal share).
    queries, parts = task_items("curate_domains_ppl")
    assert len(parts) == len(queries) and set(parts) == set(loaded["group_map"]["curate_domains_ppl"])


# ------------------------------------------------------------------------------------------------ command line


def test_cli_retrain_takes_the_base_from_the_selection_manifest(world, tmp_path):
    # a `curate select` output: selected/ and excluded/ documents, the manifest naming the run in its request
    selection = tmp_path / "selection"
    shutil.copytree(world["root"] / "selection_greek", selection / "selected")
    shutil.copytree(world["root"] / "selection_colours", selection / "excluded")
    run = tmp_path / "run"
    run.mkdir()
    (run / "inputs.json").write_text(json.dumps({"model": str(world["base"]), "train": []}))
    (run / "config.yaml").write_text("{}\n")  # a run directory as `curate fit` leaves it has both
    out = tmp_path / "proxy"
    args = ["--data", str(selection), "--out", str(out), "--steps", "3", "--seq-len", str(SEQ_LEN), "--quiet"]

    result = CliRunner().invoke(retrain, args)
    assert result.exit_code == 1 and "--base is required" in result.output and not out.exists()

    manifest = {"request": {"run": "../run"}, "files": {"selected": "selected/", "excluded": "excluded/"}}
    (selection / "manifest.json").write_text(json.dumps(manifest))  # the run path is relative to the manifest
    result = CliRunner().invoke(retrain, args)
    assert result.exit_code == 0, result.output
    assert "100 documents" in result.output  # the selected ones only
    assert json.loads((out / "training.json").read_text())["data_files"] == [str(selection / "selected" / "00000.jsonl.gz")]
    saved = yaml.safe_load((out / "retrain.yaml").read_text())
    assert saved["base"] == str(world["base"]) and saved["steps"] == 3

    trained_at = (out / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(retrain, args)  # the same settings: the finished proxy is reused
    assert result.exit_code == 0 and "already trained" in result.output
    assert (out / "model.safetensors").stat().st_mtime_ns == trained_at
    result = CliRunner().invoke(retrain, [*args, "--steps", "4"])
    assert result.exit_code == 1 and "changed: steps" in result.output and "--overwrite" in result.output
    result = CliRunner().invoke(retrain, ["--config", str(out / "retrain.yaml"), "--steps", "4", "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output  # the saved settings, one of them changed on the command line
    again = yaml.safe_load((tmp_path / "again" / "retrain.yaml").read_text())
    assert again == {**saved, "steps": 4, "out": str(tmp_path / "again")}


def test_retrain_reads_a_corpus_of_exactly_a_thousand_documents(world, tmp_path):
    """Tokenising flushes every 1,000 documents; a corpus of 1,000·k once ended on an empty batch (IndexError)."""
    data = write_jsonl(tmp_path / "thousand.jsonl", [{"text": t} for t in domain_texts(GREEK, 1000, 4)])
    out = train_proxy(data, tmp_path / "proxy", world["base"], steps=1, seq_len=SEQ_LEN, progress=False)
    assert json.loads((out / "training.json").read_text())["documents"] == 1000


def test_cli_eval_compares_named_models_on_a_target(world, tmp_path):
    out = tmp_path / "eval"
    args = ["--model", f"greek={world['proxy_greek']}", "--model", str(world["proxy_colours"]),
            "--tasks", "curate_fixture_ppl", "--target", str(world["heldout"]), "--out", str(out), "--limit", "3"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "| target | word_perplexity" in result.output and "proxy_colours vs greek" in result.output
    saved = yaml.safe_load((out / "eval.yaml").read_text())
    assert saved["models"] == {"greek": str(world["proxy_greek"]), "proxy_colours": str(world["proxy_colours"])}
    assert saved["tasks"] == ["curate_fixture_ppl"] and saved["target"] == str(world["heldout"])

    made_at = (out / "results.parquet").stat().st_mtime_ns
    repeated = CliRunner().invoke(eval_command, ["--config", str(out / "eval.yaml")])  # read back: the same settings
    assert repeated.exit_code == 0 and "already evaluated" in repeated.output
    assert (out / "results.parquet").stat().st_mtime_ns == made_at
    changed = CliRunner().invoke(eval_command, ["--config", str(out / "eval.yaml"), "--limit", "2"])
    assert changed.exit_code == 1 and "changed: limit" in changed.output

    result = CliRunner().invoke(eval_command, ["--model", str(world["proxy_greek"]), "--tasks", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "unknown task 'nope'" in result.output and not (tmp_path / "x").exists()


def test_cli_eval_scores_every_domain_of_a_held_out_file(world, tmp_path):
    import polars as pl

    heldout = write_jsonl(tmp_path / "heldout.jsonl",
                          [{"id": f"g{i}", "text": t, "source": "greek"} for i, t in enumerate(domain_texts(GREEK, 6, 21))]
                          + [{"id": f"c{i}", "text": t, "source": "colours"} for i, t in enumerate(domain_texts(COLOURS, 6, 22))])
    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_command, ["--model", f"greek={world['proxy_greek']}", "--model", f"colours={world['proxy_colours']}",
                                               "--domains", str(heldout), "--domain-field", "source", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out / "results.parquet").filter(pl.col("metric") == "bits_per_byte")
    bpb = {(r["model"], r["task"]): r["value"] for r in table.iter_rows(named=True)}
    # each proxy is better on the domain it was trained on, and each domain is scored apart
    assert bpb[("greek", "domain_greek")] < bpb[("colours", "domain_greek")]
    assert bpb[("colours", "domain_colours")] < bpb[("greek", "domain_colours")]
    missing = write_jsonl(tmp_path / "nodomain.jsonl", [{"id": "x", "text": "alpha beta"}])
    refused = CliRunner().invoke(eval_command, ["--model", str(world["proxy_greek"]), "--domains", str(missing), "--out", str(tmp_path / "y")])
    assert refused.exit_code == 1 and "no 'domain' field" in refused.output and not (tmp_path / "y").exists()


def test_a_proxys_evaluation_is_kept_when_its_items_move_and_redone_when_they_change(tmp_path):
    """The study keys each proxy's evaluation on its tasks: the same items in another folder (a study moved, or run
    from another checkout) give the same key; another item gives another."""
    from curate.proxy.evaluate import target_task
    from curate.studies.proxies import tasks_digest

    records = [{"id": f"t{i}", "text": f"item number {i}"} for i in range(5)]
    keys = []
    for name, items in (("here", records), ("moved", records), ("changed", records[:4] + [{"id": "t4", "text": "another item"}])):
        folder = tmp_path / name
        (folder / "data").mkdir(parents=True)
        target_task("target_x", write_jsonl(folder / "data" / "eval.jsonl", items), folder=folder / "tasks")
        keys.append(tasks_digest(folder / "tasks", ["target_x"]))
    assert keys[0] == keys[1] and keys[2] != keys[0]
