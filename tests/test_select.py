"""Influence-based selection: planted documents are kept, budgets hold, outputs are whole, bad input writes nothing."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader

from curate.core.budget import parse_budget, select_under_budget
from curate.cli import main
from curate.errors import CurateError
from curate.select import BudgetThreshold, InfluenceFilter, InfluenceScorer
from curate.core.run import document_influence
from curate.select import SelectionRequest, run_selection, selection_executors, selection_pipelines
from curate.core.targets import fit_to_window
from stride_engine import Queries, ScoreStore
from stride_engine.scores import write_scores

from fake_slurm import FakeSlurm
from tiny import write_jsonl

FACTS = 12  # planted-fact queries in the target


@pytest.fixture(scope="module")
def fitted_run(demo_run):
    """The session's fitted demo run (conftest.demo_run)."""
    return demo_run


@pytest.fixture(scope="module")
def fact_target(demo_assets, tmp_path_factory):
    queries = demo_assets.queries[:FACTS]
    path = write_jsonl(tmp_path_factory.mktemp("target") / "facts.jsonl",
                       [{k: q[k] for k in ("id", "prompt", "completion")} for q in queries])
    return path, {d for q in queries for d in q["planted_doc_ids"]}


def _records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path) as handle:
            records += [orjson.loads(line) for line in handle]
    return records


def _request(run, target, out, budget="10%", **options) -> SelectionRequest:
    return SelectionRequest(run=str(run), target=str(target), budget=budget, out=str(out), **options)


def test_selection_keeps_the_documents_that_teach_the_target(fitted_run, fact_target, demo_assets, tmp_path):
    target, planted = fact_target
    manifest = run_selection(_request(fitted_run, target, tmp_path / "out"))
    pool = len(demo_assets.documents)
    kept = {row["id"] for row in manifest["selected_documents"]}
    assert len(kept) == round(0.1 * pool)
    # Each fact is stated only in its planted documents: a 10% budget chosen at random would keep ~10% of them.
    assert len(planted & kept) / len(planted) >= 0.4

    selected, excluded = _records(tmp_path / "out" / "selected"), _records(tmp_path / "out" / "excluded")
    assert {r["id"] for r in selected} == kept
    assert len(selected) + len(excluded) == pool and not kept & {r["id"] for r in excluded}
    originals = {d["id"]: d for d in demo_assets.documents}
    for record in selected[:5]:  # original fields kept, influence annotated
        assert record["text"] == originals[record["id"]]["text"] and record["domain"] == originals[record["id"]]["domain"]
        assert isinstance(record["influence"], float) and record["influence_rank"] <= len(kept)
    assert all(r["exclusion_reason"].startswith("below the budget cut") for r in excluded)
    assert min(r["influence"] for r in selected) >= max(r["influence"] for r in excluded)
    assert sum(row["selected_documents"] for row in manifest["per_domain"]) == len(kept)
    assert manifest["request"]["target_items"] == FACTS
    assert (tmp_path / "out" / "scores.png").stat().st_size > 1000


def test_parquet_output_keeps_the_original_fields(fitted_run, fact_target, demo_assets, tmp_path):
    target, _ = fact_target
    manifest = run_selection(_request(fitted_run, target, tmp_path / "out", budget="25", output_format="parquet"))
    kept = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out" / "selected").glob("*.parquet"))])
    assert sorted(kept["id"]) == sorted(row["id"] for row in manifest["selected_documents"])
    assert {"text", "domain", "influence", "influence_rank"} <= set(kept.columns)


@pytest.mark.parametrize("rule", ["standardized", "positive", "topk-hits"])
def test_other_aggregation_rules_also_find_planted_documents(fitted_run, fact_target, tmp_path, rule):
    target, planted = fact_target
    manifest = run_selection(_request(fitted_run, target, tmp_path / "out", rule=rule))
    kept = {row["id"] for row in manifest["selected_documents"]}
    assert len(planted & kept) / len(planted) >= 0.3


