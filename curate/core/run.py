"""An attribution run as the applications use it: one object through which a step, a command or a study reads a run.

A run (built by `curate fit` or `curate attribute`) holds the trained operators for one pool of training documents;
any number of targets can then be attributed to it cheaply (responses + recovery, no retraining).
`RUN/config.yaml` is the engine's resolved configuration and `RUN/inputs.json` the model folder and the training
files the run was fit on. `Run` reads each of them once, and the pool, the tokenizer and the fitted engine only
when asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
from filelock import FileLock

from stride_engine import Documents, Queries, ScoreStore, Stride, StrideConfig, StrideError, read_documents
from stride_engine.artifacts import RunDirectory, atomic_write_text
from stride_engine.groups import groups_file
from stride_engine.merge import merge_without_model

from ..errors import CurateError

AGGREGATION_RULES = ("mean", "standardized", "positive", "topk-hits")
LOCK_NAME = ".curate-target.lock"  # one process computes a target's scores; the others wait and reuse them


@dataclass(frozen=True)
class RunInputs:
    model: Path
    train: list[Path]
    train_files: list[dict] | None = None  # each training file's size and modification time when the run was fit
    operators: bool = True  # False: prepared by `curate fit --chunks-only` (chunks, no STRIDE operators)

    @classmethod
    def load(cls, run_dir: Path | str) -> "RunInputs":
        path = Path(run_dir) / "inputs.json"
        if not (Path(run_dir) / "config.yaml").is_file() or not path.is_file():
            raise CurateError(
                f"{run_dir} is not an attribution run (no config.yaml/inputs.json); build one with "
                "`curate fit --model MODEL --train FILE --out RUN`"
            )
        values = json.loads(path.read_text())
        return cls(Path(values["model"]), [Path(p) for p in values["train"]], values.get("train_files"), values.get("operators", True))

    def save(self, run_dir: Path | str, **extra) -> None:
        values = {"model": str(self.model), "train": [str(p) for p in self.train],
                  "train_files": [_file_stat(p) for p in self.train], **({} if self.operators else {"operators": False}), **extra}
        atomic_write_text(Path(run_dir) / "inputs.json", json.dumps(values, indent=2))

    def train_files_changed(self) -> bool:
        """Whether a training file that is still there differs in size or modification time from when the run was fit
        (a run saved without them counts as changed). A file moved away does not count: the run scores its saved chunks."""
        if self.train_files is None or len(self.train_files) != len(self.train):
            return True
        return any(path.exists() and _file_stat(path) != saved for path, saved in zip(self.train, self.train_files))


def _file_stat(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        return {"bytes": None, "modified_ns": None}
    stat = path.stat()
    return {"bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


class Run:
    """A fitted run directory: its configuration, inputs, pool, tokenizer, engine and score stores."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.inputs = RunInputs.load(self.root)  # refuses a folder that is not a run
        RunDirectory(self.root).check_format()  # and one another version laid out, before its config is read
        self.config = StrideConfig.load(self.root / "config.yaml")

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def require_operators(self, use: str) -> None:
        """Refuse a run prepared with `curate fit --chunks-only` for `use`, which reads STRIDE's operators."""
        if not self.inputs.operators:
            raise CurateError(f"run {self.root} was prepared with --chunks-only (no STRIDE operators), and {use} reads "
                              "them: fit them with `curate fit` (same settings, same folder)")

    # ------------------------------------------------------------------------------------- what it was fit on

    @cached_property
    def documents(self) -> Documents:
        """The pool, as the engine read it (ids as the engine names them)."""
        config = self.config
        try:
            return read_documents(self.inputs.train, config.text_field, config.id_field, config.domain_field)
        except StrideError as err:
            raise CurateError(f"cannot read the training files of run {self.root}: {err}") from err

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.inputs.model)

    @cached_property
    def window(self) -> int:
        """The model's context window in tokens (unbounded when its configuration does not say)."""
        from transformers import AutoConfig

        from ..proxy.retrain import max_positions

        return max_positions(AutoConfig.from_pretrained(self.inputs.model)) or 1 << 30

    @cached_property
    def engine(self) -> Stride:
        """The fitted engine (every training stage is reused, none is recomputed). Read back from the run's saved chunks
        while its training files are as they were (or gone): a worker reopening a run of millions of documents does
        not read the corpus. A training file changed since the fit is read and checked: a changed corpus is refused."""
        try:
            stride = Stride.from_pretrained(self.inputs.model, self.config, self.root, progress=False)
            operators = self.inputs.operators  # a run prepared with --chunks-only reopens without them, never trains them
            reopened = None if self.inputs.train_files_changed() else stride.reopen(operators)
            # fit() on a finished run only checks the stages' fingerprints: a changed corpus or model is refused.
            return reopened or stride.fit(self.documents, operators=operators)
        except StrideError as err:
            raise CurateError(f"cannot reopen run {self.root}: {err}") from err

    def lock(self) -> FileLock:
        return FileLock(str(self.root / LOCK_NAME))

    # ------------------------------------------------------------------------------------- score stores

    def score_store(self, name: str, queries: Queries) -> ScoreStore:
        """The query set's score store in the run, computed once (whichever process gets the lock first)."""
        with self.lock():
            try:
                store = ScoreStore(self.root / "scores" / name)
                if store.is_current():
                    return store
            except StrideError:  # not computed yet
                pass
            # computed now, or rewritten from its kept responses when an older version wrote it without an aggregate
            try:
                return self.engine.attribute(queries, name=name)
            except StrideError as err:
                raise CurateError(f"cannot attribute target {name!r}: {err}") from err

    def attribute_part(self, name: str, queries: Queries, part: int, parts: int) -> None:
        """Part `part` of `parts` of the query set's responses and recovery, for one of several tasks (Stride.attribute_part)."""
        try:
            with self.lock():  # the run's recovery groups are clustered once, before any part recovers with them
                self.engine.groups()
            self.engine.attribute_part(queries, name, part, parts)
        except StrideError as err:
            raise CurateError(f"cannot attribute part {part} of {parts} of {name!r}: {err}") from err

    def merge_parts(self, name: str, queries: Queries, parts: int) -> ScoreStore:
        """The query set's score store from its `parts` finished parts: from the run's records without loading the
        model (stride_engine.merge), or, for a run or parts written before those records, by reopening the engine."""
        with self.lock():
            try:
                return merge_without_model(self.root, queries, name, parts) or self.engine.merge_parts(queries, name, parts)
            except StrideError as err:
                raise CurateError(f"cannot merge the parts of {name!r}: {err}") from err

    def responses(self, name: str, queries: Queries) -> np.ndarray:
        """The query set's (queries, operators) responses, measured once with its score store and kept in the run."""
        self.score_store(name, queries)
        return np.load(self.root / "responses" / f"{name}.npy")

    # ------------------------------------------------------------------------------------- per document

    def chunks(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "chunks.parquet")

    @cached_property
    def document_count(self) -> int:
        """Documents in the pool, those too short to make a chunk included (from the chunks stage's record)."""
        record = self.root / "stages" / "chunks.json"
        if record.is_file():
            return int(json.loads(record.read_text())["documents"])
        return len(self.documents)

    def document_tokens(self) -> pl.DataFrame:
        """Tokens per document as the run's model sees them (bos/eos included), from the run's chunk table."""
        return self.chunks().group_by("doc_id").agg(
            (pl.col("token_end") - pl.col("token_start")).sum().cast(pl.Int64).alias("tokens")
        )

    def document_domains(self) -> pl.DataFrame:
        """doc_id, domain: each document's domain as the run read it (from the run's chunk table)."""
        return self.chunks().select("doc_id", "domain").unique("doc_id")

    def document_groups(self) -> pl.DataFrame | None:
        """doc_id, group: the run's recovery group holding most of a document's tokens (ties: the lower group); None
        when the run recovers without groups or has not clustered its chunks yet (its first target attribution does)."""
        count = self.config.groups
        path = groups_file(self.root, count)
        if not count or not path.is_file():
            return None
        chunks = self.chunks().join(pl.read_parquet(path), on="chunk_id")
        tokens = chunks.group_by("doc_id", "group").agg((pl.col("token_end") - pl.col("token_start")).sum().alias("tokens"))
        best = tokens.sort(["doc_id", "tokens", "group"], descending=[False, True, False]).unique("doc_id", keep="first")
        return best.select("doc_id", pl.col("group").cast(pl.Int64))


def document_influence(store: ScoreStore, rule: str = "mean", k: int = 10) -> pl.DataFrame:
    """One aggregate influence per training document on the whole target (doc_id, domain, influence).

    - "mean": mean signed score over the target's queries (helps on average; harmful documents count against);
    - "standardized": the same mean after dividing each query's scores by their spread over the pool, so that every
      query has the same say (a query whose loss the operators move most, noise included, no longer outvotes the
      rest). Measured in benchmarks/results/selection.md: better for a target of one kind; wrong for a mixture whose
      parts differ in how far their loss can move, where the loud part's scale was information;
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
