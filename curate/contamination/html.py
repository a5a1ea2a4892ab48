"""The review page of a contamination audit: one self-contained HTML file a person opens in a browser.

The page reads top to bottom: a summary (items per verdict per benchmark, the audit's settings), a sortable table
of every item (flagged ones first), then each flagged item with its documents beside it, the matched spans of each
document highlighted. Everything is inline (CSS, JS) and nothing is fetched, so the file can be mailed or archived
as it is. Every user-provided string (questions, answers, document texts, ids, settings) is HTML-escaped; a
Content-Security-Policy that only allows the page's own script (by its hash) is a second guard on top.

The script sorts the table (click a header; numeric columns sort as numbers, missing values last) and filters by
verdict. Its state lives in the URL fragment, e.g. `#sort=-question_coverage&verdict=suspicious`, so a view can be
linked to and a headless browser can be pointed at one.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Iterable, Mapping

import polars as pl

VERDICTS = ("contaminated", "suspicious", "clean")  # most severe first: the table's default order
FLAGGED_VERDICTS = frozenset({"contaminated", "suspicious"})

# A document up to this long is shown whole; a longer one only around its spans, the rest elided with "…".
LONG_DOCUMENT_CHARS = 4000
EXCERPT_CONTEXT_CHARS = 300
# A gap between two excerpts shorter than this is shown rather than elided: "…" would save almost nothing.
MIN_ELIDED_CHARS = 80
TABLE_QUESTION_CHARS = 120


# --- spans ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Highlight:
    """A stretch [start, end) of a document's text and the span fields (question, answer, fuzzy) that cover it."""

    start: int
    end: int
    fields: tuple[str, ...]


def merge_spans(spans: Iterable[Mapping[str, Any]] | None, text_length: int) -> list[Highlight]:
    """The document's spans as sorted, non-overlapping highlights, clipped to the text.

    Spans may come unsorted, overlap, repeat, or reach past the text (offsets from another version of it): they
    are clipped to [0, text_length) and empty ones dropped. Overlapping or touching spans of one field become one
    highlight; where spans of different fields overlap, the overlap is its own highlight carrying both fields.
    """
    clipped: list[tuple[int, int, str]] = []
    for span in spans or ():
        if span is None or span.get("start") is None or span.get("end") is None:
            continue
        start, end = max(0, int(span["start"])), min(text_length, int(span["end"]))
        if start < end:
            clipped.append((start, end, str(span.get("field") or "span")))
    starting_at: dict[int, list[str]] = defaultdict(list)
    ending_at: dict[int, list[str]] = defaultdict(list)
    for start, end, field in clipped:
        starting_at[start].append(field)
        ending_at[end].append(field)
    # Sweep the boundaries, keeping count of the spans of each field that are open between two of them.
    open_fields: Counter[str] = Counter()
    highlights: list[Highlight] = []
    for left, right in pairwise(sorted(starting_at.keys() | ending_at.keys())):
        open_fields.update(starting_at[left])
        open_fields.subtract(ending_at[left])
        fields = tuple(sorted(field for field, count in open_fields.items() if count > 0))
        if not fields:
            continue
        if highlights and highlights[-1].end == left and highlights[-1].fields == fields:
            highlights[-1] = Highlight(highlights[-1].start, right, fields)
        else:
            highlights.append(Highlight(left, right, fields))
    return highlights


def excerpt_ranges(text_length: int, highlights: list[Highlight]) -> list[tuple[int, int]]:
    """The stretches of a document to show: all of a short one; around every highlight of a long one."""
    if text_length <= LONG_DOCUMENT_CHARS:
        return [(0, text_length)]
    if not highlights:  # nothing to centre on: the opening says what the document is
        return [(0, 2 * EXCERPT_CONTEXT_CHARS)]
    ranges: list[tuple[int, int]] = []
    for highlight in highlights:  # sorted and disjoint, so the ranges come sorted too
        start = max(0, highlight.start - EXCERPT_CONTEXT_CHARS)
        end = min(text_length, highlight.end + EXCERPT_CONTEXT_CHARS)
        if ranges and start - ranges[-1][1] < MIN_ELIDED_CHARS:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    if ranges[0][0] < MIN_ELIDED_CHARS:
        ranges[0] = (0, ranges[0][1])
    if text_length - ranges[-1][1] < MIN_ELIDED_CHARS:
        ranges[-1] = (ranges[-1][0], text_length)
    return ranges


