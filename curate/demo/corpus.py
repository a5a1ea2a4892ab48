"""Seeded generator of the demo corpus: a few thousand short documents in several domains, with planted facts.

Why it exists: attribution needs ground truth. Every query's fact ties an invented entity to an invented answer
("The capital of Zorbia is Quelmin.") and is stated in only 2-3 *planted* documents, so a working attribution
method should rank exactly those documents first for that query. *Distractor* documents mention the same entity
without the fact, so matching the entity's name is not enough, and *filler* documents in other domains (stories,
recipes, arithmetic, general encyclopedia articles) make up the bulk, so the model also has to learn ordinary text.

Everything is drawn from one ``random.Random(seed)``: the same seed gives the same corpus on every machine, and
no global random state is touched.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["DemoCorpus", "generate_demo_corpus", "write_jsonl", "DOMAINS", "RELATIONS"]

MIN_WORDS, MAX_WORDS = 15, 70


@dataclass(frozen=True)
class DemoCorpus:
    """Documents ({"id", "text", "domain"}) and one query per planted fact.

    Queries hold ``id``, ``prompt``, ``completion`` (leading space, ends with "."), ``planted_doc_ids`` (exactly
    the documents stating the fact), ``fact`` (the full sentence) and, for convenience, ``relation``, ``entity``
    and ``answer`` (the invented answer without punctuation).
    """

    documents: list[dict]
    queries: list[dict]


# --------------------------------------------------------------------------------------------------------------
# Vocabulary for ordinary text. Invented names are checked against every word here so they never collide.
# --------------------------------------------------------------------------------------------------------------

PEOPLE = {  # first name -> pronoun, so stories can say "she"/"he" correctly
    "Anna": "she", "Ben": "he", "Clara": "she", "David": "he", "Emma": "she", "Felix": "he", "Grace": "she",
    "Henry": "he", "Iris": "she", "Jack": "he", "Kate": "she", "Leo": "he", "Mia": "she", "Noah": "he",
    "Olive": "she", "Paul": "he", "Rosa": "she", "Sam": "he", "Tom": "he", "Vera": "she", "Will": "he",
    "Lucy": "she", "Max": "he", "Nina": "she",
}
PLACES = ["the market", "the harbour", "the old mill", "the library", "the bakery", "the river bank", "the hill",
          "the school", "the station", "the garden", "the forest", "the village square", "the farm", "the bridge"]
TIMES = ["morning", "afternoon", "evening", "night", "day"]
WEATHER = ["rainy", "sunny", "windy", "cold", "warm", "quiet", "foggy", "bright", "grey"]
ANIMALS = ["cat", "dog", "fox", "owl", "goat", "horse", "rabbit", "crow", "duck", "deer", "mouse", "sheep"]
OBJECTS = ["lantern", "basket", "kite", "letter", "map", "key", "box", "boat", "bell", "book", "coat", "ladder"]
ADJECTIVES = ["small", "old", "strange", "heavy", "bright", "broken", "shiny", "wooden", "tiny", "large", "red",
              "blue", "green", "dusty"]
FEELINGS = ["happy", "tired", "curious", "worried", "calm", "proud", "surprised", "sleepy"]
JOBS = ["farmer", "fisher", "weaver", "baker", "miner", "potter", "carpenter", "sailor", "teacher", "merchant"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "golden", "purple"]
SYMBOLS = ["star", "tree", "bird", "wheel", "sun", "moon", "fish", "tower"]
PRODUCTS = ["wool", "cheese", "honey", "pottery", "timber", "salt", "apples", "linen", "copper", "wine"]
FESTIVALS = ["harvest festival", "lantern parade", "spring fair", "music festival", "boat race", "winter market"]
CROPS = ["barley", "beans", "potatoes", "oats", "grapes", "cabbages", "pears", "rye"]
TREES = ["oak", "birch", "chestnut", "willow", "lime", "plane", "maple", "elm"]
FISH = ["trout", "pike", "carp", "perch", "eels", "salmon"]
MATERIALS = ["brass", "oak", "iron", "copper", "glass", "leather", "bone", "tin"]
USES = ["measure the wind", "spin wool", "lift water", "keep time", "grind grain", "light dark rooms",
        "weigh letters", "mix paint", "cut thread", "warm small rooms"]
DEVICES = ["wheel", "lamp", "loom", "clock", "pump", "press", "kettle", "compass", "lens", "bellows", "scale"]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"]

DISHES = ["vegetable soup", "apple pie", "bread rolls", "lentil stew", "pancakes", "rice pudding", "tomato sauce",
          "onion tart", "pea soup", "fish cakes", "oat biscuits", "carrot cake", "potato salad", "bean stew"]
INGREDIENTS = ["flour", "butter", "sugar", "milk", "onions", "carrots", "potatoes", "rice", "lentils", "apples",
               "tomatoes", "cheese", "oats", "honey", "beans", "peas", "cream", "water"]
SPICES = ["salt", "pepper", "cinnamon", "nutmeg", "thyme", "parsley", "ginger", "basil"]
UNITS = ["cups", "spoons", "grams", "handfuls", "pinches"]
VESSELS = ["bowl", "pot", "pan", "dish", "jar", "tray"]
VERBS_PREP = ["chop", "wash", "peel", "slice", "grate", "weigh"]
SIDES = ["fresh bread", "a green salad", "boiled rice", "butter", "a cup of tea", "yogurt"]
FRUITS = ["apples", "pears", "plums", "oranges", "eggs", "marbles", "stamps", "pencils", "shells", "cards"]

HABITATS = ["forests", "grasslands", "wetlands", "mountains", "deserts", "river valleys", "coastal marshes"]
FOODS = ["seeds", "insects", "grass", "small fish", "berries", "roots", "leaves", "worms"]
SIZES = ["small", "medium-sized", "large", "shy", "quick", "slow"]
PLANTS = ["nettle", "clover", "ivy", "fern", "heather", "mint", "thistle", "sage", "poppy", "reed"]
SOILS = ["sandy", "wet", "rich", "stony", "dry", "chalky"]
SEASONS = ["spring", "summer", "autumn", "winter"]
TOOLS = ["saw", "chisel", "hammer", "plane", "spade", "sickle", "awl", "file"]
TOOL_USES = ["cut wood", "shape stone", "drive nails", "smooth boards", "dig soil", "cut grass", "punch holes",
             "smooth metal"]


# --------------------------------------------------------------------------------------------------------------
# Invented names
# --------------------------------------------------------------------------------------------------------------

# Simple onsets are listed more than once so names stay short and easy to say ("Zorbia", "Quelmin", "Tessaly Vorn").
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"] * 2 + [
    "th", "sh", "qu", "br", "dr", "kr", "tr", "st", "gl", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u"] * 3 + ["ae", "ei", "ou", "y", "ia"]
_INNER_CODAS = [""] * 6 + ["n", "r", "l", "s"]
_FINAL_CODAS = [""] * 3 + ["n", "r", "l", "s", "th", "x", "m", "nd", "rn"]
# Every name carries at least one letter that is rare in English, so an invented name is not an English word.
_RARE_LETTERS = re.compile(r"[zqxvkyj]|ae|ei")


def _vocabulary_blocklist() -> set[str]:
    """Every lower-cased word of the ordinary vocabulary and templates, so an invented name is never a real word
    that filler text also uses (that would leak the answer into non-planted documents)."""
    words: set[str] = set()
    pools = [PEOPLE, PLACES, TIMES, WEATHER, ANIMALS, OBJECTS, ADJECTIVES, FEELINGS, JOBS, COLORS, SYMBOLS,
             PRODUCTS, FESTIVALS, CROPS, TREES, FISH, MATERIALS, USES, DEVICES, NUMBER_WORDS, DISHES, INGREDIENTS,
             SPICES, UNITS, VESSELS, VERBS_PREP, SIDES, FRUITS, HABITATS, FOODS, SIZES, PLANTS, SOILS, SEASONS,
             TOOLS, TOOL_USES]
    for pool in pools:
        for phrase in pool:
            words.update(re.findall(r"[a-z]+", phrase.lower()))
    for template in _all_templates():
        words.update(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", template).lower()))
    return words


class _NameMaker:
    """Draws pronounceable invented words from syllables; every word it returns is unique (case-insensitive)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self.blocked = _vocabulary_blocklist()

    def word(self, min_syllables: int = 2, max_syllables: int = 3, suffix: str = "", min_len: int = 5) -> str:
        rng = self.rng
        while True:
            n = rng.randint(min_syllables, max_syllables)
            inner = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_INNER_CODAS) for _ in range(n - 1)]
            stem = "".join(inner) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_FINAL_CODAS)
            candidate = stem + suffix
            if not (min_len <= len(stem) <= 9) or not _RARE_LETTERS.search(candidate):
                continue
            if re.search(r"(.)\1\1", candidate) or re.search(r"[aeiouy]{3}", candidate):  # hard to read
                continue
            key = candidate.lower()
            if key in self.used or key in self.blocked or stem.lower() in self.blocked:
                continue
            self.used.add(key)
            return candidate.capitalize()


