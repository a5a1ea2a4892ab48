"""The contamination application of the study runner (`curate recipe` with `application: contamination`).

Its cases: for each injection rate x seed, the recipe's pool with benchmark items injected (curate.contamination.inject),
a model trained on that corpus (the audited model: as the selection recipe trains its reference model), a STRIDE run
fit on it, and `curate contamination` with the run, the shared reference model (trained on the pool without the
injected copies: the reference of `reference_gap`) and a decontaminated copy. Its scores, against the injection's
ground truth, per case x signal x kind of copy: document recall and precision of the injected copies, and the
items' ROC-AUC (injected items of that kind vs never-injected ones). Its proxies: the inflation check
(curate.contamination.inflation) for each case, a proxy per proxy seed on the injected corpus and on its clean copy.

The model signals' thresholds (`attribution_z`, `min_k_pp`) are chosen on one case (`contamination.tune_on`): the
least value at which no never-injected item of that case fires. They are then applied unchanged to every case, and
the report says which case chose them, so the others are a check on data the choice did not see.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import CurateError
from ..studies.recipe import fit_run, recipe_path, run_folder
from ..studies.study import Study
from .inflation import CheckSettings, check_jobs, item_groups, task_for
from .inject import KINDS, inject, read_jsonl, write_injection
from .job import run_audit
from .model_signals import read_model_signals
from .ngram_rules import RULES, ngram_pairs
from .request import REQUEST_FILE, AuditRequest
from .steps import ITEMS_FILE, read_matches
from .verdict import Evidence, VerdictRule, flagged_documents, item_verdicts

log = logging.getLogger(__name__)

VERDICT_SCORE = {"contaminated": 2.0, "suspicious": 1.0, "clean": 0.0}


class ContaminationStudy:
    task = "contamination"
    sections = ("contamination",)
    fits_pool_run = False  # each case fits its own run, on its injected corpus

    def plan(self, study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spec = study.recipe["contamination"]
        benchmark = recipe_path(study.recipe, spec["benchmark"])
        if not benchmark.is_file():
            raise CurateError(f"contamination.benchmark {benchmark} does not exist")
        items = read_jsonl(benchmark)
        pool = read_jsonl(Path(study.files["pool"]))
        # every rate x seed, or the cases listed one by one ([rate, seed] pairs)
        cases = ([(float(rate), int(seed)) for rate, seed in spec["cases"]] if spec.get("cases")
                 else [(float(rate), int(seed)) for rate in spec["rates"] for seed in spec.get("seeds", [0])])
        tune_on = tuple(spec.get("tune_on") or cases[0])
        if (float(tune_on[0]), int(tune_on[1])) not in cases:
            raise CurateError(f"contamination.tune_on {list(tune_on)} is not one of the cases {cases}")
        made = {case: self._case(study, spec, benchmark, items, pool, *case) for case in cases}
        thresholds = choose_thresholds(made[(float(tune_on[0]), int(tune_on[1]))], spec.get("audit") or {})
        jobs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for (rate, seed), case in made.items():
            context = {"rate": rate, "seed": seed, "documents": case["documents"], "tuned_on": [tune_on[0], tune_on[1]],
                       "thresholds": thresholds, **{f"{stage}_seconds": s for stage, s in case["seconds"].items()},
                       "peak_rss_mb": case["peak_rss_mb"]}
            rows += [{**context, **row} for row in score_case(case, thresholds)]
            if spec.get("check", True):
                case_jobs, case_rows = self._check(study, case, f"rate{rate}-seed{seed}/")
                jobs += case_jobs
                rows += [{**context, **row} for row in case_rows]
        return jobs, rows

    # ---- one case -----------------------------------------------------------------------------------------------

    def _case(self, study: Study, spec: dict, benchmark: Path, items: list[dict], pool: list[dict], rate: float,
              seed: int) -> dict[str, Any]:
        from ..proxy.retrain import train_proxy

        folder = study.out / "cases" / f"rate{rate}-seed{seed}"
        seconds: dict[str, float] = {}
        injected = folder / "injected"
        if not (injected / "injection.json").is_file():
            started = time.perf_counter()
            injection = inject(pool, items, rate, spec.get("kinds") or KINDS, tuple(spec.get("copies", (1, 3))), seed,
                               spec.get("negatives"))
            write_injection(injection, injected)
            seconds["inject"] = round(time.perf_counter() - started, 1)
        corpus = injected / "corpus.jsonl"
        kinds = pl.read_parquet(injected / "items.parquet")
        subset = folder / benchmark.name  # the injected and the never-injected items: what the audit looks for
        if not subset.is_file():
            keep = set(kinds["item_id"])
            subset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items if r["id"] in keep))
        model_spec = study.recipe["model"]
        model = folder / "model"
        if not model.exists():
            train_proxy(corpus, model, study.base, steps=model_spec["steps"], batch_size=model_spec.get("batch_size", 8),
                        seq_len=model_spec["max_length"], seed=seed, progress=study.recipe.get("progress", True),
                        device=study.recipe.get("device", "cpu"))
        seconds["train_model"] = json.loads((model / "training.json").read_text())["seconds"]
        run, fit_seconds = fit_run(study.recipe, model, str(corpus), run_folder(study.recipe, folder))
        seconds["fit"] = fit_seconds
        audit, clean = folder / "audit", folder / "clean"
        request = AuditRequest(benchmarks=(str(subset),), train=(str(corpus),), out=str(audit), run=str(run),
                               reference_model=str(study.reference), decontaminate=str(clean),
                               device=study.recipe.get("device", "cpu"), **(spec.get("audit") or {}))
        saved = audit / REQUEST_FILE
        changed = saved.is_file() and json.loads(saved.read_text()) != request.fingerprint()
        timing = folder / "audit-seconds.json"
        if changed or not (audit / "manifest.json").is_file():
            started = time.perf_counter()
            run_audit(request, overwrite=changed)
            timing.write_text(json.dumps({"audit": round(time.perf_counter() - started, 1)}))
        seconds.update(json.loads(timing.read_text()) if timing.is_file() else {})
        evidence = Evidence(pl.read_parquet(audit / ".work" / ITEMS_FILE), read_matches(str(audit / ".work")),
                            **read_model_signals(str(audit / ".work")))
        audited = read_jsonl(subset)
        documents = read_jsonl(corpus)
        started = time.perf_counter()
        baselines = {name: ngram_pairs(audited, documents, n, with_answer) for name, (n, with_answer) in RULES.items()}
        seconds["n-gram rules"] = round(time.perf_counter() - started, 1)
        return {
            "folder": folder, "corpus": corpus, "clean": clean / "kept", "audit": audit, "evidence": evidence,
            "truth": pl.read_parquet(injected / "truth.parquet"), "kinds": kinds, "request": request, "baselines": baselines,
            "documents": sum(1 for _ in corpus.open()), "seconds": seconds,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def _check(self, study: Study, case: dict, prefix: str) -> tuple[list[dict], list[dict]]:
        proxy = study.recipe["proxy"]
        settings = CheckSettings(steps=proxy["steps"], seeds=tuple(proxy["seeds"]), batch_size=proxy.get("batch_size", 8),
                                 seq_len=study.recipe["model"]["max_length"], text="Question: {question}\nAnswer: {answer}")
        folder = case["folder"] / "check"
        groups = item_groups(case["audit"], folder, settings.text)
        jobs = check_jobs(case["corpus"], case["clean"], study.base, folder, settings, groups, prefix=prefix,
                          device=study.recipe.get("device", "cpu"))
        rows = [{"signal": "check", "corpus": job["corpus"], "proxy_seed": job["seed"], "group": group, "job": job["key"],
                 "group_items": sum(1 for _ in groups[group].open())}
                for job in jobs for group in groups]
        return jobs, rows

    def metrics(self, study: Study, row: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        task = task_for(row["group"])
        return {"bits_per_byte": measured["values"][f"{task}|bits_per_byte"],
                "word_perplexity": measured["values"][f"{task}|word_perplexity"], "proxy_seconds": measured["proxy_seconds"]}

    def report(self, rows: list[dict[str, Any]], recipe: dict[str, Any], path: Path) -> None:
        from .study_report import write_report

        write_report(rows, recipe, path)


# ---- thresholds ------------------------------------------------------------------------------------------------


def choose_thresholds(case: dict[str, Any], audit: dict[str, Any], precision: float = 0.9) -> dict[str, float | None]:
    """The recipe's thresholds where it gives them; else, on this case:

    - `min_k_pp`, `reference_gap` (item signals): the least value no never-injected item reaches (the highest among
      them, rounded up to 2 decimals);
    - `attribution_z` (a document signal): the least z at which no never-injected item has a document and at least
      `precision` of the flagged (item, document) pairs are injected copies; None when no z does (attribution then
      stays out of the verdict, and the report says so).
    """
    evidence, kinds = case["evidence"], case["kinds"]
    negatives = set(kinds.filter(pl.col("kind") == "none")["item_id"])
    chosen: dict[str, float | None] = {}
    for name in ("min_k_pp", "reference_gap"):
        table = evidence.memorisation
        if audit.get(name) is not None:
            chosen[name] = float(audit[name])
        elif table is None or name not in table.columns:
            chosen[name] = None
        else:
            values = table.filter(pl.col("item_id").is_in(negatives))[name].drop_nulls()
            chosen[name] = _round_up(values.max()) if len(values) else None
    if audit.get("attribution_z") is not None:
        chosen["attribution_z"] = float(audit["attribution_z"])
    else:
        chosen["attribution_z"] = _attribution_threshold(evidence.attribution_pairs, case.get("truth"), negatives, precision)
    return chosen


def _round_up(value: float) -> float:
    return float(np.ceil((value + 1e-9) * 100) / 100)


def _attribution_threshold(pairs: pl.DataFrame | None, truth: pl.DataFrame | None, negatives: set[str],
                           precision: float) -> float | None:
    if pairs is None or truth is None:
        return None
    scored = pairs.select("item_id", "doc_id", "attribution_z").drop_nulls().join(
        truth.select("item_id", "doc_id").unique().with_columns(pl.lit(True).alias("copy")), on=["item_id", "doc_id"], how="left",
    ).with_columns(pl.col("copy").fill_null(False), pl.col("item_id").is_in(negatives).alias("negative"))
    floor = scored.filter(pl.col("negative"))["attribution_z"].max()
    for z in sorted(set(scored["attribution_z"])):
        fired = scored.filter(pl.col("attribution_z") >= z)
        if (floor is None or z > floor) and fired["copy"].sum() > 0 and fired["copy"].mean() >= precision:
            return float(np.floor(z * 1e4) / 1e4)  # 4 decimals, down: the pair at z itself still fires
    return None


# ---- scores against the truth ----------------------------------------------------------------------------------


def item_auc(scores: dict[str, float], positives: set[str], negatives: set[str]) -> float | None:
    """ROC-AUC of telling `positives` from `negatives` by `scores` (a missing score counts as the lowest; ties half)."""
    from scipy.stats import rankdata

    pos = [scores.get(i, -np.inf) for i in positives]
    neg = [scores.get(i, -np.inf) for i in negatives]
    if not pos or not neg:
        return None
    values = np.nan_to_num(np.array(pos + neg, dtype=float), nan=-np.inf, neginf=-1e300)
    ranks = rankdata(values)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def signal_outputs(evidence: Evidence, rule_free: VerdictRule, rule_full: VerdictRule,
                   thresholds: dict[str, float | None]) -> tuple[dict[str, tuple[pl.DataFrame | None, dict[str, float]]], dict[str, str]]:
    """Per signal: the (item_id, doc_id) pairs it flags (None for item-only signals) and its score per item; and
    each item's verdict under the whole rule."""
    free_pairs = flagged_documents(evidence, rule_free)
    free_items = item_verdicts(evidence, free_pairs, rule_free)
    full_pairs = flagged_documents(evidence, rule_full)
    full_items = item_verdicts(evidence, full_pairs, rule_full)

    def per_item(table: pl.DataFrame | None, column: str, sign: float = 1.0) -> dict[str, float]:
        if table is None or column not in table.columns:
            return {}
        return {r["item_id"]: sign * r[column] for r in table.select("item_id", column).drop_nulls().iter_rows(named=True)}

    def with_signal(pairs: pl.DataFrame, name: str) -> pl.DataFrame:
        return pairs.filter(pl.col("signals").list.contains(name)).select("item_id", "doc_id")

    coverage = free_items.with_columns(pl.max_horizontal("question_coverage", "answer_coverage").alias("coverage"))
    outputs: dict[str, tuple[pl.DataFrame | None, dict[str, float]]] = {
        "lexical": (with_signal(free_pairs, "lexical"), per_item(coverage, "coverage")),
        "fuzzy": (with_signal(free_pairs, "fuzzy"), per_item(free_items.with_columns(pl.col("fuzzy_similarity").fill_null(0.0)), "fuzzy_similarity")),
        "model-free": (free_pairs.select("item_id", "doc_id"),
                       {r["item_id"]: VERDICT_SCORE[r["verdict"]] for r in free_items.iter_rows(named=True)}),
        "combined": (full_pairs.select("item_id", "doc_id"),
                     {r["item_id"]: VERDICT_SCORE[r["verdict"]] for r in full_items.iter_rows(named=True)}),
    }
    if evidence.attribution_pairs is not None:
        z = thresholds.get("attribution_z")
        pairs = evidence.attribution_pairs
        fired = pairs.filter(pl.col("attribution_z") >= z) if z is not None else pairs.clear()
        outputs["attribution"] = (fired.select("item_id", "doc_id"), per_item(evidence.attribution_items, "attribution_z"))
        outputs["attribution, top-k"] = (pairs.select("item_id", "doc_id"), per_item(evidence.attribution_items, "attribution_z"))
    if evidence.memorisation is not None:
        outputs["memorisation"] = (None, per_item(evidence.memorisation, "min_k_pp"))
        outputs["loss"] = (None, per_item(evidence.memorisation, "loss", -1.0))
        if "reference_gap" in evidence.memorisation.columns:
            outputs["reference_gap"] = (None, per_item(evidence.memorisation, "reference_gap"))
    return outputs, {r["item_id"]: r["verdict"] for r in full_items.iter_rows(named=True)}


