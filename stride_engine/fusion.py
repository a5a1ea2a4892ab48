"""STRIDE fused with a gradient method: each query's chunk scores are the sum of both methods' scores, standardised.

The attribution benchmark measured it (benchmarks/results/full.md, "Fused"): the K = 1,024 fit fused with EK-FAC is
above every single method on the three language-model settings, the one nothing was tuned on included (LDS 0.748 /
0.559 / 0.509 against EK-FAC's 0.674 / 0.552 / 0.483). The two methods err differently: STRIDE measures what whole
subsets do to the loss, EK-FAC extrapolates from one point's gradients.

- The peer is EK-FAC from kronfluence's own package (`Analyzer`, strategy "ekfac", empirical Fisher, its damping
  heuristic), as the benchmark ran it. It differentiates the same per-chunk training loss the operators train on and
  the same measurement the responses read (loss or log-odds). Its factors are fitted once per run (`peers/ekfac/`),
  its scores once per query set (`responses/<name>.ekfac.npy`, float32 queries × chunks on disk, memory-mapped when
  read). They are scored and written a block of queries at a time, so memory holds one block's rows, never the set's.
- Fusing: per query, both score rows are centred and divided by their spread over the training chunks, then summed
  with weights `fuse_weight` (STRIDE) and 1 − fuse_weight. Standardising puts two methods of different units on one
  scale; a sum (not a rank average) keeps scores additive, which a budget of documents reads. A query STRIDE leaves
  without a score (a saturated loss) keeps the peer's.
"""

from __future__ import annotations

import copy
import logging
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .adapters import Batch, ModelAdapter, select_rows
from .artifacts import RunDirectory, Stage, atomic_path
from .errors import ConfigError, StrideError

log = logging.getLogger(__name__)

PEER_PART_FILE = "peer.npy"  # a query-set part's rows of the peer's scores (Stride.attribute_part)
# EK-FAC keeps an (in × in) and an (out × out) covariance per layer and eigendecomposes both: a layer wider than this
# (a real vocabulary's output head) is left out of the peer's scores, and said so.
MAX_LAYER_WIDTH = 8192
# Queries the peer scores per call: kronfluence holds a call's (queries × chunks) scores in memory, and passes over the
# training chunks once per query batch whatever the call's size, so blocks bound memory at no extra gradient passes.
PEER_QUERY_BLOCK = 256


def standardised(scores: np.ndarray) -> np.ndarray:
    """Per query (row): centred, in units of its spread over the training chunks; a constant row stays zero."""
    scores = np.asarray(scores, dtype=np.float64)
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0, spread, 1.0)


def fuse(stride_scores: np.ndarray, peer_scores: np.ndarray, stride_weight: float = 0.5) -> np.ndarray:
    if stride_scores.shape != peer_scores.shape:
        raise ValueError(f"cannot fuse scores of shapes {stride_scores.shape} and {peer_scores.shape}")
    if not 0.0 <= stride_weight <= 1.0:
        raise ValueError(f"stride_weight={stride_weight} must be in [0, 1]")
    return stride_weight * standardised(stride_scores) + (1.0 - stride_weight) * standardised(peer_scores)