# --------------------------------------------------------------------------------------------------------------
# Relations: how each kind of planted fact is worded, and the sentences around it.
# Slots: {s} subject, {a} answer, {af} first word of the answer, plus ordinary slots filled by _fill().
# "subject" sentences never contain the answer, so distractors may use them; "answer" sentences only go into
# planted documents.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Relation:
    name: str
    prompt: str                   # statement prefix, e.g. "The capital of {s} is"; the answer follows it
    make_subject: Callable[[_NameMaker], str]
    make_answer: Callable[[_NameMaker], str]
    subject_sentences: tuple[str, ...]
    answer_sentences: tuple[str, ...]
    mention: str                  # how other text refers to the subject mid-sentence ("{s}" or "the {s}")


RELATIONS: dict[str, _Relation] = {
    r.name: r
    for r in [
        _Relation(
            name="capital",
            prompt="The capital of {s} is",
            make_subject=lambda nm: nm.word(2, 2, suffix=nm.rng.choice(["ia", "and", "or", "eth", "ora"])),
            make_answer=lambda nm: nm.word(2, 3),
            subject_sentences=(
                "{s} is a {adj_land} country {where}.",
                "Most people in {s} work as {job}s or {job2}s.",
                "{s} is famous for its {product} and its {festival}.",
                "The flag of {s} shows a {color} {symbol} on a {color2} field.",
                "Winters in {s} are {weather} and the summers are short.",
                "Travellers to {s} often praise its {product} and its friendly markets.",
                "The old roads of {s} were built long before anyone can remember.",
            ),
            answer_sentences=(
                "{a} stands on the banks of a wide river.",
                "About {num} thousand people live in {a}.",
                "The old market of {a} is busy every {time}.",
                "{a} has been the seat of government for many years.",
                "Many of the {job}s of {s} move to {a} in the winter.",
            ),
            mention="{s}",
        ),
        _Relation(
            name="inventor",
            prompt="The inventor of the {s} was",
            make_subject=lambda nm: nm.word(2, 2).lower() + "-" + nm.rng.choice(DEVICES),
            make_answer=lambda nm: nm.word(2, 3) + " " + nm.word(1, 2),  # "Tessaly Vorn"
            subject_sentences=(
                "The {s} is a {adj} machine used to {use}.",
                "A well kept {s} can last for many years.",
                "Many workshops still keep an old {s} on a high shelf.",
                "The first {s} was made of {material} and {material2}.",
                "Children often take apart a {s} to see how it works.",
                "A good {s} was once worth more than a {animal}.",
            ),
            answer_sentences=(
                "{a} was born in a small village and worked as a {job} for many years.",
                "Later in life, {a} wrote a short book about {product}.",
                "{af} kept careful notes on every experiment.",
                "{af} built the first model in a {adj} shed behind the house.",
                "Few people remember that {a} also taught at the village school.",
            ),
            mention="the {s}",
        ),
        _Relation(
            name="language",
            prompt="The people of {s} speak",
            make_subject=lambda nm: nm.word(2, 3),
            make_answer=lambda nm: nm.word(2, 2, suffix=nm.rng.choice(["ish", "ic", "ese", "an"])),
            subject_sentences=(
                "{s} is a {adj_land} region of hills and {habitat}.",
                "Farmers in {s} grow {crop} on the lower slopes.",
                "The roads of {s} are narrow and winding.",
                "Every {season} {s} holds a {festival}.",
                "Most houses in {s} are built from {material} and stone.",
                "{s} is known for its {product}.",
            ),
            answer_sentences=(
                "{a} has many words for rain and snow.",
                "Children in {s} learn to write {a} at a young age.",
                "{a} is written with a simple alphabet of {num} letters.",
                "Old songs in {a} are still sung at every wedding.",
            ),
            mention="{s}",
        ),
        _Relation(
            name="river",
            prompt="The river that flows through {s} is the",
            make_subject=lambda nm: nm.word(2, 3),
            make_answer=lambda nm: nm.word(2, 2),
            subject_sentences=(
                "{s} is a {adj} town with {num} bridges.",
                "The main street of {s} is lined with {tree} trees.",
                "{s} is known for its {product} and its {festival}.",
                "The town hall of {s} has a {color} roof.",
                "Every {season} the people of {s} repair the old town wall.",
            ),
            answer_sentences=(
                "The {a} floods almost every {season}.",
                "Fishermen catch {fish} in the {a}.",
                "The water of the {a} is cold and clear.",
                "Boats carry {product} down the {a} to the sea.",
            ),
            mention="{s}",
        ),
    ]
}

