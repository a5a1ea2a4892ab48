"""The benchmark's peer attribution methods on two tiny local settings (nothing is downloaded).

Each setting's queries are exact copies of a few training examples, so a working method must put the query's own
duplicate among its most helpful training examples, with the sign convention "higher = helps the query more".
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import random_texts, tiny_model, tiny_tokenizer
from torch import nn

from benchmarks.settings.base import ExampleSet, Setting
from stride_engine.adapters import token_losses_mean
from stride_engine.corpus import token_batch


class TinyClassifier(Setting):
    """120 Gaussian points with random labels in 3 classes, fit by a small MLP; queries copy 5 training points."""

    name = "tiny-classifier"
    kind = "classifier"

    def __init__(self, n: int = 120, features: int = 8, classes: int = 3, steps: int = 300, seed: int = 0):
        self.seed, self.steps, self.features, self.classes = seed, steps, features, classes
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, features, generator=generator)
        y = torch.randint(0, classes, (n,), generator=generator)
        self.train = ExampleSet({"x": x, "y": y}, [f"t{i}" for i in range(n)])
        self._model = self._fit(self.train.tensors)
        with torch.no_grad():
            losses = self.example_losses(self._model, self.train.tensors)
        # the hardest training points: their gradients are large, so a duplicate must stand out for every method
        self.duplicates = torch.argsort(losses, descending=True)[:5].sort().values.tolist()
        self.queries = ExampleSet(self.train.rows(self.duplicates), [f"q{i}" for i in self.duplicates])

    def _fit(self, tensors) -> nn.Module:
        torch.manual_seed(self.seed)
        model = nn.Sequential(nn.Linear(self.features, 32), nn.Tanh(), nn.Linear(32, self.classes))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(self.steps):
            optimizer.zero_grad()
            self.example_losses(model, tensors).mean().backward()
            optimizer.step()
        return model.eval()

    def model(self) -> nn.Module:
        return self._model

    def adapter(self):
        raise NotImplementedError

    def example_losses(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def retrain(self, masks, seeds):
        raise NotImplementedError

    def describe(self):
        return {"name": self.name, "seed": self.seed, "steps": self.steps, "n": len(self.train)}


class TinyLM(Setting):
    """60 random word sequences, a 2-layer Llama trained on them; queries copy 5 training texts."""

    name = "tiny-lm"
    kind = "causal-lm"

    def __init__(self, n: int = 60, width: int = 32, steps: int = 150, seed: int = 0):
        self.seed, self.steps = seed, steps
        texts = random_texts(n, seed=seed)
        self._tokenizer = tiny_tokenizer(texts)
        self.train = self._examples(texts, [f"t{i}" for i in range(n)], width)
        torch.manual_seed(seed)
        model = tiny_model("llama", len(self._tokenizer), layers=2, hidden=32, seed=seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            self.example_losses(model, self.train.tensors).mean().backward()
            optimizer.step()
        self._model = model.eval()
        self.duplicates = [3, 11, 24, 38, 52]
        self.queries = self._examples([texts[i] for i in self.duplicates], [f"q{i}" for i in self.duplicates], width)

    def _examples(self, texts, ids, width) -> ExampleSet:
        encoded = [self._tokenizer(text)["input_ids"][:width] for text in texts]
        input_ids = np.zeros((len(texts), width), dtype=np.int64)
        for row, tokens in zip(input_ids, encoded):
            row[: len(tokens)] = tokens
        lengths = np.array([len(tokens) for tokens in encoded])
        return ExampleSet(token_batch(input_ids, lengths, None), ids, texts=list(texts))

    def model(self) -> nn.Module:
        return self._model

    def tokenizer(self):
        return self._tokenizer

    def adapter(self):
        raise NotImplementedError

    def example_losses(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return token_losses_mean(logits, batch["input_ids"], batch["target_mask"])

    def retrain(self, masks, seeds):
        raise NotImplementedError

    def describe(self):
        return {"name": self.name, "seed": self.seed, "steps": self.steps, "n": len(self.train)}


@pytest.fixture(scope="module")
def one_thread():
    # the peers' problems here are tiny: torch's worker threads only add overhead. Restored afterwards: the modules
    # after this one train real (small) models and use both cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def classifier(one_thread):
    return TinyClassifier()


@pytest.fixture(scope="module")
def lm(one_thread):
    return TinyLM()


def _ranks_of_duplicates(scores: np.ndarray, duplicates: list[int]) -> list[int]:
    """0-based rank of each query's own duplicate among all training examples (0 = the most helpful)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return [int(np.nonzero(order[q] == d)[0][0]) for q, d in enumerate(duplicates)]


def _check(scores, setting, max_rank, name):
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64, name
    assert scores.shape == (len(setting.queries), len(setting.train)), name
    assert np.isfinite(scores).all(), name
    ranks = _ranks_of_duplicates(scores, setting.duplicates)
    assert max(ranks) <= max_rank, f"{name}: duplicate ranks {ranks}"
    return ranks


# method -> options used on the tiny settings (the modules' defaults are sized for the real benchmark)
CLASSIFIER_OPTIONS = {
    "grad_dot": {},
    "grad_cos": {},
    "trak": {"proj_dim": 64},
    "logra": {"proj_dim": 64},
    "ekfac": {},
}
LM_OPTIONS = {
    "grad_dot": {},
    "grad_cos": {},
    "trak": {"proj_dim": 32},
    "logra": {"proj_dim": 64},
    "ekfac": {},
}
TEXT_METHODS = ["bm25", "embedding"]

_RESULTS: dict[tuple[str, str, str], tuple[np.ndarray, float]] = {}


