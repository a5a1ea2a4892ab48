"""What an audit is asked to do: `AuditRequest`, saved as AUDIT/.work/request.json and in the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.executors import Execution
from .fuzzy import FuzzySettings
from .inflation import CheckSettings
from .items import ItemFields
from .lexical import LexicalSettings
from .verdict import MIN_K_PP, REFERENCE_GAP, VerdictRule

REQUEST_FILE = Path(".work") / "request.json"  # inside AUDIT: what the audit was made with


@dataclass(frozen=True)
class AuditRequest:
    benchmarks: tuple[str, ...]  # JSONL/Parquet files of items, or lm-eval task names / YAMLs
    train: tuple[str, ...]  # the training corpus: JSONL/Parquet files
    out: str
    text_field: str = "text"
    id_field: str = "id"
    question_field: str = "question"
    answer_field: str = "answer"  # "" when the benchmark has none
    item_id_field: str = "id"
    context_fields: tuple[str, ...] = ()
    task_dirs: tuple[str, ...] = ()
    item_limit: int | None = None  # the first N items of each benchmark
    question_n: int = 8
    answer_n: int = 6
    answer_min_words: int = 3
    max_items_per_ngram: int = 20
    contaminated_coverage: float = 0.8
    suspicious_coverage: float = 0.5
    fuzzy: bool = True  # the MinHash signal for edited copies of the questions
    fuzzy_similarity: float = 0.6
    number_recall: float = 0.8
    run: str | None = None  # a fitted run over this corpus: attribution, and memorisation under its model
    model: str | None = None  # the audited model alone (memorisation only), when there is no run
    reference_model: str | None = None  # a model that did not see the corpus: the loss gap
    top_k: int = 10  # documents per item from the attribution
    min_k: float = 0.2  # Min-K%++'s share of tokens
    attribution_z: float | None = None  # thresholds of the model signals; None: measured and reported only
    min_k_pp: float | None = MIN_K_PP  # the audit study's; None: measured and reported only
    reference_gap: float | None = REFERENCE_GAP
    device: str = "cpu"
    decontaminate: str | None = None  # a folder for the clean copy of the corpus
    remove: str = "documents"  # or "spans"
    output_format: str = "jsonl"
    check: bool = False  # the inflation check: proxies on the corpus and its clean copy, scored on flagged vs clean items
    check_steps: int = 400
    check_seeds: tuple[int, ...] = (0, 1, 2)
    check_seq_len: int = 128
    check_text: str = "{question}\n{answer}"  # how an item is written for its score
    executor: str = "local"
    tasks: int = 1
    workers: int = 1
    executor_options: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> ItemFields:
        return ItemFields(self.question_field, self.answer_field, self.item_id_field, tuple(self.context_fields))

    def lexical(self) -> LexicalSettings:
        return LexicalSettings(self.question_n, self.answer_n, self.answer_min_words, self.max_items_per_ngram)

    def rule(self) -> VerdictRule:
        return VerdictRule(self.contaminated_coverage, self.suspicious_coverage, self.fuzzy_similarity, self.number_recall,
                           self.attribution_z, self.min_k_pp, self.reference_gap)

    def fuzzy_settings(self) -> FuzzySettings | None:
        return FuzzySettings(self.fuzzy_similarity, self.number_recall) if self.fuzzy else None

    def check_settings(self) -> CheckSettings:
        return CheckSettings(self.check_steps, tuple(self.check_seeds), seq_len=self.check_seq_len, text=self.check_text)

    def execution(self) -> Execution:
        return Execution(self.executor, self.tasks, self.workers, dict(self.executor_options))

    def fingerprint(self) -> dict[str, Any]:
        """What decides the audit (a rerun into the same AUDIT must match it; how it is executed may change)."""
        values = asdict(self)
        for key in ("executor", "tasks", "workers", "executor_options", "out", "device"):
            values.pop(key)
        for key in [k for k in values if k.startswith("check")]:  # the check keeps its own settings (AUDIT/check/check.json)
            values.pop(key)
        return json.loads(json.dumps(values))
