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