def _run(setting, method, options):
    """Each (method, options) runs once per setting (module-wide cache); returns (scores, seconds)."""
    from benchmarks.methods import gradients, text

    key = (setting.name, method, repr(sorted(options.items())))
    if key not in _RESULTS:
        fn = {**gradients.REGISTRY, **text.REGISTRY}[method]
        start = time.perf_counter()
        scores = fn(setting, **options)
        _RESULTS[key] = (scores, time.perf_counter() - start)
    return _RESULTS[key]


PEER_MODULES = ("benchmarks.methods.gradients", "benchmarks.methods.text")


def _suite_peers() -> list[tuple[str, str, object]]:
    """(suite, setting kind, MethodSpec) for every gradient or text peer a suite runs, each configuration once."""
    import importlib

    from benchmarks.settings import SETTINGS
    from benchmarks.suites import SUITES

    seen, peers = set(), []
    for suite in SUITES.values():
        for plan in suite.settings:
            module, _, attribute = SETTINGS[plan.setting].partition(":")
            kind = getattr(importlib.import_module(module), attribute).kind
            for method in plan.methods:
                key = (kind, method.function, repr(sorted(method.options.items())))
                if method.function.partition(":")[0] in PEER_MODULES and key not in seen:
                    seen.add(key)
                    peers.append((suite.name, kind, method))
    return peers


def test_every_registered_peer_is_run_by_a_suite_and_checked_here():
    """A registered peer that no suite runs has silently dropped out of the benchmark's tables; one that this file
    does not run on its tiny settings has no check that it finds a query's duplicate."""
    from benchmarks.methods import gradients, text

    in_suites = {method.function for _, _, method in _suite_peers()}
    for module, registry in zip(PEER_MODULES, (gradients.REGISTRY, text.REGISTRY)):
        missing = [name for name in registry if f"{module}:{name}" not in in_suites]
        assert not missing, f"registered in {module} but run by no suite: {missing}"
    assert set(gradients.REGISTRY) <= set(CLASSIFIER_OPTIONS) & set(LM_OPTIONS)
    assert set(text.REGISTRY) <= set(TEXT_METHODS)


@pytest.mark.parametrize("suite, kind, method", _suite_peers(), ids=lambda v: getattr(v, "label", v))
def test_every_suite_peer_runs_as_the_runner_calls_it(request, suite, kind, method):
    """Each peer a suite names, resolved and called as benchmarks/runner.py does (`resolve()`, then
    `fn(setting, **options)` with the suite's own options), on the tiny setting of the suite setting's kind: it is
    its registry's entry of that name and returns finite, non-constant scores of shape (queries, train)."""
    from benchmarks.methods import gradients, text

    module, _, name = method.function.partition(":")
    registry = {PEER_MODULES[0]: gradients.REGISTRY, PEER_MODULES[1]: text.REGISTRY}[module]
    assert registry.get(name) is method.resolve(), f"{suite}: {method.function} is not {module}.REGISTRY[{name!r}]"
    setting = request.getfixturevalue("classifier" if kind == "classifier" else "lm")
    scores = np.asarray(_run(setting, name, method.options)[0], dtype=np.float64)  # what the runner keeps
    assert scores.shape == (len(setting.queries), len(setting.train)), (suite, method.label)
    assert np.isfinite(scores).all() and np.ptp(scores) > 0, (suite, method.label)


@pytest.mark.parametrize("method", sorted(CLASSIFIER_OPTIONS))
def test_gradient_methods_find_the_duplicate_on_a_classifier(classifier, method):
    scores, _ = _run(classifier, method, CLASSIFIER_OPTIONS[method])
    _check(scores, classifier, max_rank=4, name=method)  # the duplicate is among the 5 most helpful
    # sign: a query's own duplicate helps it (positive self-influence), it is not merely extreme
    assert (scores[np.arange(5), classifier.duplicates] > 0).all(), method


@pytest.mark.parametrize("method", sorted(LM_OPTIONS))
def test_gradient_methods_find_the_duplicate_on_a_causal_lm(lm, method):
    scores, _ = _run(lm, method, LM_OPTIONS[method])
    _check(scores, lm, max_rank=2, name=method)
    assert (scores[np.arange(5), lm.duplicates] > 0).all(), method


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_text_methods_rank_the_duplicate_first(lm, method):
    scores, _ = _run(lm, method, {})
    _check(scores, lm, max_rank=0, name=method)


@pytest.mark.parametrize("method", ["bm25", "embedding"])
def test_text_methods_refuse_a_setting_without_texts(classifier, method):
    from benchmarks.methods import text

    with pytest.raises(ValueError, match="needs texts"):
        text.REGISTRY[method](classifier)


def test_methods_leave_the_settings_model_as_it_was(lm):
    """The setting's model is cached and shared: no method may change its weights, grad flags or attention."""
    from benchmarks.methods import gradients

    model = lm.model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    attention = model.config._attn_implementation
    scores = gradients.grad_dot(lm, params="no_embeddings")  # also: a parameter subset works
    assert np.isfinite(scores).all()
    gradients.logra(lm, proj_dim=16)
    gradients.ekfac(lm, fisher="true", train_batch_size=16)
    assert model.config._attn_implementation == attention
    for name, p in model.named_parameters():
        assert p.requires_grad == flags[name], name
        assert torch.equal(p.detach(), before[name]), name
        assert (p.grad is None) == (grads[name] is None) and (p.grad is None or torch.equal(p.grad, grads[name])), name
    assert not any(type(m).__name__ == "TrackedModule" for m in model.modules())


def test_trak_refuses_a_singular_kernel(classifier):
    from benchmarks.methods import gradients

    with pytest.raises(ValueError, match="singular"):
        gradients.trak(classifier, proj_dim=len(classifier.train), regularization=0.0)
