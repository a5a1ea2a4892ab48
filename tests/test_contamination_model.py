"""The audit's model signals on planted ground truth: the demo model was trained on documents stating invented facts,
so each fact is a benchmark item it saw (in 2-3 known documents), and the same prompt with another fact's answer is
an item it never saw. Memorisation must tell them apart; attribution must point at the documents that state them."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from curate.contamination import AuditRequest, run_audit
from curate.contamination.items import BenchmarkItem
from curate.contamination.memorisation import memorisation_scores
from curate.core.run import RunInputs
from curate.errors import CurateError
from stride_engine import preset

FACTS = 24


def auc(positive, negative) -> float:
    positive, negative = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((positive > negative).mean() + 0.5 * (positive == negative).mean())


@pytest.fixture(scope="module")
def facts(demo_assets):
    """Seen items (the planted facts) and unseen ones (each prompt with the next fact's answer, stated nowhere)."""
    queries = demo_assets.queries[:FACTS]
    seen = [BenchmarkItem("facts", q["id"], q["prompt"], q["completion"]) for q in queries]
    unseen = [BenchmarkItem("facts", f"{q['id']}-swapped", q["prompt"], queries[(i + 1) % FACTS]["completion"]) for i, q in enumerate(queries)]
    planted = {q["id"]: set(q["planted_doc_ids"]) for q in queries}
    return seen, unseen, planted


def test_memorisation_tells_seen_items_from_unseen_ones(demo_assets, facts):
    seen, unseen, _ = facts
    table = memorisation_scores(demo_assets.model_dir, seen + unseen)
    is_seen = ~table["item_id"].str.ends_with("-swapped")
    loss, min_k = table["loss"].to_numpy(), table["min_k_pp"].to_numpy()
    assert auc(-loss[is_seen], -loss[~is_seen]) >= 0.9  # a seen fact's answer is easier
    assert auc(min_k[is_seen], min_k[~is_seen]) >= 0.9  # and no token of it is very surprising
    assert np.isfinite(loss).all() and np.isfinite(min_k).all()


def test_the_reference_gap_is_zero_against_the_model_itself(demo_assets, facts):
    seen, _, _ = facts
    table = memorisation_scores(demo_assets.model_dir, seen[:4], reference_dir=demo_assets.model_dir)
    assert np.allclose(table["reference_gap"].to_numpy(), 0.0, atol=1e-9)


@pytest.fixture(scope="module")
def fitted_run(demo_run):
    """The session's fitted demo run (conftest.demo_run)."""
    return demo_run


@pytest.mark.slow
def test_an_audit_with_a_run_points_each_seen_item_at_the_documents_that_state_it(demo_assets, facts, fitted_run, tmp_path):
    seen, unseen, planted = facts
    bench = tmp_path / "facts.jsonl"
    bench.write_text("".join(json.dumps({"id": i.id, "question": i.question, "answer": i.answer}) + "\n" for i in seen + unseen))
    request = AuditRequest(benchmarks=(str(bench),), train=(str(demo_assets.corpus_path),), out=str(tmp_path / "audit"),
                           run=str(fitted_run), attribution_z=None, tasks=2, workers=1)
    run_audit(request)  # two tasks share the items' attribution, one merges it (curate.core.attribution)
    assert not any((fitted_run / "parts").iterdir())
    items = pl.read_parquet(tmp_path / "audit" / "items.parquet")
    assert {"attribution_z", "concentration", "loss", "min_k_pp"} <= set(items.columns)
    pairs = pl.read_parquet(tmp_path / "audit" / ".work" / "attribution_pairs.parquet")
    hits = [bool(set(pairs.filter(pl.col("item_id") == i.id)["doc_id"]) & planted[i.id]) for i in seen]
    assert np.mean(hits) >= 0.5  # most seen facts have a planted document in their top 10
    seen_loss = items.filter(~pl.col("item_id").str.ends_with("-swapped"))["loss"].to_numpy()
    unseen_loss = items.filter(pl.col("item_id").str.ends_with("-swapped"))["loss"].to_numpy()
    assert auc(-seen_loss, -unseen_loss) >= 0.9


def test_a_run_fit_on_another_corpus_is_refused_before_anything_is_written(demo_assets, tmp_path):
    fitted_run = tmp_path / "run"  # what the check reads of a run: its configuration and inputs
    fitted_run.mkdir()
    preset("cpu-smoke").save(fitted_run / "config.yaml")
    RunInputs(demo_assets.model_dir, [demo_assets.corpus_path]).save(fitted_run)
    other = tmp_path / "other.jsonl"
    other.write_text(demo_assets.corpus_path.read_text())
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"id": "1", "question": "What is the capital of Zorbia?", "answer": "Quelmin"}) + "\n")
    request = AuditRequest(benchmarks=(str(bench),), train=(str(other),), out=str(tmp_path / "audit"), run=str(fitted_run))
    with pytest.raises(CurateError, match="not on the audited corpus"):
        run_audit(request)
    assert not (tmp_path / "audit").exists()
