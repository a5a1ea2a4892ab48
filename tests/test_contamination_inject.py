"""The contamination benchmark's injected corpora: planted ground truth on small hand-made corpora, and on the
shared real data (GSM8K test into the four-domain corpus) when it is present."""

from __future__ import annotations

import copy as copying
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate.contamination import inject as injection_module
from curate.contamination.inject import (
    EMBED_SEPARATOR,
    HOST_DOMAINS,
    KINDS,
    REWORDED_KINDS,
    inject,
    main,
    ngram_survival,
    number_to_words,
    numbers_in,
    read_jsonl,
    render_copy,
    verbatim_text,
    write_injection,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
RATES = (0.005, 0.01, 0.015)


# ---- hand-made corpora and items ----------------------------------------------------------------------------------

def host_document(index: int, domain: str = "wiki") -> dict[str, str]:
    text = (
        f"River {index}\nThe river rises in the northern hills. It flows west for many miles past old mills.\n"
        "Its valley is wide and green. Farms line both banks of the water. Mr. Hale built the first bridge.\n"
        "A ferry crosses it near the town. Fishermen work its lower reaches in spring."
    )
    return {"id": f"{domain}-{index:04d}", "text": text, "domain": domain, "source": "hand-made"}


def math_document(index: int) -> dict[str, str]:
    text = (
        f"Question: Tom has {index} marbles and wins 4 more. How many marbles does he have?\n"
        f"Answer: {index}+4={index + 4}\n#### {index + 4}"
    )
    return {"id": f"math-{index:04d}", "text": text, "domain": "math", "source": "hand-made"}


def make_corpus(hosts: int = 300, maths: int = 200) -> list[dict[str, str]]:
    domains = sorted(HOST_DOMAINS)
    hosts_list = [host_document(i, domains[i % len(domains)]) for i in range(hosts)]
    return hosts_list + [math_document(i) for i in range(maths)]


NAMES = ("Janet", "John", "Maria", "Peter")


def make_item(index: int) -> dict[str, str]:
    name = NAMES[index % len(NAMES)]
    apples, daily, price = 10 + index, 3 + index % 7, 2 + index % 5
    question = (
        f"{name} has {apples} apples in a basket. Every day for a week {name} buys {daily} more apples at the store. "
        f"Each apple costs ${price}, and 50% of the apples are red. A friend gives {name} {index + 1} pears as well. "
        f"How many apples does {name} have after the week?"
    )
    answer = (
        f"{name} buys {daily} * 7 = {daily * 7} apples in the week.\n"
        f"So {name} has {apples} + {daily * 7} = {apples + daily * 7} apples.\n#### {apples + daily * 7}"
    )
    return {"id": f"item-{index:04d}", "question": question, "answer": answer, "final": str(apples + daily * 7)}


def make_items(n: int = 200) -> list[dict[str, str]]:
    return [make_item(i) for i in range(n)]


# Longer problems in GSM8K's style (written for these tests, not taken from the benchmark) for the n-gram check.
LONG_ITEMS = [
    {
        "id": "long-0",
        "question": "Sarah runs a small bakery. Every morning she bakes 48 muffins and 36 cookies. She sells each "
        "muffin for $3 and each cookie for $2, and she gives 6 muffins to her friends. At the end of the day 10 "
        "cookies are left over. How much money does Sarah make in one day?",
        "answer": "Sarah sells 48 - 6 = 42 muffins for 42 * 3 = $126.\nShe sells 36 - 10 = 26 cookies for "
        "26 * 2 = $52.\nShe makes 126 + 52 = $178.\n#### 178",
    },
    {
        "id": "long-1",
        "question": "A school buys 12 boxes of pencils for its classes. Each box holds 24 pencils and costs $5. The "
        "school gives 3 pencils to each of its 80 students. The teachers keep the remaining pencils for next year. "
        "How many pencils do the teachers keep?",
        "answer": "The school has 12 * 24 = 288 pencils.\nThe students get 3 * 80 = 240 pencils.\nThe teachers keep "
        "288 - 240 = 48 pencils.\n#### 48",
    },
    {
        "id": "long-2",
        "question": "John wants to save $1,200 for a new bike. He earns $15 per hour at his job and works 20 hours "
        "a week. He spends 25% of his pay on food. His mother gives him $100 to help. How many weeks will it take John "
        "to save enough money?",
        "answer": "John earns 15 * 20 = $300 a week and keeps 300 * 0.75 = $225.\nHe needs 1200 - 100 = $1100.\n"
        "He needs 1100 / 225 = 4.89, so 5 weeks.\n#### 5",
    },
]


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, str]]:
    return make_corpus()


