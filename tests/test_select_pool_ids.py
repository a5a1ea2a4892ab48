"""`curate select` on pools whose documents the engine and datatrove would name differently: integer ids, no id
field. The selection must find every document in the run and keep exactly the budget, named as the run names them."""

from __future__ import annotations

import gzip

import orjson
import pytest

from curate.core.run import RunInputs
from curate.select import SelectionRequest, run_selection
from stride_engine import Stride, preset, read_documents

from tiny import random_texts, save_tiny_model, write_jsonl

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12, operators_per_step=4,
            linearity_every=6, linearity_operators=12, top_k=20)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("ids") / "model", "llama", random_texts(200, seed=3))


def _selected(folder) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path) as handle:
            records += [orjson.loads(line) for line in handle]
    return records


@pytest.mark.parametrize("ids", ["integer", "absent"])
def test_a_pool_with_integer_or_no_ids_is_selected_from(model, tmp_path, ids):
    texts = random_texts(40, seed=7)
    records = [{"text": t} | ({"id": 1000 + i} if ids == "integer" else {}) for i, t in enumerate(texts)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    run = tmp_path / "run"
    documents = read_documents([pool])
    Stride.from_pretrained(model, preset("cpu-smoke", **TINY), run, progress=False).fit(documents)
    RunInputs(model, [pool]).save(run)
    target = write_jsonl(tmp_path / "target.jsonl", [{"id": "t1", "text": texts[0]}, {"id": "t2", "text": texts[1]}])

    manifest = run_selection(SelectionRequest(run=str(run), target=str(target), budget="10", out=str(tmp_path / "out")))
    kept = {row["id"] for row in manifest["selected_documents"]}
    assert len(kept) == 10 and kept <= set(documents.ids)
    expected = {str(1000 + i) for i in range(40)} if ids == "integer" else {f"pool:{i + 1}" for i in range(40)}
    assert set(documents.ids) == expected  # the engine's names, which the selection now uses throughout
    written = _selected(tmp_path / "out" / "selected")
    assert sorted(str(r["id"]) for r in written) == sorted(kept) and len(written) == 10


def test_a_saved_selection_request_is_read_back_with_config(model, tmp_path):
    from click.testing import CliRunner

    from curate.cli import main

    texts = random_texts(30, seed=8)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    run = tmp_path / "run"
    Stride.from_pretrained(model, preset("cpu-smoke", **TINY), run, progress=False).fit(read_documents([pool]))
    RunInputs(model, [pool]).save(run)
    target = write_jsonl(tmp_path / "target.jsonl", [{"id": "t1", "text": texts[0]}])
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["select", "--run", str(run), "--target", str(target), "--budget", "6",
                                      "--rule", "positive", "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    saved = out / ".work" / "request.json"
    again = CliRunner().invoke(main, ["select", "--config", str(saved), "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "kept 6 of 30" in again.output  # the same request (rule included): reused
    other = CliRunner().invoke(main, ["select", "--config", str(saved), "--out", str(out), "--budget", "4"])
    assert other.exit_code != 0 and "changed: budget" in other.output
    elsewhere = CliRunner().invoke(main, ["select", "--config", str(saved), "--out", str(tmp_path / "o2"), "--quiet"])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert (tmp_path / "o2" / ".work" / "request.json").read_text() == saved.read_text()