def test_standardized_rule_gives_every_query_the_same_say(tmp_path):
    """A target of two parts whose scores differ tenfold in scale: the mean spends the budget on the loud part's
    many helpful documents alone, the standardized mean (each query's scores over their own spread) on both parts'."""
    rng = np.random.default_rng(0)
    docs = [f"loud-{i}" for i in range(50)] + [f"quiet-{i}" for i in range(50)]
    scores = rng.normal(0, 0.1, (20, 100))
    scores[:10, :30] += 1.0  # ten loud queries, each helped by thirty of the loud source's documents
    scores[:10] *= 10
    scores[10:, 50:60] += 1.0  # ten quiet queries, helped by the quiet source's ten best
    store = write_scores(
        tmp_path / "store", [(np.arange(20), scores, np.zeros(20))], [f"q{i}" for i in range(20)], np.ones(20),
        docs, [d.split("-")[0] for d in docs], np.arange(100), aggregate="max", top_k=5, keep_all_nonzeros=True,
    )
    assert store.is_current()
    helpful = {f"loud-{i}" for i in range(30)} | {f"quiet-{i}" for i in range(10)}
    for rule, expected in (("mean", {"loud": 20}), ("standardized", {"loud": 10, "quiet": 10})):
        table = document_influence(store, rule).rename({"influence": "score"}).with_columns(tokens=pl.lit(1))
        kept = select_under_budget(table, parse_budget("20")).filter(pl.col("selected"))
        assert kept["domain"].value_counts().sort("domain").rows() == sorted(expected.items()), rule
    assert set(kept["doc_id"]) <= helpful
    assert store.queries()["score_std"].min() > 0


def test_a_store_written_before_the_standardized_aggregate_is_rewritten(fitted_run, fact_target, tmp_path):
    """Selections keep working on a run scored by an older version: its store is rewritten from the kept responses
    (recovery only; the operators are not retrained) and the mean it had is unchanged."""
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    target, planted = fact_target
    first = run_selection(_request(run, target, tmp_path / "first", budget="30"))
    store = ScoreStore(run / "scores" / first["request"]["target_run_name"])
    before = store.documents()
    before.drop("mean_standardized_score").write_parquet(store.folder / "documents.parquet")
    assert not store.is_current()
    bank = (run / "operators" / "bank.safetensors").stat().st_mtime_ns
    manifest = run_selection(_request(run, target, tmp_path / "second", budget="30", rule="standardized"))
    assert store.is_current() and (run / "operators" / "bank.safetensors").stat().st_mtime_ns == bank
    assert store.documents()["mean_score"].to_list() == pytest.approx(before["mean_score"].to_list())
    assert len(planted & {row["id"] for row in manifest["selected_documents"]}) >= 0.3 * len(planted)


@pytest.mark.parametrize("method", ["stride", "bm25"])
def test_balanced_allocation_serves_every_part_of_a_mixed_target(fitted_run, demo_assets, tmp_path, method):
    """A target of two named parts (arithmetic items, recipe items): balanced allocation gives each part half of a
    60-document budget, and each part takes documents of its own kind."""
    sources = {domain: [d for d in demo_assets.documents if d["domain"] == domain][:8] for domain in ("arithmetic", "recipes")}
    items = [{"id": f"{domain}-{i}", "text": d["text"], "part": domain} for domain, docs in sources.items() for i, d in enumerate(docs)]
    target = write_jsonl(tmp_path / "mixed.jsonl", items)
    manifest = run_selection(_request(fitted_run, target, tmp_path / "out", budget="60", method=method, allocation="balanced"))
    assert manifest["request"]["target_parts"] == {"arithmetic": 8, "recipes": 8}
    parts = {row["part"]: row for row in manifest["per_part"]}
    assert {part: row["selected_documents"] for part, row in parts.items()} == {"arithmetic": 30, "recipes": 30}
    # each part takes documents of its own kind: more of them than the other part takes
    assert parts["arithmetic"]["domains"].get("arithmetic", 0) > parts["recipes"]["domains"].get("arithmetic", 0) + 3, parts
    assert parts["recipes"]["domains"].get("recipes", 0) > parts["arithmetic"]["domains"].get("recipes", 0) + 3, parts
    table = pl.read_parquet(tmp_path / "out" / "selection.parquet")
    assert table.filter(pl.col("selected"))["doc_id"].n_unique() == 60 and len(_records(tmp_path / "out" / "selected")) == 60
    if method == "stride":  # the documents' influence is the whole target's mean, put together from the parts' stores
        whole = run_selection(_request(fitted_run, target, tmp_path / "whole", budget="60"))
        influence = dict(pl.read_parquet(tmp_path / "whole" / "selection.parquet").select("doc_id", "score").iter_rows())
        assert table["score"].to_list() == pytest.approx([influence[d] for d in table["doc_id"]], rel=1e-3, abs=1e-6)
        assert whole["request"]["target_parts"] == {"arithmetic": 8, "recipes": 8}


