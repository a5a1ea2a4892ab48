"""The n-gram overlap rules people decontaminate with, as baselines for the audit.

- `13-gram`: GPT-3's rule (also lm-eval's former decontamination): an item and a document overlap when they share
  any 13-gram of lower-cased words, the item's text being its question and its answer together;
- `8-gram`: the open-r1 convention, the same with 8-grams of the question alone.

Both are what their users run: no coverage threshold, no normalisation beyond lower-cased alphanumeric words, so
one shared n-gram flags the pair.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import polars as pl

_WORD = re.compile(r"[a-z0-9]+")
RULES = {"13-gram (GPT-3)": (13, True), "8-gram (open-r1)": (8, False)}  # name -> (n, with the answer)


def ngram_pairs(items: Iterable[dict], documents: Iterable[dict], n: int, with_answer: bool) -> pl.DataFrame:
    """(item_id, doc_id) pairs sharing any n-gram of lower-cased words; items have id, question, answer."""
    owners: dict[tuple[str, ...], set[str]] = {}
    for item in items:
        words = _WORD.findall((item["question"] + (" " + item["answer"] if with_answer else "")).lower())
        for i in range(len(words) - n + 1):
            owners.setdefault(tuple(words[i: i + n]), set()).add(item["id"])
    pairs = set()
    for document in documents:
        words = _WORD.findall(document["text"].lower())
        for i in range(len(words) - n + 1):
            for item_id in owners.get(tuple(words[i: i + n]), ()):
                pairs.add((item_id, document["id"]))
    return pl.DataFrame(sorted(pairs), schema={"item_id": pl.String, "doc_id": pl.String}, orient="row")
