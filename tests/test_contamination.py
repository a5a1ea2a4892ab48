"""The contamination audit on planted leaks: benchmark items copied into a corpus verbatim, embedded in another
document, question only, and edited; template siblings and short answers as the negatives an audit must not call
contaminated; bad input refused before anything is written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.contamination import AuditRequest, run_audit
from curate.contamination.items import BenchmarkItem, ItemFields, load_benchmark
from curate.contamination.lexical import LexicalIndex, LexicalSettings
from curate.contamination.steps import cut_spans
from curate.errors import CurateError

from fake_slurm import FakeSlurm

WORDS = (
    "apple river stone garden window silver market teacher basket candle forest bridge orange pencil winter kitchen "
    "ladder mirror rabbit planet doctor violin harbor tunnel castle feather jacket meadow lantern wagon butter compass "
    "island pillow rocket saddle thunder velvet whistle anchor blanket cherry dragon engine falcon glacier hammer igloo "
    "jungle kettle lemon magnet needle oyster parrot quilt raven spider tomato umbrella vessel walnut yogurt zebra"
).split()


def sentence(rng: random.Random, length: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + "."


def make_items(count: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"id": f"item-{i}", "question": f"{sentence(rng, 14)} {sentence(rng, 12)} How many {rng.choice(WORDS)}s are there?",
         "answer": f"{sentence(rng, 10)} #### {rng.randint(2, 99)}"}
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def leaked(tmp_path):
    """A benchmark of 12 items and a corpus of 40 ordinary documents plus planted copies of items 0-3."""
    rng = random.Random(1)
    items = make_items()
    corpus = [{"id": f"doc-{i}", "text": " ".join(sentence(rng, 12) for _ in range(6))} for i in range(40)]
    host = corpus[5]["text"]
    corpus[5]["text"] = host[:120] + " " + items[1]["question"] + " " + items[1]["answer"] + " " + host[120:]  # embedded
    corpus += [
        {"id": "copy-0", "text": f"Question: {items[0]['question']}\nAnswer: {items[0]['answer']}"},  # verbatim
        {"id": "copy-2", "text": items[2]["question"].upper().replace(" ", "  ")},  # question only, case and spacing changed
        # item 3 with its second half rewritten: a partial copy, suspicious but not contaminated
        {"id": "copy-3", "text": " ".join(items[3]["question"].split()[:16]) + " " + sentence(rng, 14)},
    ]
    return {
        "items": items, "bench": write_jsonl(tmp_path / "bench.jsonl", items), "train": write_jsonl(tmp_path / "train.jsonl", corpus),
        "host_text": corpus[5]["text"], "tmp": tmp_path,
    }


def audit(leaked, out="audit", **options) -> dict:
    request = AuditRequest(benchmarks=(str(leaked["bench"]),), train=(str(leaked["train"]),), out=str(leaked["tmp"] / out), **options)
    return run_audit(request)


# ------------------------------------------------------------------------------------------------ lexical signal


def test_a_verbatim_copy_covers_the_item_and_its_spans_are_the_copy():
    items = [BenchmarkItem("b", str(i), r["question"], r["answer"]) for i, r in enumerate(make_items())]
    index = LexicalIndex.build(items)
    text = "Unrelated opening words here. " + items[4].question + " and then " + items[4].answer + " tail."
    (match,) = index.match(text)
    assert match.item == 4 and match.question_coverage == 1.0 and match.answer_coverage == 1.0
    question_spans = [text[s:e] for s, e, f in match.spans if f == "question"]
    assert question_spans == [items[4].question.rstrip("?")]  # words only: the final "?" is not a word


def test_case_spacing_and_punctuation_do_not_hide_a_copy():
    item = BenchmarkItem("b", "1", "Janet's ducks lay 16 eggs per day; she eats three for breakfast every single morning.")
    index = LexicalIndex.build([item])
    (match,) = index.match("JANET  S ducks lay 16 eggs, per day she eats THREE for breakfast every single morning")
    assert match.question_coverage == 1.0


def test_a_template_sibling_with_other_numbers_and_names_stays_below_the_contaminated_threshold():
    item = BenchmarkItem("b", "1", "A plane travels 1200 miles in 3 hours. At the same rate, how many additional hours would it take to travel an additional 2000 miles?")
    sibling = "A train travels 270 miles in 3 hours. At the same rate, how many additional hours would it take to travel an additional 180 miles?"
    (match,) = LexicalIndex.build([item]).match(sibling)
    assert 0.5 <= match.question_coverage < 0.8  # suspicious at most under the default rule


def test_a_short_answer_is_not_evidence_alone():
    item = BenchmarkItem("b", "1", "How many apples does the farmer keep in the red barn by the river?", "18 apples")
    index = LexicalIndex.build([item], LexicalSettings(answer_min_words=3))
    assert index.match("He had 18 apples in the basket.") == []


def test_boilerplate_ngrams_shared_by_many_items_match_nothing():
    shared = "how many more marbles does she have left now"
    items = [BenchmarkItem("b", str(i), f"{w} {w}2 {w}3 {w}4 {w}5 {w}6 {w}7 {w}8 {shared}") for i, w in enumerate(WORDS[:6])]
    index = LexicalIndex.build(items, LexicalSettings(max_items_per_ngram=5))
    assert index.match(f"Then she asked {shared}?") == []
    assert len(LexicalIndex.build(items, LexicalSettings(max_items_per_ngram=10)).match(f"Then she asked {shared}?")) == 6


def test_cut_spans_merges_overlapping_spans():
    assert cut_spans("0123456789", [(6, 8), (2, 4), (3, 5)]) == "01589"


# ------------------------------------------------------------------------------------------------ the audit


def test_the_audit_finds_every_planted_copy_and_nothing_else(leaked):
    manifest = audit(leaked)
    audit_dir = leaked["tmp"] / "audit"
    items = pl.read_parquet(audit_dir / "items.parquet")
    verdicts = dict(zip(items["item_id"], items["verdict"]))
    assert {k for k, v in verdicts.items() if v == "contaminated"} == {"item-0", "item-1", "item-2"}
    assert {k for k, v in verdicts.items() if v == "suspicious"} == {"item-3"}
    documents = pl.read_parquet(audit_dir / "documents.parquet")
    assert dict(zip(documents["doc_id"], documents["item_id"])) == {"copy-0": "item-0", "doc-5": "item-1", "copy-2": "item-2", "copy-3": "item-3"}
    embedded = documents.filter(pl.col("doc_id") == "doc-5").row(0, named=True)
    question_span = next(s for s in embedded["spans"] if s["field"] == "question")
    assert leaked["host_text"][question_span["start"]: question_span["end"]] == leaked["items"][1]["question"].rstrip("?")
    assert manifest["counts"] == [{"benchmark": "bench", "items": 12, "contaminated": 3, "suspicious": 1, "clean": 8}]
    for name in ("report.md", "report.html", "signals.png", "verdicts.png", "manifest.json"):
        assert (audit_dir / name).stat().st_size > 0, name
    assert "| bench | 12 | 3 | 1 | 8 |" in (audit_dir / "report.md").read_text()


def test_a_clean_copy_drops_the_flagged_documents_and_names_the_item(leaked):
    audit(leaked, decontaminate=str(leaked["tmp"] / "clean"))
    kept = [json.loads(line) for f in sorted((leaked["tmp"] / "clean" / "kept").glob("*.jsonl*")) for line in _lines(f)]
    excluded = [json.loads(line) for f in sorted((leaked["tmp"] / "clean" / "excluded").glob("*.jsonl*")) for line in _lines(f)]
    assert {d["id"] for d in excluded} == {"copy-0", "doc-5", "copy-2", "copy-3"}
    assert {d["id"] for d in kept} == {f"doc-{i}" for i in range(40)} - {"doc-5"}
    reasons = {d["id"]: d["exclusion_reason"] for d in excluded}
    assert reasons["doc-5"] == "contamination: bench/item-1"


def test_cutting_spans_keeps_the_host_document_without_the_item(leaked):
    audit(leaked, decontaminate=str(leaked["tmp"] / "clean"), remove="spans")
    kept = {json.loads(line)["id"]: json.loads(line) for f in (leaked["tmp"] / "clean" / "kept").glob("*.jsonl*") for line in _lines(f)}
    host = kept["doc-5"]["text"]
    item = leaked["items"][1]
    assert item["question"][:40] not in host and "Answer" not in host
    assert leaked["host_text"][:100] in host  # the host's own text stays
    assert "copy-0" not in kept  # a copy that was the item and two labels is dropped whole


def test_several_tasks_give_the_same_audit_as_one(leaked):
    audit(leaked, out="one")
    audit(leaked, out="four", tasks=4, workers=2)
    one, four = (pl.read_parquet(leaked["tmp"] / name / "documents.parquet").sort("doc_id", "item_id") for name in ("one", "four"))
    assert one.equals(four)


def test_a_rerun_reuses_and_other_settings_are_refused(leaked):
    audit(leaked)
    report = leaked["tmp"] / "audit" / "report.md"
    stamp = report.stat().st_mtime_ns
    audit(leaked)
    assert report.stat().st_mtime_ns == stamp
    with pytest.raises(CurateError, match="changed: question_n"):
        audit(leaked, question_n=10)
    request = AuditRequest(benchmarks=(str(leaked["bench"]),), train=(str(leaked["train"]),), out=str(leaked["tmp"] / "audit"), question_n=10)
    assert run_audit(request, overwrite=True)["question_n"] == 10


def test_several_benchmarks_at_once_each_with_its_own_counts(leaked):
    other = write_jsonl(leaked["tmp"] / "other.jsonl", make_items(4, seed=9))
    request = AuditRequest(benchmarks=(str(leaked["bench"]), str(other)), train=(str(leaked["train"]),), out=str(leaked["tmp"] / "two"))
    counts = {row["benchmark"]: row for row in run_audit(request)["counts"]}
    assert counts["bench"]["contaminated"] == 3 and counts["other"] == {"benchmark": "other", "items": 4, "contaminated": 0, "suspicious": 0, "clean": 4}


def test_the_command_line_audits_and_reads_its_settings_back(leaked):
    out = leaked["tmp"] / "cli"
    args = ["contamination", "--benchmark", str(leaked["bench"]), "--train", str(leaked["train"]), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "bench: 12 items, 3 contaminated, 1 suspicious, 8 clean" in result.output
    again = CliRunner().invoke(main, ["contamination", "--config", str(out / ".work" / "request.json"), "--out", str(out)])
    assert again.exit_code == 0, again.output  # the same settings, read back: the finished audit is reused
    assert "3 contaminated" in again.output


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("rows", "fields", "message"), [
    ([{"id": "a", "question": "  ", "answer": "x"}], ItemFields(), "question field 'question' is empty"),
    ([{"id": "a", "question": "q one", "answer": "x"}, {"id": "a", "question": "q two", "answer": "y"}], ItemFields(), "'a' appears twice"),
    ([{"id": "a", "prompt": "q", "answer": "x"}], ItemFields(), "no field 'question'"),
])
def test_bad_benchmark_items_are_named(tmp_path, rows, fields, message):
    with pytest.raises(CurateError, match=message):
        load_benchmark(write_jsonl(tmp_path / "b.jsonl", rows), fields)


def test_an_unknown_lm_eval_task_is_named(tmp_path):
    with pytest.raises(CurateError, match="no_such_task"):
        load_benchmark("no_such_task")


@pytest.mark.parametrize("problem", ["no text field", "not utf-8", "unknown field", "missing file"])
def test_bad_input_is_refused_before_anything_is_written(leaked, problem):
    tmp = leaked["tmp"]
    options: dict = {}
    train = leaked["train"]
    if problem == "no text field":
        train = write_jsonl(tmp / "notext.jsonl", [{"id": "1", "body": "x"}])
        message = "no text field 'text'"
    elif problem == "not utf-8":
        train = tmp / "latin.jsonl"
        train.write_bytes(b'{"id": "1", "text": "caf\xe9"}\n')
        message = "UTF-8"
    elif problem == "unknown field":
        options["question_field"] = "prompt"
        message = "no field 'prompt'"
    else:
        train = tmp / "absent.jsonl"
        message = "does not exist"
    request = AuditRequest(benchmarks=(str(leaked["bench"]),), train=(str(train),), out=str(tmp / "bad"), **options)
    with pytest.raises(CurateError, match=message):
        run_audit(request)
    assert not (tmp / "bad").exists()


def test_a_folder_that_is_not_an_audit_is_never_overwritten(leaked):
    out = leaked["tmp"] / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    request = AuditRequest(benchmarks=(str(leaked["bench"]),), train=(str(leaked["train"]),), out=str(out))
    for overwrite in (False, True):
        with pytest.raises(CurateError, match="not a curate audit"):
            run_audit(request, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "keep me"


def _lines(path: Path) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [line for line in handle if line.strip()]


def test_overwrite_keeps_the_old_audit_until_the_new_one_is_complete(leaked, monkeypatch):
    audit(leaked)
    report = (leaked["tmp"] / "audit" / "report.md").read_text()

    def crash(executors, execution):
        raise RuntimeError("the machine went away")

    monkeypatch.setattr("curate.contamination.job.run_chain", crash)
    request = AuditRequest(benchmarks=(str(leaked["bench"]),), train=(str(leaked["train"]),), out=str(leaked["tmp"] / "audit"), question_n=10)
    with pytest.raises(RuntimeError):
        run_audit(request, overwrite=True)
    assert (leaked["tmp"] / "audit" / "report.md").read_text() == report  # the old audit is back, whole
    assert not (leaked["tmp"] / "audit.replaced").exists()
    monkeypatch.undo()
    assert run_audit(request, overwrite=True)["question_n"] == 10
    assert not (leaked["tmp"] / "audit.replaced").exists()


# ------------------------------------------------------------------------------------------------ fuzzy signal

PLANE = BenchmarkItem("b", "plane", "A plane travels 1200 miles in 3 hours. At the same rate, how many additional hours "
                                   "would it take to travel an additional 2000 miles?")


def test_numbers_read_as_values_whatever_their_spelling():
    from curate.contamination.fuzzy import canonical_words

    assert canonical_words("One thousand two hundred miles, 1,200 miles, twenty-five and 3.50 or three").words == [
        "1200", "miles", "1200", "miles", "25", "and", "3.5", "or", "3"]
    assert canonical_words("one hundred and five, a hundred and more").words == ["105", "a", "hundred", "and", "more"]


def test_a_reworded_copy_is_found_and_a_sibling_with_other_numbers_is_not():
    from curate.contamination.fuzzy import FuzzyIndex

    index = FuzzyIndex.build([PLANE])
    reworded = ("Some text first. A jet travels one thousand two hundred miles in three hours. At the same speed, how many "
                "additional hours would it take to travel an additional two thousand miles? More text after.")
    (match,) = index.match(reworded)
    assert index.fires(match) and match.number_recall == 1.0
    assert reworded[match.span[0]: match.span[1]].startswith("travels one thousand")
    sibling = "A train travels 270 miles in 3 hours. At the same rate, how many additional hours would it take to travel an additional 180 miles?"
    assert not any(index.fires(m) for m in index.match(sibling))  # the template, not the problem: 1 of 3 numbers


def test_the_audit_calls_a_reworded_copy_contaminated_through_the_fuzzy_signal(tmp_path):
    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "plane", "question": PLANE.question, "answer": "It takes 5 more hours."}])
    reworded = ("A jet travels one thousand two hundred miles in three hours. At the same speed, how many additional hours "
                "would it take to travel an additional two thousand miles?")
    train = write_jsonl(tmp_path / "t.jsonl", [{"id": "copy", "text": reworded}, {"id": "other", "text": "Nothing to see here at all."}])
    run_audit(AuditRequest(benchmarks=(str(bench),), train=(str(train),), out=str(tmp_path / "a")))
    documents = pl.read_parquet(tmp_path / "a" / "documents.parquet")
    assert documents["doc_id"].to_list() == ["copy"] and documents["signals"].to_list() == [["fuzzy"]]
    assert documents["level"].to_list() == ["contaminated"]
    run_audit(AuditRequest(benchmarks=(str(bench),), train=(str(train),), out=str(tmp_path / "off"), fuzzy=False))
    assert len(pl.read_parquet(tmp_path / "off" / "documents.parquet")) == 0  # exact n-grams alone miss it


@pytest.mark.slow
def test_an_audit_submitted_to_slurm_runs_as_its_nodes_would_run_it(leaked, monkeypatch):
    """The sbatch scripts datatrove writes, run task by task in fresh processes by a stand-in scheduler (fake_slurm.py):
    the same pairs and the same clean copy as the local executor's."""
    slurm = FakeSlurm(leaked["tmp"] / "slurm-cluster")
    monkeypatch.setenv("PATH", slurm.path())
    submitted = audit(leaked, out="slurm", executor="slurm", tasks=2, workers=2, executor_options={"partition": "cpu"},
                      decontaminate=str(leaked["tmp"] / "slurm-clean"))
    assert submitted == {} and not (leaked["tmp"] / "slurm" / "manifest.json").exists()
    jobs = [job for job in slurm.run_jobs() if "launch_pickled_pipeline" in job.script]
    assert len(jobs) >= 2 and all(job.directives["partition"] == "cpu" for job in jobs)
    assert max(len(job.array) for job in jobs) == 2 and all(later.depends_on == [earlier.id] for earlier, later in zip(jobs, jobs[1:]))
    local = audit(leaked, out="slurm-local")
    slurm_pairs, local_pairs = (pl.read_parquet(leaked["tmp"] / name / "documents.parquet").sort("doc_id", "item_id")
                                for name in ("slurm", "slurm-local"))
    assert slurm_pairs.equals(local_pairs) and len(local_pairs) and local["items"]
    assert json.loads((leaked["tmp"] / "slurm" / "manifest.json").read_text())["items"] == local["items"]
    excluded = [json.loads(line)["id"] for f in (leaked["tmp"] / "slurm-clean" / "excluded").glob("*.jsonl*") for line in _lines(f)]
    assert sorted(excluded) == sorted(local_pairs["doc_id"].unique().to_list())


@pytest.mark.slow
def test_the_ray_executor_gives_the_same_audit(leaked, monkeypatch):
    """datatrove's Ray executor, on a local Ray instance, with two tasks per per-document stage."""
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("TMPDIR", ray_tmp)  # datatrove's Ray executor writes its task logs under $TMPDIR
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    try:
        audit(leaked, out="ray", executor="ray", tasks=2, workers=2, decontaminate=str(leaked["tmp"] / "ray-clean"))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    audit(leaked, out="local")
    ray_pairs, local_pairs = (pl.read_parquet(leaked["tmp"] / name / "documents.parquet").sort("doc_id", "item_id") for name in ("ray", "local"))
    assert ray_pairs.equals(local_pairs)
    excluded = [json.loads(line)["id"] for f in (leaked["tmp"] / "ray-clean" / "excluded").glob("*.jsonl*") for line in _lines(f)]
    assert sorted(excluded) == sorted(local_pairs["doc_id"].unique().to_list())