def fused_batches(batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], peer_scores: np.ndarray,
                  stride_weight: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Recovery batches (query indices, chunk scores, λ) with each batch's scores fused with the peer's rows."""
    for idx, scores, lambdas in batches:
        yield idx, fuse(scores, np.asarray(peer_scores[idx]), stride_weight).astype(np.float32), lambdas


def factors_stage(peer: str, operators_fingerprint: str) -> Stage:
    # The factors read the frozen model and the training chunks, both of which the operators' fingerprint covers.
    return Stage(f"peer-factors-{peer}", {"operators": operators_fingerprint})  # never a query set's peer-<peer>-<set>


def peer_scores_stage(name: str, peer: str, operators_fingerprint: str, queries_digest: str, measurement: str) -> Stage:
    return Stage(f"peer-{peer}-{name}", {"factors": factors_stage(peer, operators_fingerprint).fingerprint,
                                         "queries": queries_digest, "measurement": measurement})


def peer_scores_path(run: RunDirectory, name: str, peer: str) -> Path:
    return run.path("responses", f"{name}.{peer}.npy")


def is_current(run: RunDirectory, stage: Stage) -> bool:
    """A peer's record from these very inputs. The peer's outputs are derived data: one from other inputs (operators
    retrained, another measurement) is recomputed, not refused; the scores stage guards what the user sees."""
    record = run.record(stage.name)
    return record is not None and record["fingerprint"] == stage.fingerprint


def write_peer_scores(run: RunDirectory, stage: Stage, name: str, peer: str, shape: tuple[int, int],
                      blocks: Iterable[np.ndarray]) -> None:
    """The set's (queries, chunks) scores from consecutive blocks of rows, streamed into the file (one block in memory),
    then recorded; an interrupted write leaves no file and no record."""
    with atomic_path(peer_scores_path(run, name, peer)) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        row = 0
        for block in blocks:
            out[row: row + len(block)] = block
            row += len(block)
        if row != shape[0]:
            raise StrideError(f"the {peer} scores of {name!r} came with {row} rows for {shape[0]} queries")
        out.flush()
        del out
    run.finish(stage, queries=int(shape[0]), chunks=int(shape[1]))


def merge_peer_parts(run: RunDirectory, config, name: str, operators_fingerprint: str, queries_digest: str,
                     folders: list[Path]) -> None:
    """The whole set's peer scores from its parts' rows, so a later recovery of the set can fuse again."""
    if config.fuse == "none" or not all((f / PEER_PART_FILE).is_file() for f in folders):
        return
    stage = peer_scores_stage(name, config.fuse, operators_fingerprint, queries_digest, config.measurement)
    if not is_current(run, stage):
        parts = [np.load(f / PEER_PART_FILE, mmap_mode="r") for f in folders]
        shape = (sum(len(p) for p in parts), parts[0].shape[1])
        write_peer_scores(run, stage, name, config.fuse, shape, (np.asarray(p) for p in parts))


def load_peer_scores(run: RunDirectory, stage: Stage, name: str, peer: str) -> np.ndarray:
    if not is_current(run, stage):
        raise StrideError(f"query set {name!r} has no {peer} scores for these queries and operators, which fuse={peer!r} "
                          f"fuses with: run responses(queries, name={name!r}) (or attribute) with fuse={peer!r} first")
    return np.load(peer_scores_path(run, name, peer), mmap_mode="r")


class _Rows(torch.utils.data.Dataset):
    """A batch's rows as dicts, which kronfluence's data loaders collate back into batches."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self.size = len(next(iter(batch.values())))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Batch:
        return {key: value[index] for key, value in self.batch.items()}


def _kronfluence():
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except ImportError as err:
        raise ConfigError(
            "fuse='ekfac' computes EK-FAC with kronfluence, which is not installed: `pip install --no-deps "
            "kronfluence==1.0.1 opt-einsum einops einconv` (--no-deps: it declares torchvision, whose CPU wheel breaks "
            f"transformers); or leave fuse='none' ({err})"
        ) from err
    return Analyzer, prepare_model, FactorArguments, ScoreArguments, Task


