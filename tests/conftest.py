"""Shared fixtures: an offline Hugging Face environment and the quick demo assets, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may download; caches stay inside the test's temp folders.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    """The quick demo corpus and its trained model (trained once for the whole session)."""
    from curate.demo.model import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("demo") / "assets", quick=True, progress=False)


@pytest.fixture(scope="session")
def demo_run(demo_assets, tmp_path_factory):
    """The quick demo corpus with operators fit once (the cpu-smoke preset), as `curate fit` leaves it; shared by
    every module that only reads it (a test that changes a run copies it first)."""
    from curate.core.run import RunInputs
    from stride_engine import Stride, preset, read_documents

    run = tmp_path_factory.mktemp("demo-run") / "run"
    Stride.from_pretrained(demo_assets.model_dir, preset("cpu-smoke"), run, progress=False).fit(read_documents([demo_assets.corpus_path]))
    RunInputs(demo_assets.model_dir, [demo_assets.corpus_path]).save(run)
    return run