@pytest.fixture(scope="module")
def items() -> list[dict[str, str]]:
    return make_items()


@pytest.fixture(scope="module")
def injected(corpus, items):
    """A rate high enough that every kind gets several items."""
    return inject(corpus, items, rate=0.1, seed=3)


def expected_copy(item: dict[str, str], kind: str) -> str | None:
    """The exact text a copy of this kind must be, where it does not depend on a random rewording."""
    return {
        "verbatim": verbatim_text(item), "embedded": verbatim_text(item), "question_only": item["question"],
        "answer_only": item["answer"],
    }.get(kind)


# ---- numbers as words -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("number", "words"),
    [
        (16, "sixteen"), (0, "zero"), (21, "twenty-one"), (100, "one hundred"), (105, "one hundred five"),
        (1000, "one thousand"), (1_234_567, "one million two hundred thirty-four thousand five hundred sixty-seven"),
        ("2.5", "two point five"), ("0.25", "zero point two five"), ("2.50", "two point five"),
        ("100.00", "one hundred"), ("1,200", "one thousand two hundred"), (".5", "zero point five"),
        (3_000_000_000, "three billion"),
    ],
)
def test_number_to_words(number, words):
    assert number_to_words(number) == words


@pytest.mark.parametrize("bad", ["-3", "abc", "1.2.3", 10**12])
def test_number_to_words_refuses_what_it_cannot_spell(bad):
    with pytest.raises(ValueError):
        number_to_words(bad)


def test_numbers_read_back_from_words():
    values = [0, 7, 13, 40, 99, 101, 999, 1_001, 12_345, 700_000, 1_000_001, 987_654_321, "3.75", "0.05", "120.5"]
    for value in values:
        assert numbers_in(number_to_words(value)) == [float(value)], value
    # Separate numbers stay separate: a comma, or two units in a row, end a number.
    assert numbers_in("twenty, five and three four") == [3.0, 4.0, 5.0, 20.0]
    assert numbers_in("At one point 2 of the 1,500 birds left.") == [1.0, 2.0, 1500.0]


def test_light_rewording_spells_numbers_and_swaps_names():
    item = {
        "id": "x",
        "question": "Janet's ducks lay 16 eggs a day. She sells 50% of them for $2 each and keeps 3/4 of the rest "
        "until 10:30, the 3rd hour. The farm earned $1.5 million. How much does Janet make?",
        "answer": "Janet sells 8 eggs for 8 * 2 = $16.\n#### 16",
    }
    text = render_copy(item, "reworded_light", injection_module._rng(0, "test"))
    question, answer = text.split("\nAnswer: ")
    assert "sixteen eggs" in question and "fifty percent" in question and "two dollars each" in question
    assert "3/4" in question and "10:30" in question and "3rd" in question  # fractions, times, ordinals keep digits
    assert "$1.5 million" in question  # spelled, "one point five dollars million" would misread
    assert "Janet" not in text  # the name is swapped in question and answer alike
    new_name = answer.split()[0]
    assert question.startswith(f"Question: {new_name}'s ducks") and f"does {new_name} make" in question
    assert numbers_in(text) == numbers_in(verbatim_text(item))


