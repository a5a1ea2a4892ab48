"""The contamination study's scoring and the inflation check.

Planted truth: items whose scores are known decide the AUC and the thresholds; a corpus that holds some benchmark
items many times over must show, once decontaminated, those items' score getting worse and the others' not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.contamination import AuditRequest, run_audit
from curate.contamination.inflation import CheckSettings, markdown, summarise
from curate.contamination.study import choose_thresholds, item_auc
from curate.contamination.verdict import Evidence
from curate.errors import CurateError


def test_item_auc_counts_ranks_ties_and_missing_scores():
    assert item_auc({"a": 3, "b": 2, "x": 1, "y": 0}, {"a", "b"}, {"x", "y"}) == 1.0
    assert item_auc({"a": 0, "b": 1, "x": 2, "y": 3}, {"a", "b"}, {"x", "y"}) == 0.0
    assert item_auc({"a": 1, "x": 1}, {"a"}, {"x"}) == 0.5
    # an item the signal gave no score to counts as the lowest: a positive without one loses to every negative
    assert item_auc({"x": -5.0}, {"a"}, {"x"}) == 0.0
    assert item_auc({"a": 1.0}, set(), {"x"}) is None


def _case(mink_negatives, mink_positives, pairs):
    """Two never-injected items n0, n1 and two injected ones p0, p1 (p0's copy is document c0, p1's c1)."""
    ids = ["n0", "n1", "p0", "p1"]
    kinds = pl.DataFrame({"item_id": ids, "kind": ["none", "none", "verbatim", "verbatim"]})
    truth = pl.DataFrame({"item_id": ["p0", "p1"], "doc_id": ["c0", "c1"]})
    memorisation = pl.DataFrame({"benchmark": "b", "item_id": ids, "min_k_pp": [*mink_negatives, *mink_positives],
                                 "loss": 1.0, "reference_gap": [0.1, 0.2, 0.5, 0.6]})
    attribution = pl.DataFrame(pairs, schema={"item_id": pl.String, "doc_id": pl.String, "attribution_z": pl.Float64}, orient="row")
    evidence = Evidence(pl.DataFrame(), pl.DataFrame(), attribution_pairs=attribution, memorisation=memorisation)
    return {"evidence": evidence, "kinds": kinds, "truth": truth}


def test_thresholds_are_the_least_values_no_never_injected_item_reaches():
    pairs = [("n0", "d1", 4.21), ("n1", "d2", 2.0), ("p0", "c0", 9.0), ("p1", "c1", 6.0), ("p1", "d3", 5.0), ("p0", "d4", 3.0)]
    case = _case([-2.0, -1.503], [0.5, -1.0], pairs)
    chosen = choose_thresholds(case, {})
    assert chosen["min_k_pp"] == pytest.approx(-1.50)  # the highest never-injected item, rounded up: none of them fires
    assert chosen["reference_gap"] == pytest.approx(0.21)  # above 0.2: "reaches" is >=, so 0.2 itself would fire
    # z = 5.0 clears every never-injected item but flags a non-copy beside two copies (precision 2/3 < 0.9): the
    # least z at which the flagged pairs are copies is 6.0
    assert chosen["attribution_z"] == pytest.approx(6.0)
    assert choose_thresholds(case, {}, precision=0.6)["attribution_z"] == pytest.approx(5.0)
    # a threshold the recipe gives is kept as it is
    assert choose_thresholds(case, {"min_k_pp": 0.25})["min_k_pp"] == 0.25


def test_attribution_gets_no_threshold_when_its_top_documents_are_not_the_copies():
    case = _case([-2.0, -1.0], [0.5, 0.4], [("n0", "d1", 8.0), ("p0", "d2", 9.0), ("p1", "c1", 2.0)])
    assert choose_thresholds(case, {})["attribution_z"] is None


def test_the_inflation_summary_subtracts_what_the_clean_items_moved():
    rows = []
    for seed in (0, 1):
        rows += [
            {"corpus": "original", "seed": seed, "group": "flagged", "bits_per_byte": 2.0 + 0.01 * seed},
            {"corpus": "decontaminated", "seed": seed, "group": "flagged", "bits_per_byte": 2.5 + 0.01 * seed},
            {"corpus": "original", "seed": seed, "group": "clean", "bits_per_byte": 3.0},
            {"corpus": "decontaminated", "seed": seed, "group": "clean", "bits_per_byte": 3.1},
        ]
    summary = summarise(pl.DataFrame(rows))
    assert summary["groups"]["flagged"]["change"] == pytest.approx(0.5)
    assert summary["groups"]["clean"]["change"] == pytest.approx(0.1)
    assert summary["inflation_bits_per_byte"] == pytest.approx(0.4)
    text = markdown(summary, CheckSettings(steps=10, seeds=(0, 1)), {"flagged": 3, "clean": 7})
    assert "| flagged | 3 |" in text and "+0.4000 bits per byte" in text


def test_a_check_without_a_clean_copy_or_a_model_is_refused_before_anything_is_written(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "1", "question": "How many apples does Ann have left?", "answer": "She has 3 apples left. #### 3"}) + "\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "d1", "text": "An ordinary document."}) + "\n")
    out = tmp_path / "audit"
    with pytest.raises(CurateError, match="--decontaminate"):
        run_audit(AuditRequest(benchmarks=(str(bench),), train=(str(corpus),), out=str(out), check=True))
    with pytest.raises(CurateError, match="--run or --model"):
        run_audit(AuditRequest(benchmarks=(str(bench),), train=(str(corpus),), out=str(out), check=True,
                               decontaminate=str(tmp_path / "clean")))
    result = CliRunner().invoke(main, ["contamination", "--benchmark", str(bench), "--train", str(corpus), "--out", str(out),
                                       "--decontaminate", str(tmp_path / "clean"), "--check", "--check-seeds", "0,x"])
    assert result.exit_code != 0 and "--check-seeds" in result.output
    assert not out.exists() and not (tmp_path / "clean").exists()


ITEMS = [
    ("Tom has 12 marbles and gives 5 of them to his sister Lena. How many marbles does Tom keep for himself now?",
     "Tom keeps 12 - 5 = 7 marbles. #### 7"),
    ("A baker makes 30 loaves each morning and sells 18 of them before noon. How many loaves are left for the afternoon?",
     "There are 30 - 18 = 12 loaves left. #### 12"),
    ("Maria reads 15 pages of her book every day for 4 days in a row. How many pages has Maria read altogether?",
     "She read 15 * 4 = 60 pages. #### 60"),
    ("A farmer plants 8 rows of corn with 9 plants in every row of his field. How many corn plants are there in total?",
     "There are 8 * 9 = 72 plants. #### 72"),
    ("Sam saves 6 dollars every week for 7 weeks to buy a present for his mother. How much money has Sam saved by then?",
     "Sam saved 6 * 7 = 42 dollars. #### 42"),
    ("A class of 28 pupils splits into teams of 4 for a quiz in the school hall. How many teams are there in the quiz?",
     "There are 28 / 4 = 7 teams. #### 7"),
]


@pytest.mark.slow
def test_the_inflation_check_shows_the_copied_items_score_getting_worse_without_their_copies(demo_assets, tmp_path):
    """Three items copied eight times each into the demo corpus, three never: retrained on the decontaminated copy,
    the copied items' bits per byte rise more than the others' (the demo model's shape and tokenizer, fresh weights)."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": str(i), "question": q, "answer": a}) + "\n" for i, (q, a) in enumerate(ITEMS)))
    documents = [json.loads(line) for line in open(demo_assets.corpus_path)]
    documents += [{"id": f"copy-{i}-{c}", "text": f"{q}\n{a}"} for i, (q, a) in enumerate(ITEMS[:3]) for c in range(8)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in documents))
    out = tmp_path / "audit"
    result = CliRunner().invoke(main, [
        "contamination", "--benchmark", str(bench), "--train", str(corpus), "--out", str(out), "--model", str(demo_assets.model_dir),
        "--decontaminate", str(tmp_path / "clean"), "--check", "--check-steps", "150", "--check-seeds", "0,1", "--quiet"])
    assert result.exit_code == 0, result.output
    items = pl.read_parquet(out / "items.parquet")
    assert set(items.filter(pl.col("verdict") == "contaminated")["item_id"]) == {"0", "1", "2"}
    record = json.loads((out / "check" / "check.json").read_text())
    groups = record["summary"]["groups"]
    assert groups["flagged"]["change"] > groups["clean"]["change"]
    assert record["summary"]["inflation_bits_per_byte"] > 0
    assert "inflation" in result.output and (out / "check" / "inflation.png").stat().st_size > 0
    table = pl.read_parquet(out / "check" / "inflation.parquet")
    assert table.height == 2 * 2 * 2 and np.isfinite(table["bits_per_byte"].to_numpy()).all()


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "corpus").is_dir(), reason="needs the shared corpus (../shared/data)")
def test_the_smoke_study_scores_every_signal_against_the_injected_truth(tmp_path, monkeypatch):
    """`curate recipe recipes/contamination_audit.yaml --smoke`: an injected corpus, a model and a run on it, the audit;
    every row names its task, case, signal and kind, and the exact-copy signals find every verbatim copy."""
    from curate.studies.recipe import run_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "contamination_audit.yaml"
    monkeypatch.chdir(tmp_path)
    path = run_recipe(recipe, smoke=True, progress=False)
    rows = json.loads(path.read_text())
    scored = [r for r in rows if r["signal"] != "check"]
    assert {"task", "rate", "seed", "signal", "kind", "item_auc"} <= set(scored[0])
    assert {r["task"] for r in rows} == {"contamination"}
    signals = {r["signal"] for r in scored}
    assert {"lexical", "fuzzy", "attribution", "memorisation", "reference_gap", "model-free", "combined"} <= signals
    combined = next(r for r in scored if r["signal"] == "combined" and r["kind"] == "all")
    assert combined["doc_recall"] == 1.0 and combined["confusion"]["never_injected"]["contaminated"] == 0
    lexical_verbatim = [r for r in scored if r["signal"] == "lexical" and r["kind"] == "verbatim"]
    assert lexical_verbatim and all(r["doc_recall"] == 1.0 for r in lexical_verbatim)
    check = [r for r in rows if r["signal"] == "check"]
    assert {r["corpus"] for r in check} == {"original", "decontaminated"} and all(r["bits_per_byte"] > 0 for r in check)
    assert "## The inflation check" in path.with_suffix(".md").read_text() and path.with_suffix(".png").stat().st_size > 0
