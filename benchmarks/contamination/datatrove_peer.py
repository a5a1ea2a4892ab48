"""datatrove's n-gram decontamination (NGramsDecontIndexer / NGramsDecontFilter) as a peer of the contamination
audit, run in this project's interpreter on the benchmark's local items, its verdicts mapped back to
(item, document) pairs.

What datatrove 0.10.1 does: the indexer hashes, for each eval instance, the n-grams (default 12 words) of its gold
answer and those straddling the end of its query and the start of its answer (`find_overlap_ngrams`; n-grams of the
query alone only with `find_query_ngrams`, off by default), after datatrove's text normalization and its English word
tokenizer (spaCy's blank "en"); it writes one `<task>.index.hashes` file per task. The filter drops a document at its
first n-gram found in the index and names the task in `metadata["contaminated_task"]`. We make every item its own
task, so the task a document is dropped for is the item: one item per flagged document (its first match), which is
all the filter reports.

Why the indexer is not run as a pipeline step here, only its hashing (exact errors, datatrove 0.10.1):

- `NGramsDecontIndexer.run` imports lighteval and calls `Registry(cache_dir=..., custom_tasks=...).get_task_dict(...)`
  even when its tasks come as input documents and no lighteval task is named. lighteval 0.11 to 0.13 (the current
  one) dropped that API: with lighteval 0.13.0 installed, `run` fails with
  `TypeError: Registry.__init__() got an unexpected keyword argument 'cache_dir'`, with `lighteval_tasks=[]` or None.
  lighteval 0.10 and older have the API but require numpy<2 (this project runs numpy 2), so none can be installed
  here; lighteval 0.13 itself would also downgrade fsspec and nltk. lighteval is therefore not installed, and
  constructing the indexer without it fails in PipelineStep.__new__ with
  `ImportError: Please install `lighteval` to use NGramsDecontIndexer (`pip install lighteval`).`
- So we call the indexer's own `compute_hashes` on an instance made without `PipelineStep.__new__` (which only checks
  that lighteval imports) and write each item's hashes as `run` writes them (a flat array of the hash config's dtype,
  `<task>.index.hashes`); NGramsDecontFilter then runs unchanged on that index.
- datatrove's default hash, xxhash, fails with the installed xxhash 4.1.0 (`TypeError: Strings must be encoded before
  hashing`, in the indexer and the filter alike), so both use datatrove's other hash, `HashConfig(hash_fc="sha1")`
  (64 bits). The English tokenizer needs spaCy (`pip install spacy`, no model download: a blank pipeline); without it
  the method is unavailable.

Settings (`datatrove_pairs(..., settings=...)`): keyword arguments of NGramsDecontConfig; None is datatrove's
defaults (12-grams, overlap n-grams on, query n-grams off) with the sha1 hash.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.contamination.decon_peer import PeerUnavailable


def _require() -> None:
    if importlib.util.find_spec("datatrove") is None:
        raise PeerUnavailable("datatrove is not installed (it is a dependency of this project: `pip install -e .`)")
    if importlib.util.find_spec("spacy") is None:
        raise PeerUnavailable("datatrove's English word tokenizer needs spaCy: `pip install spacy`")


def datatrove_pairs(items: pl.DataFrame, corpus_path: Path, workdir: Path, settings: dict | None = None) -> pl.DataFrame:
    """(item_id, doc_id) pairs: the documents NGramsDecontFilter drops and the item it drops each for.

    items: item_id, question, answer (the query and gold of each eval instance). corpus_path: JSONL of documents with
    id and text. workdir: a folder for the index and flags.jsonl (each flagged document, its item and the first
    n-gram found, normalized as datatrove matches it). settings: keyword arguments of NGramsDecontConfig.
    """
    _require()
    from datatrove.data import Document
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
    from datatrove.utils.hashing import HashConfig, create_hash_func
    from datatrove.utils.logging import logger
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    config = NGramsDecontConfig(**({"hash_config": HashConfig(hash_fc="sha1")} | (settings or {})))
    index = Path(workdir) / "index"
    index.mkdir(parents=True, exist_ok=True)
    for stale in index.glob("*.index.hashes"):
        stale.unlink()
    indexer = object.__new__(NGramsDecontIndexer)  # its __init__/__new__ only add the lighteval check and the folder
    indexer.config, indexer.tokenizer = config, load_word_tokenizer("en")
    indexer.hash_func = create_hash_func(config.hash_config)
    for row in items.iter_rows(named=True):
        if any(c in row["item_id"] for c in " /:"):
            raise ValueError(f"item id {row['item_id']!r} cannot name an index file")
        hashes = np.array(sorted(set(indexer.compute_hashes(row["answer"], row["question"]))), dtype=config.hash_config.np_descr)
        hashes.tofile(index / f"{row['item_id']}.index.hashes")

    decont = NGramsDecontFilter(index_folder=str(index), config=config)
    pairs = set()
    logger.disable("datatrove")  # the filter logs a line per index file, here one per item
    try:
        with Path(corpus_path).open(encoding="utf-8") as handle, (Path(workdir) / "flags.jsonl").open("w") as flags:
            for line in handle:
                record = json.loads(line)
                document = Document(text=record["text"], id=record["id"])
                if decont.filter(document) is not True:
                    item = document.metadata["contaminated_task"]
                    pairs.add((item, document.id))
                    flags.write(json.dumps({"item_id": item, "doc_id": document.id,
                                            "ngram": document.metadata["contaminated_ngram"]}) + "\n")
    finally:
        logger.enable("datatrove")
    return pl.DataFrame(sorted(pairs), schema={"item_id": pl.String, "doc_id": pl.String}, orient="row")