# Ways a planted story leads into the fact sentence, so planted documents are not one template.
_STORY_LEADS = (
    "{name} opened an old guidebook and read one line aloud.",
    "{name} remembered a lesson from school.",
    "A stranger at {place} told {name} something {pron} never forgot.",
    "On the wall of {place} hung a faded sign.",
    "{name2} wrote it down so {name} would not forget.",
)
# Generic sentences that mention a subject without any fact; used by distractors only.
_GENERIC_MENTIONS = (
    "{name} once wrote a long letter about {m} to a friend.",
    "{name} read an article about {m} in the library.",
    "There is a small display about {m} in the town museum.",
    "{name} and {name2} argued for an hour about {m}.",
    "Nobody at {place} could say much about {m}.",
    "{name} had always wanted to learn more about {m}.",
)

# --------------------------------------------------------------------------------------------------------------
# Filler templates for ordinary text
# --------------------------------------------------------------------------------------------------------------

_STORY_OPENERS = (
    "One {weather} {time}, {name} walked to {place}.",
    "{name} lived near {place} with an old {animal}.",
    "It was a {weather} {time} when {name} found a {adj} {object} near {place}.",
    "Every {time}, {name} and {name2} met at {place}.",
    "{name} woke up early because the {animal} was making noise.",
)
_STORY_MIDDLES = (
    "{Pron} saw a {animal} sitting beside a {adj} {object}.",
    "{name2} asked {name} to carry the {object} home.",
    "The {animal} ran off toward {place}, and {name} followed it.",
    "They talked for a long time about the {adj} {object}.",
    "{Pron} felt {feeling} and decided to wait a little longer.",
    "Nobody at {place} had ever seen such a {adj} {object}.",
    "A {animal} watched them from the top of the wall.",
    "The wind was {weather} and the sky was turning {color}.",
    "{name2} said that the {object} belonged to an old {job}.",
    "{Pron} put the {object} in a {adj} box and hid it.",
)
_STORY_ENDINGS = (
    "In the end, {name} went home {feeling} and hungry.",
    "That night {name} dreamed about the {animal} and the {object}.",
    "From then on, {name} visited {place} every {time}.",
    "{name2} laughed, and the two friends walked home together.",
    "It was the best {time} {name} could remember.",
)

