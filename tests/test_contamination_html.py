"""The audit's review page: pure-Python checks of its pieces, then the page as a person sees it in headless Chromium.

The Chromium tests read the DOM after the page's script ran (--dump-dom) and a screenshot; they skip when no
chromium binary is installed (Debian: apt-get install chromium).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import polars as pl
import pytest

from curate.contamination.html import (
    LONG_DOCUMENT_CHARS,
    Highlight,
    document_text_html,
    merge_spans,
    render_audit_html,
)

PLANTED_QUESTION = "What is the capital of the planet Zorblax, given that its moons are made of cheese?"
PLANTED_ANSWER = "Glorp City"
FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
PLANTED_TEXT = FILLER * 6 + PLANTED_QUESTION + " Everyone knows the answer is " + PLANTED_ANSWER + ". " + FILLER * 4
# A forum dump that quotes markup: shown as text, it must never run or add elements to the page.
SCRIPT_PAYLOAD = "<script>alert(1)</script>"
BLINK_SCRIPT = "<script>document.body.appendChild(document.createElement('blink'))</script>"
SCRIPT_TEXT = (  # markup before the document's mark, inside it, and after it: each piece is escaped on its own
    "Forum post quoting a benchmark: " + SCRIPT_PAYLOAD + " " + BLINK_SCRIPT + " Who wrote Hamlet?"
    + " Shakespeare. <img src=x onerror=\"document.body.setAttribute('data-pwned', '1')\">"
)

ITEM_SCHEMA = {
    "benchmark": pl.String, "item_id": pl.String, "question": pl.String, "answer": pl.String, "verdict": pl.String,
    "signals": pl.List(pl.String), "question_coverage": pl.Float64, "answer_coverage": pl.Float64,
    "fuzzy_similarity": pl.Float64, "attribution_z": pl.Float64, "loss": pl.Float64, "min_k_pp": pl.Float64,
    "documents": pl.Int64,
}
DOCUMENT_SCHEMA = {
    "doc_id": pl.String, "benchmark": pl.String, "item_id": pl.String, "signals": pl.List(pl.String),
    "question_coverage": pl.Float64, "answer_coverage": pl.Float64, "fuzzy_similarity": pl.Float64,
    "attribution_score": pl.Float64, "attribution_rank": pl.Int64, "attribution_z": pl.Float64,
    "spans": pl.List(pl.Struct({"start": pl.Int64, "end": pl.Int64, "field": pl.String})), "text": pl.String,
}
SETTINGS = {"tokenizer": "gpt2", "thresholds": {"question_coverage": 0.8, "attribution_z": 3.5}, "note": "<b>bold?</b>"}


def _item(benchmark, item_id, question, answer, verdict, signals, coverage, loss, documents, z=None):
    return {
        "benchmark": benchmark, "item_id": item_id, "question": question, "answer": answer, "verdict": verdict,
        "signals": signals, "question_coverage": coverage, "answer_coverage": coverage / 2, "fuzzy_similarity": None,
        "attribution_z": z, "loss": loss, "min_k_pp": None if loss is None else -loss, "documents": documents,
    }


def audit_items() -> pl.DataFrame:
    # Given out of order on purpose: the page puts the flagged items first itself.
    return pl.DataFrame([
        _item("arith", "q2", "What is 2 + 2?", "4", "clean", [], 0.1, 10.5, 0),
        _item("trivia", "t1", "Who wrote Hamlet?", "Shakespeare", "suspicious", ["fuzzy", "attribution"], 0.5, None, 1, 4.2),
        _item("trivia", "t2", "What colour is the sky?", "Blue", "clean", [], 0.0, 0.4, 0),
        _item("arith", "q1", PLANTED_QUESTION, PLANTED_ANSWER, "contaminated", ["lexical"], 1.0, 2.0, 1, 2.0),
    ], schema=ITEM_SCHEMA)


def audit_documents() -> pl.DataFrame:
    question_at = PLANTED_TEXT.index(PLANTED_QUESTION)
    answer_at = PLANTED_TEXT.index(PLANTED_ANSWER)
    marked_from = SCRIPT_TEXT.index(BLINK_SCRIPT)
    marked_to = SCRIPT_TEXT.index(" Shakespeare.")
    return pl.DataFrame([
        {
            "doc_id": "doc-planted", "benchmark": "arith", "item_id": "q1", "signals": ["lexical"],
            "question_coverage": 1.0, "answer_coverage": 1.0, "fuzzy_similarity": None, "attribution_score": 0.75,
            "attribution_rank": 1, "attribution_z": 2.0,
            # Unsorted, and the question split in two overlapping spans: the page merges them into one mark.
            "spans": [
                {"start": answer_at, "end": answer_at + len(PLANTED_ANSWER), "field": "answer"},
                {"start": question_at + 20, "end": question_at + len(PLANTED_QUESTION), "field": "question"},
                {"start": question_at, "end": question_at + 30, "field": "question"},
            ],
            "text": PLANTED_TEXT,
        },
        {
            "doc_id": "doc-script", "benchmark": "trivia", "item_id": "t1", "signals": ["fuzzy"],
            "question_coverage": 0.5, "answer_coverage": 1.0, "fuzzy_similarity": 0.9, "attribution_score": None,
            "attribution_rank": None, "attribution_z": None,
            "spans": [
                {"start": marked_from, "end": marked_to, "field": "fuzzy"},
                {"start": len(SCRIPT_TEXT) + 5, "end": len(SCRIPT_TEXT) + 50, "field": "fuzzy"},  # past the text: dropped
            ],
            "text": SCRIPT_TEXT,
        },
    ], schema=DOCUMENT_SCHEMA)


# --- pure Python -----------------------------------------------------------------------------------------------


def test_merge_spans_sorts_merges_and_clips():
    spans = [
        {"start": 30, "end": 40, "field": "answer"},
        {"start": 5, "end": 12, "field": "question"},
        {"start": 0, "end": 8, "field": "question"},  # overlaps the one above: one highlight
        {"start": 12, "end": 15, "field": "question"},  # touches it: still one
        {"start": 35, "end": 45, "field": "fuzzy"},  # overlaps the answer: the overlap carries both fields
        {"start": -10, "end": -2, "field": "fuzzy"},  # wholly before the text: dropped
        {"start": 48, "end": 500, "field": "fuzzy"},  # past the end: clipped
        {"start": 70, "end": 90, "field": "answer"},  # wholly past the end: dropped
        {"start": 20, "end": 20, "field": "answer"},  # empty: dropped
        {"start": 25, "end": 22, "field": "answer"},  # reversed: dropped
    ]
    assert merge_spans(spans, 50) == [
        Highlight(0, 15, ("question",)),
        Highlight(30, 35, ("answer",)),
        Highlight(35, 40, ("answer", "fuzzy")),
        Highlight(40, 45, ("fuzzy",)),
        Highlight(48, 50, ("fuzzy",)),
    ]
    assert merge_spans(None, 10) == [] and merge_spans([], 0) == []


def test_document_text_marks_spans_and_escapes_them():
    text = "intro <b>Q & A</b> outro"
    shown = document_text_html(text, [{"start": 6, "end": 18, "field": "question"}, {"start": 0, "end": 99, "field": "fuzzy"}])
    assert "<b>" not in shown and "&lt;b&gt;Q &amp; A&lt;/b&gt;" in shown
    marks = re.findall(r'<mark class="([^"]+)"[^>]*>(.*?)</mark>', shown)
    assert marks == [("fuzzy", "intro "), ("fuzzy question", "&lt;b&gt;Q &amp; A&lt;/b&gt;"), ("fuzzy", " outro")]
    assert "elision" not in shown  # a short document is shown whole


def test_long_document_is_elided_around_its_spans_keeping_every_span():
    text = "".join(f"word{i:05d} " for i in range(3000))  # 30,000 characters
    first, last = text.index("word00100"), text.index("word02900")
    middle = text.index("word01500")
    spans = [
        {"start": last, "end": last + 9, "field": "answer"},
        {"start": first, "end": first + 9, "field": "question"},
        {"start": middle, "end": middle + 30, "field": "fuzzy"},
        {"start": middle + 10, "end": middle + 40, "field": "fuzzy"},
    ]
    shown = document_text_html(text, spans)
    marks = re.findall(r'<mark class="([^"]+)"[^>]*>(.*?)</mark>', shown)
    assert marks == [("question", "word00100"), ("fuzzy", text[middle:middle + 40]), ("answer", "word02900")]
    assert shown.count("…") == 4  # before the first excerpt, between the three, after the last
    assert len(shown) < 6000 < len(text)
    # A long document with no span still shows its opening, then elides the rest.
    opening = document_text_html(text, [])
    assert opening.startswith("word00000") and opening.endswith("characters left out\">…</span>")
    assert len(opening) < LONG_DOCUMENT_CHARS


def test_page_escapes_everything_user_provided():
    items = audit_items().with_columns(
        pl.when(pl.col("item_id") == "t2").then(pl.lit('t2"><i>x</i>')).otherwise(pl.col("item_id")).alias("item_id")
    )
    page = render_audit_html(items, audit_documents(), SETTINGS, title="Audit <of> \"things\"")
    assert page.count("<script") == 1  # the page's own script, nothing from a document
    assert SCRIPT_PAYLOAD not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and "<blink" not in page
    assert "<b>bold?</b>" not in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    assert "<i>x</i>" not in page and "t2&quot;&gt;&lt;i&gt;x&lt;/i&gt;" in page
    assert "<title>Audit &lt;of&gt; &quot;things&quot;</title>" in page


def test_page_is_self_contained():
    page = render_audit_html(audit_items(), audit_documents(), SETTINGS)
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert not re.search(r"<[a-z][^>]*\s(src|srcset)\s*=", page)  # no tag loads anything (the quoted <img> is text)
    assert "url(" not in page and "@import" not in page and "<link" not in page
    assert re.findall(r'href="([^"]*)"', page) == ["#item-0", "#item-1"]  # in-page links only
    assert "default-src 'none'" in page


def test_page_orders_flagged_items_first_and_counts_verdicts():
    page = render_audit_html(audit_items(), audit_documents(), SETTINGS)
    rows = re.findall(r'<tr data-order="\d+" data-verdict="(\w+)" data-item-key="([^"]+)"', page)
    assert rows == [("contaminated", "arith/q1"), ("suspicious", "trivia/t1"), ("clean", "arith/q2"), ("clean", "trivia/t2")]
    assert '<td class="count" data-benchmark="arith" data-verdict="contaminated">1</td>' in page
    assert '<td class="count" data-benchmark="all" data-verdict="clean">2</td>' in page
    assert '<td class="count" data-benchmark="all" data-verdict="all">4</td>' in page
    assert page.count('<details class="item"') == 2  # the two flagged items, not the clean ones


@pytest.mark.parametrize(
    "items, documents",
    [
        (pl.DataFrame(), pl.DataFrame()),  # an audit of nothing
        (pl.DataFrame(schema=ITEM_SCHEMA), pl.DataFrame(schema=DOCUMENT_SCHEMA)),  # read back from empty parquet
        (audit_items().filter(pl.col("verdict") == "clean"), pl.DataFrame(schema=DOCUMENT_SCHEMA)),  # all clean
    ],
    ids=["no-columns", "no-rows", "all-clean"],
)
def test_page_without_flagged_items_says_so(items, documents):
    page = render_audit_html(items, documents, {})
    assert 'id="no-flagged">No item is flagged' in page
    assert "<details" not in page and "No settings were recorded." in page
    assert ("No items were audited." in page) == (items.height == 0)


# --- in headless Chromium ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    return binary


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "audit.html"
    path.write_text(render_audit_html(audit_items(), audit_documents(), SETTINGS), encoding="utf-8")
    return path


def run_chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Headless Chromium with its own HOME and profile, so runs neither share state nor touch the user's."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        f"--user-data-dir={profile / 'user-data'}", *arguments,
    ]
    environment = {**os.environ, "HOME": str(profile)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def dump_dom(binary: str, profile: Path, url: str) -> str:
    # The virtual time budget lets the page's script (and anything a bad escape had let in) run before the dump.
    return run_chromium(binary, profile, "--virtual-time-budget=3000", "--dump-dom", url).stdout


VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.walk()

    def find_all(self, tag: str, css_class: str | None = None, **attributes: str) -> list[Element]:
        return [
            element for element in self.walk()
            if element.tag == tag
            and (css_class is None or css_class in element.attributes.get("class", "").split())
            and all(element.attributes.get(name.replace("_", "-")) == value for name, value in attributes.items())
        ]

    def find(self, tag: str, css_class: str | None = None, **attributes: str) -> Element:
        found = self.find_all(tag, css_class, **attributes)
        assert len(found) == 1, f"{len(found)} <{tag}> elements match {css_class} {attributes}"
        return found[0]


class DomTree(HTMLParser):
    """The dumped DOM as a tree of elements: Chromium serialises it with every tag closed."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.open_elements = [self.root]
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open_elements[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.open_elements.append(element)

    def handle_startendtag(self, tag, attrs):
        self.open_elements[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag):
        while len(self.open_elements) > 1 and self.open_elements.pop().tag != tag:
            pass

    def handle_data(self, data):
        self.open_elements[-1].children.append(data)


def item_rows(dom: Element) -> list[tuple[str, bool]]:
    """The items table as the reader sees it: each row's item and whether it is hidden, top to bottom."""
    body = dom.find("table", id="items-table").find_all("tbody")[0]
    return [(row.attributes["data-item-key"], "hidden" in row.attributes) for row in body.find_all("tr")]


def test_page_in_chromium_shows_marks_counts_and_escaped_text(chromium, page_file, tmp_path):
    markup = dump_dom(chromium, tmp_path, page_file.as_uri())
    dom = DomTree(markup).root
    assert dom.find("body").attributes.get("data-ready") == "1"  # the page's script ran to its end

    planted = dom.find("article", "document", data_doc_id="doc-planted")
    assert [mark.text() for mark in planted.find_all("mark", "question")] == [PLANTED_QUESTION]
    assert [mark.text() for mark in planted.find_all("mark", "answer")] == [PLANTED_ANSWER]
    assert planted.find("pre", "document-text").text() == PLANTED_TEXT  # short: shown whole
    planted_item = dom.find("details", "item", data_item_key="arith/q1")
    assert planted_item.find("pre", "item-question").text() == PLANTED_QUESTION  # the item beside its document
    assert planted_item.find_all("article", "document") == [planted]

    counts = {(td.attributes["data-benchmark"], td.attributes["data-verdict"]): td.text() for td in dom.find_all("td", "count")}
    assert counts[("arith", "contaminated")] == "1" and counts[("arith", "clean")] == "1"
    assert counts[("trivia", "suspicious")] == "1" and counts[("trivia", "clean")] == "1"
    assert counts[("all", "all")] == "4" and counts[("trivia", "contaminated")] == "0"

    # The document that quotes markup shows it as text; none of it became an element or ran.
    quoting = dom.find("article", "document", data_doc_id="doc-script")
    assert quoting.find("pre", "document-text").text() == SCRIPT_TEXT
    assert [mark.text() for mark in quoting.find_all("mark", "fuzzy")] == [BLINK_SCRIPT + " Who wrote Hamlet?"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert len(dom.find_all("script")) == 1 and not dom.find_all("blink") and not dom.find_all("img")
    assert "data-pwned" not in dom.find("body").attributes
    assert not [name for element in dom.walk() for name in element.attributes if name.startswith("on")]
    assert dom.find("table", id="settings").text().count("<b>bold?</b>") == 1


def test_page_in_chromium_sorts_and_filters_from_the_fragment(chromium, page_file, tmp_path):
    default = DomTree(dump_dom(chromium, tmp_path / "default", page_file.as_uri())).root
    assert item_rows(default) == [("arith/q1", False), ("trivia/t1", False), ("arith/q2", False), ("trivia/t2", False)]
    assert "flagged first" in default.find("p", id="table-status").text()

    ascending = DomTree(dump_dom(chromium, tmp_path / "ascending", page_file.as_uri() + "#sort=loss")).root
    # Loss 0.4, 2.0, 10.5 (as text 10.5 would come before 2.0); the item without a loss goes last either way.
    assert [key for key, _ in item_rows(ascending)] == ["trivia/t2", "arith/q1", "arith/q2", "trivia/t1"]
    assert ascending.find("th", data_key="loss").attributes.get("aria-sort") == "ascending"

    descending = DomTree(
        dump_dom(chromium, tmp_path / "descending", page_file.as_uri() + "#sort=-loss&verdict=clean")
    ).root
    assert item_rows(descending) == [("arith/q2", False), ("arith/q1", True), ("trivia/t2", False), ("trivia/t1", True)]
    assert all("hidden" in block.attributes for block in descending.find_all("details", "item"))
    assert descending.find("button", data_verdict="clean").attributes["aria-pressed"] == "true"
    assert "Showing 2 of 4 items, sorted by loss (descending)" in descending.find("p", id="table-status").text()


def test_page_in_chromium_screenshot_is_a_picture(chromium, page_file, tmp_path):
    screenshot = tmp_path / "audit.png"
    run_chromium(chromium, tmp_path, "--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1280,2000",
                 page_file.as_uri())
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    assert (width, height) == (1280, 2000)
    # Not a blank page: the pixels (decompressed IDAT data) vary.
    pixels = zlib.decompress(b"".join(_png_chunks(png, b"IDAT")))
    assert len(set(pixels)) > 20


def _png_chunks(png: bytes, kind: bytes) -> Iterator[bytes]:
    position = 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position:position + 4])
        if png[position + 4:position + 8] == kind:
            yield png[position + 8:position + 8 + length]
        position += 12 + length