class EkfacPeer:
    """EK-FAC influence of the training chunks on queries, for one run: factors fitted once under `folder`
    (kronfluence's layout: folder/ekfac/factors_ekfac/), each query set's scores computed from them."""

    def __init__(self, adapter: ModelAdapter, measurement: str, folder: Path, device: torch.device, batch_size: int,
                 progress: bool = False):
        Analyzer, prepare_model, FactorArguments, ScoreArguments, Task = _kronfluence()
        self._factor_arguments, self._score_arguments = FactorArguments, ScoreArguments
        model = getattr(adapter, "model", None)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"fuse='ekfac' needs the adapter's torch model (`adapter.model`); {type(adapter).__name__} has none")
        linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        tracked = [n for n, m in linear if max(m.in_features, m.out_features) <= MAX_LAYER_WIDTH]
        if len(tracked) < len(linear):
            log.info("EK-FAC leaves out %d linear layers wider than %d features", len(linear) - len(tracked), MAX_LAYER_WIDTH)
        if not tracked:
            raise ConfigError(f"fuse='ekfac' found no nn.Linear layer of at most {MAX_LAYER_WIDTH} features in "
                              f"{type(model).__name__} for EK-FAC to track")

        class _Task(Task):
            # The empirical Fisher (the benchmark's choice: it scored better than the sampled one) never samples.
            def compute_train_loss(self, batch: Batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
                return adapter.example_losses(adapter.full_logits(batch, model), batch).sum()

            def compute_measurement(self, batch: Batch, model: nn.Module) -> torch.Tensor:
                return adapter.example_measurements(adapter.full_logits(batch, model), batch, measurement).sum()

            def get_influence_tracked_modules(self) -> list[str]:
                return tracked

            def get_attention_mask(self, batch: Batch) -> torch.Tensor | None:
                return batch.get("attention_mask")

        task = _Task()
        # kronfluence wraps the tracked modules in place: a copy keeps the engine's model as it was
        self.model = prepare_model(copy.deepcopy(model), task)
        self.batch_size = batch_size
        self.analyzer = Analyzer(analysis_name="ekfac", model=self.model, task=task, cpu=device.type == "cpu",
                                 disable_tqdm=not progress, output_dir=str(folder), disable_model_save=True)

    def fit_factors(self, train: Batch) -> None:
        self.analyzer.fit_all_factors(
            factors_name="ekfac", dataset=_Rows(train), per_device_batch_size=self.batch_size,
            factor_args=self._factor_arguments(strategy="ekfac", use_empirical_fisher=True), overwrite_output_dir=True,
        )

    def scores(self, queries: Batch, train: Batch) -> np.ndarray:
        """(queries, training chunks) float32; positive: the chunk lowers the query's measurement (STRIDE's sign:
        kronfluence's pairwise score is g_query · H⁻¹ · g_train, both gradients of losses)."""
        num_queries, num_train = (len(next(iter(b.values()))) for b in (queries, train))
        if num_queries == 0:  # a part that gets no whole batch of queries (Stride._part_rows)
            return np.zeros((0, num_train), dtype=np.float32)
        scratch = f"scratch-{uuid.uuid4().hex[:8]}"  # a worker's own folder: parts may score at the same time
        try:
            self.analyzer.compute_pairwise_scores(
                scores_name=scratch, factors_name="ekfac", query_dataset=_Rows(queries), train_dataset=_Rows(train),
                per_device_query_batch_size=self.batch_size, per_device_train_batch_size=self.batch_size,
                score_args=self._score_arguments(damping_factor=None), overwrite_output_dir=True,
            )
            scores = self.analyzer.load_pairwise_scores(scratch)["all_modules"]
        finally:
            shutil.rmtree(self.analyzer.scores_output_dir(scratch), ignore_errors=True)
        return scores.detach().to("cpu", torch.float32).numpy()


class Peer:
    """The peer of one run's fused scores: its factors (fitted once) and each query set's scores, as stages."""

    def __init__(self, run: RunDirectory, adapter: ModelAdapter, config, device: torch.device, train: Batch,
                 operators_fingerprint: str, progress: bool = False):
        self.run, self.adapter, self.config, self.device, self.train = run, adapter, config, device, train
        self.name = config.fuse
        self.operators = operators_fingerprint
        self.progress = progress
        self._ekfac: EkfacPeer | None = None

    def _method(self) -> EkfacPeer:
        if self._ekfac is None:
            self._ekfac = EkfacPeer(self.adapter, self.config.measurement, self.run.path("peers"), self.device,
                                    self.config.micro_batch, self.progress)
        return self._ekfac

    def fit(self) -> None:
        stage = factors_stage(self.name, self.operators)
        if is_current(self.run, stage):
            return
        log.info("fitting the %s factors on %d training chunks", self.name, len(next(iter(self.train.values()))))
        self._method().fit_factors(self.train)
        self.run.finish(stage)

    def stage(self, name: str, queries_digest: str) -> Stage:
        return peer_scores_stage(name, self.name, self.operators, queries_digest, self.config.measurement)

    def score(self, queries: Batch) -> np.ndarray:
        """(queries, chunks) scores of these queries, from the fitted factors (fitted first when missing)."""
        self.fit()
        return self._method().scores(queries, self.train)

    def score_set(self, name: str, queries: Batch, queries_digest: str) -> None:
        """A whole query set's scores, written once (a rerun with the same inputs keeps them)."""
        stage = self.stage(name, queries_digest)
        if is_current(self.run, stage):
            return
        num_queries, num_chunks = (len(next(iter(b.values()))) for b in (queries, self.train))
        starts = range(0, num_queries, PEER_QUERY_BLOCK)
        blocks = (self.score(select_rows(queries, slice(i, i + PEER_QUERY_BLOCK))) for i in starts)
        write_peer_scores(self.run, stage, name, self.name, (num_queries, num_chunks), blocks)
