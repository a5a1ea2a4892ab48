"""`curate reweight`: new mixture weights for a corpus's domains from their influence on a target, and optionally the
corpus resampled to them.

    OUT/weights.json     the new mixture beside the natural and uniform ones; per domain tokens, weight, epochs at the
                         budget, influence per token with its standard error; the rule, the run, the target, the model
    OUT/domains.parquet  per domain and part of the target: tokens, influence per token, standard error
    OUT/weights.png      the three mixtures side by side
    OUT/report.md        the table; with --out-data, what the sampler wrote per domain
    OUT/manifest.json    the request, the weights and the sampled counts (written last: OUT is then finished)
    OUT_DATA/            with --out-data, the resampled dataset (datatrove writer)

Everything is checked before OUT is created: a domain missing on some documents, a domain without tokens, a budget
the epoch cap cannot hold, a target without items, a bad setting or output folder stop here. The target's attribution
and the weights are computed by the pipeline's stages (curate.reweight.pipeline), never in the submitting process.
Reruns follow the house's rule (curate.core.outputs.finished_rerun).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stride_engine.artifacts import atomic_write_text

from ..core.executors import run_chain
from ..core.outputs import check_data_folder, finished_rerun, replacing
from ..core.run import Run
from ..errors import CurateError
from .mixture import check_mixture
from .pipeline import reweight_executors, reweight_pipelines
from .domain_effects import DOMAIN_REGRESSION
from .domain_operators import DOMAIN_OPERATORS
from .request import GROUPS_AS_DOMAINS, REQUEST_FILE, RULES, SIGNALS, ReweightRequest


def check_request(request: ReweightRequest, overwrite: bool = False) -> tuple[bool, dict[str, str] | None, bool]:
    """Every check; returns whether OUT holds this very reweighting, finished, (with --domain-field groups) each
    document's group for the sampler, and whether the target has several parts (each is then attributed alone)."""
    request.mixture_rule().check()
    request.execution().check()
    if (request.target is None) == (request.weights is None):
        raise CurateError("give a target to compute weights from (--target), or a mixture to apply (--weights), not both"
                          if request.target is not None else "give a target (--target) or a mixture to apply (--weights)")
    if request.method != "stride" and request.method not in SIGNALS:
        raise CurateError(f"method {request.method!r} is not stride or one of the baselines {list(SIGNALS)}")
    if request.rule not in RULES:
        raise CurateError(f"aggregation rule {request.rule!r} is not one of {list(RULES)}")
    if request.rule in (DOMAIN_REGRESSION, DOMAIN_OPERATORS) and request.method != "stride" and request.target is not None:
        raise CurateError(f"--rule {request.rule} reads STRIDE's measurements; a baseline's scores (--method "
                          f"{request.method}) aggregate per document: use --rule positive (or mean, topk-hits)")
    if request.guard == "measured" and request.rule != DOMAIN_OPERATORS and request.target is not None:
        raise CurateError(f"--guard measured reads every domain's effect on the domains' own held-out text, which only "
                          f"--rule domain-operators measures (got --rule {request.rule}); --guard macro needs no measurement")
    if request.output_format not in ("jsonl", "parquet"):
        raise CurateError(f"output format {request.output_format!r} is not 'jsonl' or 'parquet'")
    if not (Path(request.run) / "config.yaml").is_file():
        raise CurateError(f"run {request.run} is not a fitted run (no config.yaml): fit one with `curate fit`")
    run = Run(request.run)
    if request.target is not None and request.method == "stride" and request.rule != DOMAIN_OPERATORS:
        run.require_operators(f"--rule {request.rule} (--rule domain-operators trains operators of its own)")
    finished = finished_rerun(request.out, Path(request.out) / REQUEST_FILE, request.fingerprint(), overwrite, "reweighting")
    if request.out_data:
        check_data_folder(request.out_data, request.out, Path(request.out) / REQUEST_FILE, finished, overwrite,
                          "resampled dataset", "--out-data")
    # every problem of the data, the target and the budget shows here, before OUT exists; the target's attribution and
    # the weights are the pipeline's work (its first stages, on the executor's tasks)
    documents, by_part = check_mixture(run, request)
    domains_of = None
    if request.out_data and request.domain_field == GROUPS_AS_DOMAINS:
        domains_of = dict(zip(documents["doc_id"], documents["domain"]))
    return finished, domains_of, by_part


def run_reweight(request: ReweightRequest, overwrite: bool = False) -> dict[str, Any]:
    """Check everything, then run the stages; returns the manifest ({} when Slurm only submitted the jobs)."""
    finished, domains_of, by_part = check_request(request, overwrite)
    out = Path(request.out)
    manifest = out / "manifest.json"
    if finished and not request.out_data:
        return json.loads(manifest.read_text())
    replaced = (out, request.out_data) if overwrite else ()
    with replacing(*replaced):
        (out / REQUEST_FILE).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / REQUEST_FILE, json.dumps(request.fingerprint(), indent=2))
        run_chain(reweight_executors(request, reweight_pipelines(request, domains_of, by_part)), request.execution())
    return json.loads(manifest.read_text()) if manifest.is_file() else {}
