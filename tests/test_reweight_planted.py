"""`curate reweight` on a fitted run whose corpus has a planted noise domain: the demo corpus plus documents whose
words are shuffled (the demo's own words, no sentence left). A target of arithmetic problems must give weight to the
arithmetic domain and none to the noise; a target drawn from the corpus itself (every domain in its natural share)
must leave the weights near natural. Slow: it fits its own run (about two minutes on 2 cores)."""

from __future__ import annotations

import json
import random

import pytest

from curate.demo.corpus import _arithmetic
from curate.reweight import ReweightRequest, run_reweight

from tiny import write_jsonl


@pytest.fixture(scope="module")
def noisy_run(demo_assets, tmp_path_factory):
    from curate.core.run import RunInputs
    from stride_engine import Stride, preset, read_documents

    from benchmarks.reweight_demo_check import noisy_documents

    folder = tmp_path_factory.mktemp("noisy")
    documents = [json.loads(line) for line in demo_assets.corpus_path.read_text().splitlines() if line.strip()]
    noise = noisy_documents(documents)
    corpus = write_jsonl(folder / "corpus.jsonl", documents + noise)
    run = folder / "run"
    Stride.from_pretrained(demo_assets.model_dir, preset("cpu-smoke"), run, progress=False).fit(read_documents([corpus]))
    RunInputs(demo_assets.model_dir, [corpus]).save(run)
    return run, documents


def _weights(manifest: dict) -> dict[str, dict]:
    return {d["domain"]: d for d in manifest["weights"]["domains"]}


@pytest.mark.slow
def test_the_helpful_domain_gains_and_the_noise_domain_does_not(noisy_run, tmp_path):
    run, _ = noisy_run
    rng = random.Random(5)
    target = write_jsonl(tmp_path / "sums.jsonl", [{"id": f"sum-{i}", "text": _arithmetic(rng)} for i in range(30)])
    weights = _weights(run_reweight(ReweightRequest(run=str(run), target=str(target), out=str(tmp_path / "out"))))
    assert weights["arithmetic"]["weight"] > 1.5 * weights["arithmetic"]["natural"]
    assert weights["noise"]["weight"] <= weights["noise"]["natural"] * 1.05
    assert max(weights, key=lambda d: weights[d]["weight"] / weights[d]["natural"]) == "arithmetic"


@pytest.mark.slow
def test_a_target_like_the_whole_corpus_leaves_the_weights_near_natural(noisy_run, tmp_path):
    from benchmarks.reweight_demo_check import null_target

    run, _ = noisy_run
    target = null_target(tmp_path / "like.jsonl")
    weights = _weights(run_reweight(ReweightRequest(run=str(run), target=str(target), out=str(tmp_path / "out"))))
    clean = {d: w for d, w in weights.items() if d != "noise"}
    assert all(0.5 < w["weight"] / w["natural"] < 2.0 for w in clean.values()), {d: round(w["weight"] / w["natural"], 2) for d, w in weights.items()}
