"""The audit benchmark's peer tools (decon, datatrove's n-gram decontamination) on a tiny injected corpus: a planted
verbatim copy is found, a never-injected item is not. They need the shared GSM8K items, and decon its own
interpreter (CURATE_DECON_PYTHON); without them the tests skip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest

from benchmarks.contamination.datatrove_peer import datatrove_pairs
from benchmarks.contamination.decon_peer import INSTALL, PYTHON_VARIABLE, PeerUnavailable, decon_pairs, decon_python
from curate.contamination.inject import inject, read_jsonl

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = PROJECT_ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k_test.jsonl"


def host_document(index: int) -> dict[str, str]:
    text = (
        f"River {index}\nThe river rises in the northern hills. It flows west for many miles past old mills.\n"
        "Its valley is wide and green. Farms line both banks of the water. Mr. Hale built the first bridge.\n"
        "A ferry crosses it near the town. Fishermen work its lower reaches in spring."
    )
    return {"id": f"wiki-{index:04d}", "text": text, "domain": "wiki", "source": "hand-made"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """20 GSM8K test items, a few injected verbatim or embedded into 40 hand-made documents; the rest never."""
    if not BENCHMARK.is_file():
        pytest.skip(f"the shared GSM8K test items are absent ({BENCHMARK})")
    items = read_jsonl(BENCHMARK)[:20]
    injection = inject([host_document(i) for i in range(40)], items, rate=0.1, kinds=["verbatim", "embedded"],
                       copies=(1, 1), seed=0)
    folder = tmp_path_factory.mktemp("peers")
    corpus_path = folder / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(document) + "\n" for document in injection.corpus))
    frame = pl.DataFrame([{"item_id": item["id"], "question": item["question"], "answer": item["answer"]} for item in items])
    return frame, corpus_path, injection.truth, injection.item_kinds, folder


def check(pairs: pl.DataFrame, truth: pl.DataFrame, kinds: pl.DataFrame) -> None:
    found = set(pairs.iter_rows())
    verbatim = [(r["item_id"], r["doc_id"]) for r in truth.filter(pl.col("kind") == "verbatim").iter_rows(named=True)]
    assert verbatim and all(pair in found for pair in verbatim)
    negatives = set(kinds.filter(pl.col("kind") == "none")["item_id"])
    assert negatives and not negatives & set(pairs["item_id"])


def test_decon_finds_a_planted_verbatim_copy_and_no_never_injected_item(planted):
    try:
        decon_python()
    except PeerUnavailable as missing:
        pytest.skip(str(missing))
    items, corpus_path, truth, kinds, folder = planted
    check(decon_pairs(items, corpus_path, folder / "decon"), truth, kinds)


def test_datatrove_finds_a_planted_verbatim_copy_and_no_never_injected_item(planted):
    if importlib.util.find_spec("spacy") is None:
        pytest.skip("datatrove's English word tokenizer needs spaCy (`pip install spacy`)")
    items, corpus_path, truth, kinds, folder = planted
    check(datatrove_pairs(items, corpus_path, folder / "datatrove"), truth, kinds)


def test_a_missing_decon_interpreter_names_the_variable_and_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv(PYTHON_VARIABLE, str(tmp_path / "no-python"))
    with pytest.raises(PeerUnavailable) as raised:
        decon_python()
    assert PYTHON_VARIABLE in str(raised.value) and INSTALL in str(raised.value)