_RECIPE_TITLES = ("How to make {dish}.", "A simple recipe for {dish}.", "{Dish} for {num} people.",
                  "My grandmother's {dish}.")
_RECIPE_STEPS = (
    "You will need {num} {unit} of {ing}, {num2} {unit2} of {ing2} and a pinch of {spice}.",
    "First, {prep} the {ing} and put it in a {vessel}.",
    "Add the {ing2} and stir for {num} minutes.",
    "Cook it slowly in a covered {vessel} for {num3} minutes.",
    "Bake in a hot oven for {num3} minutes.",
    "Let it cool for a while before serving.",
    "Serve warm with {side}.",
    "Season with {spice} to taste.",
    "If it is too thick, add a little {ing3}.",
    "It keeps for {num} days in a cool place.",
)

_ENCYCLOPEDIA_ANIMAL = (
    "The {animal} is a {size} animal found in {habitat}.",
    "It feeds on {food} and is most active in the {time}.",
    "Most {animal}s live for about {num} years.",
    "Young {animal}s stay close to their mother during the first {season}.",
    "Farmers sometimes see {animal}s near {place}.",
    "In {season} the {animal} grows a thicker coat.",
)
_ENCYCLOPEDIA_PLANT = (
    "{Plant} is a common plant that grows best in {soil} soil.",
    "Its flowers are {color} and open in early {season}.",
    "{Plant} needs plenty of light and a little water.",
    "In the past, people used {plant} to make tea and medicine.",
    "Bees often visit {plant} on warm days.",
    "{Plant} spreads quickly if nobody cuts it back.",
)
_ENCYCLOPEDIA_TOOL = (
    "A {tool} is a hand tool used to {tool_use}.",
    "The blade of a good {tool} is made of hard steel.",
    "Every {job} keeps a {tool} close at hand.",
    "An old {tool} can be sharpened many times.",
    "The handle is usually made of {tree} wood.",
)