def document_text_html(text: str, spans: Iterable[Mapping[str, Any]] | None) -> str:
    """A document's text, escaped, its spans in <mark> elements (one class per field), long stretches elided."""
    highlights = merge_spans(spans, len(text))
    pieces: list[str] = []
    shown_until = 0
    for start, end in excerpt_ranges(len(text), highlights):
        if start > shown_until:
            pieces.append(_elision(start - shown_until))
        position = start
        for highlight in (h for h in highlights if start <= h.start and h.end <= end):
            pieces.append(_escape(text[position:highlight.start]))
            classes = " ".join(_css_class(field) for field in highlight.fields)
            pieces.append(
                f'<mark class="{classes}" title="{_escape(" + ".join(highlight.fields))}">'
                f"{_escape(text[highlight.start:highlight.end])}</mark>"
            )
            position = highlight.end
        pieces.append(_escape(text[position:end]))
        shown_until = end
    if shown_until < len(text):
        pieces.append(_elision(len(text) - shown_until))
    return "".join(pieces)


def _elision(characters: int) -> str:
    return f'<span class="elision" title="{characters} characters left out">…</span>'


# --- formatting ----------------------------------------------------------------------------------------------


def _escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _css_class(name: str) -> str:
    """A field or verdict as a class name: the audit's names are plain words; anything else is made one."""
    return re.sub(r"[^a-z0-9_-]", "-", str(name).lower()) or "unnamed"


def _number(value: Any) -> float | None:
    """A metric as a float; null and NaN are both "no value"."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _shown_number(value: Any, spec: str) -> str:
    number = _number(value)
    return "—" if number is None else format(number, spec)


def _sort_value(value: Any) -> str:
    """A metric as the script reads it to sort: exact, and a string JavaScript's parseFloat understands."""
    number = _number(value)
    if number is None:
        return ""
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _signals_html(signals: Iterable[str] | None) -> str:
    return " ".join(f'<span class="signal {_css_class(s)}">{_escape(s)}</span>' for s in signals or ())


def _verdict_html(verdict: str) -> str:
    return f'<span class="verdict {_css_class(verdict)}">{_escape(verdict)}</span>'


def _verdict_rank(verdict: str) -> int:
    return VERDICTS.index(verdict) if verdict in VERDICTS else len(VERDICTS)


def _verdicts_seen(items: pl.DataFrame) -> list[str]:
    """The three verdicts in severity order, then any other the audit wrote (shown rather than dropped)."""
    seen = set(items["verdict"].drop_nulls().unique().to_list()) if items.height else set()
    return list(VERDICTS) + sorted(seen - set(VERDICTS))


# --- summary -------------------------------------------------------------------------------------------------


