"""`Stride`: one object that runs the stages of an attribution run in a run directory.

    stride = Stride.from_pretrained("model_dir", preset("cpu-smoke"), "runs/demo")
    stride.fit(read_documents(["train.jsonl"]))          # stages: chunks, design, operators
    store = stride.attribute(read_queries("queries.jsonl"), name="queries")   # responses, scores
    store.top("q1", k=10)

Each stage is persisted with a fingerprint of what it was built from (see artifacts.py): a rerun skips finished
stages, resumes an interrupted operator training from its last checkpoint, and refuses a stage built from a
different configuration unless `force=True`, which rebuilds it and the stages built on it (a query set's responses
or scores: that set's alone). Everything is validated before the first file is written; `check_queries` runs the
query checks before a fit.

Under torchrun (distributed.py) every process runs the same calls: the first writes the run directory, every process
trains its share of each step, measures its share of the queries and recovers its share of their scores (merged by the
first), and the others wait wherever they read what the first wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from . import distributed
from .adapters import MODEL_DTYPES, Batch, ModelAdapter, load_causal_lm, move, select_rows
from .artifacts import RunDirectory, Stage, atomic_path, fingerprint, remove_path
from .config import STAGE_FIELDS, StrideConfig, stage_fields
from .corpus import Chunks, Documents, Queries, chunk_documents, chunks_table, encode_queries, pad_token_id, token_batch
from .design import Membership, random_membership
from .groups import cluster_examples, groups_file, pooled_states
from .merge import (DOCUMENT_LIST, finish_scores, part_folder, queries_digest, responses_stage, scores_stage,
                    write_document_list, write_responses)
from .errors import ConfigError, OutOfMemory, StageMismatchError, StrideError
from .fusion import PEER_PART_FILE, Peer, fused_batches, is_current, load_peer_scores, merge_peer_parts
from .operators import SteeringBank
from .plots import plot_training_curves
from .recovery import RecoverySettings, recover
from .responses import measure_responses
from .scores import ScoreStore, merge_score_parts, write_score_part, write_scores
from .training import RecomputedStates, StateCache, new_bank, train_operators


CHUNK_TOKENS = "chunks.tokens.npy"  # the chunks' token ids, row-aligned with chunks.parquet
STAGES = ("chunks", "design", "operators", "groups", "responses", "scores")
QUERY_STAGES = ("responses", "scores")  # one record per query set: responses-<set>, scores-<set>


@dataclass(frozen=True)
class Examples:
    """Training examples as row-aligned tensors, each mapped to a document (for non-text models)."""

    batch: Batch
    doc_ids: list[str]
    doc_index: np.ndarray
    domains: list[str | None]

    def __len__(self) -> int:
        return len(self.doc_index)


class Stride:
    def __init__(self, adapter: ModelAdapter, config: StrideConfig, run_dir: Path | str, tokenizer=None, progress: bool = True):
        self.adapter = adapter
        self.tokenizer = tokenizer
        # Digested as handed over: a fast tokenizer's padding and truncation settings are part of its state, and every
        # call that pads or truncates (queries fitted to the window before a fit) rewrites them.
        self._tokenizer_digest = _digest_tokenizer(tokenizer) if tokenizer is not None else None
        self.config = config
        self.run = RunDirectory(Path(run_dir))
        self.run.check_format()  # before anything reads or writes the folder
        self.device = _device(config.device)
        distributed.ensure_process_group(self.device)
        self.progress = progress and distributed.is_main()
        adapter.to(self.device)
        adapter.cast(MODEL_DTYPES[config.model_dtype])
        self.layer = config.layer if config.layer is not None else adapter.default_layer(config.layer_fraction)
        if config.form == "activation" or config.layer is not None:
            adapter.check_layer(self.layer)  # an explicit layer is checked even where the logit form ignores it
        self._examples: Examples | None = None
        self._has_operators = False  # fit(operators=False) prepares the chunks only (label operators train their own)
        self._fused_peer: Peer | None = None

    @classmethod
    def from_pretrained(cls, model_dir: Path | str, config: StrideConfig, run_dir: Path | str, layers_path: str | None = None, progress: bool = True) -> "Stride":
        adapter, tokenizer = load_causal_lm(model_dir, "cpu", layers_path, dtype=config.model_dtype)
        return cls(adapter, config, run_dir, tokenizer=tokenizer, progress=progress)

    # ------------------------------------------------------------------------------------------- stages

    def fit(self, train: Documents | Examples, force: bool = False, on_step: Callable[[int], None] | None = None,
            operators: bool = True) -> "Stride":
        """Chunk the corpus, draw the design, train the operators (each stage skipped when already done). With
        operators=False the run stops before training them: its chunks serve the label operators
        (label_operators.py), which train a bank of their own, and attribution refuses it until a full fit."""
        stages = self._training_stages(train)
        examples = self._examples_from(train, stages["chunks"])
        membership = self._membership(examples, stages["design"])  # drawn (and checked) before anything is written
        with distributed.main_first():  # the others check once the first has written: they then read what it wrote
            self._check_stages(stages, force)
            self._check_saved_config(force)
            if distributed.is_main():
                self._write_training_inputs(train, examples, membership, stages)
        if not distributed.is_main():
            membership = Membership.load(self.run.path("design.npz"))
        if operators and not self.run.is_done(stages["operators"]):
            with self._memory_advice("operator training"):
                self._train(examples, membership, stages["operators"], on_step)
            distributed.barrier()  # the operators are written before any process reads them
        self._examples = examples
        self._operators_stage = stages["operators"]
        self._has_operators = self.run.is_done(stages["operators"])
        if self.config.fuse != "none" and self._has_operators:
            with distributed.main_first():  # fitted once, by the first process; the others find it done
                self._peer().fit()
        return self

    def reopen(self, operators: bool = True) -> "Stride | None":
        """The fitted engine read back from what a finished run saved (its chunks' tokens, chunk table and document
        list), without reading or tokenising the corpus: what `fit` on the corpus it was fit on gives. The model, the
        tokenizer and the configuration are checked as `fit` checks them (a changed one is refused); the corpus is not,
        since the operators were trained on the saved chunks. None when the run cannot be read back so: not finished,
        fitted on given examples, or fitted before the tokens were kept (then `fit(documents)`). With operators=False a
        run prepared without them (fit(operators=False)) reopens too."""
        record = self.run.record("chunks")
        saved = (CHUNK_TOKENS, DOCUMENT_LIST, "chunks.parquet")
        if (record is None or self.tokenizer is None or not record.get("inputs", {}).get("tokenizer")
                or not all(self.run.path(name).is_file() for name in saved)):
            return None
        stages = self._stages_of(record["inputs"]["corpus"], self._tokenizer_digest)
        needed = [stage for name, stage in stages.items() if operators or name != "operators"]
        if not all(self.run.is_done(stage) for stage in needed):  # raises on a changed model or setting
            return None
        self._check_saved_config(force=False)
        chunks = self._saved_chunks(stages["chunks"])
        documents = pl.read_parquet(self.run.path(DOCUMENT_LIST))
        self._chunks = chunks
        batch = token_batch(chunks.input_ids, chunks.lengths, None)
        self._examples = Examples(batch, documents["doc_id"].to_list(), chunks.doc_index, documents["domain"].to_list())
        self._operators_stage = stages["operators"]
        self._has_operators = self.run.is_done(stages["operators"])
        if self.config.fuse != "none" and self._has_operators:
            with distributed.main_first():
                self._peer().fit()
        return self

    def _peer(self) -> Peer:
        """The gradient method fused with STRIDE's scores (fusion.py), for fuse != 'none'."""
        if self._fused_peer is None:
            self._fused_peer = Peer(self.run, self.adapter, self.config, self.device, self._examples.batch,
                                    self._operators_stage.fingerprint, self.progress)
        return self._fused_peer

    def _peer_scores_of(self, name: str) -> np.ndarray | None:
        """The fused peer's scores of a measured query set (memory-mapped), or None when nothing is fused."""
        if self.config.fuse == "none":
            return None
        digest = self.run.record(f"responses-{name}")["inputs"]["queries"]
        return load_peer_scores(self.run, self._peer().stage(name, digest), name, self.config.fuse)

    @contextmanager
    def _memory_advice(self, stage: str):
        """An allocation failure becomes an error that names what to lower; what was written before stays."""
        try:
            yield
        except RuntimeError as err:
            if not (isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err) or "out of memory" in str(err)):
                raise
            config = self.config
            states = "" if config.state_cache == "recompute" or stage != "operator training" else (
                "; hold no states at the cut with state_cache=recompute" if config.state_cache == "disk" else
                "; keep the states at the cut off the device with state_cache=disk, or hold none with state_cache=recompute")
            raise OutOfMemory(
                f"{stage} ran out of memory on {self.device}: lower micro_batch (now {config.micro_batch})"
                + (f" or loss_positions (now {config.loss_positions})" if config.form == "logit" and stage == "operator training" else "")
                + f"{states}, or run fewer processes per device. The finished stages and the last checkpoint are kept: "
                "a rerun with a lower micro_batch or state_cache=disk resumes from them."
            ) from err

    def _write_training_inputs(self, train, examples: Examples, membership: Membership, stages: dict[str, Stage]) -> None:
        self.run.mark_format()
        self.config.save(self.run.path("config.yaml"))
        if not self.run.is_done(stages["chunks"]):
            self._write_chunks(train, examples)
            if isinstance(train, Documents):
                self._write_chunk_tokens()
            self.run.finish(stages["chunks"], examples=len(examples), documents=len(examples.doc_ids))
        elif isinstance(train, Documents) and not self.run.path(CHUNK_TOKENS).is_file():
            self._write_chunk_tokens()  # a run fitted before the tokens were kept: kept from now on
        if not self.run.path(DOCUMENT_LIST).is_file():  # what a merge reads instead of the corpus (merge.py)
            write_document_list(self.run, list(examples.doc_ids), list(examples.domains))
        if not self.run.is_done(stages["design"]):
            membership.save(self.run.path("design.npz"))
            self.run.finish(stages["design"], subsets=membership.num_subsets, examples=membership.num_examples)

    def responses(self, queries: Queries | Examples, name: str = "queries", force: bool = False) -> np.ndarray:
        """y = m_base − m_k for every query and operator (m: the measurement, the loss by default); persisted as
        responses/<name>.npy."""
        self._require_fit()
        query_batch, query_ids = self._query_batch(queries)
        stage = self._responses_stage(name, query_batch, query_ids)
        with distributed.main_first():
            self._check_stages({stage.name: stage}, force)
        path = self.run.path("responses", f"{name}.npy")
        if self.run.is_done(stage):
            values = np.load(path)
        else:
            with self._memory_advice("measuring the responses"):
                values, base = self._measure(query_batch, query_ids)
            if distributed.is_main():
                self._write_responses(stage, name, values, base, query_ids)
            distributed.barrier()
        if self.config.fuse != "none":
            with distributed.main_first():
                self._peer().score_set(name, query_batch, stage.inputs["queries"])
        return values

    def _measure(self, query_batch: Batch, query_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Responses and base measurements of every query; with several processes each measures its share."""
        bank = self._load_bank()
        share = distributed.my_share(len(query_ids))  # every query when there is one process
        values = torch.zeros(len(query_ids), bank.coefficients.shape[0], dtype=torch.float64, device=self.device)
        base = torch.zeros(len(query_ids), dtype=torch.float64, device=self.device)
        if len(share):
            rows = slice(int(share[0]), int(share[-1]) + 1)
            mine, mine_base = measure_responses(
                self.adapter, bank, select_rows(query_batch, rows), self.config.form, self.layer, self.config.micro_batch,
                self.device, self.progress, measurement=self.config.measurement, query_ids=query_ids[rows],
            )
            values[rows], base[rows] = torch.from_numpy(mine).to(self.device), torch.from_numpy(mine_base).to(self.device)
        return distributed.sum_across(values).cpu().numpy(), distributed.sum_across(base).cpu().numpy()

    def _write_responses(self, stage: Stage, name: str, values: np.ndarray, base: np.ndarray, query_ids: list[str]) -> None:
        write_responses(self.run, stage, name, values, base, query_ids)

    def example_responses(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Responses with some of the training examples themselves as queries (their loss as training measures it),
        kept as responses/<name>.npy. For checks that hold each one out by its membership (groups.held_out_label_effects)."""
        self._require_fit()
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(self._examples):
            raise ConfigError(f"example rows must lie in 0..{len(self._examples) - 1}")
        batch = select_rows(self._examples.batch, torch.as_tensor(rows))
        queries = Examples(batch, [f"example-{r}" for r in rows], np.arange(len(rows)), [None] * len(rows))
        return self.responses(queries, name)

    def recover(self, name: str = "queries", force: bool = False) -> ScoreStore:
        """Sparse recovery of per-example scores from the responses; written as a score store. Under torchrun every
        process recovers its share of the queries (a part, as attribute_part writes) and the first merges them."""
        if distributed.world_size() > 1:
            return self._recover_shared(name, force)
        return self._recover(name, force)

    def _recover_shared(self, name: str, force: bool) -> ScoreStore:
        self._require_fit()
        folder = self.run.path("scores", name)
        with distributed.main_first():  # the first drops a stale store (force); the others then see what it left
            stage = self._scores_stage_of(name)
            self._check_stages({stage.name: stage}, force)
            done = self.run.is_done(stage) and ScoreStore(folder).is_current()
        if done:
            return ScoreStore(folder)
        self.groups()  # clustered once, by the first process, before any share is solved with them
        values = np.load(self.run.path("responses", f"{name}.npy"), mmap_mode="r")  # each process reads its rows only
        queries = pl.read_parquet(self.run.path("responses", f"{name}.queries.parquet"))
        query_ids, base = queries["query_id"].to_list(), queries["base_loss"].to_numpy()
        rank, world = distributed.rank(), distributed.world_size()
        part = self._part_folder(name, rank, world)
        if not self._part_is_done(part, stage):
            rows = self._part_rows(len(query_ids), rank, world)
            peer = self._peer_scores_of(name)
            self._write_part(part, stage, rows, np.asarray(values[rows]), base[rows], query_ids[rows],
                             peer=None if peer is None else np.asarray(peer[rows]))
        distributed.barrier()  # every share is written before the first merges them
        if distributed.is_main():
            self._merge_part_scores(name, stage, world)
        distributed.barrier()
        return ScoreStore(folder)

    def _scores_stage_of(self, name: str) -> Stage:
        response_stage = self.run.record(f"responses-{name}")
        if response_stage is None:
            raise StrideError(f"no responses named {name!r} in {self.run.root}: run responses(queries, name={name!r}) first")
        return self._scores_stage(name, response_stage["fingerprint"])

    def _recover(self, name: str, force: bool) -> ScoreStore:
        self._require_fit()
        stage = self._scores_stage_of(name)
        self._check_stages({stage.name: stage}, force)
        folder = self.run.path("scores", name)
        if self.run.is_done(stage) and ScoreStore(folder).is_current():
            return ScoreStore(folder)  # a store an older version wrote is rewritten below: recovery is cheap, responses are kept
        values = np.load(self.run.path("responses", f"{name}.npy"))
        queries = pl.read_parquet(self.run.path("responses", f"{name}.queries.parquet"))
        examples = self._examples
        batches = self._recovered(values)
        if self.config.fuse != "none":
            batches = fused_batches(batches, self._peer_scores_of(name), self.config.fuse_weight)
        store = write_scores(
            folder, batches, query_ids=queries["query_id"].to_list(), base_losses=queries["base_loss"].to_numpy(),
            doc_ids=examples.doc_ids, doc_domains=examples.domains, doc_index=examples.doc_index, **self._store_settings(),
        )
        return self._finish_scores(stage, store)

    def _recovered(self, values: np.ndarray):
        membership = Membership.load(self.run.path("design.npz"))
        return recover(membership.matrix, values, self.recovery_settings(), device=str(self.device), progress=self.progress,
                       groups=self._groups())

    def _store_settings(self) -> dict:
        return dict(
            aggregate=self.config.aggregate, top_k=self.config.top_k,
            # grouped and fused scores are dense: keep the top chunks per query, not every non-zero
            keep_all_nonzeros=self.config.solver == "lasso" and not self.config.groups and self.config.fuse == "none",
        )

    def _finish_scores(self, stage: Stage, store: ScoreStore, parts: int = 1) -> ScoreStore:
        return finish_scores(self.run, stage, store, self.config.lambda_rule, parts)

    def recovery_settings(self) -> RecoverySettings:
        config = self.config
        return RecoverySettings(
            solver=config.solver, lambda_rule=config.lambda_rule, lambda_fraction=config.lambda_fraction,
            cv_folds=config.cv_folds, ridge_alpha=config.ridge_alpha, max_iter=config.solver_max_iter,
            tol=config.solver_tol, group_ridge=config.group_ridge,
        )

    def groups(self) -> np.ndarray | None:
        """Each training chunk's group for grouped recovery (groups.py; None when off), computed once per run and count."""
        with distributed.main_first():
            return self._groups()

    def _groups(self) -> np.ndarray | None:
        self._require_fit()
        count = self.config.groups
        if not count:
            return None
        stage = Stage(f"groups-{count}", {"operators": self._operators_stage.fingerprint, "groups": count, "seed": self.config.seed})
        path = groups_file(self.run.root, count)
        if self.run.is_done(stage):
            return pl.read_parquet(path)["group"].to_numpy()
        # with bounded state memory asked for, the pooled states go to a file mapped into memory, removed once clustered
        scratch = None if self.config.state_cache == "memory" else self.run.path("groups", f".pooled-{count}.npy")
        try:
            if scratch is not None:
                scratch.parent.mkdir(parents=True, exist_ok=True)
            groups = cluster_examples(self.pooled_states(out_file=scratch), count, self.config.seed)
        finally:
            if scratch is not None:
                scratch.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            pl.DataFrame({"chunk_id": np.arange(len(groups)), "group": groups}).write_parquet(tmp)
        self.run.finish(stage, groups=int(groups.max()) + 1, sizes=np.bincount(groups).tolist())
        return groups

    def pooled_states(self, queries: Queries | Examples | None = None, out_file: Path | None = None) -> np.ndarray:
        """The states at the cut, mean-pooled: one row per training chunk (no argument), the features the recovery
        groups are clustered from, or one row per query (to place them among the groups: groups.nearest_group);
        with `out_file`, written to that .npy file and mapped from it."""
        self._require_fit()
        batch = self._examples.batch if queries is None else self._query_batch(queries)[0]
        return pooled_states(self.adapter, batch, self.config.form, self.layer, self.config.micro_batch, self.device, out_file)

    def check_queries(self, queries: Queries | Examples) -> None:
        """Raise the error responses() would raise on these queries (tokenisation, the model's window), without the
        fit and without writing anything: a command calls it before a long operator training, not after."""
        self._query_batch(queries)

    def attribute(self, queries: Queries | Examples, name: str = "queries", force: bool = False) -> ScoreStore:
        self.responses(queries, name, force)
        return self.recover(name, force)

    # ------------------------------------------------------------------- a query set in parts, for separate workers

    def attribute_part(self, queries: Queries | Examples, name: str, part: int, parts: int) -> None:
        """One of `parts` workers that share no process group (datatrove tasks, separate jobs): measures and recovers
        its share of the query set into parts/<name>/; `merge_parts` then makes the set's responses and score store.

        The shares follow the batches `attribute` measures and recovers in, so every number is the one `attribute`
        gives (the per-document aggregates up to the order of a float64 sum). A finished part is skipped on a rerun.
        """
        self._require_fit()
        if distributed.world_size() > 1:
            raise ConfigError("attribute_part is for workers launched separately; under torchrun call attribute(), "
                              "which shares the queries among the processes itself")
        if not 0 <= part < parts:
            raise ConfigError(f"part {part} is not one of the {parts} parts (0..{parts - 1})")
        query_batch, query_ids = self._query_batch(queries)
        responses, scores = self._query_stages(name, query_batch, query_ids)
        if self.run.is_done(scores) and ScoreStore(self.run.path("scores", name)).is_current():
            return
        folder = self._part_folder(name, part, parts)
        if self._part_is_done(folder, scores):
            return
        rows = self._part_rows(len(query_ids), part, parts)
        if self.run.is_done(responses):  # measured before (attribute, or an earlier merge): only recovery is left
            values = np.load(self.run.path("responses", f"{name}.npy"))[rows]
            base = pl.read_parquet(self.run.path("responses", f"{name}.queries.parquet"))["base_loss"].to_numpy()[rows]
        else:
            with self._memory_advice("measuring the responses"):
                values, base = measure_responses(
                    self.adapter, self._load_bank(), select_rows(query_batch, rows), self.config.form, self.layer,
                    self.config.micro_batch, self.device, self.progress, measurement=self.config.measurement,
                    query_ids=query_ids[rows],
                )
        peer = None
        if self.config.fuse != "none":  # the whole set's peer scores when attribute() made them, else this part's
            whole = self._peer().stage(name, responses.inputs["queries"])
            peer = (np.asarray(load_peer_scores(self.run, whole, name, self.config.fuse)[rows]) if is_current(self.run, whole)
                    else self._peer().score(select_rows(query_batch, rows)))
        self._write_part(folder, scores, rows, values, base, query_ids[rows],
                         {"queries": responses.inputs["queries"], "queries_text": _queries_text(queries, query_ids)}, peer)

    def _write_part(self, folder: Path, scores: Stage, rows: slice, values: np.ndarray, base: np.ndarray,
                    query_ids: list[str], inputs: dict | None = None, peer: np.ndarray | None = None) -> None:
        """A part's recovered scores (per-document sums) and responses, and last its record (with `inputs`, what a
        merge without the model checks the part against: merge.py); with `peer`, its rows' peer scores, fused."""
        batches = self._recovered(values) if len(values) else iter(())
        if peer is not None:
            batches = fused_batches(batches, peer, self.config.fuse_weight)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            write_score_part(tmp / "scores", batches, query_ids, base, len(self._examples.doc_ids),
                             self._examples.doc_index, **self._store_settings())
            with open(tmp / "responses.npy", "wb") as handle:
                np.save(handle, values)
            if peer is not None:
                np.save(tmp / PEER_PART_FILE, np.asarray(peer, dtype=np.float32))
            record = {"scores": scores.fingerprint, "rows": [rows.start, rows.stop], **(inputs or {})}
            (tmp / "part.json").write_text(json.dumps(record))

    def merge_parts(self, queries: Queries | Examples, name: str, parts: int) -> ScoreStore:
        """The query set's responses and score store from its `parts` finished parts (attribute_part); the parts are
        removed once both are written."""
        self._require_fit()
        query_batch, query_ids = self._query_batch(queries)
        responses, scores = self._query_stages(name, query_batch, query_ids)
        folder = self.run.path("scores", name)
        if self.run.is_done(scores) and ScoreStore(folder).is_current():
            return ScoreStore(folder)
        folders = [self._part_folder(name, part, parts) for part in range(parts)]
        unfinished = [f.name for f in folders if not self._part_is_done(f, scores)]
        if unfinished:
            raise StrideError(f"{len(unfinished)} of the {parts} parts of query set {name!r} are not finished "
                              f"({', '.join(unfinished[:5])}): run attribute_part for them first")
        if not self.run.is_done(responses):
            values = np.concatenate([np.load(f / "responses.npy") for f in folders])
            base = np.concatenate([pl.read_parquet(f / "scores" / "queries.parquet")["base_loss"].to_numpy() for f in folders])
            self._write_responses(responses, name, values, base, query_ids)
        merge_peer_parts(self.run, self.config, name, self._operators_stage.fingerprint, responses.inputs["queries"], folders)
        return self._merge_part_scores(name, scores, parts)

    def _merge_part_scores(self, name: str, scores: Stage, parts: int) -> ScoreStore:
        folders = [self._part_folder(name, part, parts) for part in range(parts)]
        examples = self._examples
        store = merge_score_parts(self.run.path("scores", name), [f / "scores" for f in folders], examples.doc_ids,
                                  examples.domains, examples.doc_index)
        store = self._finish_scores(scores, store, parts=parts)
        remove_path(self.run.path("parts", name))
        return store

    def _query_stages(self, name: str, query_batch: Batch, query_ids: list[str]) -> tuple[Stage, Stage]:
        responses = self._responses_stage(name, query_batch, query_ids)
        scores = self._scores_stage(name, responses.fingerprint)
        self._check_stages({responses.name: responses, scores.name: scores}, force=False)
        return responses, scores

    def _responses_stage(self, name: str, query_batch: Batch, query_ids: list[str]) -> Stage:
        return responses_stage(name, self.config, self._operators_stage.fingerprint, _digest_batch(query_batch, query_ids))

    def _scores_stage(self, name: str, responses_fingerprint: str) -> Stage:
        return scores_stage(name, self.config, responses_fingerprint)

    def _part_folder(self, name: str, part: int, parts: int) -> Path:
        return part_folder(self.run, name, part, parts)

    @staticmethod
    def _part_is_done(folder: Path, scores: Stage) -> bool:
        """A part written for these very scores (an older configuration's part is recomputed, not merged)."""
        record = folder / "part.json"
        return record.is_file() and json.loads(record.read_text())["scores"] == scores.fingerprint

    def _part_rows(self, num_queries: int, part: int, parts: int) -> slice:
        """A part's contiguous queries, cut at whole measurement micro-batches and recovery batches, so that each part
        measures and solves exactly the batches a single `attribute` would."""
        unit = math.lcm(self.config.micro_batch, self.recovery_settings().query_batch)
        units = -(-num_queries // unit)
        first, last = part * units // parts, (part + 1) * units // parts
        return slice(min(first * unit, num_queries), min(last * unit, num_queries))

    # ------------------------------------------------------------------------------------------ helpers

    def _examples_from(self, train: Documents | Examples, chunks_stage: Stage) -> Examples:
        """The training examples: given, or the corpus's chunks, read back from a finished chunks stage of this same
        corpus and tokenizer (reopening a run does not tokenise the pool again), else tokenised now."""
        if isinstance(train, Examples):
            return train
        if self.tokenizer is None:
            raise StrideError("a text corpus needs a tokenizer: build Stride with tokenizer=... or use Stride.from_pretrained")
        chunks = self._saved_chunks(chunks_stage)
        if chunks is None:
            chunks = chunk_documents(train, self.tokenizer, self.config.chunk_length)
        self._chunks = chunks
        batch = token_batch(chunks.input_ids, chunks.lengths, None)
        return Examples(batch, list(train.ids), chunks.doc_index, list(train.domains))

    def _saved_chunks(self, stage: Stage) -> Chunks | None:
        record, tokens = self.run.record(stage.name), self.run.path(CHUNK_TOKENS)
        if record is None or record["fingerprint"] != stage.fingerprint or not tokens.is_file():
            return None
        table = pl.read_parquet(self.run.path("chunks.parquet"), columns=["doc_index", "token_start", "token_end"])
        starts = table["token_start"].to_numpy().astype(np.int64)
        return Chunks(input_ids=np.load(tokens).astype(np.int64), lengths=table["token_end"].to_numpy().astype(np.int64) - starts,
                      doc_index=table["doc_index"].to_numpy().astype(np.int64), token_start=starts,
                      pad_id=pad_token_id(self.tokenizer))

    def _write_chunk_tokens(self) -> None:
        """The chunks' token ids beside chunks.parquet (int32 where the vocabulary allows), for reopening the run."""
        ids = self._chunks.input_ids
        with atomic_path(self.run.path(CHUNK_TOKENS)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, ids.astype(np.int32) if ids.max(initial=0) < 2**31 else ids)

    def _membership(self, examples: Examples, design: Stage) -> Membership:
        """The saved design once its stage is done, else a fresh draw. Never a redraw of a finished design: another
        numpy could draw another one from the same seed, and training must use the design that recovery reads."""
        record = self.run.record(design.name)
        if record is not None and record["fingerprint"] == design.fingerprint:
            path = self.run.path("design.npz")
            if not path.is_file():
                raise StrideError(
                    f"{path} is missing although {self.run.record_path(design.name)} records the design as done: "
                    "the run directory is damaged (its operators were trained on the lost design); use a new one"
                )
            return Membership.load(path)
        design_seed = self.config.seed if self.config.design_seed is None else self.config.design_seed
        return random_membership(len(examples), self.config.num_subsets, self.config.subsets_per_example, design_seed)

    def _training_stages(self, train: Documents | Examples) -> dict[str, Stage]:
        source = _digest_documents(train) if isinstance(train, Documents) else _digest_batch(train.batch, train.doc_ids)
        tokenizer = self._tokenizer_digest if isinstance(train, Documents) else None
        return self._stages_of(source, tokenizer)

    def _stages_of(self, source: str, tokenizer: str | None) -> dict[str, Stage]:
        """The training stages of a corpus (or examples) digested as `source`, chunked with the tokenizer digested as
        `tokenizer` (None for given examples)."""
        chunks = Stage("chunks", {**stage_fields(self.config, "chunks"), "corpus": source, "tokenizer": tokenizer})
        design = Stage("design", {**stage_fields(self.config, "design"), "chunks": chunks.fingerprint})
        operators = Stage("operators", {
            **stage_fields(self.config, "operators"), "resolved_layer": self.layer, "design": design.fingerprint,
            "model": _digest_model(self.adapter),
        })
        return {"chunks": chunks, "design": design, "operators": operators}

    def _check_stages(self, stages: dict[str, Stage], force: bool) -> None:
        """Raise on a stale finished stage before anything is written; with force, drop it and what follows."""
        for name, stage in stages.items():
            try:
                self.run.is_done(stage)
            except StrideError:
                if not force:
                    raise
                self._invalidate_from(name)

    def _check_saved_config(self, force: bool) -> None:
        """A changed value that affects a later stage (e.g. the solver) is refused now, before config.yaml is rewritten."""
        saved_path = self.run.path("config.yaml")
        if force or not saved_path.is_file():
            return
        saved = StrideConfig.load(saved_path)
        for stage in STAGES:
            changed = [k for k in STAGE_FIELDS.get(stage, ()) if getattr(saved, k) != getattr(self.config, k)]
            if changed and any(self.run.path("stages").glob(f"{stage}*.json")):
                raise StageMismatchError(
                    f"stage '{stage}' in {self.run.root} was built from a different configuration (changed: {', '.join(changed)}). "
                    "Use a new run directory, or rerun with --overwrite (force=True) to rebuild it and the stages after it."
                )

    def _invalidate_from(self, name: str) -> None:
        """Drop the record of stage `name` and of every stage built on it. A query set's stages (responses-<set>,
        scores-<set>) are built on the training stages and on each other only, so a stale one drops its own set's."""
        base, _, query_set = name.partition("-")
        later = STAGES[STAGES.index(base):]
        for record in self.run.path("stages").glob("*.json"):
            stage, _, its_set = record.stem.partition("-")
            if stage in later and (base not in QUERY_STAGES or its_set == query_set):
                record.unlink()

    def _write_chunks(self, train: Documents | Examples, examples: Examples) -> None:
        if isinstance(train, Documents):
            table = chunks_table(self._chunks, train)
        else:
            table = pl.DataFrame({"chunk_id": np.arange(len(examples)), "doc_index": examples.doc_index,
                                  "doc_id": [examples.doc_ids[i] for i in examples.doc_index]})
        with atomic_path(self.run.path("chunks.parquet")) as tmp:
            table.write_parquet(tmp)

    def _train(self, examples: Examples, membership: Membership, stage: Stage, on_step) -> None:
        bank, training_log = self._trained_bank(examples, membership, stage, on_step)
        if distributed.is_main():
            self._write_operators(bank, training_log, stage)

    def _trained_bank(self, examples: Examples, membership: Membership, stage: Stage, on_step):
        return self.train_bank(examples, membership, self.config, self.run.path("operators.partial", stage.fingerprint),
                               self.run.path("operators.partial", f"states-{stage.fingerprint}.bin"), on_step)

    def train_bank(self, examples: Examples, membership: Membership, config: StrideConfig, checkpoints: Path,
                   state_file: Path, on_step=None):
        """A bank of membership's operators trained under `config` on this model's states of `examples` (resumed from
        `checkpoints`), and its curves. The state cache lives in this frame only: a frame that an exception caught
        later keeps alive (plotting's imports do) would otherwise hold all n states until the run ends."""
        cache = self._state_cache(examples, state_file)
        probe_states, probe_batch = cache.rows(np.arange(1))
        out_dim = probe_states.shape[-1]
        if config.form == "logit" and config.logit_bank == "full":
            out_dim = self.adapter.finish(probe_states, probe_batch, "logit", self.layer).shape[-1]
        bank = new_bank(config, membership.num_subsets, probe_states.shape[-1], out_dim).to(self.device)
        return bank, train_operators(self.adapter, cache, membership, bank, config, self.layer, checkpoints, self.progress, on_step)

    def _write_operators(self, bank: SteeringBank, training_log, stage: Stage) -> None:
        config = self.config
        with atomic_path(self.run.path("operators")) as tmp:
            tmp.mkdir(parents=True)
            bank.save(tmp / "bank.safetensors")
            save_file({name: torch.tensor(values, dtype=torch.float32) for name, values in training_log.curves.items()}, str(tmp / "curves.safetensors"))
            (tmp / "bank.json").write_text(json.dumps({**bank.shape, "form": config.form, "layer": self.layer}))
            plot_training_curves(training_log.curves, tmp / "curves.png")
        remove_path(self.run.path("operators.partial"))
        gains = training_log.curves["fidelity_gain"]
        self.run.finish(stage, final_fidelity_gain=float(np.mean(gains[-20:])) if gains else None, steps=config.steps)

    def _state_cache(self, examples: Examples, state_file: Path) -> StateCache | RecomputedStates:
        """The frozen prefix's states for every example, written into one preallocated tensor (on the device, or in
        `state_file` with state_cache="disk"). Several processes each compute their share of the micro-batches."""
        batch = move(examples.batch, self.device)
        if self.config.state_cache == "recompute":
            return RecomputedStates(self.adapter, batch, self.config.form, self.layer)
        starts = range(0, len(examples), self.config.micro_batch)

        def capture(start: int) -> torch.Tensor:
            return self.adapter.capture(select_rows(batch, slice(start, start + self.config.micro_batch)), self.config.form, self.layer)

        first = capture(0)
        shape = (len(examples), *first.shape[1:])
        on_disk = self.config.state_cache == "disk"
        stored = torch.bfloat16 if self.config.state_dtype == "bfloat16" else first.dtype
        if on_disk:
            states = self._state_file(state_file, shape, stored)
        else:
            states = torch.zeros(shape, dtype=stored, device=first.device)
        for index in distributed.my_share(len(starts)):
            start = starts[index]
            states[start:start + self.config.micro_batch] = (first if start == 0 else capture(start)).to(states.device)
        if on_disk:
            distributed.barrier()  # every process's rows are in the shared file
        else:
            # several processes: each filled its share of a zeroed tensor, so the sum is exact
            distributed.sum_across(states)
        return StateCache(states, batch, first.dtype)

    def _state_file(self, path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor backed by the file at `path` (removed with operators.partial/ once the operators are written),
        shared by every process of the run on this machine."""
        if distributed.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a crashed run's file may hold another shape: the states are recomputed
        distributed.barrier()
        size = int(np.prod(shape))
        return torch.from_file(str(path), shared=True, size=size, dtype=dtype).view(shape)

    def _load_bank(self) -> SteeringBank:
        return SteeringBank.from_folder(self.run.path("operators")).to(self.device).eval()

    def _query_batch(self, queries: Queries | Examples) -> tuple[Batch, list[str]]:
        if isinstance(queries, Examples):
            return queries.batch, list(queries.doc_ids)
        if self.tokenizer is None:
            raise StrideError("text queries need a tokenizer: build Stride with tokenizer=... or pass Examples")
        window = getattr(getattr(self.adapter, "model", None), "config", None)
        max_length = getattr(window, "max_position_embeddings", None) or getattr(window, "n_positions", None) or 1 << 30
        return encode_queries(queries, self.tokenizer, max_length), list(queries.ids)

    @property
    def has_operators(self) -> bool:
        """Whether the fitted run holds STRIDE's trained operators (False for fit(operators=False))."""
        return self._has_operators

    def _require_fit(self) -> None:
        self._require_examples()
        if not self._has_operators:
            raise StrideError(f"run {self.run.root} was prepared without STRIDE's operators (fit with operators=False, "
                              "`curate fit --chunks-only`): fit them (`curate fit` with the same settings) for responses "
                              "and recovery")

    def _require_examples(self) -> None:
        if self._examples is None:
            raise StrideError("call fit(train) first: responses and recovery need the trained operators and the design")


def _device(name: str) -> torch.device:
    per_process = distributed.local_device(name)
    if per_process is not None:
        return per_process
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device='cpu' or 'auto'")
    return torch.device(name)


def _digest_documents(documents: Documents) -> str:
    digest = hashlib.sha256()
    for doc_id, text in zip(documents.ids, documents.texts):
        digest.update(doc_id.encode() + b"\0" + text.encode() + b"\1")
    return digest.hexdigest()[:16]


def _queries_text(queries: Queries | Examples, ids: list[str]) -> str:
    return queries_digest(ids, queries if isinstance(queries, Queries) else None)


def _digest_batch(batch: Batch, ids: list[str]) -> str:
    digest = hashlib.sha256("\0".join(ids).encode())
    for key in sorted(batch):
        digest.update(key.encode() + batch[key].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _digest_tokenizer(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def _digest_model(adapter: ModelAdapter) -> str:
    model = getattr(adapter, "model", None)
    if model is None:
        return "unknown"
    parts = [type(model).__name__]
    for name, parameter in model.state_dict().items():
        parts.append(f"{name}:{tuple(parameter.shape)}:{float(parameter.double().sum()):.10e}")
    return fingerprint(parts)
