"""Injected corpora for the contamination-audit benchmark.

A contamination audit claims to find benchmark test items in a training corpus. To measure one we need corpora
whose contamination is known: copies of a real pre-training mixture (wiki, Shakespeare, tales, GSM8K *train*) into
which GSM8K *test* items are injected at a known rate (the share of the corpus's documents that carry a copy), in
the forms a real leak takes:

    verbatim         "Question: {q}\\nAnswer: {a}" as a new document, the corpus's own math format
    question_only    the question alone, as a new document
    answer_only      the worked solution alone, as a new document
    embedded         the verbatim item inside an unrelated wiki/Shakespeare/tales document, at a sentence or line
                     boundary near its middle; the host keeps its id, domain, source and the rest of its text
    reworded_light   names swapped for other names, the question's numbers written as words (16 -> "sixteen")
    reworded_medium  a fixed table of word substitutions, names swapped, a framing opening and closing
    reworded_order   the question's sentences reordered (the final one stays last), plus the light rewording

Rewordings keep every number's value, so the problem stays solvable, and are built to defeat a 13-gram exact
match on the question. The worked solution of a reworded copy keeps its digits (arithmetic spelled out in words
reads like no real text), so reworded copies stay findable through their answers; an audit that looks at the
question alone sees the rewording's full strength.

Each injected item gets one kind (kinds balanced over items) and 1-3 copies, each copy in its own document; the
items never injected are the negatives. The corpus's GSM8K train documents stay in: they are the hard negatives
(same format and style, different problems). Everything is deterministic from the seed, and at one seed a
higher rate injects a superset of a lower rate's items with the same kinds and copies (the lower rate's last item
may have fewer, cut at the rate), so rates compare item by item.

    python -m curate.contamination.inject --rate 0.01 --seed 0 --out runs/contamination/rate-0.01

writes corpus.jsonl, truth.parquet (one row per copy: which document, which characters), items.parquet (each
item's kind, "none" for the negatives) and injection.json (parameters, counts, digests), the last one last.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import click
import numpy as np
import polars as pl

KINDS = (
    "verbatim", "question_only", "answer_only", "embedded", "reworded_light", "reworded_medium", "reworded_order",
)
REWORDED_KINDS = ("reworded_light", "reworded_medium", "reworded_order")
HOST_DOMAINS = frozenset({"wiki", "shakespeare", "tales"})  # unrelated to math: an embedded copy stands out in them
EMBED_SEPARATOR = "\n"  # after an embedded copy, so that its "#### n" line does not run into the host's next word
MAX_RATE = 0.5
DOCUMENT_FIELDS = ("id", "text", "domain", "source")
ITEM_FIELDS = ("id", "question", "answer")
TRUTH_SCHEMA = {
    "item_id": pl.String, "kind": pl.String, "copy": pl.Int64, "doc_id": pl.String, "start": pl.Int64, "end": pl.Int64,
}
ITEM_KINDS_SCHEMA = {"item_id": pl.String, "kind": pl.String, "copies": pl.Int64}
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # beside the repository, as in CI


def verbatim_text(item: dict[str, str]) -> str:
    """The item as the corpus writes its GSM8K train problems."""
    return f"Question: {item['question']}\nAnswer: {item['answer']}"


# ---- numbers as words --------------------------------------------------------------------------------------------

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_WORD_VALUES = {word: value for value, word in enumerate(_ONES)} | {word: 10 * i for i, word in enumerate(_TENS) if i}
_SCALE_VALUES = {"hundred": 100} | {name: scale for scale, name in _SCALES}
_CURRENCY_WORDS = {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds")}


def _integer_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, unit = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[unit]}" if unit else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_integer_words(rest)}" if rest else "")
    scale, name = next((scale, name) for scale, name in _SCALES if n >= scale)
    head, rest = divmod(n, scale)
    return f"{_integer_words(head)} {name}" + (f" {_integer_words(rest)}" if rest else "")


def number_to_words(number: str | int) -> str:
    """16 -> "sixteen", "1,250.5" -> "one thousand two hundred fifty point five"; integers below a trillion.

    Decimals are spelled digit by digit, trailing zeros dropped ("2.50" -> "two point five", "$100.00" -> "one
    hundred"): the value survives exactly and `numbers_in` reads it back.
    """
    text = str(number).replace(",", "")
    if not re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", text):
        raise ValueError(f"not a non-negative decimal number: {number!r}")
    whole, _, decimals = text.partition(".")
    decimals = decimals.rstrip("0")
    value = int(whole or "0")
    if value >= 10**12:
        raise ValueError(f"number_to_words stops below a trillion, got {number!r}")
    words = _integer_words(value)
    if decimals:
        words += " point " + " ".join(_ONES[int(digit)] for digit in decimals)
    return words


# A number we may spell: not part of a fraction (3/4), a time (10:30), an ordinal (3rd), a unit glued on (2kg)
# or a longer decimal; an optional currency sign before it and percent sign after it are spelled too.
_DIGIT_NUMBER = re.compile(
    r"(?<![\w.,/:])(?P<currency>[$€£])?(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?P<percent>%)?"
    r"(?![\w/:]|[.,]\d)"
)
_NUMBER_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+|[A-Za-z]+")


def _is_number_token(token: str) -> bool:
    return token[0].isdigit() or token.lower() in _WORD_VALUES or token.lower() in _SCALE_VALUES


def _numbers_as_words(text: str) -> str:
    """Every spellable number in `text` written in words ("$2" -> "two dollars", "50%" -> "fifty percent")."""

    def spell(match: re.Match[str]) -> str:
        number, currency, percent = match.group("number"), match.group("currency"), match.group("percent")
        # Spelled next to another number ("20 5-pound bags", "$1.5 million") it would merge with it when read
        # back ("twenty five-pound bags"): such numbers keep their digits.
        before = re.search(r"([A-Za-z]+|\d)[ -]$", text[: match.start()])
        after = re.match(r"[ -]([A-Za-z]+|\d)", text[match.end():])
        if (before and _is_number_token(before.group(1))) or (after and _is_number_token(after.group(1))):
            return match.group()
        if float(number.replace(",", "")) >= 10**12:
            return match.group()
        words = number_to_words(number)
        if currency:
            singular, plural = _CURRENCY_WORDS[currency]
            words += " " + (singular if number == "1" else plural)
        if percent:
            words += " percent"
        starts_sentence = re.search(r"(?:^|[.!?]\s+)$", text[: match.start()]) is not None
        return words[0].upper() + words[1:] if starts_sentence else words

    return _DIGIT_NUMBER.sub(spell, text)


# The grammar number_to_words writes: which kind of number word may continue a number after which.
_FOLLOWS = {
    "unit": {"hundred", "scale", "point"},
    "teen": {"scale", "point"},
    "tens": {"unit", "scale", "point"},
    "hundred": {"unit", "teen", "tens", "scale", "point"},
    "scale": {"unit", "teen", "tens", "point"},
}


def _word_class(word: str) -> str:
    if word == "point":
        return "point"
    if word in _SCALE_VALUES:
        return "hundred" if word == "hundred" else "scale"
    value = _WORD_VALUES[word]
    return "unit" if value < 10 else "teen" if value < 20 else "tens"


def _phrase_values(words: list[str]) -> list[float]:
    """The numbers a run of adjacent number words spells ("twenty-one point five" -> 21.5; "three four" -> 3, 4)."""
    values: list[float] = []
    total = current = 0
    last: str | None = None
    decimals: str | None = None  # the digits read after "point", while reading them

    def close() -> None:
        nonlocal total, current, last, decimals
        if last is not None:
            values.append(float(f"{total + current}.{decimals}") if decimals else float(total + current))
        total = current = 0
        last = decimals = None

    for word in words:
        kind = _word_class(word)
        if decimals is not None:
            if kind == "unit":
                decimals += str(_WORD_VALUES[word])
                continue
            close()
        if last is not None and kind not in _FOLLOWS[last]:
            close()
        if kind == "point":
            if last is not None:  # a "point" that follows no number is an ordinary word
                decimals, last = "", "point"
            continue
        if kind == "hundred":
            current = (current or 1) * 100
        elif kind == "scale":
            total, current = total + (current or 1) * _SCALE_VALUES[word], 0
        else:
            current += _WORD_VALUES[word]
        last = kind
    close()
    return values


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in digits or in words, sorted: a rewording must leave this list unchanged."""
    values: list[float] = []
    phrase: list[str] = []
    phrase_end = 0
    for match in _NUMBER_TOKEN.finditer(text):
        token = match.group()
        word = token.lower()
        is_number_word = word in _WORD_VALUES or word in _SCALE_VALUES or word == "point"
        # Number words join into one number only across a single space or hyphen ("twenty-one", "two hundred").
        if phrase and not (is_number_word and text[phrase_end: match.start()] in (" ", "-")):
            values += _phrase_values(phrase)
            phrase = []
        if token[0].isdigit() or token[0] == ".":
            values.append(float(token.replace(",", "")))
        elif is_number_word:
            phrase.append(word)
            phrase_end = match.end()
    values += _phrase_values(phrase)
    return sorted(values)


# ---- rewording ---------------------------------------------------------------------------------------------------

# First names as GSM8K uses them, by the pronouns that go with them, so that a swap keeps "she" right. Months
# (April, May, June) and words that are also common nouns at a sentence start (Will, Drew) are left out.
_FEMALE_NAMES = (
    "Alice", "Amber", "Amy", "Andrea", "Angela", "Anna", "Anne", "Ashley", "Ava", "Barbara", "Becky", "Betty",
    "Bianca", "Brianna", "Brittany", "Carla", "Carly", "Carmen", "Carol", "Chloe", "Cindy", "Claire", "Clara",
    "Daisy", "Denise", "Diana", "Dora", "Dorothy", "Elena", "Elizabeth", "Ellen", "Emily", "Emma", "Erica", "Erin",
    "Eva", "Fatima", "Fiona", "Freda", "Gina", "Gloria", "Grace", "Gretchen", "Hannah", "Harriet", "Hazel", "Heather",
    "Helen", "Irene", "Isabel", "Jana", "Jane", "Janet", "Jean", "Jennifer", "Jenny", "Jill", "Joanne", "Johanna",
    "Julia", "Julie", "Karen", "Kate", "Katelyn", "Kathy", "Katie", "Kelly", "Kylie", "Laura", "Leah", "Lillian",
    "Lily", "Linda", "Lucy", "Lynn", "Madeline", "Maria", "Marissa", "Martha", "Mary", "Meg", "Megan", "Melanie",
    "Mia", "Michelle", "Monica", "Nadine", "Nancy", "Naomi", "Natalia", "Nicole", "Nora", "Olivia", "Ophelia",
    "Paula", "Polly", "Rachel", "Rebecca", "Rita", "Rose", "Ruth", "Sally", "Samantha", "Sandra", "Sandy", "Sara",
    "Sarah", "Sharon", "Sophia", "Sophie", "Stella", "Sue", "Susan", "Suzanne", "Tara", "Tasha", "Tina", "Vanessa",
    "Vera", "Vivian", "Wanda", "Wendy",
)
_MALE_NAMES = (
    "Aaron", "Adam", "Albert", "Allen", "Andy", "Anthony", "Arnold", "Arthur", "Ben", "Bill", "Billy", "Bob",
    "Bobby", "Boris", "Brad", "Brandon", "Brian", "Bruce", "Carl", "Carlos", "Charlie", "Colin", "Corey", "Craig",
    "Daniel", "Darren", "Dave", "David", "Dean", "Dylan", "Edward", "Ethan", "Felix", "Frank", "Fred", "Frederick",
    "Gary", "Gavin", "George", "Gerald", "Greg", "Harry", "Henry", "Hugo", "Ian", "Igor", "Ivan", "Jack", "Jake",
    "Jamal", "James", "Jason", "Jeff", "Jeffrey", "Jerome", "Jerry", "Jim", "Jimmy", "Joe", "Joey", "John", "Johnny",
    "Jonathan", "Joseph", "Josh", "Juan", "Kevin", "Kyle", "Larry", "Leo", "Leon", "Liam", "Lucas", "Luke", "Marcus",
    "Mark", "Martin", "Matt", "Matthew", "Max", "Micah", "Michael", "Miguel", "Mike", "Mitchell", "Nate", "Neil",
    "Nick", "Noah", "Oliver", "Omar", "Oscar", "Owen", "Patrick", "Paul", "Pedro", "Peter", "Ralph", "Raymond",
    "Richard", "Rick", "Ricky", "Rob", "Robert", "Ron", "Samuel", "Scott", "Sean", "Seth", "Simon", "Stan", "Stanley",
    "Stephen", "Steve", "Steven", "Theo", "Tim", "Timothy", "Tobias", "Tom", "Tommy", "Tony", "Trevor", "Victor",
    "Vince", "Walter", "Wayne", "William", "Xavier", "Zack",
)
_UNISEX_NAMES = (
    "Alex", "Avery", "Casey", "Jackie", "Jamie", "Jess", "Jordan", "Kris", "Morgan", "Quinn", "Riley", "Robin", "Sam",
    "Skyler", "Taylor",
)
_NAME_POOL = {name: pool for pool in (_FEMALE_NAMES, _MALE_NAMES, _UNISEX_NAMES) for name in pool}
_NAME = re.compile(r"\b(?:" + "|".join(sorted(_NAME_POOL, key=len, reverse=True)) + r")\b")


def _swap_names(question: str, answer: str, rng: np.random.Generator) -> tuple[str, str]:
    """Each known first name in the item replaced by another of the same pool, the same way in question and answer."""
    found = list(dict.fromkeys(_NAME.findall(question + "\n" + answer)))
    taken = set(found)  # a replacement must not collide with a name the item already uses
    swaps = {}
    for name in found:
        choices = [other for other in _NAME_POOL[name] if other not in taken]
        swaps[name] = choices[int(rng.integers(len(choices)))]
        taken.add(swaps[name])

    def swap(match: re.Match[str]) -> str:
        return swaps[match.group()]

    return _NAME.sub(swap, question), _NAME.sub(swap, answer)


# Word substitutions common in math word problems, chosen to keep the meaning (several are limited by a lookahead
# to the contexts where they do). None touches a number word, so a number's value never changes.
_SUBSTITUTIONS = (
    # not where "how many" stands alone ("how many did she start with?")
    (r"how many(?! (?:more|did|does|do|will|would|can|could|should|are|were|is|was|has|have|had|of)\b)",
     "what number of"),
    (r"how much money", "what amount of money"),
    (r"how much(?= (?:did|does|do|will|would|can|should|is|was)\b)", "what amount"),
    (r"in total", "altogether"),
    (r"altogether", "in all"),
    (r"total(?= (?:cost|number|amount|price|time|distance|weight|value|area|length|score)\b)", "combined"),
    (r"number of", "count of"),
    (r"amount", "quantity"),
    (r"buying", "purchasing"), (r"buys", "purchases"), (r"bought", "purchased"), (r"buy", "purchase"),
    (r"wants", "would like"),
    (r"needs", "requires"), (r"needed", "required"),
    (r"earns", "makes"), (r"earned", "made"), (r"earn", "make"),
    (r"stores", "shops"), (r"store", "shop"),
    (r"friends", "pals"), (r"friend", "pal"),
    (r"large", "big"), (r"small", "little"),
    (r"decides", "chooses"), (r"decided", "chose"), (r"decide", "choose"),
    (r"starts", "begins"), (r"starting", "beginning"),
    (r"the remaining", "the rest of the"), (r"remaining", "left"),
    (r"calculate", "work out"),
    (r"average", "mean"),
    (r"prices", "costs"), (r"price", "cost"),
    (r"costs(?= [$€£])", "is priced at"),
    (r"people", "individuals"),
    (r"children", "kids"), (r"child", "kid"),
    (r"every(?= (?:day|week|month|year|morning|night|evening|weekend|hour|minute|time)\b)", "each"),
    (r"daily", "each day"),
    (r"per", "for each"),
    (r"received", "got"), (r"receives", "gets"), (r"receive", "get"),
    (r"gives", "hands"), (r"gave", "handed"),
    (r"currently", "right now"),
    (r"additional", "extra"), (r"extra", "additional"),
    (r"what is", "what's"),
    (r"went to", "headed to"),
    (r"picked", "gathered"),
    (r"bags", "sacks"), (r"bag", "sack"),
    (r"boxes", "cartons"), (r"box", "carton"),
    (r"house", "home"),
    (r"mom", "mother"), (r"dad", "father"),
    (r"is able to", "can"),
)
# One pass over the text (each alternative its own group), so a substituted word is never substituted again.
_SUBSTITUTION = re.compile(r"\b(?:" + "|".join(f"({pattern})" for pattern, _ in _SUBSTITUTIONS) + r")\b", re.IGNORECASE)
_SENTENCE_IF = re.compile(r"(?:^|(?<=[.!?] ))If\b")
_OPENINGS = (
    "Here is a problem: ", "Try this problem. ", "Word problem: ", "Solve the following. ", "A quick puzzle for you: ",
    "Can you work this out? ",
)
_CLOSINGS = (" Show your reasoning.", " Give the final number.", " Work it out step by step.", " Explain the answer.")
_SOLUTION_HEADERS = ("Solution:", "Worked answer:", "Here is how to solve it:")


def _substitute_words(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        new = _SUBSTITUTIONS[match.lastindex - 1][1]  # type: ignore[operator]
        return new[0].upper() + new[1:] if match.group()[0].isupper() else new

    return _SENTENCE_IF.sub("Suppose", _SUBSTITUTION.sub(replace, text))


_ABBREVIATIONS = frozenset({"Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "vs", "No"})
_SENTENCE_END = re.compile(r"(\w*)[.!?][\"'”’)]*( +|\n)(?=[\"'“‘(]?[A-Z$€£0-9])")
# A sentence that opens on one of these points back to one before it; moved to the front it loses its subject.
_LEANS_BACK = re.compile(r"(?:He|She|They|It|His|Her|Their|Its|Him|Them|This|That|These|Those|Then|Also|So|But|And)\b")

_OPENING_SUBJECT = re.compile(r"[A-Z][a-z]+(?= [a-z])")  # "Toula went", "Melanie is"
_NOT_SUBJECTS = frozenset({
    "The", "A", "An", "Each", "Every", "Some", "All", "Most", "In", "On", "At", "For", "If", "When", "After",
    "Before", "During", "Last", "Next", "This", "That", "There", "It", "His", "Her", "Their", "My", "Our", "Your",
})


def _sentence_ends(text: str) -> list[tuple[int, int]]:
    """(end of a sentence, start of the next) for each sentence break, skipping abbreviations and initials."""
    breaks = []
    for match in _SENTENCE_END.finditer(text):
        word = match.group(1)
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
            continue
        breaks.append((match.start(2), match.end(2)))
    return breaks


def _sentences(text: str) -> list[str]:
    pieces, begin = [], 0
    for end, next_start in _sentence_ends(text):
        pieces.append(text[begin:end])
        begin = next_start
    return pieces + [text[begin:]]


def _reorder_sentences(question: str, rng: np.random.Generator) -> str:
    """The question's sentences in another order, the final one (what is asked) kept last; unchanged with fewer
    than two sentences before it."""
    *body, final = _sentences(question)
    if len(body) < 2:
        return question
    identity = tuple(range(len(body)))
    if len(body) <= 6:
        orders = [order for order in permutations(identity) if order != identity]
    else:
        drawn = (tuple(int(i) for i in rng.permutation(len(body))) for _ in range(200))
        orders = [order for order in drawn if order != identity]
    readable = [order for order in orders if not _LEANS_BACK.match(body[order[0]])]
    choices = readable or orders
    order = choices[int(rng.integers(len(choices)))]
    sentences = [body[i] for i in order] + [final]
    # With no readable order ("Melanie is a saleswoman. She sold..."), the "He"/"She" that now opens the problem
    # takes the name the original opened on.
    subject = _OPENING_SUBJECT.match(body[0])
    named = subject is not None and subject.group() not in _NOT_SUBJECTS and subject.group().lower() not in _WORD_VALUES
    if not readable and named and re.match(r"(?:He|She) ", sentences[0]):
        sentences[0] = subject.group() + sentences[0][sentences[0].index(" "):]
    return " ".join(sentences)


def render_copy(item: dict[str, str], kind: str, rng: np.random.Generator) -> str:
    """The text one copy of `item` takes in a leak of this kind (the embedded kind's copy is the verbatim text)."""
    question, answer = item["question"], item["answer"]
    if kind in ("verbatim", "embedded"):
        return verbatim_text(item)
    if kind == "question_only":
        return question
    if kind == "answer_only":
        return answer
    if kind == "reworded_light":
        question, answer = _swap_names(question, answer, rng)
        return f"Question: {_numbers_as_words(question)}\nAnswer: {answer}"
    if kind == "reworded_medium":
        question, answer = _swap_names(_substitute_words(question), _substitute_words(answer), rng)
        opening, closing, header = (
            options[int(rng.integers(len(options)))] for options in (_OPENINGS, _CLOSINGS, _SOLUTION_HEADERS)
        )
        return f"{opening}{question}{closing}\n{header} {answer}"
    if kind == "reworded_order":
        question, answer = _swap_names(_reorder_sentences(question, rng), answer, rng)
        return f"Question: {_numbers_as_words(question)}\nAnswer: {answer}"
    raise ValueError(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")


# ---- embedding ---------------------------------------------------------------------------------------------------

def _insertion_points(text: str) -> list[int]:
    """Where a copy may go inside a host: the start of a line, or the start of a sentence after its space."""
    points = {match.start() for match in re.finditer(r"(?<=\n)(?=\S)", text)}
    points |= {next_start for _, next_start in _sentence_ends(text)}
    return sorted(point for point in points if 0 < point < len(text))


def _embed(host_text: str, copy_text: str, rng: np.random.Generator) -> tuple[str, int]:
    """The host with the copy inserted at a boundary in its middle half (else the boundary nearest its middle), and
    the copy's start; the host's own text is untouched around it."""
    points = _insertion_points(host_text)
    middle = [point for point in points if 0.25 * len(host_text) <= point <= 0.75 * len(host_text)]
    point = middle[int(rng.integers(len(middle)))] if middle else min(points, key=lambda p: abs(p - len(host_text) / 2))
    return host_text[:point] + copy_text + EMBED_SEPARATOR + host_text[point:], point


# ---- injection ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Injection:
    """An injected corpus and its ground truth."""

    corpus: list[dict[str, str]]  # id, text, domain, source
    truth: pl.DataFrame  # one row per copy: item_id, kind, copy, doc_id, start, end (text[start:end] is the copy)
    item_kinds: pl.DataFrame  # item_id, kind ("none" for negatives), copies
    rate: float
    kinds: tuple[str, ...]
    copies: tuple[int, int]
    seed: int
    negatives: int | None
    input_digests: dict[str, str]

    def counts(self) -> dict[str, Any]:
        embedded = int((self.truth["kind"] == "embedded").sum())
        carrying = self.truth["doc_id"].n_unique()
        per_kind = {
            kind: {
                "items": int((self.item_kinds["kind"] == kind).sum()),
                "copies": int((self.truth["kind"] == kind).sum()),
            }
            for kind in self.kinds
        }
        return {
            "documents": len(self.corpus),
            "new_documents": self.truth.height - embedded,
            "host_documents": embedded,
            "carrying_documents": carrying,
            "achieved_rate": carrying / len(self.corpus),
            "injected_items": int((self.item_kinds["kind"] != "none").sum()),
            "negative_items": int((self.item_kinds["kind"] == "none").sum()),
            "copies": self.truth.height,
            "per_kind": per_kind,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "kinds": list(self.kinds), "copies": list(self.copies), "seed": self.seed,
            "negatives": self.negatives, "counts": self.counts(), "inputs": self.input_digests,
        }


@dataclass(frozen=True)
class _Plan:
    item: dict[str, str]
    kind: str
    copies: int


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator for one decision (the plan, one copy's rewording, one host's insertion point), independent of
    every other: injecting more items at a higher rate leaves what the lower rate's items became unchanged."""
    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _records_digest(records: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record[field] for field in fields], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def _check_records(records: Sequence[dict[str, Any]], fields: Sequence[str], what: str) -> None:
    if not records:
        raise ValueError(f"{what} is empty")
    seen: set[str] = set()
    for index, record in enumerate(records):
        missing = [field for field in fields if not isinstance(record.get(field), str)]
        if missing:
            raise ValueError(f"{what} record {index} lacks the text fields {missing}")
        if record["id"] in seen:
            raise ValueError(f"{what} id {record['id']!r} appears twice")
        seen.add(record["id"])


def _check_arguments(
    corpus: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]], rate: float, kinds: Sequence[str],
    copies: tuple[int, int], negatives: int | None,
) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE}] (the share of documents that carry a copy), got {rate!r}")
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence of kind names, not the string {kinds!r}")
    if not kinds:
        raise ValueError("kinds is empty; choose from " + ", ".join(KINDS))
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds name a kind twice: {list(kinds)}")
    if len(copies) != 2 or not all(isinstance(c, int) for c in copies) or not 1 <= copies[0] <= copies[1]:
        raise ValueError(f"copies must be (least, most) with 1 <= least <= most, got {copies!r}")
    _check_records(corpus, DOCUMENT_FIELDS, "corpus")
    _check_records(items, ITEM_FIELDS, "items")
    if negatives is not None and not 1 <= negatives < len(items):
        raise ValueError(
            f"negatives must be between 1 and {len(items) - 1} (one fewer than the items), got {negatives}"
        )


def _plan(
    items: Sequence[dict[str, str]], rate: float, kinds: tuple[str, ...], copies: tuple[int, int], seed: int,
    negatives: int | None, documents: int,
) -> tuple[list[_Plan], list[dict[str, str]]]:
    """Which items go in, as which kind and how many copies, until the rate is reached; and the negatives."""
    rng = _rng(seed, "plan")
    order = [int(i) for i in rng.permutation(len(items))]
    kind_cycle = [kinds[int(i)] for i in rng.permutation(len(kinds))]
    drawn_copies = rng.integers(copies[0], copies[1] + 1, size=len(items))
    # Negatives named by count come from the end of the order, so every rate at this seed keeps the same ones.
    candidates = order if negatives is None else order[: len(items) - negatives]

    plans: list[_Plan] = []
    carrying = new_documents = 0

    def reached() -> bool:
        return carrying >= rate * (documents + new_documents)

    for position, index in enumerate(candidates):
        if reached():
            break
        kind = kind_cycle[position % len(kind_cycle)]
        # Copies go in one at a time and stop at the rate, so the last item may get fewer than drawn (never
        # fewer than the least): the rate then holds to within one document.
        placed = 0
        while placed < drawn_copies[position] and (placed < copies[0] or not reached()):
            placed += 1
            carrying += 1
            new_documents += kind != "embedded"
        plans.append(_Plan(items[index], kind, placed))
    if not reached():
        kept = "" if negatives is None else f" ({negatives} more kept as negatives)"
        raise ValueError(
            f"too few items for rate {rate}: {len(candidates)} items to inject{kept} make {carrying} documents with "
            f"copies, the rate needs {math.ceil(rate * (documents + new_documents))}; pass more items, fewer "
            "negatives or a lower rate"
        )
    injected = {plan.item["id"] for plan in plans}
    if negatives is None:
        negative_items = [items[index] for index in order if items[index]["id"] not in injected]
    else:
        negative_items = [items[index] for index in order[len(items) - negatives:]]
    if not negative_items:
        raise ValueError(
            f"too few items for rate {rate}: all {len(items)} items are injected and none is left as a negative"
        )
    return plans, negative_items


def _interleave(
    documents: list[dict[str, str]], new_documents: list[dict[str, str]], rng: np.random.Generator,
) -> list[dict[str, str]]:
    """The new documents at random places among the originals: an audit must not find them by position."""
    slots = np.sort(rng.integers(0, len(documents) + 1, size=len(new_documents)))
    shuffled = [new_documents[int(i)] for i in rng.permutation(len(new_documents))]
    result: list[dict[str, str]] = []
    placed = 0
    for index, document in enumerate(documents):
        while placed < len(slots) and slots[placed] == index:
            result.append(shuffled[placed])
            placed += 1
        result.append(document)
    return result + shuffled[placed:]


def inject(
    corpus: list[dict],
    items: list[dict],
    rate: float,
    kinds: Sequence[str] = KINDS,
    copies: tuple[int, int] = (1, 3),
    seed: int = 0,
    negatives: int | None = None,
) -> Injection:
    """A copy of `corpus` where a share `rate` of the documents carries a copy of one of `items`.

    corpus: documents with id, text, domain, source (left unchanged; the result holds copies).
    items: benchmark items with id, question, answer (the worked solution ending "#### n").
    rate: the share of the result's documents that carry a copy, in (0, 0.5]; it holds to within one document.
    kinds: the leak kinds to use (KINDS), balanced over the injected items.
    copies: the least and most copies per injected item, each copy in its own document.
    negatives: how many items to keep never injected (the same ones at every rate); None keeps all the others.
    """
    _check_arguments(corpus, items, rate, kinds, copies, negatives)
    seed = operator.index(seed)  # an integer, also from numpy: it goes into the JSON that seeds each decision
    kinds = tuple(kind for kind in KINDS if kind in kinds)  # canonical order: the result does not depend on it
    plans, negative_items = _plan(items, rate, kinds, copies, seed, negatives, len(corpus))

    documents = [{field: document[field] for field in DOCUMENT_FIELDS} for document in corpus]
    hosts = [
        index for index in (int(i) for i in _rng(seed, "hosts").permutation(len(documents)))
        if documents[index]["domain"] in HOST_DOMAINS and _insertion_points(documents[index]["text"])
    ]
    embedded_copies = sum(plan.copies for plan in plans if plan.kind == "embedded")
    if embedded_copies > len(hosts):
        raise ValueError(
            f"embedded needs {embedded_copies} host documents (domain {', '.join(sorted(HOST_DOMAINS))}, with a "
            f"sentence or line boundary); the corpus has {len(hosts)}"
        )
    free_hosts = iter(hosts)  # one host per copy: no document carries two copies
    existing_ids = {document["id"] for document in documents}

    new_documents: list[dict[str, str]] = []
    truth_rows: list[dict[str, Any]] = []
    for plan in plans:
        item_id = plan.item["id"]
        for copy in range(1, plan.copies + 1):
            if plan.kind == "embedded":
                host = documents[next(free_hosts)]
                text = render_copy(plan.item, plan.kind, _rng(seed, "copy", item_id, plan.kind, copy))
                host["text"], start = _embed(host["text"], text, _rng(seed, "embed", host["id"]))
                doc_id = host["id"]
            else:
                text = render_copy(plan.item, plan.kind, _rng(seed, "copy", item_id, plan.kind, copy))
                doc_id, start = f"inject-{item_id}-{plan.kind}-{copy}", 0
                if doc_id in existing_ids:
                    raise ValueError(f"the corpus already has a document with the injected id {doc_id!r}")
                new_documents.append({"id": doc_id, "text": text, "domain": "math", "source": "injected"})
            truth_rows.append({
                "item_id": item_id, "kind": plan.kind, "copy": copy, "doc_id": doc_id, "start": start,
                "end": start + len(text),
            })

    kind_of = {plan.item["id"]: (plan.kind, plan.copies) for plan in plans}
    kind_of |= {item["id"]: ("none", 0) for item in negative_items}
    item_rows = [
        {"item_id": item["id"], "kind": kind_of[item["id"]][0], "copies": kind_of[item["id"]][1]}
        for item in items if item["id"] in kind_of
    ]
    return Injection(
        corpus=_interleave(documents, new_documents, _rng(seed, "positions")),
        truth=pl.DataFrame(truth_rows, schema=TRUTH_SCHEMA),
        item_kinds=pl.DataFrame(item_rows, schema=ITEM_KINDS_SCHEMA),
        rate=rate,
        kinds=kinds,
        copies=(copies[0], copies[1]),
        seed=seed,
        negatives=negatives,
        input_digests={
            "corpus": _records_digest(corpus, DOCUMENT_FIELDS), "items": _records_digest(items, ITEM_FIELDS),
        },
    )


# ---- writing -----------------------------------------------------------------------------------------------------

def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a temporary sibling, which replaces `path` only once it is complete and on disk."""
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the benchmark's files are for others to read
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_injection(injection: Injection, folder: Path | str) -> Path:
    """folder/corpus.jsonl, truth.parquet, items.parquet, then injection.json, each written whole or not at all.

    injection.json, written last with the digests of the other three, marks a complete injection.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "injection.json"
    # An earlier manifest goes first: a crash while the files are replaced must not leave it describing them.
    manifest.unlink(missing_ok=True)
    lines = "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in injection.corpus)
    _write_atomically(folder / "corpus.jsonl", lambda path: path.write_text(lines, encoding="utf-8"))
    _write_atomically(folder / "truth.parquet", injection.truth.write_parquet)
    _write_atomically(folder / "items.parquet", injection.item_kinds.write_parquet)
    files = {name: _file_digest(folder / name) for name in ("corpus.jsonl", "truth.parquet", "items.parquet")}
    text = json.dumps(injection.summary() | {"files": files}, indent=2) + "\n"
    _write_atomically(manifest, lambda path: path.write_text(text, encoding="utf-8"))
    return folder


# ---- how hard each kind is ---------------------------------------------------------------------------------------

def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


def ngram_survival(original: str, copy: str, n: int = 13) -> float | None:
    """The share of `original`'s word n-grams (lowercased runs of letters and digits) that `copy` still contains:
    what an exact n-gram match can see. None when the original has fewer than n words."""
    wanted = _ngrams(original, n)
    return len(wanted & _ngrams(copy, n)) / len(wanted) if wanted else None


def question_survival(
    injection: Injection, items: Sequence[dict[str, str]], sizes: Sequence[int] = (13, 8),
) -> pl.DataFrame:
    """Per injected copy, the share of its item's question n-grams still in the copy (columns survival_<n>)."""
    question_of = {item["id"]: item["question"] for item in items}
    text_of = {document["id"]: document["text"] for document in injection.corpus}
    rows = []
    for row in injection.truth.iter_rows(named=True):
        copy_text = text_of[row["doc_id"]][row["start"]: row["end"]]
        survival = {f"survival_{n}": ngram_survival(question_of[row["item_id"]], copy_text, n) for n in sizes}
        rows.append({"item_id": row["item_id"], "kind": row["kind"], "copy": row["copy"]} | survival)
    schema = {"item_id": pl.String, "kind": pl.String, "copy": pl.Int64} | {f"survival_{n}": pl.Float64 for n in sizes}
    return pl.DataFrame(rows, schema=schema)


# ---- command line ------------------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_corpus(corpus_dir: Path, domains: Sequence[str], max_documents: int | None = None) -> list[dict[str, Any]]:
    """The domains' documents in order; with max_documents, a fixed random sample of them (the same at every seed,
    so seeds vary only the injection), still in order."""
    documents: list[dict[str, Any]] = []
    for domain in domains:
        path = corpus_dir / f"{domain}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no corpus file for domain {domain!r}: {path}")
        documents += read_jsonl(path)
    if max_documents is not None and max_documents < len(documents):
        keep = np.sort(_rng(0, "max-documents").choice(len(documents), size=max_documents, replace=False))
        documents = [documents[int(i)] for i in keep]
    return documents


