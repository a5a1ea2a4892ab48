"""Contamination-audit benchmark: corpora with GSM8K test items injected at known rates (inject.py), on which an
audit (n-gram, MinHash, attribution, memorisation) is measured against the recorded ground truth."""
