"""allenai's decon as a peer of the contamination audit: its own package (`decontaminate` on PyPI, module `decon`,
Rust behind PyO3), run in its own interpreter through a subprocess, its report mapped back to (item, document) pairs.

decon needs Python >= 3.12 and this project runs on 3.11, so it lives in a venv of its own:

    make .venv-decon/.installed      # PYENV_VERSION=3.12.1 python -m venv .venv-decon; pip install decontaminate==0.3.0.post4

and `CURATE_DECON_PYTHON` names that interpreter (default .venv-decon/bin/python in the repository). Tested with decontaminate
0.3.0.post4.

How it is run: decon reads a directory of training JSONL files (field `text`) and a directory of eval reference
JSONL files in its normalized format, one line per eval instance with eval_key, eval_instance_index, doc_id, split,
question, answer (and optionally passage). We write the benchmark's items there (question and worked solution, as
decon's own bundled gsm8k reference holds them; eval_instance_index is the item's row), link the corpus alone into
a training directory (the inject folder holds other JSON that decon would read as training data), and call

    $CURATE_DECON_PYTHON -c <runner> <workdir>/config.json

where the runner is `decon.detect(decon.Config(**json.load(config)))`. decon writes one report JSONL per training
file with a line per contaminated (training line, eval instance) match; `training_line` (0-based line of the
training file) gives the document, `eval_instance_index` the item. It runs with one worker thread (a run setting,
not a detection one: the benchmark's other methods are single-threaded too).

Settings (`decon_pairs(..., settings=...)`, keyword arguments of `decon.Config`):

- `None`: decon's defaults (SIMPLE mode, cl100k tokens, 5-grams sampled every 10 tokens, 11 misses tolerated,
  contamination_score_threshold 0.8, answer required near the question when the eval has one).
- `TUNED`: the best setting on the injected corpus at rate 0.01, seed 0 only; the other rates and seeds were not
  used to choose it. Selection rule: highest document recall over all injected copies, ties broken by precision,
  with no never-injected item flagged. What was tried (one knob at a time from the defaults, then the best
  combination; recall over all 120 copies / precision / never-injected items flagged):

    setting (changes from the defaults)                              recall  precision  never-injected
    defaults (threshold 0.8, 5-grams, every 10 tokens, 11 misses)    0.308   1.000      0
    contamination_score_threshold 0.7 / 0.6 / 0.5                     0.592 / 0.650 / 0.683, precision 1.000, 0
    contamination_score_threshold 0.4 / 0.35                          0.758 / 0.767, precision 1.000, 0
    contamination_score_threshold 0.3 / 0.25 / 0.2 / 0.1              0.775 / 0.775 / 0.800 / 0.825,
                                                                      precision 0.989 / 0.969 / 0.970 / 0.925,
                                                                      never-injected 0 / 2 / 2 / 7
    ngram_size 3 / 4 / 7 / 9                                          0.425 / 0.367 / 0.292 / 0.283, 1.000, 0
    tokenizer word                                                    0.358   1.000      0 (45 s, 10x slower)
    question_max_consecutive_misses 20; sample_every_m_tokens 1;
      exact_override                                                  0.308 each (no change)
    threshold 0.3 + ngram_size 3 / 4                                  0.842 / 0.808, 0.927 / 0.970, 5 / 2
    threshold 0.3 + misses 20 / misses 30 and every token             0.800 / 0.825, 0.980 / 0.980, 1 / 1
    threshold 0.3 + tokenizer word                                    0.933   0.615      53 (959 s)
    threshold 0.3 + answer_ngram_size 2                               0.775   0.979      1
    threshold 0.3 + min_long_answer_window 300, short window 150      0.775   0.989      0
    threshold 0.35 + misses 20 / 30 / 30 and every token              0.800 / 0.800 / 0.825, 0.990, 1 each
    threshold 0.35 + every token                                      0.775   1.000      0
    ngram_size 3 + threshold 0.4 / 0.5 / 0.6 / 0.7                    0.833 / 0.833 / 0.767 / 0.642,
                                                                      0.990 / 0.990 / 1.000 / 1.000, 1 / 1 / 0 / 0
    ngram_size 4 + threshold 0.35 / 0.4 / 0.45 / 0.5 / 0.6            0.800 / 0.800 / 0.775 / 0.775 / 0.658,
                                                                      0.990 / 1.000 / 1.000 / 1.000 / 1.000, 0
    ngram_size 4 + threshold 0.4 + misses 20                          0.800   0.990      1
    ngram_size 4 + threshold 0.4 + the wider answer windows           0.800   1.000      0
    ngram_size 4 + every token + threshold 0.3 / 0.35 / 0.4 / 0.45    0.833 / 0.825 / 0.825 / 0.800,
                                                                      0.971 / 0.990 / 1.000 / 1.000, 2 / 0 / 0 / 0
    ngram_size 4 + every token + threshold 0.4 + misses 30            0.825   0.990      1
    ngram_size 3 + every token + threshold 0.4                        0.833   0.990      1

  No setting finds answer_only copies without flagging never-injected items (decon starts every match from the
  question: only threshold <= 0.2 reaches a few, with false positives); question_only copies need the threshold
  under 0.75, the most a question-only match scores when the eval has an answer.

  Chosen: ngram_size 4, sample_every_m_tokens 1 (every token sampled), contamination_score_threshold 0.4, the rest
  at decon's defaults: recall 0.825, precision 1.000, no never-injected item flagged at rate 0.01, seed 0.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl

PYTHON_VARIABLE = "CURATE_DECON_PYTHON"
DEFAULT_PYTHON = Path(__file__).resolve().parents[2] / ".venv-decon" / "bin" / "python"
INSTALL = "make .venv-decon/.installed (a Python 3.12 venv with decontaminate==0.3.0.post4)"
EVAL_KEY = "benchmark"
RUN = {"worker_threads": 1, "verbose": False}  # how to run, not what to detect: kept under any settings
TUNED = {"ngram_size": 4, "sample_every_m_tokens": 1, "contamination_score_threshold": 0.4}

_RUNNER = """
import json, sys
import decon
decon.detect(decon.Config(**json.load(open(sys.argv[1]))))
"""


class PeerUnavailable(RuntimeError):
    """The peer's environment is absent: the benchmark skips the method."""