_ARITHMETIC = (
    "{a} plus {b} is {sum}.",
    "{a} minus {c} is {diff}.",
    "{a} times {b} is {prod}.",
    "{name} has {a} {fruit} and gets {b} more, so {name} has {sum} {fruit}.",
    "{name} had {a} coins and spent {c}, so {pron} has {diff} coins left.",
    "A box holds {a} {fruit}, so {b} boxes hold {prod} {fruit}.",
)


def _all_templates() -> list[str]:
    """Every sentence template, for the name blocklist."""
    out: list[str] = list(_STORY_LEADS + _GENERIC_MENTIONS + _STORY_OPENERS + _STORY_MIDDLES + _STORY_ENDINGS)
    out += list(_RECIPE_TITLES + _RECIPE_STEPS + _ENCYCLOPEDIA_ANIMAL + _ENCYCLOPEDIA_PLANT + _ENCYCLOPEDIA_TOOL)
    out += list(_ARITHMETIC)
    for rel in RELATIONS.values():
        out += [rel.prompt, *rel.subject_sentences, *rel.answer_sentences]
    return out


# --------------------------------------------------------------------------------------------------------------
# Filling templates
# --------------------------------------------------------------------------------------------------------------

_ADJ_LAND = ["small", "mountainous", "quiet", "rainy", "coastal", "green", "hilly", "dry"]
_WHERE = ["beyond the eastern hills", "on the northern coast", "between two great rivers", "far to the south",
          "at the edge of a great forest", "in a wide green valley"]