def score_case(case: dict[str, Any], thresholds: dict[str, float | None]) -> list[dict[str, Any]]:
    """Rows per signal x kind (and kind "all"): doc_recall, doc_precision (over all kinds), item_auc, and the
    combined verdicts' confusion on the `all` row."""
    request: AuditRequest = case["request"]
    rule_free = VerdictRule(request.contaminated_coverage, request.suspicious_coverage, request.fuzzy_similarity, request.number_recall)
    rule_full = VerdictRule(request.contaminated_coverage, request.suspicious_coverage, request.fuzzy_similarity,
                            request.number_recall, thresholds.get("attribution_z"), thresholds.get("min_k_pp"),
                            thresholds.get("reference_gap"))
    outputs, verdicts = signal_outputs(case["evidence"], rule_free, rule_full, thresholds)
    for name, pairs in case.get("baselines", {}).items():  # flagged or not: a rule gives an item no finer score
        outputs[name] = (pairs, {i: 1.0 for i in pairs["item_id"]})
    truth, kinds = case["truth"], case["kinds"]
    truth_pairs = truth.select("item_id", "doc_id").unique()
    negatives = set(kinds.filter(pl.col("kind") == "none")["item_id"])
    rows = []
    for signal, (pairs, scores) in outputs.items():
        hit = None
        if pairs is not None:
            hit = truth.join(pairs.unique().with_columns(pl.lit(True).alias("flagged")), on=["item_id", "doc_id"], how="left")
        for kind in [*sorted(set(kinds["kind"]) - {"none"}), "all"]:
            positives = set(kinds.filter((pl.col("kind") == kind) if kind != "all" else (pl.col("kind") != "none"))["item_id"])
            row: dict[str, Any] = {"signal": signal, "kind": kind, "items": len(positives),
                                   "item_auc": item_auc(scores, positives, negatives)}
            if hit is not None:
                part = hit if kind == "all" else hit.filter(pl.col("kind") == kind)
                row["copies"] = part.height
                row["doc_recall"] = part["flagged"].fill_null(False).mean() if part.height else None
                # precision over every flagged pair (kind "all", never-injected items included), or over the pairs
                # flagged for this kind's items (does the signal point them at their copies or elsewhere?)
                unique = pairs.unique() if kind == "all" else pairs.unique().filter(pl.col("item_id").is_in(positives))
                true = unique.join(truth_pairs, on=["item_id", "doc_id"], how="semi").height
                row["flagged_pairs"] = unique.height
                row["doc_precision"] = true / unique.height if unique.height else None
            if kind == "all" and pairs is not None:
                row["negative_items_flagged"] = pairs.filter(pl.col("item_id").is_in(negatives))["item_id"].n_unique()
            if kind == "all" and signal == "combined":
                row["confusion"] = {
                    truth_kind: {v: sum(1 for i in ids if verdicts.get(i) == v) for v in VERDICT_SCORE}
                    for truth_kind, ids in (("injected", positives), ("never_injected", negatives))
                }
            rows.append(row)
    return rows