@click.command()
@click.option("--rate", type=float, required=True, help="Share of the documents that carry an injected copy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option(
    "--corpus-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=SHARED_DATA / "corpus",
    show_default=True,
)
@click.option(
    "--benchmark", type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=SHARED_DATA / "benchmarks" / "gsm8k_test.jsonl", show_default=True,
)
@click.option("--domains", default="wiki,shakespeare,tales,math", show_default=True)
@click.option("--kinds", default=",".join(KINDS), show_default=True)
@click.option("--copies", "copies_range", default="1,3", show_default=True, help="Least and most copies per item.")
@click.option("--negatives", type=int, default=None, help="Items kept never injected [default: all the others].")
@click.option(
    "--max-documents", type=click.IntRange(min=1), default=None, help="A fixed sample of this many corpus documents.",
)
def main(
    rate: float, seed: int, out: Path, corpus_dir: Path, benchmark: Path, domains: str, kinds: str,
    copies_range: str, negatives: int | None, max_documents: int | None,
) -> None:
    """Write a corpus with GSM8K test items injected at RATE, and its ground truth, to OUT."""
    try:
        least, most = (int(part) for part in copies_range.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two integers like 1,3, got {copies_range!r}", param_hint="--copies")
    items = read_jsonl(benchmark)
    try:
        corpus = read_corpus(corpus_dir, [d.strip() for d in domains.split(",") if d.strip()], max_documents)
        injection = inject(
            corpus, items, rate, [k.strip() for k in kinds.split(",") if k.strip()], (least, most), seed, negatives,
        )
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error))
    write_injection(injection, out)
    counts = injection.counts()
    click.echo(
        f"{out}: {counts['documents']} documents, {counts['carrying_documents']} with a copy "
        f"(rate {counts['achieved_rate']:.4f}); {counts['injected_items']} items injected, "
        f"{counts['negative_items']} negatives"
    )
    survival = question_survival(injection, items).group_by("kind").agg(
        pl.len().alias("copies"), pl.col("survival_13").mean(), pl.col("survival_8").mean()
    )
    for row in survival.sort("kind").iter_rows(named=True):
        click.echo(
            f"  {row['kind']:<16} {row['copies']:>4} copies   question 13-grams kept {row['survival_13'] or 0:.2f}"
            f"   8-grams {row['survival_8'] or 0:.2f}"
        )


if __name__ == "__main__":
    main()