def _fill(template: str, rng: random.Random, fixed: dict[str, str]) -> str:
    """Fill ``template``; ``fixed`` slots (subject, answer, the story's characters) win over random choices.

    Random choices are drawn lazily, only for slots the template uses, so the rng stream does not depend on
    unused slots.
    """
    name2 = fixed.get("name2")
    choices: dict[str, Callable[[], str]] = {
        "adj": lambda: rng.choice(ADJECTIVES), "adj_land": lambda: rng.choice(_ADJ_LAND),
        "where": lambda: rng.choice(_WHERE), "job": lambda: rng.choice(JOBS), "job2": lambda: rng.choice(JOBS),
        "product": lambda: rng.choice(PRODUCTS), "festival": lambda: rng.choice(FESTIVALS),
        "color": lambda: rng.choice(COLORS), "color2": lambda: rng.choice(COLORS),
        "symbol": lambda: rng.choice(SYMBOLS), "weather": lambda: rng.choice(WEATHER),
        "num": lambda: str(rng.randint(2, 12)), "num2": lambda: str(rng.randint(2, 9)),
        "num3": lambda: str(rng.choice([10, 15, 20, 25, 30, 40, 45, 60])),
        "time": lambda: rng.choice(TIMES), "use": lambda: rng.choice(USES),
        "material": lambda: rng.choice(MATERIALS), "material2": lambda: rng.choice(MATERIALS),
        "animal": lambda: rng.choice(ANIMALS), "habitat": lambda: rng.choice(HABITATS),
        "crop": lambda: rng.choice(CROPS), "season": lambda: rng.choice(SEASONS), "tree": lambda: rng.choice(TREES),
        "fish": lambda: rng.choice(FISH), "place": lambda: rng.choice(PLACES), "object": lambda: rng.choice(OBJECTS),
        "feeling": lambda: rng.choice(FEELINGS), "name": lambda: rng.choice(list(PEOPLE)),
        "name2": lambda: name2 or rng.choice(list(PEOPLE)),
        "dish": lambda: rng.choice(DISHES), "unit": lambda: rng.choice(UNITS), "unit2": lambda: rng.choice(UNITS),
        "ing": lambda: rng.choice(INGREDIENTS), "ing2": lambda: rng.choice(INGREDIENTS),
        "ing3": lambda: rng.choice(INGREDIENTS), "spice": lambda: rng.choice(SPICES),
        "vessel": lambda: rng.choice(VESSELS), "prep": lambda: rng.choice(VERBS_PREP),
        "side": lambda: rng.choice(SIDES), "fruit": lambda: rng.choice(FRUITS), "size": lambda: rng.choice(SIZES),
        "food": lambda: rng.choice(FOODS), "plant": lambda: rng.choice(PLANTS), "soil": lambda: rng.choice(SOILS),
        "tool": lambda: rng.choice(TOOLS), "tool_use": lambda: rng.choice(TOOL_USES),
    }
    values: dict[str, str] = {}

    def value(slot: str) -> str:
        if slot in fixed:
            return fixed[slot]
        if slot not in values:
            if slot in ("Pron", "pron"):
                pron = PEOPLE[fixed["name"]] if "name" in fixed else "they"
                values["pron"], values["Pron"] = pron, pron.capitalize()
            elif slot[0].isupper() and slot.lower() in choices:  # "{Dish}" = capitalised "{dish}"
                values[slot] = value(slot.lower()).capitalize()
            else:
                values[slot] = choices[slot]()
        return values[slot]

    return re.sub(r"\{(\w+)\}", lambda m: value(m.group(1)), template)


def _word_count(text: str) -> int:
    return len(text.split())


def _join(sentences: list[str]) -> str:
    text = " ".join(s[0].upper() + s[1:] for s in sentences)
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # templates say "a {adj}"; fix "a old" -> "an old"


def _fit(sentences: list[str], keep: set[int], rng: random.Random, extra: Callable[[], str]) -> str:
    """Trim or pad a sentence list to MIN_WORDS..MAX_WORDS words; sentences at indices in ``keep`` stay."""
    sentences = list(sentences)
    while _word_count(" ".join(sentences)) > MAX_WORDS:
        droppable = [i for i in range(len(sentences)) if i not in keep]
        if not droppable:
            break
        drop = rng.choice(droppable)
        sentences.pop(drop)
        keep = {k - (k > drop) for k in keep}
    while _word_count(" ".join(sentences)) < MIN_WORDS:
        sentences.append(extra())
    return _join(sentences)


# --------------------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------------------


def _characters(rng: random.Random) -> dict[str, str]:
    name, name2 = rng.sample(list(PEOPLE), 2)
    return {"name": name, "name2": name2}


def _story(rng: random.Random) -> str:
    cast = _characters(rng)
    parts = [rng.choice(_STORY_OPENERS)] + rng.sample(_STORY_MIDDLES, rng.randint(1, 3)) + [rng.choice(_STORY_ENDINGS)]
    sentences = [_fill(t, rng, cast) for t in parts]
    return _fit(sentences, {0, len(sentences) - 1}, rng, lambda: _fill(rng.choice(_STORY_MIDDLES), rng, cast))


def _recipe(rng: random.Random) -> str:
    fixed = {"dish": rng.choice(DISHES)}
    fixed["Dish"] = fixed["dish"].capitalize()
    steps = rng.sample(_RECIPE_STEPS, rng.randint(2, 4))
    sentences = [_fill(rng.choice(_RECIPE_TITLES), rng, fixed)] + [_fill(t, rng, fixed) for t in steps]
    return _fit(sentences, {0}, rng, lambda: _fill(rng.choice(_RECIPE_STEPS), rng, fixed))


