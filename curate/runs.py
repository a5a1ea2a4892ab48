"""An attribution run as the applications use it: reopen it, attribute a new target, read per-document influence.

A run (built by `curate fit` or `curate attribute`) holds the trained operators for one pool of training
documents; any number of targets can then be attributed to it cheaply (responses + recovery, no retraining).
`RUN/inputs.json` records the model folder and the training files the run was fit on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from stride_engine import Queries, ScoreStore, Stride, StrideConfig, StrideError, read_documents
from stride_engine.artifacts import atomic_write_text
from stride_engine.groups import groups_file

from .errors import CurateError

AGGREGATION_RULES = ("mean", "standardized", "positive", "topk-hits")


@dataclass(frozen=True)
class RunInputs:
    model: Path
    train: list[Path]

    @classmethod
    def load(cls, run_dir: Path) -> "RunInputs":
        path = Path(run_dir) / "inputs.json"
        if not (Path(run_dir) / "config.yaml").is_file() or not path.is_file():
            raise CurateError(
                f"{run_dir} is not an attribution run (no config.yaml/inputs.json); build one with "
                "`curate fit --model MODEL --train FILE --out RUN`"
            )
        values = json.loads(path.read_text())
        return cls(Path(values["model"]), [Path(p) for p in values["train"]])

    def save(self, run_dir: Path, **extra) -> None:
        values = {"model": str(self.model), "train": [str(p) for p in self.train], **extra}
        atomic_write_text(Path(run_dir) / "inputs.json", json.dumps(values, indent=2))


def open_run(run_dir: Path, progress: bool = False) -> Stride:
    """The fitted engine of an existing run (every training stage is reused, none is recomputed)."""
    run_dir = Path(run_dir)
    inputs = RunInputs.load(run_dir)
    config = StrideConfig.load(run_dir / "config.yaml")
    try:
        documents = read_documents(inputs.train, config.text_field, config.id_field, config.domain_field)
        stride = Stride.from_pretrained(inputs.model, config, run_dir, progress=progress)
        # fit() on a finished run only checks the stages' fingerprints: a changed corpus or model is refused.
        return stride.fit(documents)
    except StrideError as err:
        raise CurateError(f"cannot reopen run {run_dir}: {err}") from err


def attribute_target(stride: Stride, target: Queries, name: str) -> ScoreStore:
    try:
        return stride.attribute(target, name=name)
    except StrideError as err:
        raise CurateError(f"cannot attribute target {name!r}: {err}") from err


def document_influence(store: ScoreStore, rule: str = "mean", k: int = 10) -> pl.DataFrame:
    """One aggregate influence per training document on the whole target (doc_id, domain, influence).

    - "mean": mean signed score over the target's queries (helps on average; harmful documents count against);
    - "standardized": the same mean after dividing each query's scores by their spread over the pool, so that every
      query has the same say (a query whose loss the operators move most, noise included, no longer outvotes the
      rest). Measured in the README: better for a target of one kind; wrong for a mixture whose parts differ in
      how far their loss can move, where the loud part's scale was information;
    - "positive": mean of the positive parts only (helps some query; harm elsewhere is ignored);
    - "topk-hits": in how many queries' top k the document ranks (robust to a few very large scores).
    """
    if rule not in AGGREGATION_RULES:
        raise CurateError(f"aggregation rule {rule!r} is not one of {list(AGGREGATION_RULES)}")
    documents = store.documents()
    num_queries = max(1, len(store.queries()))
    if rule == "mean":
        influence = pl.col("mean_score")
    elif rule == "standardized":
        influence = pl.col("mean_standardized_score")
    elif rule == "positive":
        influence = pl.col("positive_mass") / num_queries
    else:
        hits = (
            store.top(k=k, direction="positive").group_by("doc_id").agg(pl.len().cast(pl.Float64).alias("hits"))
        )
        documents = documents.join(hits, on="doc_id", how="left").with_columns(pl.col("hits").fill_null(0.0))
        influence = pl.col("hits")
    return documents.select("doc_id", "domain", influence.cast(pl.Float64).alias("influence"))


def document_groups(run_dir: Path) -> pl.DataFrame | None:
    """doc_id, group: the run's recovery group holding most of a document's tokens (ties: the lower group); None
    when the run recovers without groups or has not clustered its chunks yet (its first target attribution does)."""
    count = StrideConfig.load(Path(run_dir) / "config.yaml").groups
    path = groups_file(run_dir, count)
    if not count or not path.is_file():
        return None
    chunks = pl.read_parquet(Path(run_dir) / "chunks.parquet").join(pl.read_parquet(path), on="chunk_id")
    tokens = chunks.group_by("doc_id", "group").agg((pl.col("token_end") - pl.col("token_start")).sum().alias("tokens"))
    best = tokens.sort(["doc_id", "tokens", "group"], descending=[False, True, False]).unique("doc_id", keep="first")
    return best.select("doc_id", pl.col("group").cast(pl.Int64))


def document_tokens(run_dir: Path) -> pl.DataFrame:
    """Tokens per document as the run's model sees them (bos/eos included), from the run's chunk table."""
    chunks = pl.read_parquet(Path(run_dir) / "chunks.parquet")
    return chunks.group_by("doc_id").agg((pl.col("token_end") - pl.col("token_start")).sum().cast(pl.Int64).alias("tokens"))
