"""The fuzzy signal: edited copies of a benchmark question (names swapped, numbers written as words, synonyms,
sentences reordered), which exact n-grams miss.

Both texts are read as canonical words: case-folded, with numbers as their values (`16`, `sixteen` and `1,200` /
`one thousand two hundred` read alike). A question's shingles are its word bigrams. Candidate (document, item)
pairs come from MinHash-LSH (datasketch) over windows of the document; each candidate is then scored exactly:

- `fuzzy_similarity`: the share of the item's bigrams found in the window (containment: an edited copy keeps most of
  the question's bigrams, whatever else the document says);
- `number_recall`: the share of the item's distinct numbers found in the window. A copy keeps every number of a
  problem, even reworded; a template sibling (same problem shape, other numbers) does not. An item without numbers
  has recall 1.

A pair counts when both reach their thresholds; its span runs from the first to the last matched bigram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from datasketch import MinHash, MinHashLSH

from ..errors import CurateError
from .items import BenchmarkItem

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+", re.UNICODE)
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = {**_UNITS, **_TENS, **_SCALES}


@dataclass(frozen=True)
class FuzzySettings:
    similarity: float = 0.6  # containment of the question's bigrams in a window
    number_recall: float = 1.0  # share of the question's numbers in the window
    window: int = 96  # words per document window (a GSM8K question is about 45)
    num_perm: int = 128
    lsh_threshold: float = 0.15  # generous: LSH only proposes, the exact containment decides

    def check(self) -> None:
        if not 0 < self.similarity <= 1 or not 0 <= self.number_recall <= 1:
            raise CurateError(f"fuzzy thresholds are shares in (0, 1]: similarity {self.similarity}, number recall {self.number_recall}")
        if self.window < 8:
            raise CurateError(f"the fuzzy window must be at least 8 words, got {self.window}")


@dataclass(frozen=True)
class CanonicalWords:
    words: list[str]
    starts: np.ndarray
    ends: np.ndarray


def canonical_words(text: str) -> CanonicalWords:
    """Case-folded words with numbers as values; a run of number words ("one thousand two hundred") is one number."""
    words, starts, ends = [], [], []
    run: list[tuple[str, int, int]] = []

    def flush() -> None:
        if run:
            words.append(str(_value([w for w, _, _ in run])))
            starts.append(run[0][1])
            ends.append(run[-1][2])
            run.clear()

    pending_and: tuple[int, int] | None = None  # "one hundred and five": an "and" inside a number is not a word
    for match in _TOKEN.finditer(text):
        word = match.group().casefold()
        if word in _NUMBER_WORDS and not (word in _SCALES and not run):
            run.append((word, match.start(), match.end()))
            pending_and = None
            continue
        if word == "and" and run and run[-1][0] in _SCALES and pending_and is None:
            pending_and = (match.start(), match.end())
            continue
        flush()
        if pending_and is not None:
            words.append("and")
            starts.append(pending_and[0])
            ends.append(pending_and[1])
            pending_and = None
        if word[0].isdigit():
            word = word.replace(",", "")
            word = word.rstrip("0").rstrip(".") if "." in word else word
        words.append(word)
        starts.append(match.start())
        ends.append(match.end())
    flush()
    return CanonicalWords(words, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64))


def _value(number_words: list[str]) -> int:
    total, current = 0, 0
    for word in number_words:
        if word in _SCALES:
            current = max(current, 1) * _SCALES[word]
            if _SCALES[word] >= 1000:
                total, current = total + current, 0
        else:
            current += _NUMBER_WORDS[word]
    return total + current


def _bigrams(words: list[str]) -> list[str]:
    return [f"{a} {b}" for a, b in zip(words, words[1:])]


def _numbers(words: list[str]) -> set[str]:
    return {w for w in words if w[0].isdigit()}


@dataclass(frozen=True)
class FuzzyMatch:
    item: int
    similarity: float
    number_recall: float
    span: tuple[int, int]


@dataclass
class FuzzyIndex:
    settings: FuzzySettings
    shingles: list[frozenset[str]]
    numbers: list[frozenset[str]]
    lsh: MinHashLSH = field(repr=False)

    @classmethod
    def build(cls, items: list[BenchmarkItem], settings: FuzzySettings = FuzzySettings()) -> "FuzzyIndex":
        settings.check()
        shingles, numbers = [], []
        lsh = MinHashLSH(threshold=settings.lsh_threshold, num_perm=settings.num_perm)
        for index, item in enumerate(items):
            words = canonical_words(item.question).words
            shingles.append(frozenset(_bigrams(words)))
            numbers.append(frozenset(_numbers(words)))
        hashes = MinHash.bulk([[s.encode() for s in item] for item in shingles], num_perm=settings.num_perm)
        with lsh.insertion_session() as session:
            for index, (item_shingles, minhash) in enumerate(zip(shingles, hashes)):
                if len(item_shingles) >= 4:  # a question of a few words is not a fingerprint
                    session.insert(index, minhash)
        return cls(settings, shingles, numbers, lsh)

    def match(self, text: str) -> list[FuzzyMatch]:
        doc = canonical_words(text)
        bigrams = _bigrams(doc.words)
        if not bigrams:
            return []
        step = self.settings.window // 2
        starts = list(range(0, max(1, len(bigrams) - step), step)) or [0]
        windows = [bigrams[s: s + self.settings.window] for s in starts]
        hashes = MinHash.bulk([[b.encode() for b in w] for w in windows], num_perm=self.settings.num_perm)
        best: dict[int, FuzzyMatch] = {}
        for start, window, minhash in zip(starts, windows, hashes):
            present = set(window)
            for item in self.lsh.query(minhash):
                found = self.shingles[item] & present
                similarity = len(found) / len(self.shingles[item])
                if item in best and best[item].similarity >= similarity:
                    continue
                numbers = self.numbers[item]
                window_words = set(doc.words[start: start + len(window) + 1])
                recall = len(numbers & window_words) / len(numbers) if numbers else 1.0
                positions = [start + i for i, b in enumerate(window) if b in found]
                span = (int(doc.starts[positions[0]]), int(doc.ends[positions[-1] + 1])) if positions else (0, 0)
                best[item] = FuzzyMatch(item, similarity, recall, span)
        return sorted(best.values(), key=lambda m: m.item)

    def fires(self, match: FuzzyMatch) -> bool:
        return match.similarity >= self.settings.similarity and match.number_recall >= self.settings.number_recall