@pytest.mark.parametrize("kind", REWORDED_KINDS)
def test_rewordings_keep_every_number_and_break_13_grams(kind):
    for item in LONG_ITEMS + make_items(20):
        text = render_copy(item, kind, injection_module._rng(0, "test", item["id"]))
        assert numbers_in(text) == numbers_in(verbatim_text(item)), (kind, item["id"], text)
        assert item["question"] not in text
    for item in LONG_ITEMS:
        text = render_copy(item, kind, injection_module._rng(0, "test", item["id"]))
        assert ngram_survival(item["question"], text, 13) < 0.5, (kind, text)


def test_reordering_keeps_the_final_question_last():
    item = LONG_ITEMS[0]
    text = render_copy(item, "reworded_order", injection_module._rng(1, "test"))
    question = text.split("\nAnswer: ")[0].removeprefix("Question: ")
    *_, final = injection_module._sentences(question)
    assert final.startswith("How much money does ") and final.endswith(" make in one day?")
    assert not question.endswith("runs a small bakery.") and " runs a small bakery." in question  # it moved
    assert not question.split(" ", 1)[1].startswith("runs a small bakery.")


def test_ngram_survival():
    assert ngram_survival("one two three four", "one two three four five", 3) == 1.0
    assert ngram_survival("one two three four", "one two three", 3) == 0.5
    assert ngram_survival("too short", "too short", 3) is None


# ---- injection --------------------------------------------------------------------------------------------------

def test_offsets_point_exactly_at_the_copies(injected, items):
    item_of = {item["id"]: item for item in items}
    document_of = {document["id"]: document for document in injected.corpus}
    assert set(injected.truth["kind"]) == set(KINDS)
    for row in injected.truth.iter_rows(named=True):
        document = document_of[row["doc_id"]]
        copy_text = document["text"][row["start"]: row["end"]]
        item = item_of[row["item_id"]]
        if (expected := expected_copy(item, row["kind"])) is not None:
            assert copy_text == expected
        else:  # a reworded copy is its own document, every number kept, the question no longer verbatim
            assert (row["start"], row["end"]) == (0, len(document["text"]))
            assert numbers_in(copy_text) == numbers_in(verbatim_text(item))
            assert item["question"] not in copy_text
        if row["kind"] != "embedded":
            assert document == {
                "id": f"inject-{row['item_id']}-{row['kind']}-{row['copy']}", "text": copy_text, "domain": "math",
                "source": "injected",
            }


def test_embedded_hosts_keep_their_id_and_other_text(injected, corpus):
    original_of = {document["id"]: document for document in corpus}
    document_of = {document["id"]: document for document in injected.corpus}
    embedded = injected.truth.filter(pl.col("kind") == "embedded")
    assert embedded.height > 0
    for row in embedded.iter_rows(named=True):
        host, original = document_of[row["doc_id"]], original_of[row["doc_id"]]
        assert {k: host[k] for k in ("domain", "source")} == {k: original[k] for k in ("domain", "source")}
        assert host["domain"] in HOST_DOMAINS
        text, start, end = host["text"], row["start"], row["end"]
        assert text[end: end + len(EMBED_SEPARATOR)] == EMBED_SEPARATOR
        assert text[:start] + text[end + len(EMBED_SEPARATOR):] == original["text"]
        assert text[start - 1] in "\n " and 0.25 * len(original["text"]) <= start <= 0.75 * len(original["text"])
        assert not text[:start].endswith("Mr. ")  # a sentence boundary, not an abbreviation


def test_every_original_document_stays_and_only_hosts_change(injected, corpus):
    ids = [document["id"] for document in injected.corpus]
    assert len(ids) == len(set(ids))
    hosts = set(injected.truth.filter(pl.col("kind") == "embedded")["doc_id"])
    document_of = {document["id"]: document for document in injected.corpus}
    for document in corpus:  # the GSM8K-train-like math documents (hard negatives) among them
        if document["id"] not in hosts:
            assert document_of[document["id"]] == document
    assert len(injected.corpus) == len(corpus) + injected.truth.filter(pl.col("kind") != "embedded").height
    # the new documents are spread among the originals, not appended at the end
    new_positions = [i for i, document in enumerate(injected.corpus) if document["source"] == "injected"]
    assert new_positions[0] < len(injected.corpus) // 2


