"""The embedded demo assets: the seeded corpus with planted facts, the tokenizer/model round trip, and the quick
build actually learning the planted facts (attribution tests downstream depend on all three)."""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import pytest
import torch

# Nothing here may download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from curate.demo.corpus import DemoCorpus, generate_demo_corpus, write_jsonl  # noqa: E402
from curate.demo.model import (  # noqa: E402
    DEMO_CONFIGS,
    MARKER,
    _reusable,
    build_demo_assets,
    build_model,
    completion_losses,
    train_tokenizer,
)

SMALL = {"num_entities": 40, "num_filler": 200}


def _offline(mp: pytest.MonkeyPatch, hf_home: Path) -> None:
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HOME", str(hf_home))


@pytest.fixture(autouse=True)
def _offline_hf(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / "hf_home")


@pytest.fixture(scope="module")
def corpus() -> DemoCorpus:
    return generate_demo_corpus(0, **SMALL)


@pytest.fixture(scope="module")
def quick_assets(request, tmp_path_factory):
    """The quick build, trained once. Reuses the session-wide build from conftest when there is one, so the test
    suite trains the quick model only once."""
    try:
        return request.getfixturevalue("demo_assets")
    except pytest.FixtureLookupError:
        with pytest.MonkeyPatch.context() as mp:
            _offline(mp, tmp_path_factory.mktemp("hf_home"))
            return build_demo_assets(tmp_path_factory.mktemp("demo") / "assets", quick=True, progress=False)


# --------------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed(corpus):
    again = generate_demo_corpus(0, **SMALL)
    assert again == corpus
    other = generate_demo_corpus(1, **SMALL)
    assert [d["text"] for d in other.documents] != [d["text"] for d in corpus.documents]
    assert [q["fact"] for q in other.queries] != [q["fact"] for q in corpus.queries]


def test_documents_have_unique_ids_several_domains_and_sane_lengths(corpus):
    ids = [d["id"] for d in corpus.documents]
    assert len(ids) == len(set(ids))
    assert len({d["text"] for d in corpus.documents}) == len(ids), "duplicate documents blur the ground truth"
    assert len({d["domain"] for d in corpus.documents}) >= 3
    assert all(set(d) == {"id", "text", "domain"} for d in corpus.documents)
    words = [len(d["text"].split()) for d in corpus.documents]
    assert 15 <= min(words) and max(words) <= 70
    # Filler is the bulk: planted and distractor documents together are a minority.
    planted = {i for q in corpus.queries for i in q["planted_doc_ids"]}
    assert len(planted) < len(ids) / 2


def test_planted_ground_truth_is_exact(corpus):
    docs = {d["id"]: d["text"] for d in corpus.documents}
    assert len(corpus.queries) == SMALL["num_entities"]
    assert len({q["entity"] for q in corpus.queries}) == len(corpus.queries)
    assert len({q["answer"] for q in corpus.queries}) == len(corpus.queries)
    with_distractors = 0
    for q in corpus.queries:
        assert q["completion"] == f" {q['answer']}." and not q["prompt"].endswith(" ")
        assert q["fact"] == q["prompt"] + q["completion"]
        assert 2 <= len(q["planted_doc_ids"]) <= 3
        planted_texts = [docs[i] for i in q["planted_doc_ids"]]  # KeyError if a planted doc does not exist
        assert all(q["fact"] in t for t in planted_texts)
        assert len(set(planted_texts)) == len(planted_texts), "planted documents must not be copies"
        assert all(t != q["fact"] for t in planted_texts), "planted documents are more than the fact sentence"

        answer = re.compile(rf"\b{re.escape(q['answer'])}\b")
        entity = re.compile(rf"\b{re.escape(q['entity'])}\b")
        others = [t for i, t in docs.items() if i not in q["planted_doc_ids"]]
        assert not any(answer.search(t) for t in others), f"{q['answer']} leaks outside the planted documents"
        assert not any(q["prompt"] in t for t in others)
        with_distractors += any(entity.search(t) for t in others)
    # Distractors: most entities are also mentioned, without their fact, outside the planted documents.
    assert with_distractors >= 0.8 * len(corpus.queries)