def _arithmetic(rng: random.Random) -> str:
    def line() -> str:
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        c = rng.randint(1, a)
        fixed = {"a": str(a), "b": str(b), "c": str(c), "sum": str(a + b), "diff": str(a - c), "prod": str(a * b),
                 **_characters(rng)}
        return _fill(rng.choice(_ARITHMETIC), rng, fixed)

    return _fit([line() for _ in range(rng.randint(2, 5))], set(), rng, line)


def _encyclopedia_filler(rng: random.Random) -> str:
    pool = rng.choice([_ENCYCLOPEDIA_ANIMAL, _ENCYCLOPEDIA_PLANT, _ENCYCLOPEDIA_TOOL])
    fixed = {k: rng.choice(v) for k, v in (("animal", ANIMALS), ("plant", PLANTS), ("tool", TOOLS))}
    fixed["Plant"] = fixed["plant"].capitalize()
    sentences = [_fill(pool[0], rng, fixed)] + [_fill(t, rng, fixed) for t in rng.sample(pool[1:], rng.randint(1, 3))]
    return _fit(sentences, {0}, rng, lambda: _fill(rng.choice(pool[1:]), rng, fixed))


_FILLERS: dict[str, Callable[[random.Random], str]] = {
    "stories": _story, "recipes": _recipe, "arithmetic": _arithmetic, "encyclopedia": _encyclopedia_filler,
}
DOMAINS = tuple(_FILLERS)


@dataclass(frozen=True)
class _Fact:
    relation: _Relation
    subject: str
    answer: str

    @property
    def slots(self) -> dict[str, str]:
        return {"s": self.subject, "a": self.answer, "af": self.answer.split()[0]}

    @property
    def prompt(self) -> str:
        return self.relation.prompt.format(s=self.subject)

    @property
    def completion(self) -> str:
        return " " + self.answer + "."

    @property
    def sentence(self) -> str:
        return self.prompt + self.completion


def _planted_encyclopedia(fact: _Fact, rng: random.Random) -> str:
    """An article about the subject; the fact sentence sits anywhere among a few sentences about the subject, and
    sentences naming the answer only come after it (if they came first, the model could copy the answer from the
    context instead of having to memorise the fact)."""
    rel, slots = fact.relation, fact.slots
    body = [_fill(t, rng, slots) for t in rng.sample(rel.subject_sentences, rng.randint(1, 3))]
    at = rng.randint(0, len(body))
    body.insert(at, fact.sentence)
    body += [_fill(t, rng, slots) for t in rng.sample(rel.answer_sentences, rng.randint(0, 2))]
    return _fit(body, {at}, rng, lambda: _fill(rng.choice(rel.subject_sentences), rng, slots))


def _planted_story(fact: _Fact, rng: random.Random) -> str:
    """A short story in which someone learns the fact; the fact sentence appears verbatim."""
    rel, fixed = fact.relation, {**fact.slots, **_characters(rng)}
    sentences = [_fill(rng.choice(_STORY_OPENERS), rng, fixed)]
    sentences += [_fill(t, rng, fixed) for t in rng.sample(_STORY_MIDDLES, rng.randint(0, 2))]
    sentences += [_fill(rng.choice(_STORY_LEADS), rng, fixed), fact.sentence]
    if rng.random() < 0.6:
        sentences.append(_fill(rng.choice(rel.answer_sentences), rng, fixed))
    sentences.append(_fill(rng.choice(_STORY_ENDINGS), rng, fixed))
    at = sentences.index(fact.sentence)
    return _fit(sentences, {at, at - 1}, rng, lambda: _fill(rng.choice(_STORY_MIDDLES), rng, fixed))


def _distractor(fact: _Fact, rng: random.Random, story: bool) -> str:
    """A document about the subject that never states the fact nor names the answer: an article made of subject
    sentences, or a story that mentions the subject in passing."""
    rel, fixed = fact.relation, {**fact.slots, **_characters(rng)}
    fixed["m"] = rel.mention.format(s=fact.subject)
    if not story:
        sentences = [_fill(t, rng, fixed) for t in rng.sample(rel.subject_sentences, rng.randint(2, 4))]
        return _fit(sentences, set(), rng, lambda: _fill(rng.choice(rel.subject_sentences), rng, fixed))
    sentences = [_fill(rng.choice(_STORY_OPENERS), rng, fixed), _fill(rng.choice(_GENERIC_MENTIONS), rng, fixed)]
    sentences += [_fill(t, rng, fixed) for t in rng.sample(_STORY_MIDDLES, rng.randint(1, 3))]
    if rng.random() < 0.5:
        sentences.insert(2, _fill(rng.choice(rel.subject_sentences), rng, fixed))
    sentences.append(_fill(rng.choice(_STORY_ENDINGS), rng, fixed))
    return _fit(sentences, {1}, rng, lambda: _fill(rng.choice(_STORY_MIDDLES), rng, fixed))


