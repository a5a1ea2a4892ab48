"""Contamination audits: which benchmark items a training corpus holds, which documents hold them, and a clean copy."""

from .items import BenchmarkItem, ItemFields, load_benchmarks
from .job import run_audit
from .request import AuditRequest

__all__ = ["AuditRequest", "BenchmarkItem", "ItemFields", "load_benchmarks", "run_audit"]