def test_a_target_where_only_some_items_name_their_part_is_refused(fitted_run, fact_target, tmp_path):
    target, _ = fact_target
    records = [json.loads(line) for line in Path(target).read_text().splitlines()]
    records[0]["part"] = "facts"
    partial = write_jsonl(tmp_path / "partial.jsonl", records)
    with pytest.raises(CurateError, match="record 2: no `part`"):
        run_selection(_request(fitted_run, partial, tmp_path / "out", allocation="balanced"))
    assert not (tmp_path / "out").exists()


def test_the_part_can_be_named_by_another_field_on_the_command_line(fitted_run, demo_assets, tmp_path):
    """A benchmark's own field (here `subject`) names the parts: `curate select --allocation balanced --part-field subject`."""
    sources = {domain: [d for d in demo_assets.documents if d["domain"] == domain][:6] for domain in ("stories", "recipes")}
    items = [{"id": f"{domain}-{i}", "text": d["text"], "subject": domain} for domain, docs in sources.items() for i, d in enumerate(docs)]
    target = write_jsonl(tmp_path / "suite.jsonl", items)
    args = ["select", "--run", str(fitted_run), "--target", str(target), "--budget", "40", "--method", "bm25",
            "--allocation", "balanced", "--part-field", "subject", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {p["part"]: p["selected_documents"] for p in manifest["per_part"]} == {"stories": 20, "recipes": 20}
    assert manifest["per_part"][1]["domains"] == {"recipes": 20}  # BM25's recipe part keeps recipes only
    # Without the field named, the items have no part: one part, the greedy selection.
    greedy = CliRunner().invoke(main, [*args[:-4], "--out", str(tmp_path / "whole")])
    assert greedy.exit_code == 0, greedy.output
    assert len(json.loads((tmp_path / "whole" / "manifest.json").read_text())["per_part"]) == 1


# the embedding model's load is the slow part: its case runs with the slow tests
@pytest.mark.parametrize("method", ["bm25", pytest.param("embedding", marks=pytest.mark.slow), "dsir", "random"])
def test_baselines_select_from_the_targets_domain(fitted_run, demo_assets, tmp_path, method):
    """A target of recipes: similarity baselines fill a 60-document budget with recipes; random keeps the pool's mix."""
    recipes = [d for d in demo_assets.documents if d["domain"] == "recipes"]
    target = write_jsonl(tmp_path / "recipes.jsonl", [{"id": f"t{i}", "text": d["text"]} for i, d in enumerate(recipes[:15])])
    manifest = run_selection(_request(fitted_run, target, tmp_path / "out", budget="60", method=method))
    share = {row["domain"]: row["selected_documents"] / 60 for row in manifest["per_domain"]}
    if method == "random":
        assert share.get("recipes", 0) < 0.4
    else:
        assert share["recipes"] >= 0.8


def test_token_budget_and_domain_floor(fitted_run, fact_target, tmp_path):
    target, _ = fact_target
    manifest = run_selection(_request(fitted_run, target, tmp_path / "tokens", budget="2000-tokens"))
    assert 1800 <= manifest["selected"]["tokens"] <= 2000
    floor = run_selection(_request(fitted_run, target, tmp_path / "floor", budget="100", domain_floor=0.2))
    assert floor["selected"]["documents"] == 100
    assert all(row["selected_documents"] >= 20 for row in floor["per_domain"])


def test_select_under_budget_ranks_deterministically_and_never_exceeds_tokens():
    table = pl.DataFrame({"doc_id": ["a", "b", "c", "d"], "score": [0.3, 0.3, 0.5, -1.0], "tokens": [5, 5, 8, 1], "domain": ["x", "x", "y", None]})
    ranked = select_under_budget(table, parse_budget("14-tokens"))
    assert ranked["doc_id"].to_list() == ["c", "a", "b", "d"]  # ties broken by id
    assert ranked.filter(pl.col("selected"))["doc_id"].to_list() == ["c", "a", "d"]  # b no longer fits; d does
    assert ranked.filter(pl.col("selected"))["tokens"].sum() <= 14


def test_proportional_allocation_shares_the_budget_by_group_influence():
    """A target that draws on two sources: greedy spends a 40-document budget on the stronger alone; proportional
    gives each group of positive value a share in proportion to its total influence (3:1 here), best documents
    first, none to a harmful group, and the same to a group however finely it was split."""
    def table(groups: dict[int, tuple[float, int]]) -> pl.DataFrame:  # group -> (value, documents)
        rows = [(f"g{g}-{i:03d}", value + 0.001 * (size // 2 - i), 10, f"d{g}", g)
                for g, (value, size) in groups.items() for i in range(size)]
        return pl.DataFrame(rows, schema=["doc_id", "score", "tokens", "domain", "group"], orient="row")

    pool = table({0: (0.3, 100), 1: (0.1, 100), 2: (-0.2, 100)})
    greedy = select_under_budget(pool, parse_budget("40")).filter(pl.col("selected"))
    assert set(greedy["group"]) == {0}
    kept = select_under_budget(pool, parse_budget("40"), allocation="proportional").filter(pl.col("selected"))
    assert dict(kept.group_by("group").len().iter_rows()) == {0: 30, 1: 10}
    assert kept.filter(pl.col("group") == 1)["doc_id"].sort().to_list() == [f"g1-{i:03d}" for i in range(10)]
    # Group 0 split in two halves of the same value: together they keep their 30.
    split = table({0: (0.3, 50), 3: (0.3, 50), 1: (0.1, 100), 2: (-0.2, 100)})
    kept = select_under_budget(split, parse_budget("40"), allocation="proportional").filter(pl.col("selected"))
    counts = dict(kept.group_by("group").len().iter_rows())
    assert counts[0] + counts[3] == 30 and counts[1] == 10
    # No group helps on average (a sparse target): the allocation falls back to the top scores, as greedy would.
    harmful = table({0: (-0.1, 100), 1: (-0.3, 100)})
    fallback = select_under_budget(harmful, parse_budget("40"), allocation="proportional").filter(pl.col("selected"))
    assert set(fallback["doc_id"]) == set(select_under_budget(harmful, parse_budget("40")).filter(pl.col("selected"))["doc_id"])
    tokens = select_under_budget(pool, parse_budget("395-tokens"), allocation="proportional")
    assert tokens.filter(pl.col("selected"))["tokens"].sum() == 390
    with pytest.raises(CurateError, match="recovery groups"):
        select_under_budget(pool.drop("group"), parse_budget("40"), allocation="proportional")


def test_balanced_allocation_gives_every_part_of_the_target_an_equal_share():
    """A target of two parts whose scores differ tenfold: greedy on the mean spends a 40-document budget on the loud
    part's documents; balanced gives each part 20, its own best first, and never takes a document twice."""
    loud = [(f"loud-{i:03d}", 1.0 - 0.001 * i, 0.0) for i in range(100)]
    quiet = [(f"quiet-{i:03d}", 0.0, 0.1 - 0.0001 * i) for i in range(100)]
    rows = [(doc, (a + b) / 2, 10, doc.split("-")[0], a, b) for doc, a, b in loud + quiet]
    pool = pl.DataFrame(rows, schema=["doc_id", "score", "tokens", "domain", "part_score:math", "part_score:poems"], orient="row")
    greedy = select_under_budget(pool, parse_budget("40")).filter(pl.col("selected"))
    assert set(greedy["domain"]) == {"loud"}
    ranked = select_under_budget(pool, parse_budget("40"), allocation="balanced")
    kept = ranked.filter(pl.col("selected"))
    assert dict(kept.group_by("part").len().iter_rows()) == {"math": 20, "poems": 20}
    assert kept.filter(pl.col("part") == "poems")["doc_id"].sort().to_list() == [f"quiet-{i:03d}" for i in range(20)]
    assert ranked["doc_id"].n_unique() == len(pool) == len(ranked)  # every document ranked once
    assert "part poems's turn" in ranked.filter(pl.col("doc_id") == "quiet-050")["reason"][0]
    # Under a token budget the parts take equal tokens: long documents use up their part's share sooner.
    long = pool.with_columns(tokens=pl.when(pl.col("domain") == "loud").then(30).otherwise(10))
    tokens = select_under_budget(long, parse_budget("600-tokens"), allocation="balanced").filter(pl.col("selected"))
    assert dict(tokens.group_by("part").agg(pl.col("tokens").sum()).iter_rows()) == {"math": 300, "poems": 300}
    with pytest.raises(CurateError, match="per-part scores"):
        select_under_budget(pool.drop("part_score:math", "part_score:poems"), parse_budget("40"), allocation="balanced")


@pytest.mark.parametrize("text, kind, value", [
    ("20%", "fraction", 0.2), ("500", "documents", 500), ("1.5k-docs", "documents", 1500),
    ("50M-tokens", "tokens", 50_000_000), ("2000 tokens", "tokens", 2000),
])
def test_budget_strings(text, kind, value):
    budget = parse_budget(text)
    assert (budget.kind, budget.value) == (kind, value)


@pytest.mark.parametrize("budget, message", [
    ("0", "must be positive"), ("-5%", "must be positive"), ("lots", "not understood"), ("150%", "more than the whole pool"),
    ("100000", "larger than the pool"), ("9G-tokens", "not understood"), ("99999999-tokens", "larger than the pool"),
])
def test_bad_budget_is_refused_and_nothing_is_written(fitted_run, fact_target, tmp_path, budget, message):
    target, _ = fact_target
    with pytest.raises(CurateError, match=message):
        run_selection(_request(fitted_run, target, tmp_path / "out", budget=budget))
    assert not (tmp_path / "out").exists()


def test_bad_targets_are_refused_and_nothing_is_written(fitted_run, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for target, message in ((empty, "empty"), (tmp_path / "missing.jsonl", "does not exist"), ("no_such_task", "no_such_task")):
        with pytest.raises(CurateError, match=message):
            run_selection(_request(fitted_run, target, tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    with pytest.raises(CurateError, match="not an attribution run"):
        run_selection(_request(tmp_path, empty, tmp_path / "out"))


def test_an_lm_eval_task_can_be_the_target(fitted_run, tmp_path):
    """The shipped fixture task's documents become the queries (no file of examples needed)."""
    manifest = run_selection(_request(fitted_run, "curate_fixture_ppl", tmp_path / "out", budget="30"))
    assert manifest["request"]["target_items"] == 24 and manifest["selected"]["documents"] == 30
    assert manifest["request"]["target_run_name"].startswith("target-curate_fixture_ppl-")


def test_items_the_tokenizer_cannot_encode_are_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1, "cat": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    ok, _, _ = fit_to_window(Queries(["a"], [""], ["the cat"]), tokenizer, 16)
    assert ok.completions == ["the cat"]
    with pytest.raises(CurateError, match="'b'.*only unknown tokens"):
        fit_to_window(Queries(["a", "b"], ["", ""], ["the cat", "Καλημέρα κόσμε"]), tokenizer, 16)
    cut, truncated, windowed = fit_to_window(Queries(["long"], ["the"], [" ".join(["cat"] * 40)]), tokenizer, 16)
    assert (truncated, windowed) == (1, 0) and len(tokenizer(cut.prompts[0] + " " + cut.completions[0])["input_ids"]) <= 16


def test_long_text_items_become_windows_that_cover_all_their_text():
    """A target document longer than the window is attributed whole, as the proxies' rolling perplexity scores it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    text = " ".join(["the", "cat", "sat"] * 11)  # 33 tokens; 12 fit one window (16 less the safety margin)
    fitted, truncated, windowed = fit_to_window(Queries(["long", "short"], ["", ""], [text, "the cat"]), tokenizer, 16)
    assert (truncated, windowed) == (0, 1)
    assert fitted.ids == ["long#0", "long#1", "long#2", "short"]
    lengths = [len(tokenizer(c)["input_ids"]) for c in fitted.completions[:3]]
    assert sum(lengths) == 33 and max(lengths) <= 12 and min(lengths) >= 10
    assert " ".join(fitted.completions[:3]) == text


def test_rerun_resumes_the_same_request_refuses_another_and_overwrites_when_told(fitted_run, fact_target, tmp_path):
    target, _ = fact_target
    out = tmp_path / "out"
    first = run_selection(_request(fitted_run, target, out))
    made_at = (out / "manifest.json").stat().st_mtime_ns
    again = run_selection(_request(fitted_run, target, out))  # the same request: the finished selection as it is
    assert again == first and (out / "manifest.json").stat().st_mtime_ns == made_at
    with pytest.raises(CurateError, match=r"other settings \(changed: budget"):
        run_selection(_request(fitted_run, target, out, budget="20%"))
    assert (out / "manifest.json").stat().st_mtime_ns == made_at  # refused: nothing was touched

    # An interruption after the filter stage: its outputs and marker exist, the report's do not.
    (out / "manifest.json").unlink()
    for marker in (out / ".work" / "logs" / "report" / "completions").glob("*"):
        marker.unlink()
    filtered_at = (out / "selected" / "00000.jsonl.gz").stat().st_mtime_ns
    resumed = run_selection(_request(fitted_run, target, out))
    assert resumed["selected_documents"] == first["selected_documents"]
    assert (out / "selected" / "00000.jsonl.gz").stat().st_mtime_ns == filtered_at  # finished stages were skipped

    def crash(executors, execution):
        raise RuntimeError("the machine went away")

    with pytest.MonkeyPatch.context() as patch:  # an overwrite that fails halfway keeps the old selection whole
        patch.setattr("curate.select.job.run_chain", crash)
        with pytest.raises(RuntimeError):
            run_selection(_request(fitted_run, target, out, budget="20"), overwrite=True)
    assert json.loads((out / "manifest.json").read_text()) == resumed

    replaced = run_selection(_request(fitted_run, target, out, budget="20"), overwrite=True)
    assert replaced["selected"]["documents"] == 20 and len(_records(out / "selected")) == 20
    assert not out.with_name("out.replaced").exists()


def test_a_folder_that_is_not_a_selection_is_never_overwritten(fitted_run, fact_target, tmp_path):
    target, _ = fact_target
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(CurateError, match="not a curate selection"):
            run_selection(_request(fitted_run, target, out), overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_pipeline_composed_by_hand_matches_the_command(fitted_run, fact_target, demo_assets, tmp_path):
    """The steps in a user's own datatrove pipeline: input in two shards, two tasks per stage."""
    target, _ = fact_target
    shards = tmp_path / "pool"
    shards.mkdir()
    half = len(demo_assets.documents) // 2
    write_jsonl(shards / "a.jsonl", demo_assets.documents[:half])
    write_jsonl(shards / "b.jsonl", demo_assets.documents[half:])
    work, out = tmp_path / "work", tmp_path / "mine"
    score = LocalPipelineExecutor(
        [JsonlReader(str(shards)), InfluenceScorer(fitted_run, target, scores_folder=str(work / "scores"))],
        tasks=2, workers=1, logging_dir=str(work / "logs1"),
    )
    threshold = LocalPipelineExecutor(
        [BudgetThreshold(str(work / "scores"), str(out), "10%")], tasks=1, logging_dir=str(work / "logs2"), depends=score,
    )
    from datatrove.pipeline.writers import JsonlWriter

    keep = LocalPipelineExecutor(
        [JsonlReader(str(shards)), InfluenceScorer(fitted_run, target), InfluenceFilter(str(out)), JsonlWriter(str(out / "kept"))],
        tasks=2, workers=1, logging_dir=str(work / "logs3"), depends=threshold,
    )
    keep.run()
    mine = {r["id"] for r in _records(out / "kept")}
    manifest = run_selection(_request(fitted_run, target, tmp_path / "cli"))
    assert mine == {row["id"] for row in manifest["selected_documents"]}
    assert len(list((work / "scores").glob("*.parquet"))) == 2


def test_slurm_stages_chain_and_pickle(fitted_run, fact_target, tmp_path):
    """The executors Slurm would be given are built, chained and serialisable (the slow test below runs them)."""
    import dill

    target, _ = fact_target
    request = _request(fitted_run, target, tmp_path / "out", executor="slurm", tasks=4, workers=2,
                       executor_options={"partition": "cpu", "time": "00:30:00"})
    executors = selection_executors(request, selection_pipelines(request, []))
    assert [e.tasks for e in executors] == [4, 1, 4, 1, 4, 1]  # attribute, merge, score, threshold, filter, report
    assert all(e.depends is before for e, before in zip(executors[1:], executors))
    for executor in executors:
        dill.loads(dill.dumps(executor.pipeline))
    with pytest.raises(CurateError, match="partition"):
        selection_executors(_request(fitted_run, target, tmp_path / "o", executor="slurm"), selection_pipelines(request, []))


@pytest.mark.slow
def test_a_selection_submitted_to_slurm_runs_as_its_nodes_would_run_it(fitted_run, fact_target, tmp_path, monkeypatch):
    """The sbatch scripts datatrove writes (partition, arrays, dependencies), run by a stand-in scheduler task by task in
    fresh processes: the same selection as the local executor's."""
    target, _ = fact_target
    slurm = FakeSlurm(tmp_path / "slurm-cluster")
    monkeypatch.setenv("PATH", slurm.path())
    request = _request(fitted_run, target, tmp_path / "slurm-out", executor="slurm", tasks=2, workers=2,
                       executor_options={"partition": "cpu", "time": "00:30:00"})
    assert run_selection(request) == {}  # submitted, not run
    assert not (tmp_path / "slurm-out" / "manifest.json").exists()
    jobs = slurm.run_jobs()
    stages = [job for job in jobs if "launch_pickled_pipeline" in job.script]
    assert [len(job.array) for job in stages] == [2, 1, 2, 1, 2, 1]  # attribute, merge, score, threshold, filter, report
    assert all(job.directives["partition"] == "cpu" and job.directives["time"] == "00:30:00" for job in stages)
    assert stages[0].directives["array"] == "0-1%2"
    assert all(later.depends_on == [earlier.id] for earlier, later in zip(stages, stages[1:]))
    manifest = json.loads((tmp_path / "slurm-out" / "manifest.json").read_text())
    local = run_selection(_request(fitted_run, target, tmp_path / "local"))
    assert manifest["selected_documents"] == local["selected_documents"]
    assert len(_records(tmp_path / "slurm-out" / "selected")) == len(local["selected_documents"])


@pytest.mark.slow
def test_select_and_fit_commands(demo_assets, fact_target, tmp_path):
    target, _ = fact_target
    run = tmp_path / "run"
    sets = ["--set=num_subsets=64", "--set=subsets_per_example=3", "--set=steps=60", "--set=linearity_every=30"]
    result = CliRunner().invoke(main, ["fit", "--model", str(demo_assets.model_dir), "--train", str(demo_assets.corpus_path),
                                       "--out", str(run), "--preset", "cpu-smoke", "--quiet", *sets])
    assert result.exit_code == 0, result.output
    args = ["select", "--run", str(run), "--target", str(target), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--budget", "60"])
    assert result.exit_code == 0, result.output
    assert "kept 60 of" in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["selected"]["documents"] == 60
    again = CliRunner().invoke(main, [*args, "--budget", "60"])  # the same settings: the finished selection, reused
    assert again.exit_code == 0 and "kept 60 of" in again.output
    other = CliRunner().invoke(main, [*args, "--budget", "50"])
    assert other.exit_code != 0 and "changed: budget" in other.output and "--overwrite" in other.output
    bad = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "bad"), "--budget", "ten percent"])
    assert bad.exit_code != 0 and "not understood" in bad.output and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ray_executor_gives_the_same_selection(fitted_run, fact_target, tmp_path, monkeypatch):
    """datatrove's Ray executor, on a local Ray instance, with two tasks per per-document stage."""
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    target, _ = fact_target
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("TMPDIR", ray_tmp)  # datatrove's Ray executor writes its task logs under $TMPDIR
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    try:
        on_ray = run_selection(_request(fitted_run, target, tmp_path / "ray", executor="ray", tasks=2, workers=2))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    local = run_selection(_request(fitted_run, target, tmp_path / "local"))
    assert on_ray["selected_documents"] == local["selected_documents"]
    assert len(_records(tmp_path / "ray" / "selected")) == len(local["selected_documents"])


@pytest.mark.slow
def test_grouped_recovery_rescores_a_fitted_run_without_refitting(fitted_run, demo_assets, fact_target, tmp_path):
    """`curate fit --set groups=8 --force` on a fitted run keeps the operators, clusters the chunks once, and the
    selection made before stays apart: the target gets one score store per recovery setting, never a stale one."""
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    before = {s.name for s in (run / "scores").glob("target-facts-*")}  # the shared run holds other tests' targets too
    target, _ = fact_target
    plain = run_selection(_request(run, target, tmp_path / "plain", budget="60"))
    bank = (run / "operators" / "bank.safetensors").read_bytes()
    args = ["fit", "--model", str(demo_assets.model_dir), "--train", str(demo_assets.corpus_path), "--out", str(run),
            "--preset", "cpu-smoke", "--quiet", "--set", "groups=8"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "groups" in refused.output  # a changed recovery setting needs --force
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    grouped = run_selection(_request(run, target, tmp_path / "grouped", budget="60"))
    assert (run / "operators" / "bank.safetensors").read_bytes() == bank
    assert pl.read_parquet(run / "groups" / "8.parquet")["group"].n_unique() == 8
    names = {plain["request"]["target_run_name"], grouped["request"]["target_run_name"]}
    stores = sorted((run / "scores").glob("target-facts-*"))
    assert len(names) == 2 and names <= {s.name for s in stores} and {s.name for s in stores} - before <= names
    # Grouped scores are dense: every document of the pool has one, where the Lasso's are mostly zero.
    assert max(pl.read_parquet(s / "documents.parquet")["nonzero_queries"].min() for s in stores) == FACTS

    # Proportional allocation spends the budget across the groups; the run without groups refuses it, writing nothing.
    with pytest.raises(CurateError, match="recovery groups"):
        run_selection(_request(fitted_run, target, tmp_path / "refused", budget="60", allocation="proportional"))
    assert not (tmp_path / "refused").exists()
    # A target drawn from two sources: each group of positive value gets a share in proportion to its total influence.
    sources = [d for d in demo_assets.documents if d["domain"] == "arithmetic"][:8] + [d for d in demo_assets.documents if d["domain"] == "recipes"][:8]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"id": f"q{i}", "text": d["text"]} for i, d in enumerate(sources)])
    spread = run_selection(_request(run, mixed, tmp_path / "spread", budget="60", allocation="proportional"))
    positive = [g for g in spread["per_group"] if g["value"] > 0]
    assert len(positive) >= 2 and sum(g["selected_documents"] for g in positive) == 60
    total = sum(g["value"] * g["pool_documents"] for g in positive)
    for group in positive:
        share = 60 * group["value"] * group["pool_documents"] / total
        assert abs(group["selected_documents"] - min(share, group["pool_documents"])) <= 2, spread["per_group"]


@pytest.mark.slow  # the default run has the same check for the audit (test_contamination.py)
def test_the_target_attributed_by_several_tasks_selects_what_one_task_selects(demo_run, demo_assets, tmp_path):
    """Three tasks share the target's responses and recovery (curate.core.attribution), then one merges them: the same
    store and the same selection as a single task's. 130 queries: recovery's batches of 64 give two tasks work."""
    target = write_jsonl(tmp_path / "pool-sample.jsonl",
                         [{"id": f"t{i}", "text": doc["text"][:160]} for i, doc in enumerate(demo_assets.documents[:130])])
    chosen = {}
    for tasks in (1, 3):
        run = tmp_path / f"run-{tasks}"
        shutil.copytree(demo_run, run)
        manifest = run_selection(_request(run, target, tmp_path / f"out-{tasks}", tasks=tasks, workers=1))
        chosen[tasks] = [row["id"] for row in manifest["selected_documents"]]
        assert not (run / "parts").exists() or not any((run / "parts").iterdir())  # merged, then removed
    stores = [ScoreStore(next((tmp_path / f"run-{tasks}" / "scores").glob("target-pool-sample-*"))) for tasks in (1, 3)]
    assert stores[0].queries().equals(stores[1].queries()) and len(stores[0].queries()) == 130
    np.testing.assert_allclose(stores[1].documents()["mean_score"].to_numpy(), stores[0].documents()["mean_score"].to_numpy(), rtol=1e-12)
    assert chosen[3] == chosen[1]
