"""The audit benchmark's n-gram peers and scoring, on planted pairs."""

import polars as pl

from benchmarks.contamination.lexical_bench import ngram_rule, score

QUESTION = "Janet has sixteen ducks that lay eggs every single morning and she sells all of them at the market for two dollars"


def test_the_ngram_rule_flags_shared_ngrams_only():
    items = pl.DataFrame({"item_id": ["a"], "question": [QUESTION], "answer": ["She makes 32 dollars."]})
    corpus = [{"id": "copy", "text": "Intro. " + QUESTION.upper() + "!"}, {"id": "other", "text": "Janet has sixteen ducks."}]
    assert ngram_rule(items, corpus, 13, with_answer=True).rows() == [("a", "copy")]
    assert ngram_rule(items, corpus, 4, with_answer=False).rows() == [("a", "copy"), ("a", "other")]


def test_scores_count_recall_per_kind_precision_and_never_injected_items():
    truth = pl.DataFrame({"item_id": ["a", "b"], "kind": ["verbatim", "reworded_light"], "doc_id": ["d1", "d2"]})
    kinds = pl.DataFrame({"item_id": ["a", "b", "c"], "kind": ["verbatim", "reworded_light", "none"]})
    pairs = pl.DataFrame({"item_id": ["a", "c"], "doc_id": ["d1", "d3"]})
    rows = {r["kind"]: r for r in score("m", pairs, truth, kinds, {})}
    assert rows["verbatim"]["doc_recall"] == 1.0 and rows["reworded_light"]["doc_recall"] == 0.0
    assert rows["all"]["doc_precision"] == 0.5 and rows["all"]["negative_items_flagged"] == 1 and rows["all"]["item_recall"] == 0.5
