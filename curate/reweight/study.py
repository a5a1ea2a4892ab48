"""The reweighting application of the study runner (`curate recipe` with `application: reweight`).

Every method's weights for every target, then a proxy trained on each mixture for each seed at equal tokens:

    search   the proxies some methods need before they can answer, trained first (in plan): the simplex grid
             (evaluated like every arm, so its best point is the oracle), RegMix's random mixtures (scored on the
             target items the methods see), MixMin's one-domain proxies (the grid's vertices at seed 0)
    weights  natural, uniform, UniMax; `curate reweight` in its modes (stride, stride-average, stride-worst) and on
             BM25 scores (similarity); DoReMi and DoGE (online, curate.reweight.methods.online); MixMin; RegMix;
             grid-best (the grid point of lowest mean target bits per byte)
    mixtures the pool resampled to each mixture at the proxies' token budget, once per proxy seed
             (`curate reweight --weights ... --out-data`: uniform inside each domain, seeded by the proxy's seed)
    proxies  one per mixture and seed, the same steps for all (so the same tokens), scored on the target's evaluation
             items and every held-out domain

A row per target x method x seed (and per grid point x grid seed): the weights, the realised epochs per domain, the
target's and every domain's bits per byte, what finding the weights cost in proxy runs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from stride_engine.artifacts import atomic_write_text
from stride_engine.groups import groups_file

from ..core.run import Run
from ..errors import CurateError
from ..studies.proxies import proxy_job, run_proxy_jobs, tasks_digest
from ..studies.recipe import save_base, task_name
from ..studies.study import Study
from .domain_operators import DOMAIN_OPERATORS
from .job import run_reweight
from .methods.mixtures import dirichlet_mixtures, mixture_key, simplex_grid, unimax
from .request import ReweightRequest

log = logging.getLogger(__name__)

# method -> (curate reweight's mode, its signal, its reading); the rest are computed in _weights. "parts": mode average
# where the target has several parts, else target (benchmarks/results/reweight_operators.md: mode target follows the
# items the methods see, not the parts' equal shares in the evaluation)
# Every arm names its reading and guard, so that its committed rows keep their meaning when curate reweight's defaults
# move: `stride` is the per-document `positive` reading unguarded (the default before 2026-12), `stride-guarded` the
# default since (domain-operators under the macro guard).
PER_DOCUMENT = {"rule": "positive", "guard": "none"}
REWEIGHT_ARMS = {"stride": ("target", "stride", PER_DOCUMENT), "stride-average": ("average", "stride", PER_DOCUMENT),
                 "stride-worst": ("worst", "stride", PER_DOCUMENT),
                 "stride-operators": ("parts", "stride", {"rule": DOMAIN_OPERATORS, "guard": "none"}),
                 "stride-guarded": ("parts", "stride", {"rule": DOMAIN_OPERATORS, "guard": "macro"}),
                 "similarity": ("target", "bm25", PER_DOCUMENT), "similarity-guarded": ("target", "bm25", {"rule": "positive", "guard": "macro"})}
PART_MODES = ("stride-average", "stride-worst")  # modes over the target's parts: only for a target with several
TARGET_FREE = ("natural", "uniform", "unimax", "doremi")  # the same weights for every target
SEARCH = "search"  # OUT/eval/search/...: RegMix's proxies scored on the target items the methods see


class ReweightStudy:
    task = "reweight"
    sections = ("reweight",)

    def plan(self, study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spec = study.recipe["reweight"]
        plan = _Plan(study)
        methods = list(spec["methods"])
        unknown = set(methods) - {*REWEIGHT_ARMS, *TARGET_FREE, "doge", "mixmin", "regmix", "grid-best"}
        if unknown:
            raise CurateError(f"reweight.methods names methods the study does not have: {sorted(unknown)}")
        grid = simplex_grid(len(plan.domains), spec["grid"]) if spec.get("grid") else np.zeros((0, len(plan.domains)))
        grid_seeds = spec.get("grid_seeds", [0])
        if "grid-best" in methods and not len(grid):
            raise CurateError("reweight.methods has grid-best, and the recipe has no reweight.grid")

        # the search: grid proxies (every task), MixMin's vertices, RegMix's random mixtures (the target items' tasks)
        grid_jobs = [plan.job(point, seed) for point in grid for seed in grid_seeds]
        vertices = np.eye(len(plan.domains))
        vertex_jobs = [plan.job(v, 0) for v in vertices] if "mixmin" in methods else []
        regmix = spec.get("regmix") or {}
        random_mixtures = (dirichlet_mixtures(plan.natural, regmix.get("mixtures", 24), regmix.get("seed", 0))
                           if "regmix" in methods else np.zeros((0, len(plan.domains))))
        regmix_jobs = [plan.search_job(m, regmix.get("seed", 0)) for m in random_mixtures]
        workers = study.recipe.get("workers", 2)
        measured = run_proxy_jobs(_unique(grid_jobs + vertex_jobs), workers)
        # after the others: a random mixture that is a grid point (a vertex) then reuses its trained proxy, and two
        # workers never train the same model at once
        measured |= run_proxy_jobs(_unique(regmix_jobs), workers)

        jobs: dict[str, dict] = {}
        rows: list[dict[str, Any]] = []
        for target, target_file in study.files["targets"].items():
            target_task = task_name("target", target)
            grid_loss = {}
            for i, point in enumerate(grid):
                for seed, job in zip(grid_seeds, grid_jobs[i * len(grid_seeds): (i + 1) * len(grid_seeds)]):
                    jobs[job["key"]] = job
                    rows.append(plan.row(target, "grid", seed, job, point, {"grid_point": i}))
                grid_loss[i] = np.mean([measured[j["key"]]["values"][f"{target_task}|bits_per_byte"]
                                        for j in grid_jobs[i * len(grid_seeds): (i + 1) * len(grid_seeds)]])
            parts = {item.get("part") for item in _items(target_file)}
            for method in methods:
                if method in PART_MODES and len(parts) < 2:
                    log.info("target %s has one part: %s (a mode over parts) is skipped", target, method)
                    continue
                weights, cost = plan.weights(method, target, target_file, grid, grid_loss, grid_jobs, vertex_jobs,
                                             random_mixtures, regmix_jobs, measured)
                for seed in study.proxy_seeds(target):
                    job = plan.job(weights, seed)
                    jobs[job["key"]] = job
                    rows.append(plan.row(target, method, seed, job, weights, cost))
        for job, row in plan.transfer(rows):
            jobs[job["key"]] = job
            rows.append(row)
        rows += plan.stability(methods) + plan.groups_against_domains()
        return list(jobs.values()), rows

    def metrics(self, study: Study, row: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        # (rows without a job, the weights' stability and the groups' match to the domains, are measured already)
        values = measured["values"]
        domain_bpb = {d: values[f"{task_name('domain', d)}|bits_per_byte"] for d in study.files["heldout"]}
        return {
            "target_bpb": values[f"{task_name('target', row['target'])}|bits_per_byte"],
            "target_ppl": values[f"{task_name('target', row['target'])}|word_perplexity"],
            "domain_bpb": domain_bpb, "macro_bpb": float(np.mean(list(domain_bpb.values()))),
            "worst_domain_bpb": float(max(domain_bpb.values())), "proxy_seconds": measured["proxy_seconds"],
        }

    def report(self, rows: list[dict[str, Any]], recipe: dict[str, Any], path: Path) -> None:
        from .study_report import write_report

        write_report(rows, recipe, path)


def _unique(jobs: list[dict]) -> list[dict]:
    return list({job["key"]: job for job in jobs}.values())


class _Plan:
    """The study's shared facts (domains, tokens, budget) and how a mixture becomes a dataset, a job and a row."""

    def __init__(self, study: Study):
        self.study, self.out = study, study.out / "reweight"
        proxy = study.recipe["proxy"]
        self.budget = proxy["steps"] * proxy.get("batch_size", 8) * study.recipe["model"]["max_length"]
        self.domains, self.tokens = _domain_tokens(Run(study.run).chunks())
        self.natural = self.tokens / self.tokens.sum()

    # -------------------------------------------------------------------- mixtures as datasets, jobs and rows

    def mixture(self, weights: np.ndarray, seed: int) -> Path:
        """The pool resampled to `weights` at the budget with the sampler seeded by `seed` (made once)."""
        folder = self.out / "mixtures" / f"{mixture_key(weights)}-seed{seed}"
        given = {d: float(w) for d, w in zip(self.domains, weights)}
        _reweighted(ReweightRequest(run=str(self.study.run), target=None, weights=given, out=str(folder),
                                    out_data=str(folder / "data"), tokens=str(self.budget), seed=seed))
        return folder

    def job(self, weights: np.ndarray, seed: int) -> dict[str, Any]:
        study = self.study
        folder = self.mixture(weights, seed)
        key = f"mixtures/{folder.name}/proxy-seed{seed}"
        return proxy_job(key, folder / "data", study.out, study.base, study.recipe, seed, study.tasks, study.task_dir)

    def search_job(self, weights: np.ndarray, seed: int) -> dict[str, Any]:
        """A proxy scored on every target's items the methods see (RegMix's regression data), not on the evaluation items."""
        job = self.job(weights, seed)
        tasks, folder = self.search_tasks()
        return {**job, "key": f"{SEARCH}/{job['key']}", "eval": str(self.study.out / "eval" / SEARCH / job["key"]),
                "tasks": tasks, "task_dir": str(folder), "tasks_digest": tasks_digest(folder, tasks)}

    def search_tasks(self) -> tuple[list[str], Path]:
        from ..proxy.evaluate import target_task

        folder = self.study.out / "tasks-search"
        tasks = []
        for target, file in self.study.files["targets"].items():
            name = task_name("search", target)
            target_task(name, Path(file), folder=folder)
            tasks.append(name)
        return tasks, folder

    def row(self, target: str, method: str, seed: int, job: dict, weights: np.ndarray, cost: dict) -> dict[str, Any]:
        manifest = json.loads((Path(job["data"]).parent / "manifest.json").read_text())
        sampled = manifest["sampled"]
        return {
            "target": target, "method": method, "seed": seed, "job": job["key"],
            "weights": {d: round(float(w), 5) for d, w in zip(self.domains, weights)},
            "epochs": {d["domain"]: round(sampled.get(d["domain"], {}).get("copies", 0) / d["documents"], 3)
                       for d in manifest["weights"]["domains"]},
            "budget_tokens": self.budget, **cost,
        }

    # -------------------------------------------------------------------- each method's weights

    def weights(self, method: str, target: str, target_file: str, grid: np.ndarray, grid_loss: dict[int, float],
                grid_jobs: list[dict], vertex_jobs: list[dict], random_mixtures: np.ndarray, regmix_jobs: list[dict],
                measured: dict[str, dict]) -> tuple[np.ndarray, dict[str, Any]]:
        """A method's mixture for the target and what finding it cost: {"weight_seconds", "weight_proxy_runs"}."""
        spec = self.study.recipe["reweight"]
        proxy_seconds = float(np.median([m["proxy_seconds"] for m in measured.values()])) if measured else None

        def runs(seconds: float) -> float | None:
            return round(seconds / proxy_seconds, 2) if proxy_seconds else None

        if method == "natural":
            return self.natural, {"weight_seconds": 0.0, "weight_proxy_runs": 0.0}
        if method == "uniform":
            return np.full(len(self.domains), 1 / len(self.domains)), {"weight_seconds": 0.0, "weight_proxy_runs": 0.0}
        if method == "unimax":
            cap = (spec.get("unimax") or {}).get("max_epochs", 1.0)
            return unimax(self.tokens, self.budget, cap), {"weight_seconds": 0.0, "weight_proxy_runs": 0.0}
        if method in REWEIGHT_ARMS:
            return self._reweight(method, target, target_file, runs)
        if method == "grid-best":
            best = min(grid_loss, key=grid_loss.get)
            seconds = sum(measured[job["key"]]["proxy_seconds"] for job in grid_jobs)
            return grid[best], {"weight_seconds": round(seconds, 1), "weight_proxy_runs": float(len(grid_jobs)), "grid_point": best}
        if method == "mixmin":
            return self._mixmin(target, target_file, vertex_jobs, measured)
        if method == "regmix":
            return self._regmix(target, random_mixtures, regmix_jobs, measured)
        if method in ("doremi", "doge"):
            return self._online(method, target, target_file)
        raise CurateError(f"no such method {method!r}")

    def _reweight(self, method: str, target: str, target_file: str, runs=lambda seconds: None, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        mode, signal, settings = REWEIGHT_ARMS[method]
        rule = {**(self.study.recipe["reweight"].get("rule") or {}), **settings}
        reading = rule.get("rule")
        if mode == "parts":
            mode = "average" if len({item.get("part") for item in _items(target_file)}) > 1 else "target"
        if mode == "worst":  # the worst part is defined for the tilt only (the proportional weighting has no worst mode)
            rule["weighting"] = "tilt"
        folder = self.out / "weights" / target / (name or method)
        started = time.perf_counter()
        manifest = _reweighted(ReweightRequest(run=str(self.study.run), target=target_file, out=str(folder), mode=mode,
                                               method=signal, tokens=str(self.budget), **rule))
        weights = np.array([next(d["weight"] for d in manifest["weights"]["domains"] if d["domain"] == name) for name in self.domains])
        seconds = time.perf_counter() - started
        cost: dict[str, Any] = {"weight_seconds": round(seconds, 1), "weight_proxy_runs": runs(seconds)}
        if signal == "stride":  # the attribution itself: the reference model's training and STRIDE's fit
            reference = json.loads((self.study.reference / "training.json").read_text())["seconds"]
            if reading == DOMAIN_OPERATORS:  # its own bank, not the run's operators (`curate fit --chunks-only` will do)
                bank = _label_bank_seconds(self.study.run, started)
                cost = {"weight_seconds": round(seconds + bank + reference, 1), "weight_proxy_runs": runs(seconds + bank + reference),
                        "bank_seconds": bank, "reference_seconds": reference}
            else:
                fit = self.study.run_fit_seconds or 0.0
                cost = {"weight_seconds": round(seconds + fit + reference, 1), "weight_proxy_runs": runs(seconds + fit + reference),
                        "fit_seconds": fit, "reference_seconds": reference}
        return weights, cost

    def _mixmin(self, target: str, target_file: str, vertex_jobs: list[dict], measured) -> tuple[np.ndarray, dict[str, Any]]:
        from .methods.mixmin import mixmin_weights, sequence_logprobs

        texts = [item["text"] for item in _items(target_file)]
        started = time.perf_counter()
        logprobs = np.stack([sequence_logprobs(Path(job["model"]), texts, self.study.recipe["model"]["max_length"])
                             for job in vertex_jobs], axis=1)
        weights, loss = mixmin_weights(logprobs)
        scoring = time.perf_counter() - started
        trained = sum(measured[job["key"]]["proxy_seconds"] for job in vertex_jobs)
        return weights, {"weight_seconds": round(trained + scoring, 1), "weight_proxy_runs": float(len(vertex_jobs)),
                         "mixmin_loss": loss}

    def _regmix(self, target: str, mixtures: np.ndarray, jobs: list[dict], measured) -> tuple[np.ndarray, dict[str, Any]]:
        from .methods.regmix import regmix_weights

        task = task_name("search", target)
        losses = np.array([measured[job["key"]]["values"][f"{task}|bits_per_byte"] for job in jobs])
        weights, fit = regmix_weights(mixtures, losses, self.natural, seed=self.study.recipe.get("seed", 0))
        seconds = sum(measured[job["key"]]["proxy_seconds"] for job in jobs)
        return weights, {"weight_seconds": round(seconds, 1), "weight_proxy_runs": float(len(jobs)),
                         "regmix_train_spearman": fit["train_spearman"]}

    def _online(self, method: str, target: str, target_file: str, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """DoReMi (no target: one run serves all) or DoGE (the target's items), cached as JSON."""
        from .methods.online import doge_weights, doremi_weights

        recipe = self.study.recipe
        seed = recipe.get("seed", 0) if seed is None else seed
        suffix = "" if seed == recipe.get("seed", 0) else f"-seed{seed}"
        name = f"doremi{suffix}.json" if method == "doremi" else f"doge-{target}{suffix}.json"
        cache = self.out / "weights" / name
        if not cache.is_file():
            files = self.domain_files()
            common = dict(steps=recipe["proxy"]["steps"], seed=seed, batch_size=recipe["proxy"].get("batch_size", 8),
                          seq_len=recipe["model"]["max_length"], progress=recipe.get("progress", True))
            if method == "doremi":
                found = doremi_weights(files, self.study.base, **common)
            else:
                texts = [item["text"] for item in _items(target_file)]
                found = doge_weights(files, self.study.base, texts, **common)
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(found, indent=1))
        found = json.loads(cache.read_text())
        weights = np.array([found["weights"][d] for d in self.domains])
        return weights, {"weight_seconds": found["seconds"], "weight_proxy_runs": found["proxy_runs"]}

    # -------------------------------------------------------------------- the transfer check

    def transfer(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every arm's mixture again at a larger proxy (reweight.transfer.model: the same tokenizer, more layers and
        width) for reweight.transfer.seeds, on the same datasets, and with reweight.transfer.grid every grid mixture
        too: whether weights found at proxy scale keep their order at the next scale, and whether the grid's ranking
        of mixtures (the oracle every regret is read against) does. Rows tagged `scale: transfer`."""
        spec = self.study.recipe["reweight"].get("transfer")
        if not spec:
            return []
        base = self.transfer_base(spec["model"])
        made = []
        for row in rows:
            if (row["method"] == "grid" and not spec.get("grid")) or row["seed"] not in spec.get("seeds", [0]):
                continue
            mixture = row["job"].split("/")[1]
            data = self.out / "mixtures" / mixture / "data"
            study = self.study
            job = proxy_job(f"transfer/{mixture}/proxy-seed{row['seed']}", data, study.out, base, study.recipe, row["seed"],
                            study.tasks, study.task_dir)
            made.append((job, {**row, "job": job["key"], "scale": "transfer"}))
        return made

    def transfer_base(self, model: dict[str, Any]) -> Path:
        """The base tokenizer with a larger untrained model (what every transfer proxy starts from)."""
        from transformers import AutoTokenizer

        folder = self.out / "transfer-base"
        if not (folder / "config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(self.study.base, local_files_only=True)
            save_base(tokenizer, {**self.study.recipe["model"], **model}, folder)
        return folder

    # -------------------------------------------------------------------- diagnostics (rows without a proxy)

    def stability(self, methods: list[str]) -> list[dict[str, Any]]:
        """How much each method's weights move when its input does: STRIDE (the default and the guarded domain-operators
        reading) and the similarity ablation on each half of the target's items, DoReMi and DoGE at another seed. One
        row per target and method: the weights of each variant and the largest difference of any domain's weight
        between them."""
        rows = []
        for target, target_file in self.study.files["targets"].items():
            for method in [m for m in ("stride", "stride-guarded", "similarity") if m in methods]:
                variants = [self._reweight(method, target, half, name=f"{method}-half{k}")[0]
                            for k, half in enumerate(self.target_halves(target, target_file))]
                rows.append(self._stability_row(target, method, "target halves", variants))
            for method in [m for m in ("doremi", "doge") if m in methods]:
                variants = [self._online(method, target, target_file, seed=seed)[0] for seed in (0, 1)]
                rows.append(self._stability_row(target, method, "seeds 0 and 1", variants))
        return rows

    def _stability_row(self, target: str, method: str, varied: str, variants: list[np.ndarray]) -> dict[str, Any]:
        stacked = np.stack(variants)
        return {"target": target, "method": method, "diagnostic": "stability", "varied": varied,
                "variants": [{d: round(float(w), 4) for d, w in zip(self.domains, v)} for v in variants],
                "max_weight_difference": round(float((stacked.max(axis=0) - stacked.min(axis=0)).max()), 4)}

    def target_halves(self, target: str, target_file: str) -> list[str]:
        """The target's items split in two at random (seeded), each half keeping its items' parts."""
        lines = [line for line in Path(target_file).read_text().splitlines() if line.strip()]
        order = np.random.default_rng(self.study.recipe.get("seed", 0)).permutation(len(lines))
        halves = []
        for k, picked in enumerate((order[: len(order) // 2], order[len(order) // 2:])):
            path = self.out / "halves" / f"{target}-half{k}.jsonl"
            text = "".join(lines[i] + "\n" for i in sorted(picked))
            if not path.is_file() or path.read_text() != text:
                atomic_write_text(path, text)
            halves.append(str(path))
        return halves

    def groups_against_domains(self) -> list[dict[str, Any]]:
        """How well the run's recovery groups (what --domain-field groups uses without labels) match the true domains:
        purity (the token share of each group's majority domain) and inverse purity (of each domain's majority group),
        both token-weighted; 1 and 1 is a perfect match."""
        import polars as pl

        run = Run(self.study.run)
        groups = run.document_groups()
        if groups is None:
            return []
        table = run.document_tokens().join(groups, on="doc_id").join(run.document_domains(), on="doc_id")
        counts = table.group_by("group", "domain").agg(pl.col("tokens").sum())
        total = counts["tokens"].sum()
        purity = counts.group_by("group").agg(pl.col("tokens").max())["tokens"].sum() / total
        inverse = counts.group_by("domain").agg(pl.col("tokens").max())["tokens"].sum() / total
        majority = (counts.sort("tokens", descending=True).unique("group", keep="first")
                    .group_by("domain").agg(pl.len().alias("groups")))
        # `groups`: the groups that hold most of some document's tokens, the domains --domain-field groups gives;
        # `chunk_groups`: the k-means groups over chunks (a group can hold only documents' shorter parts)
        chunk_groups = int(pl.read_parquet(groups_file(run.root, run.config.groups))["group"].n_unique())
        return [{"target": None, "method": "groups", "diagnostic": "groups", "groups": int(counts["group"].n_unique()),
                 "chunk_groups": chunk_groups,
                 "purity": round(float(purity), 4), "inverse_purity": round(float(inverse), 4),
                 "groups_per_domain": {r["domain"]: r["groups"] for r in majority.iter_rows(named=True)}}]

    def domain_files(self) -> dict[str, Path]:
        """The pool split by domain (what DoReMi and DoGE sample from)."""
        folder = self.out / "domains"
        files = {d: folder / f"{d}.jsonl" for d in self.domains}
        if not all(f.is_file() for f in files.values()):
            rows: dict[str, list[str]] = {d: [] for d in self.domains}
            for line in Path(self.study.files["pool"]).read_text().splitlines():
                if line.strip():
                    rows[json.loads(line)["domain"]].append(line + "\n")
            for domain, lines in rows.items():
                atomic_write_text(files[domain], "".join(lines))
        return files


def _items(target_file: str) -> list[dict[str, Any]]:
    """The target's items (the JSONL the recipe's data stage wrote)."""
    return [json.loads(line) for line in Path(target_file).read_text().splitlines() if line.strip()]


def _domain_tokens(chunks) -> tuple[tuple[str, ...], np.ndarray]:
    import polars as pl

    table = chunks.group_by("domain").agg((pl.col("token_end") - pl.col("token_start")).sum().alias("tokens")).sort("domain")
    return tuple(table["domain"].cast(pl.String)), table["tokens"].to_numpy().astype(float)


def _reweighted(request: ReweightRequest) -> dict[str, Any]:
    """`curate reweight` into request.out, or its manifest when the folder holds this very request, finished (a
    folder of another request, or unfinished, is replaced: the study owns its folders)."""
    out = Path(request.out)
    saved, manifest = out / ".work" / "request.json", out / "manifest.json"
    if manifest.is_file() and saved.is_file() and json.loads(saved.read_text()) == request.fingerprint():
        return json.loads(manifest.read_text())
    return run_reweight(request, overwrite=out.exists())


def _label_bank_seconds(run: Path, started: float) -> float:
    """The training time of the run's newest domain bank when an earlier call trained it (0 when this call did: its
    seconds count it already)."""
    from stride_engine.label_operators import FOLDER

    banks = sorted(Path(run).glob(f"{FOLDER}/*/settings.json"), key=lambda p: p.stat().st_mtime)
    if not banks:
        return 0.0
    newest = banks[-1]
    trained_now = newest.stat().st_mtime >= time.time() - (time.perf_counter() - started)
    return 0.0 if trained_now else float(json.loads(newest.read_text()).get("train_seconds", 0.0))