def test_write_jsonl_round_trips_and_an_interrupted_write_leaves_the_old_file_whole(tmp_path, corpus, monkeypatch):
    import curate.demo.corpus as corpus_module

    path = write_jsonl(corpus.documents[:5], tmp_path / "sub" / "docs.jsonl")
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == corpus.documents[:5]
    old = path.read_bytes()
    seen_mid_write = []

    def records_then(error):
        for i, record in enumerate(corpus.documents[5:]):
            if i == 3:
                seen_mid_write.append(path.read_bytes())  # a reader during the write
                raise error
            yield record

    def assert_untouched():
        assert path.read_bytes() == old  # the previous content, whole
        assert sorted(p.name for p in path.parent.iterdir()) == ["docs.jsonl"]  # no partial or temp file left

    # interrupted while records are still being serialised: by an error, by Ctrl-C, by a record JSON cannot write
    with pytest.raises(RuntimeError, match="disk"):
        write_jsonl(records_then(RuntimeError("disk went away")), path)
    assert seen_mid_write == [old]  # three new records were serialised by then, none over the file a reader sees
    assert_untouched()
    with pytest.raises(KeyboardInterrupt):
        write_jsonl(records_then(KeyboardInterrupt()), path)
    assert_untouched()
    with pytest.raises(TypeError):
        write_jsonl([*corpus.documents[5:8], {"id": "bad", "text": {"a set"}}], path)
    assert_untouched()

    # interrupted at the final rename: the complete new file never replaces the old one, and is not left behind
    def failing_replace(src, dst):
        assert Path(src).parent == path.parent and Path(src).read_text(encoding="utf-8").count("\n") == 3
        raise OSError("rename failed")

    with monkeypatch.context() as patch:
        patch.setattr(corpus_module.os, "replace", failing_replace)
        with pytest.raises(OSError, match="rename failed"):
            write_jsonl(corpus.documents[5:8], path)
    assert_untouched()

    new = [*corpus.documents[5:7], {"id": "ü", "text": "Ünïcode 🙂", "domain": "x"}]
    write_jsonl(new, path)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == new
    assert sorted(p.name for p in path.parent.iterdir()) == ["docs.jsonl"]


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tokenizer_and_model_round_trip(tmp_path, corpus, arch):
    tokenizer = train_tokenizer([d["text"] for d in corpus.documents], vocab_size=512)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id is not None
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 4
    model = build_model(tokenizer, arch=arch, hidden_size=32, num_layers=1, num_heads=2, max_length=64)
    assert model.config.vocab_size == len(tokenizer)

    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    tokenizer2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path).eval()

    texts = [q["fact"] for q in corpus.queries[:4]] + ["Ünïcode bytes 🙂 still encode."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    batch2 = tokenizer2(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert tokenizer2.pad_token == tokenizer.pad_token and tokenizer2.bos_token == tokenizer.bos_token
    assert batch["input_ids"][0, 0].item() == tokenizer.bos_token_id  # the model is trained with a leading bos
    assert tokenizer2.decode(batch2["input_ids"][-1], skip_special_tokens=True).strip() == texts[-1]
    with torch.no_grad():
        logits = model(**batch).logits
        logits2 = model2(**batch2).logits
    assert torch.equal(logits, logits2)


def test_build_model_is_seeded_and_leaves_global_rng_alone(corpus):
    tokenizer = train_tokenizer([d["text"] for d in corpus.documents], vocab_size=512)
    state = torch.random.get_rng_state()
    a = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    b = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="arch"):
        build_model(tokenizer, arch="bert")


# --------------------------------------------------------------------------------------------------------------
# The quick build
# --------------------------------------------------------------------------------------------------------------


def test_quick_build_writes_and_reuses_assets(quick_assets):
    assets = quick_assets
    assert [json.loads(x) for x in assets.corpus_path.read_text().splitlines()] == assets.documents
    assert [json.loads(x) for x in assets.queries_path.read_text().splitlines()] == assets.queries
    marker = assets.model_dir / MARKER
    assert marker.is_file() and (assets.model_dir / "model.safetensors").is_file()
    before = marker.stat().st_mtime_ns

    again = build_demo_assets(assets.model_dir.parent, quick=True, progress=False)  # must not retrain
    assert again.model_dir == assets.model_dir and marker.stat().st_mtime_ns == before
    assert again.queries == assets.queries


def test_model_folder_without_marker_or_with_other_config_is_not_reused(quick_assets, tmp_path):
    fingerprint = {k: v for k, v in json.loads((quick_assets.model_dir / MARKER).read_text()).items()
                   if k in ("seed", "config", "corpus_sha256")}
    assert _reusable(quick_assets.model_dir, fingerprint)
    assert not _reusable(quick_assets.model_dir, {**fingerprint, "seed": fingerprint["seed"] + 1})
    half = tmp_path / "model"
    half.mkdir()
    (half / "config.json").write_text("{}")  # a half-written folder: files but no marker
    assert not _reusable(half, fingerprint)


def test_quick_build_learns_the_planted_facts(quick_assets):
    """For most queries the trained model prefers the true answer to another fact's answer of the same kind (an
    invented word it has seen as often), and assigns it a lower loss than the untrained model does."""
    tokenizer = AutoTokenizer.from_pretrained(quick_assets.model_dir)
    trained = AutoModelForCausalLM.from_pretrained(quick_assets.model_dir).eval()
    untrained = build_model(tokenizer, seed=0, **DEMO_CONFIGS["quick"]["model"])  # the same model before training

    queries = quick_assets.queries
    wrong = {}
    for relation in {q["relation"] for q in queries}:
        same_kind = [q for q in queries if q["relation"] == relation]
        for i, q in enumerate(same_kind):
            wrong[q["id"]] = same_kind[(i + 1) % len(same_kind)]["completion"]
    prompts = [q["prompt"] for q in queries]
    true_loss = completion_losses(trained, tokenizer, prompts, [q["completion"] for q in queries])
    wrong_loss = completion_losses(trained, tokenizer, prompts, [wrong[q["id"]] for q in queries])
    untrained_loss = completion_losses(untrained, tokenizer, prompts, [q["completion"] for q in queries])

    beats_wrong = [t < w for t, w in zip(true_loss, wrong_loss)]
    beats_untrained = [t < u for t, u in zip(true_loss, untrained_loss)]
    learned = sum(a and b for a, b in zip(beats_wrong, beats_untrained)) / len(queries)
    print(
        f"\nquick build: {len(queries)} queries, learned {learned:.0%} "
        f"(true < wrong {sum(beats_wrong)}, true < untrained {sum(beats_untrained)}); mean completion loss "
        f"true {statistics.mean(true_loss):.2f}, wrong {statistics.mean(wrong_loss):.2f}, "
        f"untrained {statistics.mean(untrained_loss):.2f} nats/token"
    )
    # Measured ~0.8-0.9 for the quick build; 0.6 leaves margin for thread-count and platform differences.
    assert learned >= 0.6
    assert statistics.mean(true_loss) < statistics.mean(wrong_loss) - 0.3