def decon_python() -> Path:
    """The interpreter that has decon: $CURATE_DECON_PYTHON, else .venv-decon/bin/python in the repository."""
    python = Path(os.environ.get(PYTHON_VARIABLE) or DEFAULT_PYTHON)
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise PeerUnavailable(
            f"no decon interpreter at {python}: set {PYTHON_VARIABLE} to a Python >= 3.12 with the `decontaminate` "
            f"package, e.g. `{INSTALL}`"
        )
    return python


def write_references(items: pl.DataFrame, path: Path) -> None:
    """items (item_id, question, answer) as decon's eval reference lines, one per item, indexed by row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index, row in enumerate(items.iter_rows(named=True)):
            handle.write(json.dumps({
                "eval_key": EVAL_KEY, "eval_instance_index": index, "doc_id": index, "split": "test",
                "question": row["question"], "answer": row["answer"],
            }, ensure_ascii=False) + "\n")


def _document_ids(corpus_path: Path) -> list[str]:
    with corpus_path.open(encoding="utf-8") as handle:
        return [json.loads(line)["id"] for line in handle]


def decon_pairs(items: pl.DataFrame, corpus_path: Path, workdir: Path, settings: dict | None = None) -> pl.DataFrame:
    """(item_id, doc_id) pairs decon calls contaminated.

    items: item_id, question, answer. corpus_path: JSONL of documents with id and text. workdir: an empty or
    absent folder for decon's inputs and report. settings: keyword arguments of decon.Config (None: its defaults).
    """
    python = decon_python()
    corpus_path, workdir = Path(corpus_path).resolve(), Path(workdir).resolve()
    evals, train, report = workdir / "evals", workdir / "train", workdir / "report"
    write_references(items, evals / f"{EVAL_KEY}.jsonl")
    train.mkdir(parents=True, exist_ok=True)
    link = train / "corpus.jsonl"
    link.unlink(missing_ok=True)
    link.symlink_to(corpus_path)
    config = {"training_dir": str(train), "evals_dir": str(evals), "report_output_dir": str(report),
              **(settings or {}), **RUN}
    (workdir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    done = subprocess.run([str(python), "-c", _RUNNER, str(workdir / "config.json")], capture_output=True, text=True)
    (workdir / "decon.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"decon failed (exit {done.returncode}) with {python}:\n{(done.stdout + done.stderr)[-3000:]}")

    documents, item_ids = _document_ids(corpus_path), items["item_id"].to_list()
    pairs = set()
    for path in sorted(report.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                match = json.loads(line)
                if match.get("training_file") not in (None, link.name) or match.get("eval_key", EVAL_KEY) != EVAL_KEY:
                    raise RuntimeError(f"decon reported a match outside our inputs: {path}: {line[:300]}")
                pairs.add((item_ids[match["eval_instance_index"]], documents[match["training_line"]]))
    return pl.DataFrame(sorted(pairs), schema={"item_id": pl.String, "doc_id": pl.String}, orient="row")