def test_no_document_carries_two_copies(injected):
    assert injected.truth["doc_id"].n_unique() == injected.truth.height


def test_input_is_not_modified(corpus, items):
    corpus_before, items_before = copying.deepcopy(corpus), copying.deepcopy(items)
    inject(corpus, items, rate=0.05, seed=1)
    assert corpus == corpus_before and items == items_before


@pytest.mark.parametrize("rate", RATES + (0.1, 0.3))
def test_rate_holds_within_one_document(corpus, items, rate):
    result = inject(corpus, make_items(400), rate=rate, seed=0)
    counts = result.counts()
    assert abs(counts["carrying_documents"] - rate * counts["documents"]) < 1
    assert counts["carrying_documents"] == result.truth.height


def test_kinds_balanced_and_copies_in_range(injected):
    injected_items = injected.item_kinds.filter(pl.col("kind") != "none")
    per_kind = injected_items.group_by("kind").len()["len"]
    assert per_kind.max() - per_kind.min() <= 1
    assert injected_items["copies"].min() >= 1 and injected_items["copies"].max() <= 3
    counted = injected.truth.group_by("item_id").agg(pl.len().alias("n"), pl.col("copy").sort().alias("copies_seen"))
    joined = injected_items.join(counted, on="item_id")
    assert joined.height == injected_items.height
    for row in joined.iter_rows(named=True):
        assert row["n"] == row["copies"] and row["copies_seen"] == list(range(1, row["copies"] + 1))


def test_negatives_are_never_injected(injected, items):
    negatives = injected.item_kinds.filter(pl.col("kind") == "none")
    assert negatives.height == len(items) - injected.item_kinds.filter(pl.col("kind") != "none").height
    assert set(negatives["copies"]) == {0}
    assert not set(negatives["item_id"]) & set(injected.truth["item_id"])
    item_of = {item["id"]: item for item in items}
    all_text = "\n".join(document["text"] for document in injected.corpus)
    for item_id in negatives["item_id"]:
        assert item_of[item_id]["question"] not in all_text and item_of[item_id]["answer"] not in all_text


def test_counted_negatives_are_the_same_at_every_rate(corpus, items):
    results = [inject(corpus, items, rate=rate, seed=5, negatives=50) for rate in RATES]
    negative_sets = [set(r.item_kinds.filter(pl.col("kind") == "none")["item_id"]) for r in results]
    assert all(len(s) == 50 for s in negative_sets) and negative_sets[0] == negative_sets[1] == negative_sets[2]


def test_a_higher_rate_injects_a_superset(corpus, items):
    low, high = (inject(corpus, items, rate=rate, seed=2) for rate in (0.005, 0.015))
    columns = ["item_id", "kind", "copy", "doc_id", "start", "end"]
    low_rows = set(low.truth.select(columns).iter_rows())
    high_rows = set(high.truth.select(columns).iter_rows())
    # every low-rate copy is at the high rate too, except that the low rate's last item may have been cut short
    last_item = low.truth["item_id"][-1]
    assert {row for row in low_rows if row[0] != last_item} <= high_rows
    assert {row[:2] for row in low_rows} <= {row[:2] for row in high_rows}


def test_deterministic_from_the_seed(corpus, items):
    first, again, other = (inject(corpus, items, rate=0.05, seed=seed) for seed in (7, 7, 8))
    assert first.corpus == again.corpus
    assert first.truth.equals(again.truth) and first.item_kinds.equals(again.item_kinds)
    assert not first.truth.equals(other.truth)


