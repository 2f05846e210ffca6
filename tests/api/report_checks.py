"""Checks a consumer would make of the service's human-facing outputs: a report page parsed as
HTML (what it renders as text, which elements it holds, every number its charts draw) and a
``/metrics`` text parsed by ``prometheus_client``'s own parser (duplicate series, counters that go
back). Shared by the report-state tests; they need no server of their own."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser

from prometheus_client.parser import text_string_to_metric_families

#: Every element the page is drawn with; anything else (an ``<img>``, a ``<script>``, an
#: ``<iframe>``) in a page means text from a job reached the markup unescaped.
PAGE_ELEMENTS = frozenset({
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "dl", "dt", "dd", "div",
    "table", "tr", "th", "td", "p", "pre", "figure", "svg", "g", "rect", "text", "line", "path",
    "circle", "details", "summary", "span"})
#: Attributes that hold numbers the browser draws with.
NUMERIC_ATTRIBUTES = frozenset({"x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width",
                                "height", "d", "transform", "viewbox", "data-value"})
#: Words a page must never show: a value that was NaN, infinite, missing or undefined somewhere
#: on its way to the page ("None" is Python's repr of a missing value).
NOT_A_NUMBER = re.compile(r"(?<![\w.])(nan|NaN|inf|-inf|Infinity|undefined|None|null)(?![\w])")
#: Characters that are a parse error in HTML text (C0 and C1 controls but whitespace, lone
#: surrogates): a browser draws them as boxes.
NOT_HTML_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)


@dataclass
class PageParts:
    """A page as its parser saw it."""

    elements: list[str] = field(default_factory=list)
    #: Shown text, outside the manifest's JSON (which may hold JSON's own ``null``).
    text: list[str] = field(default_factory=list)
    #: (element, attribute, value) of every attribute.
    attributes: list[tuple[str, str, str]] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts = PageParts()
        self._in: list[str] = []
        self._manifest = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parts.elements.append(tag)
        for name, value in attrs:
            self.parts.attributes.append((tag, name, value or ""))
        if tag == "pre" and ("class", "manifest") in attrs:
            self._manifest += 1
        if tag not in ("meta",) and not tag.endswith("/"):
            self._in.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parts.elements.append(tag)
        for name, value in attrs:
            self.parts.attributes.append((tag, name, value or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass
        if tag == "pre" and self._manifest:
            self._manifest -= 1

    def handle_data(self, data: str) -> None:
        if not self._manifest and (not self._in or self._in[-1] != "style"):
            self.parts.text.append(data)


def parse_page(page: str) -> PageParts:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    return parser.parts


def page_problems(page: str, *, max_bytes: int = 2_000_000) -> list[str]:
    """What a reader or a browser would find wrong with ``page``: markup beyond the page's own
    elements, an event-handler attribute, one ``<style>`` more, a NaN/undefined/Infinity shown as
    text, a chart coordinate that is not a finite number, a control character, more than
    ``max_bytes``."""
    problems = []
    parts = parse_page(page)
    foreign = sorted(set(parts.elements) - PAGE_ELEMENTS)
    if foreign:
        problems.append(f"elements beyond the page's own: {foreign}")
    if parts.elements.count("style") != 1:
        problems.append(f"{parts.elements.count('style')} <style> elements")
    handlers = [(tag, name) for tag, name, _ in parts.attributes if name.startswith("on")]
    if handlers:
        problems.append(f"event handlers: {handlers[:5]}")
    shown = " ".join(parts.text)
    for match in NOT_A_NUMBER.finditer(shown):
        problems.append(f"shows {match.group(0)!r}: …{shown[max(0, match.start() - 60):match.end() + 20]}…")
    for tag, name, value in parts.attributes:
        if name in NUMERIC_ATTRIBUTES:
            # Path commands the charts draw with: moves, lines, horizontal and vertical lines
            # (a bar's outline), closes (a dot is a closed path of length 0).
            words = re.sub(r"rotate|translate|[MLHVZ,()\s]", " ", value).split()
            bad = [w for w in words if not _NUMBER.fullmatch(w) or not math.isfinite(float(w))]
            if bad:
                problems.append(f"<{tag} {name}={value!r}>: not finite numbers {bad[:3]}")
    controls = sorted({hex(ord(c)) for c in NOT_HTML_TEXT.findall(page)})
    if controls:
        problems.append(f"control characters {controls}")
    if len(page.encode()) > max_bytes:
        problems.append(f"{len(page.encode())} bytes")
    return problems


Series = tuple[str, tuple[tuple[str, str], ...]]


def parse_metrics(text: str) -> dict[Series, float]:
    """Every sample of a Prometheus text exposition as ``{(name, sorted labels): value}``,
    parsed by ``prometheus_client``'s parser; a sample given twice fails (a scraper keeps only
    one of them)."""
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            assert not math.isnan(sample.value), key
            samples[key] = sample.value
    return samples


def counters_gone_back(before: Mapping[Series, float], after: Mapping[Series, float]) -> list[str]:
    """Counter and histogram series (``_total``, ``_count``, ``_sum``, ``_bucket``) that fell
    between two scrapes of one process, or vanished."""
    wrong = []
    for key, value in before.items():
        if not key[0].endswith(("_total", "_count", "_sum", "_bucket")):
            continue
        if key not in after:
            wrong.append(f"{key} vanished")
        elif after[key] < value:
            wrong.append(f"{key}: {value} -> {after[key]}")
    return wrong


#: Markup a label, a module name or a warning may hold: none of it may become an element.
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&amp; é✓🙂"


def hostile_module_name(index: int) -> str:
    """A 200+ character dotted path, unique by its index, with markup and non-ASCII text: the
    module names of the big-report tests (page size, headless rendering)."""
    stem = ".".join(f"stages.{index % 4}.blocks.{index % 12}.attn.qkv_projection" for _ in range(3))
    return f"backbone.{HOSTILE}.ünïcødé.{stem}.stages.{index // 12}.blocks.{index % 12}.attn.qkv"


def exposition_problems(text: str) -> list[str]:
    """What a Prometheus operator would object to in an exposition (empty: none): a family
    without HELP or TYPE, a name against the conventions (``_total`` counters, base units),
    a histogram not in seconds or bytes, or with unsorted or non-cumulative buckets."""
    problems: list[str] = []
    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    families = list(text_string_to_metric_families(text))
    if not families:
        return ["no families"]
    for family in families:
        name = family.name
        exposed = name + ("_total" if family.type == "counter" else "")
        if exposed not in helps and name not in helps:
            problems.append(f"{name}: no HELP")
        if types.get(exposed, types.get(name)) != family.type:
            problems.append(f"{name}: TYPE missing or not {family.type}")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            problems.append(f"{name}: not snake_case")
        if re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|kilobytes|megabytes)(_|$)", name):
            problems.append(f"{name}: not in base units")
        if family.type == "counter" and not {s.name for s in family.samples} <= {
                name + "_total", name + "_created"}:
            problems.append(f"{name}: a counter sample without _total")
        if family.type != "histogram":
            continue
        if not name.endswith(("_seconds", "_bytes")):
            problems.append(f"{name}: a histogram not in seconds or bytes")
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        for key, buckets in series.items():
            bounds = [bound for bound, _ in buckets]
            counts = [count for _, count in buckets]
            if bounds != sorted(bounds) or bounds[-1] != float("inf") or counts != sorted(counts):
                problems.append(f"{name}{dict(key)}: buckets not sorted, cumulative, to +Inf")
    return problems
