"""`curate recipe`: data splits never leak target or held-out items into the pool; a small study runs end to end."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from click.testing import CliRunner

from curate.cli import main
from curate.errors import CurateError
from curate.studies.recipe import load_recipe, prepare_data
from curate.studies.results import against_reference

from tiny import write_jsonl

WORDS = {
    "birds": "robin wren finch sparrow heron crane swallow thrush owl hawk nest wing feather song".split(),
    "ships": "hull mast sail anchor keel rudder deck harbour voyage captain crew tide port bow".split(),
}


def _corpus(folder):
    rng = random.Random(0)
    files = {}
    for domain, words in WORDS.items():
        rows = [{"id": f"{domain}-{i}", "text": ("Battle " if domain == "ships" and i % 3 == 0 else "") +
                 " ".join(rng.choice(words) for _ in range(rng.randint(20, 40)))} for i in range(90)]
        files[domain] = str(write_jsonl(folder / f"{domain}.jsonl", rows))
    return files


def _recipe(folder, files, **changes):
    recipe = {
        "name": "tiny", "output": str(folder / "out"), "results": str(folder / "results.json"), "workers": 1, "progress": False,
        "corpus": {"files": files, "pool": {"birds": 40, "ships": 40}, "heldout": 5},
        "targets": {
            "battles": [{"file": "ships", "match": "^Battle", "items": 6, "eval": 6}],
            "birds": [{"file": "birds", "items": 6, "eval": 6}],
            "both": [{"file": "ships", "items": 4, "eval": 4}, {"file": "birds", "items": 4, "eval": 4, "part": "wings"}],
        },
        "model": {"hidden_size": 32, "layers": 1, "heads": 2, "max_length": 64, "vocab_size": 300, "steps": 30, "batch_size": 8},
        "stride": {"preset": "cpu-smoke", "set": {"num_subsets": 16, "subsets_per_example": 3, "steps": 12, "chunk_length": 32,
                                                   "operators_per_step": 4, "linearity_every": 6, "linearity_operators": 12,
                                                   "groups": 2}},
        "selection": {"budgets": ["25%"], "methods": ["stride", "stride-proportional", "stride-balanced", "bm25", "bm25-balanced", "random"]},
        "proxy": {"steps": 10, "batch_size": 4, "seeds": [0], "target_seeds": {"both": [0, 1]}},
    }
    recipe.update(changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_prepared_data_keeps_targets_and_held_out_items_out_of_the_pool(tmp_path):
    path = _recipe(tmp_path, _corpus(tmp_path))
    files = prepare_data(load_recipe(path), tmp_path / "data")

    def ids(file):
        return [json.loads(line)["id"] for line in open(file)]

    pool = ids(files["pool"])
    assert len(pool) == 80 == len(set(pool))
    held = [i for f in files["heldout"].values() for i in ids(f)]
    targets = [i.split("-", 1)[1].replace("eval-", "") for f in [*files["targets"].values(), *files["eval"].values()] for i in ids(f)]
    assert len(held) == 10 and len(targets) == 40
    assert not set(pool) & set(held) and not set(pool) & set(targets) and not set(held) & set(targets)
    battles = [json.loads(line)["text"] for line in open(files["targets"]["battles"])]
    assert all(text.startswith("Battle") for text in battles)
    parts = [json.loads(line)["part"] for line in open(files["targets"]["both"])]
    assert parts == ["ships"] * 4 + ["wings"] * 4  # a source's part: its own name, else its file's domain


def test_a_recipe_asking_for_more_than_the_corpus_holds_is_refused(tmp_path):
    files = _corpus(tmp_path)
    path = _recipe(tmp_path, files, corpus={"files": files, "pool": {"birds": 200, "ships": 40}, "heldout": 5})
    with pytest.raises(CurateError, match="records left"):
        prepare_data(load_recipe(path), tmp_path / "data")
    with pytest.raises(CurateError, match="does not exist"):
        load_recipe(tmp_path / "nothing.yaml")


@pytest.mark.slow
def test_a_small_study_runs_end_to_end(tmp_path):
    files = _corpus(tmp_path)
    path = _recipe(tmp_path, files)
    result = CliRunner().invoke(main, ["recipe", str(path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {(r["target"], r["method"]) for r in rows} >= {
        ("battles", "stride"), ("battles", "stride-proportional"), ("birds", "bm25"), ("birds", "random")}
    proportional = next((tmp_path / "out" / "selections" / "battles").glob("*/stride-proportional-*"))
    manifest = json.loads((proportional / "manifest.json").read_text())
    assert manifest["request"]["allocation"] == "proportional" and len(manifest["per_group"]) == 2
    # Balanced allocation: an equal share for each part of the two-part target; on a target of one part it selects
    # what greedy does, and the two share their proxies.
    for method in ("stride-balanced", "bm25-balanced"):
        balanced = next((tmp_path / "out" / "selections" / "both" / "25pct").glob(f"{method}*"))
        manifest = json.loads((balanced / "manifest.json").read_text())
        assert {p["part"]: p["selected_documents"] for p in manifest["per_part"]} == {"ships": 10, "wings": 10}, method
    seeds = {(r["target"], r["method"], r["seed"]) for r in rows}
    assert {s for t, m, s in seeds if (t, m) == ("both", "stride-balanced")} == {0, 1}  # proxy.target_seeds
    assert {s for t, m, s in seeds if (t, m) == ("birds", "stride")} == {0}
    jobs = {(r["target"], r["method"]): r["job"] for r in rows if r["seed"] == 0}
    assert jobs[("battles", "stride-balanced")] == jobs[("battles", "stride")]
    assert jobs[("both", "stride-balanced")] != jobs[("both", "stride")]
    assert not list((tmp_path / "out" / "proxies" / "selections" / "battles" / "25pct").glob("stride-balanced*"))
    for row in rows:
        assert row["task"] == "selection" and row["target_ppl"] > 1 and set(row["domain_ppl"]) == {"birds", "ships"}
        assert {"budget", "seed", "commit", "machine"} <= set(row)
    bm25 = next(r for r in rows if (r["target"], r["method"]) == ("birds", "bm25"))
    assert bm25["selected_per_domain"] == {"birds": 20, "ships": 0}  # a bird target: BM25 keeps only bird documents
    assert "## target: battles" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 1000

    # A selection made for other queries (here: its manifest says so) is redone with its proxies on a rerun; the
    # others are reused.
    selections = tmp_path / "out" / "selections" / "birds" / "25pct"
    stale, kept = selections / "bm25" / "manifest.json", next(selections.glob("stride-proportional-*")) / "manifest.json"
    manifest = json.loads(stale.read_text())
    manifest["request"]["target_run_name"] = "target-birds-00000000"
    stale.write_text(json.dumps(manifest))
    kept_at, proxy = kept.stat().st_mtime_ns, tmp_path / "out" / "proxies" / "selections" / "birds" / "25pct" / "bm25"
    proxy_at = next(proxy.rglob("model.safetensors")).stat().st_mtime_ns
    # The battles target's items are now written another way, so its evaluation items change too: the random
    # proxies, which every target shares, keep their models but are scored again on the new items.
    random_model = tmp_path / "out" / "proxies" / "selections" / "_random" / "25pct" / "random-seed0" / "proxy-seed0"
    random_at = next(random_model.rglob("model.safetensors")).stat().st_mtime_ns
    battles = {"task": "selection", "target": "battles", "method": "random", "seed": 0}
    before = next(r["target_ppl"] for r in rows if battles.items() <= r.items())
    targets = yaml.safe_load(path.read_text())["targets"]
    targets["battles"][0]["text"] = "Dispatch: {text}"
    _recipe(tmp_path, files, targets=targets)
    result = CliRunner().invoke(main, ["recipe", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(stale.read_text())["request"]["target_run_name"] != "target-birds-00000000"
    assert next(proxy.rglob("model.safetensors")).stat().st_mtime_ns > proxy_at and kept.stat().st_mtime_ns == kept_at
    assert next(random_model.rglob("model.safetensors")).stat().st_mtime_ns == random_at
    rows = json.loads((tmp_path / "results.json").read_text())
    assert next(r["target_ppl"] for r in rows if battles.items() <= r.items()) != before

    # The diagnostics of STRIDE's run (benchmarks/selection_diagnostics.py) read the same study folder.
    from benchmarks.selection_diagnostics import main as diagnostics

    text = diagnostics(tmp_path / "out", tmp_path / "diagnostics.md").read_text()
    assert "in 2 groups" in text
    for label in ("target battles", "target birds", "held-out birds", "held-out ships"):
        assert f"| {label} | " in text
    assert "| birds | " in text and "| ships | " in text

    # How a part's selection sharpens with its number of items (benchmarks/target_size.py), on the same run: bird
    # items share no word with ship documents, so BM25's top 8 of 80 (a third of a 30% budget) are all birds.
    from benchmarks.target_size import main as target_size

    sizes = target_size(tmp_path / "out", {"birds": "birds"}, tmp_path / "size.md")
    rows = json.loads(sizes.with_suffix(".json").read_text())["rows"]
    assert {r["query_set"] for r in rows} == {"target birds", "held-out birds", "held-out ships"}
    full = {(r["query_set"], r["method"]): r for r in rows if r["items"] == 6}
    assert full[("target birds", "bm25")]["tops"] == [3, 8] and full[("target birds", "bm25")]["own_mean"] == [3, 8]
    assert full[("target birds", "bm25")]["random_expected"] == [1.5, 4.0]
    assert {r["items"] for r in rows if r["query_set"] == "target birds"} == {5, 6}
    assert "| target birds | 6 | " in sizes.read_text()


def test_the_comparison_with_random_says_whether_a_gap_is_more_than_seed_noise():
    random = [9203.0, 8800.0, 9600.0, 9400.0, 9000.0]
    assert against_reference([4100.0, 3900.0, 4000.0, 4300.0, 4200.0], random) == "-55.4% (p < 0.001)"
    tie = against_reference([9300.0, 8900.0, 9500.0, 9100.0, 9250.0], random)
    assert tie.startswith("+0.") and float(tie.split("p = ")[1].rstrip(")")) > 0.5
    assert against_reference([4000.0], random) == "-56.5%"  # one seed: no test