def test_kinds_subset(corpus, items):
    result = inject(corpus, items, rate=0.05, kinds=["reworded_order", "verbatim"], seed=0)
    assert set(result.truth["kind"]) == {"verbatim", "reworded_order"}
    assert result.kinds == ("verbatim", "reworded_order")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rate": 0}, r"rate must be in \(0, 0.5\]"),
        ({"rate": -0.01}, "rate must be"),
        ({"rate": 0.51}, "rate must be"),
        ({"kinds": ["verbatim", "paraphrase"]}, "unknown kind 'paraphrase'"),
        ({"kinds": "verbatim"}, "not the string"),
        ({"kinds": []}, "kinds is empty"),
        ({"kinds": ["verbatim", "verbatim"]}, "twice"),
        ({"copies": (0, 2)}, "copies must be"),
        ({"copies": (3, 2)}, "copies must be"),
        ({"negatives": 0}, "negatives must be between 1 and 199"),
        ({"negatives": 200}, "negatives must be"),
        ({"rate": 0.5}, "too few items for rate 0.5"),
        ({"rate": 0.1, "negatives": 195}, "too few items for rate 0.1"),
    ],
)
def test_bad_input_names_the_problem(corpus, items, arguments, message):
    with pytest.raises(ValueError, match=message):
        inject(corpus, items, **({"rate": 0.01} | arguments))


def test_too_few_items_when_every_item_would_be_injected(corpus):
    with pytest.raises(ValueError, match="none is left as a negative"):
        inject(corpus, make_items(6), rate=0.01, copies=(1, 1))  # the rate needs 6 copies, one per item


def test_bad_records_name_the_problem(corpus, items):
    with pytest.raises(ValueError, match="items id 'item-0000' appears twice"):
        inject(corpus, items + [items[0]], rate=0.01)
    with pytest.raises(ValueError, match=r"items record 0 lacks the text fields \['answer'\]"):
        inject(corpus, [{"id": "a", "question": "q"}] + items, rate=0.01)
    with pytest.raises(ValueError, match="corpus is empty"):
        inject([], items, rate=0.01)


def test_embedded_without_hosts_names_the_problem(items):
    maths_only = [math_document(i) for i in range(200)]
    with pytest.raises(ValueError, match="embedded needs .* host documents .*the corpus has 0"):
        inject(maths_only, items, rate=0.05, kinds=["embedded"])


# ---- writing ----------------------------------------------------------------------------------------------------

def test_write_injection_round_trips(injected, tmp_path):
    folder = write_injection(injected, tmp_path / "out")
    assert read_jsonl(folder / "corpus.jsonl") == injected.corpus
    assert pl.read_parquet(folder / "truth.parquet").equals(injected.truth)
    assert pl.read_parquet(folder / "items.parquet").equals(injected.item_kinds)
    manifest = json.loads((folder / "injection.json").read_text())
    assert manifest["rate"] == 0.1 and manifest["seed"] == 3 and manifest["kinds"] == list(KINDS)
    assert manifest["counts"] == json.loads(json.dumps(injected.counts()))
    assert set(manifest["inputs"]) == {"corpus", "items"} and set(manifest["files"]) == {
        "corpus.jsonl", "truth.parquet", "items.parquet",
    }
    assert manifest["files"]["corpus.jsonl"] == injection_module._file_digest(folder / "corpus.jsonl")
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["corpus.jsonl", "injection.json", "items.parquet", "truth.parquet"]  # no temporary left


