"""The datatrove steps of a reweighting: one task computes the weights, many resample the corpus, one reports.

    (with more than one task, curate.core.attribution's two stages attribute the target first, shared by the tasks)
    stage 1  [DomainWeights(run, request, OUT)]                      one task: OUT/weights.json, domains.parquet, weights.png
    stage 2  [reader, MixtureSampler(OUT, domain_field, seed), writer]   many tasks: the resampled dataset (with --out-data)
    stage 3  [ReweightReport(OUT, request)]                          one task: OUT/report.md, OUT/manifest.json (last)

The sampler is uniform inside each domain, so a gain from the mixture can only come from the domains' shares, not
from hidden document filtering: a document of domain d is written floor(r) times, plus once more with probability
frac(r), where r = weight[d] * budget / tokens[d] is the domain's expected number of passes at the budget. The draw is
a hash of (seed, document id), so every task decides alone and a rerun makes the same mixture.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep

from ..core.outputs import write_atomically, write_parquet
from ..errors import CurateError

WEIGHTS_FILE = "weights.json"
SAMPLED = "sampled"  # OUT/.work/sampled/<rank>.json: documents and tokens written per domain by each task


class DomainWeights(PipelineStep):
    """One task: the run's per-domain influence on the target and the mixture the rule makes of it."""

    name = "⚖️ Domain weights"
    type = "📊 STATS"

    def __init__(self, request: dict[str, Any], output_folder: DataFolderLike):
        super().__init__()
        self.request, self.output_folder = request, get_datafolder(output_folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from .mixture import compute_mixture
        from .report import weights_plot
        from .request import ReweightRequest

        with self.track_time():
            record, table, _ = compute_mixture(ReweightRequest(**_as_request(self.request)))
            write_parquet(table, self.output_folder, "domains.parquet")
            write_atomically(self.output_folder, "weights.png", weights_plot(record))
            write_atomically(self.output_folder, WEIGHTS_FILE, (json.dumps(record, indent=1) + "\n").encode())
        yield from data or []


def _as_request(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "task_dirs": tuple(values.get("task_dirs") or ())}


def sampling_rates(record: dict[str, Any]) -> dict[str, float]:
    """Expected passes over each domain's documents at the budget."""
    return {d["domain"]: d["weight"] * record["budget_tokens"] / d["tokens"] for d in record["domains"]}


def copies_of(doc_id: str, rate: float, seed: int) -> int:
    whole, fraction = math.floor(rate), rate - math.floor(rate)
    digest = hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2 ** 64
    return whole + (1 if draw < fraction else 0)


class MixtureSampler(PipelineStep):
    """Many tasks: each document repeated as its domain's rate says (see the module docstring); copies after the
    first get the id `<id>#<k>`."""

    name = "⚖️ Mixture sampler"
    type = "🎯 SAMPLER"

    def __init__(self, output_folder: DataFolderLike, domain_field: str = "domain", seed: int = 0,
                 domains_of: dict[str, str] | None = None):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.domain_field, self.seed = domain_field, seed
        self.domains_of = domains_of  # doc_id -> domain, where the domain is not a field (the run's groups)
        self._rates: dict[str, float] | None = None

    def _domain(self, document: Document) -> str:
        if self.domains_of is not None:
            domain = self.domains_of.get(document.id)
        else:
            domain = document.metadata.get(self.domain_field)
        if domain is None:
            raise CurateError(f"document {document.id!r} has no {self.domain_field!r} field")
        return str(domain)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._rates is None:
            if not self.output_folder.isfile(WEIGHTS_FILE):
                raise CurateError(f"no {WEIGHTS_FILE} in {self.output_folder.path}: run the weights stage first")
            with self.output_folder.open(WEIGHTS_FILE, "rt") as handle:
                self._rates = sampling_rates(json.load(handle))
        written: dict[str, dict[str, int]] = {}
        for document in data or []:
            domain = self._domain(document)
            if domain not in self._rates:
                raise CurateError(f"document {document.id!r} has domain {domain!r}, which the weights do not have")
            copies = copies_of(document.id, self._rates[domain], self.seed)
            counts = written.setdefault(domain, {"documents": 0, "copies": 0})
            counts["documents"] += 1 if copies else 0
            counts["copies"] += copies
            self.stat_update(f"copies_{domain}", value=copies)
            for k in range(copies):
                yield document if k == 0 else Document(text=document.text, id=f"{document.id}#{k + 1}", metadata=dict(document.metadata))
        write_atomically(self.output_folder, f".work/{SAMPLED}/{rank:05d}.json", json.dumps(written).encode())


class ReweightReport(PipelineStep):
    """One task, last: the report and the manifest (a reweighting folder with a manifest is finished)."""

    name = "📝 Reweight report"
    type = "📊 STATS"

    def __init__(self, output_folder: DataFolderLike, request: dict[str, Any]):
        super().__init__()
        self.output_folder, self.request = get_datafolder(output_folder), request

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from .report import markdown

        with self.output_folder.open(WEIGHTS_FILE, "rt") as handle:
            record = json.load(handle)
        sampled = _sampled(self.output_folder) if self.request.get("out_data") else None
        write_atomically(self.output_folder, "report.md", markdown(record, self.request, sampled).encode())
        manifest = {"request": self.request, "weights": record, "sampled": sampled}
        write_atomically(self.output_folder, "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        yield from data or []


def _sampled(folder) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for name in sorted(folder.glob(f".work/{SAMPLED}/*.json")):
        with folder.open(name, "rt") as handle:
            for domain, counts in json.load(handle).items():
                total = totals.setdefault(domain, {"documents": 0, "copies": 0})
                for key, value in counts.items():
                    total[key] += value
    return totals

