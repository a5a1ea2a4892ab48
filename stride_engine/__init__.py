"""STRIDE: training-data attribution by sparse recovery from subset steering operators (arXiv 2606.05165).

The engine knows torch, transformers, numpy/scipy and polars; it knows nothing of the applications (`curate`).
"""

from .adapters import CausalLMAdapter, ModelAdapter, SequentialClassifierAdapter, load_causal_lm
from .config import PRESETS, StrideConfig, preset
from .corpus import Documents, Queries, read_documents, read_queries
from .design import Membership, random_membership
from .errors import ConfigError, CorpusError, ModelError, OutOfMemory, RunFormatError, StageMismatchError, StrideError
from .scores import ScoreStore
from .stride import Examples, Stride

__all__ = [
    "CausalLMAdapter", "ModelAdapter", "SequentialClassifierAdapter", "load_causal_lm",
    "PRESETS", "StrideConfig", "preset",
    "Documents", "Queries", "read_documents", "read_queries",
    "Membership", "random_membership",
    "ConfigError", "CorpusError", "ModelError", "OutOfMemory", "RunFormatError", "StageMismatchError", "StrideError",
    "ScoreStore", "Examples", "Stride",
]