def test_a_crash_while_writing_leaves_no_complete_looking_folder(injected, tmp_path, monkeypatch):
    folder = write_injection(injected, tmp_path / "out")  # an earlier, complete injection

    def crash(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_injection(injected, folder)
    names = sorted(path.name for path in folder.iterdir())
    assert "injection.json" not in names  # the old manifest does not vouch for the new files
    assert not [name for name in names if name.endswith(".tmp")]
    assert pl.read_parquet(folder / "truth.parquet").equals(injected.truth)  # the earlier whole file, not the half one


# ---- command line -----------------------------------------------------------------------------------------------

@pytest.fixture
def data_dir(tmp_path, corpus, items) -> Path:
    (tmp_path / "corpus").mkdir()
    for domain in ("wiki", "shakespeare", "tales", "math"):
        with open(tmp_path / "corpus" / f"{domain}.jsonl", "w") as handle:
            for document in corpus:
                if document["domain"] == domain:
                    handle.write(json.dumps(document) + "\n")
    with open(tmp_path / "bench.jsonl", "w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    return tmp_path


def test_cli_writes_an_injection(data_dir):
    out = data_dir / "out"
    arguments = ["--rate", "0.05", "--seed", "1", "--out", str(out), "--corpus-dir", str(data_dir / "corpus"),
                 "--benchmark", str(data_dir / "bench.jsonl"), "--domains", "wiki,math", "--max-documents", "250"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "injection.json").read_text())
    documents = read_jsonl(out / "corpus.jsonl")
    assert manifest["rate"] == 0.05 and manifest["counts"]["documents"] == len(documents)
    assert {document["domain"] for document in documents} == {"wiki", "math"}
    assert len(documents) - manifest["counts"]["new_documents"] == 250
    assert "reworded_light" in result.output and "13-grams kept" in result.output


def test_cli_reports_bad_input(data_dir):
    common = ["--out", str(data_dir / "out"), "--corpus-dir", str(data_dir / "corpus"), "--benchmark",
              str(data_dir / "bench.jsonl")]
    result = CliRunner().invoke(main, ["--rate", "0.7", *common])
    assert result.exit_code == 2 and "rate must be in (0, 0.5]" in result.output
    result = CliRunner().invoke(main, ["--rate", "0.01", "--kinds", "verbatim,typo", *common])
    assert result.exit_code == 2 and "unknown kind 'typo'" in result.output
    assert not (data_dir / "out").exists()


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "curate.contamination.inject", "--help"], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0 and "--max-documents" in result.stdout


# ---- the shared real data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_items() -> list[dict[str, str]]:
    path = SHARED_DATA / "benchmarks" / "gsm8k_test.jsonl"
    if not path.is_file():
        pytest.skip(f"the shared data is absent ({path})")
    return read_jsonl(path)


@pytest.fixture(scope="module")
def real_corpus() -> list[dict[str, str]]:
    folder = SHARED_DATA / "corpus"
    if not folder.is_dir():
        pytest.skip(f"the shared data is absent ({folder})")
    return injection_module.read_corpus(folder, ["wiki", "shakespeare", "tales", "math"])


def test_real_rewordings_keep_numbers_and_break_most_13_grams(real_items):
    rows = []
    for kind in KINDS:
        for item in real_items:
            text = render_copy(item, kind, injection_module._rng(0, "copy", item["id"], kind, 1))
            if kind in REWORDED_KINDS:
                assert numbers_in(text) == numbers_in(verbatim_text(item)), (kind, item["id"], text)
            rows.append({"kind": kind} | {f"survival_{n}": ngram_survival(item["question"], text, n) for n in (13, 8)})
    table = pl.DataFrame(rows).group_by("kind").agg(pl.col("survival_13").mean(), pl.col("survival_8").mean())
    table = table.sort("kind")
    print("\nmean share of the question's n-grams kept, per kind:\n", table)
    survival = dict(table.select("kind", "survival_13").iter_rows())
    for kind in REWORDED_KINDS:
        assert survival[kind] < 0.5, (kind, survival[kind])
    assert survival["verbatim"] == survival["question_only"] == survival["embedded"] == 1.0


@pytest.mark.parametrize("rate", RATES)
def test_real_injection(real_corpus, real_items, rate):
    result = inject(real_corpus, real_items, rate=rate, seed=0)
    counts = result.counts()
    assert abs(counts["carrying_documents"] - rate * counts["documents"]) < 1
    assert result.truth["doc_id"].n_unique() == result.truth.height
    item_of = {item["id"]: item for item in real_items}
    document_of = {document["id"]: document for document in result.corpus}
    for row in result.truth.iter_rows(named=True):
        expected = expected_copy(item_of[row["item_id"]], row["kind"])
        if expected is not None:
            assert document_of[row["doc_id"]]["text"][row["start"]: row["end"]] == expected
    hosts = set(result.truth.filter(pl.col("kind") == "embedded")["doc_id"])
    assert all(document_of[host]["domain"] in HOST_DOMAINS for host in hosts)
    for document in real_corpus:  # the GSM8K train documents (hard negatives) and every non-host, unchanged
        if document["id"] not in hosts:
            assert document_of[document["id"]] == document