def _counts_html(items: pl.DataFrame) -> str:
    if items.height == 0:
        return '<p class="empty" id="no-items">No items were audited.</p>'
    verdicts = _verdicts_seen(items)
    counts = {
        (row["benchmark"], row["verdict"]): row["len"]
        for row in items.group_by("benchmark", "verdict").len().iter_rows(named=True)
    }
    benchmarks = sorted({benchmark for benchmark, _ in counts})
    header = "".join(f"<th>{_verdict_html(v)}</th>" for v in verdicts)
    rows = []
    for benchmark in [*benchmarks, None]:  # None: the total over benchmarks
        cells = []
        for verdict in [*verdicts, None]:  # None: the total over verdicts
            count = sum(
                n for (b, v), n in counts.items() if (benchmark is None or b == benchmark) and (verdict is None or v == verdict)
            )
            cells.append(
                f'<td class="count" data-benchmark="{_escape(benchmark or "all")}" '
                f'data-verdict="{_escape(verdict or "all")}">{count}</td>'
            )
        name = "all benchmarks" if benchmark is None else _escape(benchmark)
        row_class = ' class="total"' if benchmark is None else ""
        rows.append(f'<tr{row_class}><th scope="row">{name}</th>{"".join(cells)}</tr>')
    return (
        '<table class="counts" id="verdict-counts"><thead><tr><th>benchmark</th>'
        f'{header}<th>all</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as dotted keys ("thresholds.lexical"): one line each reads better than a JSON blob."""
    flat: list[tuple[str, Any]] = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.extend(_flatten_settings(value, f"{name}."))
        else:
            flat.append((name, value))
    return flat


def _settings_html(settings: Mapping[str, Any]) -> str:
    if not settings:
        return '<p class="empty">No settings were recorded.</p>'
    rows = "".join(
        f"<tr><th scope=\"row\">{_escape(name)}</th><td><code>"
        f"{_escape(value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str))}</code></td></tr>"
        for name, value in _flatten_settings(settings)
    )
    return f'<table class="settings" id="settings"><tbody>{rows}</tbody></table>'


# --- items table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MetricColumn:
    key: str
    label: str
    spec: str  # how the value is shown; the script sorts on the exact value


METRIC_COLUMNS = (
    _MetricColumn("question_coverage", "question coverage", ".3f"),
    _MetricColumn("answer_coverage", "answer coverage", ".3f"),
    _MetricColumn("fuzzy_similarity", "fuzzy similarity", ".3f"),
    _MetricColumn("attribution_z", "attribution z", ".2f"),
    _MetricColumn("loss", "loss", ".3f"),
    _MetricColumn("min_k_pp", "min-k% prob", ".3f"),
    _MetricColumn("documents", "documents", ".0f"),
)


def _header(key: str, label: str, kind: str) -> str:
    """A column header the script sorts by: kind "number" sorts numerically, "text" alphabetically."""
    return f'<th data-key="{key}" data-type="{kind}"><button type="button">{_escape(label)}</button></th>'


def _items_table_html(items: pl.DataFrame, detail_ids: dict[int, str]) -> str:
    if items.height == 0:
        return ""
    headers = [
        _header("benchmark", "benchmark", "text"),
        _header("item_id", "item", "text"),
        # The verdict sorts by severity (its cells carry their rank), so ascending puts the flagged items first.
        _header("verdict", "verdict", "number"),
        _header("question", "question", "text"),
        _header("signals", "signals", "text"),
        *(_header(c.key, c.label, "number") for c in METRIC_COLUMNS),
    ]
    rows = []
    for position, item in enumerate(items.iter_rows(named=True)):
        question = item["question"] or ""
        if len(question) > TABLE_QUESTION_CHARS:
            question = question[:TABLE_QUESTION_CHARS] + "…"
        item_id_html = _escape(item["item_id"])
        if position in detail_ids:  # the id links to the item's block of documents
            item_id_html = f'<a href="#{detail_ids[position]}">{item_id_html}</a>'
        verdict = item["verdict"]
        cells = [
            f'<td data-value="{_escape(item["benchmark"])}">{_escape(item["benchmark"])}</td>',
            f'<td data-value="{_escape(item["item_id"])}">{item_id_html}</td>',
            f'<td data-value="{_verdict_rank(verdict)}">{_verdict_html(verdict)}</td>',
            f'<td class="question" data-value="{_escape(item["question"])}">{_escape(question)}</td>',
            f'<td data-value="{_escape(" ".join(item["signals"] or ()))}">{_signals_html(item["signals"])}</td>',
        ] + [
            f'<td class="number" data-value="{_sort_value(item[c.key])}">{_shown_number(item[c.key], c.spec)}</td>'
            for c in METRIC_COLUMNS
        ]
        rows.append(
            f'<tr data-order="{position}" data-verdict="{_escape(verdict)}" '
            f'data-item-key="{_escape(item["benchmark"])}/{_escape(item["item_id"])}">'
            f'{"".join(cells)}</tr>'
        )
    return (
        '<table class="items" id="items-table"><thead><tr>'
        f'{"".join(headers)}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _verdict_filter_html(items: pl.DataFrame) -> str:
    if items.height == 0:
        return ""
    counts = dict(items.group_by("verdict").len().iter_rows())
    buttons = [f'<button type="button" data-verdict="" aria-pressed="true">all ({items.height})</button>']
    buttons += [
        f'<button type="button" data-verdict="{_escape(v)}" aria-pressed="false">{_escape(v)} ({counts.get(v, 0)})</button>'
        for v in _verdicts_seen(items)
    ]
    return f'<div class="verdict-filter" role="group" aria-label="show items by verdict">{"".join(buttons)}</div>'


# --- flagged items and their documents -----------------------------------------------------------------------


def _metrics_html(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="metrics">' + "".join(f"<dt>{_escape(k)}</dt><dd>{_escape(v)}</dd>" for k, v in pairs) + "</dl>"


def _document_html(document: dict[str, Any]) -> str:
    text = document["text"] or ""
    rank = document["attribution_rank"]
    metrics = _metrics_html([
        ("question coverage", _shown_number(document["question_coverage"], ".3f")),
        ("answer coverage", _shown_number(document["answer_coverage"], ".3f")),
        ("fuzzy similarity", _shown_number(document["fuzzy_similarity"], ".3f")),
        ("attribution score", _shown_number(document["attribution_score"], ".4g")),
        ("attribution rank", "—" if rank is None else str(rank)),
        ("attribution z", _shown_number(document["attribution_z"], ".2f")),
        ("length", f"{len(text):,} characters"),
    ])
    return (
        f'<article class="document" data-doc-id="{_escape(document["doc_id"])}">'
        f'<header><h4>document <code>{_escape(document["doc_id"])}</code></h4> {_signals_html(document["signals"])}</header>'
        f'{metrics}<pre class="document-text">{document_text_html(text, document["spans"])}</pre></article>'
    )


def _item_details_html(detail_id: str, item: dict[str, Any], documents: list[dict[str, Any]]) -> str:
    if documents:
        documents_html = "".join(_document_html(d) for d in documents)
    else:  # e.g. flagged by memorisation alone: no document to show
        documents_html = '<p class="empty">No document is flagged for this item.</p>'
    metrics = _metrics_html(
        [(c.label, _shown_number(item[c.key], c.spec)) for c in METRIC_COLUMNS if c.key != "documents"]
    )
    count = len(documents)
    return (
        f'<details class="item" id="{detail_id}" data-verdict="{_escape(item["verdict"])}" '
        f'data-item-key="{_escape(item["benchmark"])}/{_escape(item["item_id"])}">'
        f'<summary>{_verdict_html(item["verdict"])} <strong>{_escape(item["benchmark"])}</strong> / '
        f'<code>{_escape(item["item_id"])}</code> · {count} document{"" if count == 1 else "s"} · '
        f'{_signals_html(item["signals"])}</summary>'
        '<div class="item-beside-documents">'
        f'<section class="item-text"><h4>question</h4><pre class="item-question">{_escape(item["question"])}</pre>'
        f'<h4>answer</h4><pre class="item-answer">{_escape(item["answer"])}</pre>{metrics}</section>'
        f'<section class="documents">{documents_html}</section></div></details>'
    )


def _documents_by_item(documents: pl.DataFrame) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each item's flagged documents, in the audit's order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for document in documents.iter_rows(named=True):
        grouped[(document["benchmark"], document["item_id"])].append(document)
    return grouped


# --- the page ------------------------------------------------------------------------------------------------


def render_audit_html(
    items: pl.DataFrame, documents: pl.DataFrame, settings: dict, title: str = "Contamination audit",
) -> str:
    """The whole review page of an audit (items.parquet, documents.parquet and its settings) as one HTML string."""
    if items.height:
        # Flagged first, the most severe first; then a stable order a reader can find an item in.
        items = (
            items.with_columns(
                pl.col("verdict")
                .replace_strict({v: rank for rank, v in enumerate(VERDICTS)}, default=len(VERDICTS), return_dtype=pl.Int64)
                .alias("_rank")
            )
            .sort("_rank", "benchmark", "item_id")
            .drop("_rank")
        )
    documents_by_item = _documents_by_item(documents) if documents.height else {}
    # An item gets a detail block when it is flagged, or when the audit flagged documents for it anyway.
    detail_ids = {
        position: f"item-{position}"
        for position, item in enumerate(items.iter_rows(named=True))
        if item["verdict"] in FLAGGED_VERDICTS or (item["benchmark"], item["item_id"]) in documents_by_item
    }
    details = [
        _item_details_html(detail_ids[position], item, documents_by_item.get((item["benchmark"], item["item_id"]), []))
        for position, item in enumerate(items.iter_rows(named=True))
        if position in detail_ids
    ]
    flagged_html = "".join(details) or (
        '<p class="empty" id="no-flagged">No item is flagged: the audit found no sign of contamination.</p>'
    )
    flagged_count = sum(1 for v in (items["verdict"] if items.height else []) if v in FLAGGED_VERDICTS)
    benchmarks = items["benchmark"].n_unique() if items.height else 0
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    # Only the page's own script may run and nothing may be fetched: a second guard behind the escaping.
    policy = f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>{_escape(title)}</h1>
<p class="overview">{items.height} item{"" if items.height == 1 else "s"} in {benchmarks} benchmark{"" if benchmarks == 1 else "s"};
{flagged_count} flagged; {documents.height} flagged document{"" if documents.height == 1 else "s"}.</p></header>
<section id="summary"><h2>Verdicts</h2>{_counts_html(items)}<h2>Settings</h2>{_settings_html(settings)}</section>
<section id="items"><h2>Items</h2>{_verdict_filter_html(items)}<p id="table-status" aria-live="polite"></p>
{_items_table_html(items, detail_ids)}</section>
<section id="flagged"><h2>Flagged items and their documents</h2>{_LEGEND if details else ""}{flagged_html}</section>
<script>{_SCRIPT}</script>
</body>
</html>
"""


_LEGEND = (
    '<p class="legend">In the documents: <mark class="question">matches the question</mark> '
    '<mark class="answer">matches the answer</mark> <mark class="fuzzy">fuzzy match</mark> '
    '<span class="elision">…</span> text left out of a long document.</p>'
)

_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; background: #fafafa; }
body { margin: 0 auto; padding: 1rem 2rem 4rem; max-width: 110rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d5da; }
h4 { margin: 0.6rem 0 0.3rem; }
[hidden] { display: none !important; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #d0d5da; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #eef1f4; position: sticky; top: 0; }
td.count, td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.total { font-weight: bold; }
table.items td.question { max-width: 32rem; }
table.items th button { all: unset; cursor: pointer; }
table.items th[aria-sort="ascending"] button::after { content: " ▲"; }
table.items th[aria-sort="descending"] button::after { content: " ▼"; }
table.items tbody tr:nth-child(even) { background: #f2f4f6; }
.verdict { border-radius: 0.3rem; padding: 0 0.35rem; font-weight: 600; }
.verdict.contaminated { background: #f8d0d0; color: #8a1010; }
.verdict.suspicious { background: #fbe7bf; color: #7a4b00; }
.verdict.clean { background: #d3efd6; color: #1b5e20; }
.signal { border: 1px solid #9aa5b1; border-radius: 0.8rem; padding: 0 0.4rem; font-size: 0.8rem; }
.verdict-filter button { margin-right: 0.3rem; padding: 0.2rem 0.6rem; border: 1px solid #9aa5b1; border-radius: 0.3rem;
  background: white; cursor: pointer; }
.verdict-filter button[aria-pressed="true"] { background: #1d232a; color: white; }
#table-status { color: #56606b; font-size: 0.85rem; }
details.item { margin: 0.6rem 0; border: 1px solid #d0d5da; border-radius: 0.4rem; background: white; }
details.item > summary { padding: 0.5rem 0.8rem; cursor: pointer; }
.item-beside-documents { display: grid; grid-template-columns: minmax(16rem, 1fr) 2fr; gap: 1rem; padding: 0 0.8rem 0.8rem; }
.item-text { position: sticky; top: 0; align-self: start; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 0.5rem; background: #f5f6f7;
  border-radius: 0.3rem; font-size: 0.85rem; }
article.document { border-top: 1px solid #d0d5da; padding-top: 0.4rem; margin-bottom: 1rem; }
article.document header h4 { display: inline; }
dl.metrics { display: grid; grid-template-columns: max-content auto; gap: 0 0.8rem; font-size: 0.85rem; }
dl.metrics dt { color: #56606b; } dl.metrics dd { margin: 0; font-variant-numeric: tabular-nums; }
mark.question { background: #ffe066; }
mark.answer { background: #9fd3ff; }
mark.fuzzy { background: #e6d0ff; }
mark.answer.question { background: linear-gradient(#ffe066 50%, #9fd3ff 50%); }
/* A fuzzy match over a verbatim one: keep the verbatim colour, underline the fuzzy part. */
mark.fuzzy.question { background: #ffe066; box-shadow: inset 0 -0.25em #a56eff; }
mark.fuzzy.answer { background: #9fd3ff; box-shadow: inset 0 -0.25em #a56eff; }
mark.answer.fuzzy.question { background: linear-gradient(#ffe066 50%, #9fd3ff 50%); }
.legend { font-size: 0.85rem; color: #56606b; }
.elision { color: #56606b; padding: 0 0.3rem; background: #e2e6ea; border-radius: 0.3rem; }
.empty { color: #56606b; font-style: italic; }
"""

# Plain ES5-ish DOM code: it runs from file:// in any browser, with no module loader or build step.
_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("items-table");
  var details = Array.prototype.slice.call(document.querySelectorAll("#flagged details.item"));
  var filterButtons = Array.prototype.slice.call(document.querySelectorAll(".verdict-filter button"));
  var status = document.getElementById("table-status");
  var headers = table ? Array.prototype.slice.call(table.tHead.rows[0].cells) : [];
  var state = { sort: "", descending: false, verdict: "" };

  function cellValue(row, column, numeric) {
    var raw = row.cells[column].getAttribute("data-value");
    if (!numeric) return raw || "";
    var number = parseFloat(raw);
    return isNaN(number) ? null : number;
  }

  function sortRows() {
    if (!table) return;
    var column = -1;
    headers.forEach(function (header, index) { if (header.dataset.key === state.sort) column = index; });
    var numeric = column >= 0 && headers[column].dataset.type === "number";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var order = 0;
      if (column >= 0) {
        var x = cellValue(a, column, numeric), y = cellValue(b, column, numeric);
        // A missing value (no fuzzy score, no loss) is not a small one: it goes last in either direction.
        if (x === null || y === null) order = (x === null ? 1 : 0) - (y === null ? 1 : 0);
        else order = (numeric ? x - y : x.localeCompare(y)) * (state.descending ? -1 : 1);
      }
      return order || a.dataset.order - b.dataset.order;  // ties keep the page's default order
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (header, index) {
      if (index === column) header.setAttribute("aria-sort", state.descending ? "descending" : "ascending");
      else header.removeAttribute("aria-sort");
    });
  }

  function filterByVerdict() {
    var shown = 0, rows = table ? Array.prototype.slice.call(table.tBodies[0].rows) : [];
    rows.forEach(function (row) {
      row.hidden = state.verdict !== "" && row.dataset.verdict !== state.verdict;
      if (!row.hidden) shown += 1;
    });
    details.forEach(function (block) { block.hidden = state.verdict !== "" && block.dataset.verdict !== state.verdict; });
    filterButtons.forEach(function (button) {
      button.setAttribute("aria-pressed", button.dataset.verdict === state.verdict ? "true" : "false");
    });
    if (status && table) {
      status.textContent = "Showing " + shown + " of " + rows.length + " items" +
        (state.sort ? ", sorted by " + state.sort + (state.descending ? " (descending)" : " (ascending)") : ", flagged first") + ".";
    }
  }

  function readFragment() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.has("sort")) {
      var sort = params.get("sort");
      state.descending = sort.charAt(0) === "-";
      state.sort = sort.replace(/^-/, "");
    }
    if (params.has("verdict")) state.verdict = params.get("verdict");
  }

  function writeFragment() {
    var parts = [];
    if (state.sort) parts.push("sort=" + (state.descending ? "-" : "") + encodeURIComponent(state.sort));
    if (state.verdict) parts.push("verdict=" + encodeURIComponent(state.verdict));
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search); }
    catch (error) { /* some viewers forbid it; the view still works, it just is not in the URL */ }
  }

  function openLinkedItem() {
    var target = location.hash.length > 1 ? document.getElementById(location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS") target.open = true;
  }

  function apply() { sortRows(); filterByVerdict(); }

  headers.forEach(function (header) {
    header.addEventListener("click", function () {
      if (state.sort === header.dataset.key) state.descending = !state.descending;
      else { state.sort = header.dataset.key; state.descending = false; }
      apply(); writeFragment();
    });
  });
  filterButtons.forEach(function (button) {
    button.addEventListener("click", function () { state.verdict = button.dataset.verdict; apply(); writeFragment(); });
  });
  window.addEventListener("hashchange", function () { readFragment(); apply(); openLinkedItem(); });

  readFragment(); apply(); openLinkedItem();
  document.body.setAttribute("data-ready", "1");  // the script ran to the end (tests read it from the DOM)
})();
"""