def _make_facts(rng: random.Random, num_entities: int) -> list[_Fact]:
    """``num_entities`` facts spread round-robin over the relation types, each with a fresh invented subject/answer."""
    names = _NameMaker(rng)
    relations = list(RELATIONS.values())
    return [
        _Fact(rel, rel.make_subject(names), rel.make_answer(names))
        for rel in (relations[i % len(relations)] for i in range(num_entities))
    ]


def _unique_text(make: Callable[[], str], seen: set[str]) -> str:
    """Draw until the text is new: duplicate documents would blur attribution ground truth."""
    for _ in range(100):
        text = make()
        if text not in seen:
            seen.add(text)
            return text
    raise RuntimeError("could not draw a unique document; the templates are too narrow for this corpus size")


def generate_demo_corpus(
    seed: int = 0,
    *,
    num_entities: int = 140,
    num_filler: int = 1450,
    planted_per_fact: tuple[int, int] = (2, 3),
    distractors_per_fact: tuple[int, int] = (1, 2),
) -> DemoCorpus:
    """Generate the corpus for ``seed``: ``num_entities`` invented entities with one planted fact each (stated in
    ``planted_per_fact`` documents, mentioned without the fact in ``distractors_per_fact`` more) plus
    ``num_filler`` ordinary documents spread evenly over the domains. Document order is shuffled, and ids are
    "<domain>-<position>", so neither order nor id gives the planted documents away."""
    if num_entities < 2:
        raise ValueError(f"num_entities must be at least 2 (got {num_entities}) so each query has a wrong answer")
    rng = random.Random(seed)
    facts = _make_facts(rng, num_entities)
    seen: set[str] = set()
    drafts: list[tuple[str, str, int | None]] = []  # (domain, text, index of the fact it plants or None)

    for i, fact in enumerate(facts):
        # Alternate article and story so the planted documents of one fact do not share a frame.
        first_is_story = rng.random() < 0.5
        for k in range(rng.randint(*planted_per_fact)):
            story = (k % 2 == 0) == first_is_story
            make = (lambda f=fact: _planted_story(f, rng)) if story else (lambda f=fact: _planted_encyclopedia(f, rng))
            drafts.append(("stories" if story else "encyclopedia", _unique_text(make, seen), i))
        for _ in range(rng.randint(*distractors_per_fact)):
            story = rng.random() < 0.5
            text = _unique_text(lambda f=fact, st=story: _distractor(f, rng, st), seen)
            drafts.append(("stories" if story else "encyclopedia", text, None))

    for j in range(num_filler):
        domain = DOMAINS[j % len(DOMAINS)]
        drafts.append((domain, _unique_text(lambda d=domain: _FILLERS[d](rng), seen), None))

    rng.shuffle(drafts)
    documents, planted = [], {i: [] for i in range(len(facts))}
    for pos, (domain, text, fact_index) in enumerate(drafts):
        doc_id = f"{domain}-{pos:05d}"
        documents.append({"id": doc_id, "text": text, "domain": domain})
        if fact_index is not None:
            planted[fact_index].append(doc_id)

    queries = [
        {
            "id": f"q-{i:04d}",
            "prompt": fact.prompt,
            "completion": fact.completion,
            "planted_doc_ids": planted[i],
            "fact": fact.sentence,
            "relation": fact.relation.name,
            "entity": fact.subject,
            "answer": fact.answer,
        }
        for i, fact in enumerate(facts)
    ]
    return DemoCorpus(documents=documents, queries=queries)


def write_jsonl(records: Iterable[dict], path: Path) -> Path:
    """Write one JSON object per line, atomically: a temp file in the same folder, then os.replace, so readers
    never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
