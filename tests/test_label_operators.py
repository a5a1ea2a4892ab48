"""Operators trained on whole labels (stride_engine.label_operators): the membership, the bank kept in the run and
read back, and what it measures on the demo corpus, whose planted facts are stated only in `stories` and
`encyclopedia` documents."""

from __future__ import annotations

import numpy as np
import pytest

from stride_engine import Stride, preset, read_documents, read_queries
from stride_engine.errors import ConfigError
from stride_engine.design import Membership
from stride_engine.label_operators import FOLDER, LabelOperators, held_out_examples, label_membership

from tiny import write_jsonl


def test_each_operator_holds_every_example_of_one_label():
    labels = ["b", "a", "b", "c", "a", "b"]
    membership, names = label_membership(labels, replicates=3, seed=0)
    assert names == ("a", "b", "c")
    assert membership.num_subsets == 9 and membership.num_examples == 6
    for k in range(9):
        assert membership.members(k).tolist() == [i for i, label in enumerate(labels) if label == names[k // 3]]


def test_label_operators_need_two_labels_and_two_replicates():
    with pytest.raises(ConfigError, match="at least two labels"):
        label_membership(["a", "a"], replicates=2, seed=0)
    with pytest.raises(ConfigError, match="replicates"):
        label_membership(["a", "b"], replicates=1, seed=0)


@pytest.fixture(scope="module")
def engine(demo_assets, demo_run):
    stride = Stride.from_pretrained(demo_assets.model_dir, preset("cpu-smoke"), demo_run, progress=False)
    return stride.fit(read_documents([demo_assets.corpus_path]))


def _domain_labels(engine) -> list[str]:
    examples = engine._examples  # one domain per document; doc_index maps each chunk to its document
    return [str(examples.domains[i]) for i in examples.doc_index]


def test_the_fact_domains_operators_lower_the_loss_of_the_planted_facts_and_the_bank_is_kept(engine, demo_assets, tmp_path):
    labels = _domain_labels(engine)
    bank = LabelOperators.fit(engine, labels, replicates=2, steps=60)
    facts = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:24]])
    measured = bank.responses(read_queries(facts), name="facts")
    assert measured.labels == ("arithmetic", "encyclopedia", "recipes", "stories")
    assert measured.mean.shape == (24, 4) and measured.replicates.shape == (24, 4, 2)
    by_label = dict(zip(measured.labels, measured.mean.mean(axis=0)))
    # the facts are stated in encyclopedia and stories documents only: a dose of either helps them more than a dose
    # of the domains that never state them
    assert max(by_label["encyclopedia"], by_label["stories"]) > max(by_label["arithmetic"], by_label["recipes"])

    kept = sorted((engine.run.root / FOLDER).iterdir())
    bank_file = bank.folder / "bank.safetensors"
    written = bank_file.stat().st_mtime_ns
    again = LabelOperators.fit(engine, labels, replicates=2, steps=60)
    assert again.folder == bank.folder and bank_file.stat().st_mtime_ns == written  # read back, not retrained
    assert np.array_equal(again.responses(read_queries(facts), name="facts").replicates, measured.replicates)
    assert sorted((engine.run.root / FOLDER).iterdir()) == kept
    assert not list((engine.run.root / FOLDER).glob("*.partial"))


def test_one_label_per_training_example_is_required(engine):
    with pytest.raises(ConfigError, match="one label per example"):
        LabelOperators.fit(engine, ["a", "b"], replicates=2, steps=5)


def test_held_out_text_is_whole_documents_at_most_a_quarter_of_each_label():
    # label a: 10 documents of 3 chunks; label b: 2 documents of 2 chunks (a quarter is 1 chunk: none fits)
    doc_index = np.array([d for d in range(10) for _ in range(3)] + [10, 10, 11, 11])
    labels = ["a"] * 30 + ["b"] * 4
    held = held_out_examples(labels, doc_index, per_label=8, seed=0)
    assert len(held) == 6 and all(labels[i] == "a" for i in held)  # two whole documents: a third would pass 8
    for document in np.unique(doc_index[held]):
        assert set(np.flatnonzero(doc_index == document)) <= set(held.tolist())
    assert np.array_equal(held, held_out_examples(labels, doc_index, per_label=8, seed=0))  # the same draw again


def test_held_out_examples_are_never_trained_on_and_every_labels_dose_is_measured_on_them(engine):
    labels = _domain_labels(engine)
    bank = LabelOperators.fit(engine, labels, replicates=2, steps=20, held_out=8)
    assert 0 < len(bank.held_out) <= 8 * 4
    trained = Membership.load(bank.folder / "membership.npz")
    assert trained.num_examples == len(labels) - len(bank.held_out)  # neither members nor stability rows
    on_text = bank.held_out_responses()
    assert on_text.query_ids == tuple(labels[i] for i in bank.held_out)
    assert on_text.mean.shape == (len(bank.held_out), 4) and np.isfinite(on_text.mean).all()
    assert LabelOperators.fit(engine, labels, replicates=2, steps=20).folder != bank.folder  # its own bank
    with pytest.raises(ConfigError, match="held_out"):
        LabelOperators.fit(engine, labels, replicates=2, steps=20, held_out=-1)
