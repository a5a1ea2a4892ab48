"""DoReMi and DoGE (curate.reweight.methods.online) on planted domains: a tiny Llama and three domains of which one
is the target's kind of text, one arithmetic, one random letters that no model can learn beyond their frequencies."""

from __future__ import annotations

import json
import random

import pytest

from curate.errors import CurateError
from curate.reweight.methods.online import doge_weights, domain_rows, doremi_weights
from curate.studies.recipe import build_base
from tiny import write_jsonl

SEQ_LEN = 64
PEOPLE = "Anna Ben Cara Dev Emil Fay Gus Hana".split()
VERBS = "found lost painted carried washed hid".split()
THINGS = "red box|small lamp|old coat|green book|heavy cup|bright kite".split("|")
PLACES = "in the garden|by the river|under the bed|at the market".split("|")


def stories(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} the {rng.choice(THINGS)} {rng.choice(PLACES)}."
                     for _ in range(rng.randint(2, 4))) for _ in range(count)]


def sums(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pairs = [[rng.randint(1, 9) for _ in range(2)] for _ in range(4 * count)]
    return [" ".join(f"{a} plus {b} is {a + b}." for a, b in pairs[4 * i: 4 * i + rng.randint(2, 4)]) for i in range(count)]


def noise(count: int, seed: int) -> list[str]:
    """Random letter strings: nothing to learn beyond the letters' frequencies, so a reference model's loss on them
    stays at their entropy and a proxy soon reaches it too (irreducible loss)."""
    rng = random.Random(seed)
    return [" ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(2, 6)))
                     for _ in range(rng.randint(8, 16))) for _ in range(count)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Three domains and two targets, each target the same kind of text as one domain but none of its documents."""
    root = tmp_path_factory.mktemp("online")
    texts = {"stories": stories(200, 1), "sums": sums(200, 2), "noise": noise(200, 3)}
    targets = {"stories": [t for t in stories(100, 4) if t not in set(texts["stories"])],
               "sums": [t for t in sums(100, 5) if t not in set(texts["sums"])]}
    files = {name: write_jsonl(root / f"{name}.jsonl", [{"text": t} for t in domain]) for name, domain in texts.items()}
    pool = write_jsonl(root / "pool.jsonl", [{"text": t} for part in [*texts.values(), *targets.values()] for t in part])
    spec = {"vocab_size": 400, "hidden_size": 32, "layers": 1, "heads": 4, "max_length": SEQ_LEN}
    base = build_base({"model": spec}, str(pool), root / "base")
    return {"files": files, "base": base, "targets": targets, "root": root}


@pytest.fixture(scope="module")
def doremi_uniform(planted):
    return doremi_weights(planted["files"], planted["base"], steps=150, seq_len=SEQ_LEN)


def test_domain_rows_pack_each_domains_documents_apart(planted):
    from transformers import AutoTokenizer

    rows = domain_rows(planted["files"], planted["base"], SEQ_LEN)
    tokenizer = AutoTokenizer.from_pretrained(planted["base"])
    assert list(rows) == ["stories", "sums", "noise"]
    for name, (ids, lengths) in rows.items():
        assert ids.shape == (len(lengths), SEQ_LEN)
        # Every token of the domain's documents, bos text eos each, and nothing else.
        texts = [json.loads(line)["text"] for line in planted["files"][name].read_text().splitlines()]
        expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 for t in texts)
        assert int(lengths.sum()) == expected
        assert tokenizer.decode(ids[0, 1:lengths[0]]).strip().startswith(texts[0][:20])


def test_doremi_downweights_noise_that_no_model_can_learn(doremi_uniform):
    result = doremi_uniform
    weights = result["weights"]
    assert set(weights) == {"stories", "sums", "noise"}
    assert sum(weights.values()) == pytest.approx(1, abs=1e-9) and sum(result["final"].values()) == pytest.approx(1, abs=1e-9)
    # Noise has ~0 excess loss (the reference cannot learn it either): it ends below both learnable domains.
    assert weights["noise"] < 0.2 < min(weights["stories"], weights["sums"])
    assert result["method"] == "doremi" and 2 < result["proxy_runs"] < 3
    assert result["settings"]["reference_weights"] == {"stories": 1 / 3, "sums": 1 / 3, "noise": 1 / 3}
    steps = [point["step"] for point in result["history"]]
    assert steps[-1] == 150 and len(steps) == 20 and steps == sorted(steps)
    json.dumps(result)  # what the study writes


@pytest.mark.slow  # a second DoReMi run (the default run keeps one DoReMi and one DoGE test)
def test_doremi_gives_no_weight_to_a_domain_its_reference_never_saw(planted, doremi_uniform):
    # The reference trained without arithmetic predicts it worse than the proxy soon does: the excess loss is clipped
    # to 0 and the domain loses its weight, where a uniform reference keeps it well above noise.
    skewed = doremi_weights(planted["files"], planted["base"], steps=150, seq_len=SEQ_LEN,
                            reference_weights={"stories": 0.5, "sums": 0.0, "noise": 0.5})
    assert skewed["weights"]["sums"] < 0.05 < 0.2 < doremi_uniform["weights"]["sums"]


@pytest.mark.slow
def test_doremi_is_deterministic_for_a_seed(planted):
    def run(seed):
        return doremi_weights(planted["files"], planted["base"], steps=30, seed=seed, seq_len=SEQ_LEN)

    first, again, other = run(0), run(0), run(1)
    assert first["weights"] == again["weights"] and first["history"] == again["history"]
    assert first["weights"] != other["weights"]


@pytest.mark.parametrize("kind", ["stories", pytest.param("sums", marks=pytest.mark.slow)])
def test_doge_puts_the_weight_on_the_domain_like_the_target(planted, kind):
    result = doge_weights(planted["files"], planted["base"], planted["targets"][kind], steps=200, seq_len=SEQ_LEN)
    weights = result["weights"]
    assert sum(weights.values()) == pytest.approx(1, abs=1e-9)
    # The domain of the target's kind is first, far from its uniform 1/3, and the noise below it.
    assert max(weights, key=weights.get) == kind and weights[kind] > 0.6 > weights["noise"]
    assert result["method"] == "doge" and result["proxy_runs"] == pytest.approx(1 + 3 / 8)
    # The output is the average over the steps, which includes the near-uniform start: below the last alpha.
    assert weights[kind] < result["final"][kind]
    json.dumps(result)


@pytest.mark.parametrize(
    "method, changes, message",
    [
        ("doremi", dict(steps=0), "steps must be a positive integer"),
        ("doge", dict(steps=-3), "steps must be a positive integer"),
        ("doremi", dict(batch_size=2), "batch_size 2 is smaller than the 3 domains"),
        ("doremi", dict(reference_weights={"stories": 0.5, "sums": 0.5}), "reference_weights must name exactly the domains"),
        ("doremi", dict(reference_weights={"stories": 0.5, "sums": 0.5, "noise": 0.5}), "sum to 1"),
        ("doremi", dict(reference_weights={"stories": 1.5, "sums": -0.5, "noise": 0.0}), "non-negative"),
        ("doremi", dict(step_size=0.0), "step_size must be a positive number"),
        ("doge", dict(step_size=-1.0), "step_size must be a positive number"),
        ("doge", dict(target_texts=[]), "target_texts is empty"),
        ("doge", dict(target_texts=["  ", ""]), "target_texts is empty"),
        ("doremi", dict(seq_len=512), "seq_len 512 must be between 2 and base model"),
    ],
)
def test_bad_input_is_named(planted, method, changes, message):
    arguments = {"domain_files": planted["files"], "base": planted["base"], "steps": 5, "seq_len": SEQ_LEN, **changes}
    if method == "doge":
        arguments.setdefault("target_texts", planted["targets"]["stories"])
    with pytest.raises(CurateError, match=message):
        (doremi_weights if method == "doremi" else doge_weights)(**arguments)


def test_a_domain_without_documents_is_named(planted):
    empty = planted["root"] / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CurateError, match="domain 'empty' has no documents"):
        doremi_weights({**planted["files"], "empty": empty}, planted["base"], steps=5, seq_len=SEQ_LEN)
    with pytest.raises(CurateError, match="domain 'gone': data not found"):
        domain_rows({**planted["files"], "gone": planted["root"] / "gone.jsonl"}, planted["base"], SEQ_LEN)
