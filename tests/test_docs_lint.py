"""The docs hold together: every page is reachable, every link lands, every code reference resolves.

* Every file under ``docs/`` is reachable from ``docs/README.md`` or ``README.md`` by following
  relative links, page to page. A page nobody links to is a page nobody finds: link it from the
  index (``docs/README.md``; a benchmark record from ``docs/benchmarks/README.md``).
* Every relative link and ``#anchor`` in ``README.md``, ``docs/**/*.md`` and the READMEs under
  ``results/`` resolves: the file exists, and the anchor is a heading of it under GitHub's rules
  (lowercase, spaces to ``-``, punctuation dropped, ``-1``, ``-2`` ... for repeated headings).
* Every ``docs/...`` path named in the code (``selfunet/``, ``harness/``, ``tests/``, ``bench/``,
  ``.ci/``), with its ``#anchor`` if it has one, resolves the same way. This is how a comment
  such as "the layering rule (docs/explanation/design.md#layering)" stays true.
* No page and no code comment speaks in the labels of the people who built the project (who ran
  what, in which work session, for which ticket); records state the conditions instead.

The CLI options quoted in the docs are checked by ``tests/test_docs_cli.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ENTRY_POINTS = (ROOT / "README.md", DOCS / "README.md")
CODE_DIRS = ("selfunet", "harness", "tests", "bench", ".ci")
CODE_SUFFIXES = {".py", ".sh", ".yml", ".yaml", ".toml", ".cfg", ".txt", ".md", ""}

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
#: a docs path written in code: not preceded by a path or word character (so ``x/docs/`` and
#: ``readthedocs/`` are not one), optionally with an anchor.
_CODE_REF = re.compile(r"(?<![\w/.-])(docs/[\w./-]*)(#[\w-]+)?")

#: labels of how the work was divided, which mean nothing to a reader of a clone.
INSIDER_IN_DOCS = re.compile(
    r"\bhelpers?\b(?!\.py)|\bthe lead\b|\bsessions?\b|\bissue \d+|\bbench_h\d+|\bworkers? of\b",
    re.IGNORECASE)
#: in code, "session" (pytest fixtures, setsid) and "helper" (a function) are programming words;
#: the labels below are not.
INSIDER_IN_CODE = re.compile(
    r"\bissue \d+|\bbench_h\d+|\bthe lead\b|\bhelper notes\b|\bother helpers\b"
    r"|\b(?:this|that|another|other|previous|latest|earlier|next) sessions?\b|\breach of a session\b",
    re.IGNORECASE)
#: an upper-case H and one or two digits standing alone, a label that names nothing a reader can
#: look up (upper case only: ``<h2>`` is HTML).
WORK_LABEL = re.compile(r"(?<![\w-])H\d{1,2}(?![\w-])")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, lowercase,
    each space a ``-`` (``-`` and ``_`` survive)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a Markdown file offers: its headings (numbered when repeated), HTML anchors."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return frozenset(found)


@cache
def links(path: Path) -> tuple[tuple[int, str], ...]:
    """(line number, target) of every relative link in a Markdown file, code excluded."""
    found = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)
        targets = _INLINE_LINK.findall(line)
        definition = _REFERENCE_DEF.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [(number, t) for t in targets if not _EXTERNAL.match(t)]
    return tuple(found)


def resolve(source: Path, target: str) -> tuple[Path, str | None, str | None]:
    """(linked path, its anchor, a problem or None) for ``target`` as written in ``source``."""
    raw_path, _, anchor = target.partition("#")
    path = (source.parent / raw_path).resolve() if raw_path else source
    if not path.exists():
        return path, anchor or None, f"'{raw_path}' does not exist"
    if anchor:
        if path.suffix != ".md":
            return path, anchor, f"'#{anchor}' points into {path.name}, which has no headings"
        if anchor not in anchors(path):
            return path, anchor, f"'{_rel(path)}' has no heading with the anchor '#{anchor}'"
    return path, anchor or None, None


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def markdown_pages() -> list[Path]:
    """README.md, every page under docs/, and the READMEs under results/ (a baseline's provenance)."""
    return [p for p in ENTRY_POINTS if p.is_file()] + sorted(
        p for p in (*DOCS.rglob("*.md"), *(ROOT / "results").rglob("README.md")) if p not in ENTRY_POINTS)


def docs_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def reachable() -> set[Path]:
    """Every file reached from the entry points by following relative links through Markdown pages."""
    seen: set[Path] = set()
    todo = [p.resolve() for p in ENTRY_POINTS if p.is_file()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        if page.suffix != ".md":
            continue
        for _, target in links(page):
            path, _, problem = resolve(page, target)
            if problem is None and path.is_dir():
                todo += [p for p in path.iterdir() if p.is_file()]
            elif problem is None and path not in seen:
                todo.append(path)
    return seen


def code_files() -> list[Path]:
    files = []
    for name in CODE_DIRS:
        for path in (ROOT / name).rglob("*"):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts \
                    and not any(part.startswith(".") and part != ".ci" for part in path.relative_to(ROOT).parts):
                files.append(path)
    return sorted(files)


@cache
def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------- rules


def test_github_anchor_rules() -> None:
    assert slug("Topology, patch size and batch size") == "topology-patch-size-and-batch-size"
    assert slug("The Docker sandbox (`--sandbox docker`)") == "the-docker-sandbox---sandbox-docker"
    assert slug("`resenc-m` vs `X`: 208 / 208 fields") == "resenc-m-vs-x-208--208-fields"
    assert slug("Scoring [submissions](x.md) and snake_case") == "scoring-submissions-and-snake_case"


def test_the_link_parser_skips_code_and_external_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n## Title\n[a](other.md#x) `[b](code.md)` [c](https://example.org)\n"
                    "```\n[d](fenced.md)\n```\n[e]: ref.md\n![img](pic.png)\n", encoding="utf-8")
    assert [t for _, t in links(page)] == ["other.md#x", "ref.md", "pic.png"]
    assert anchors(page) == {"title", "title-1"}


def test_every_docs_file_is_reachable_from_the_readmes() -> None:
    reached = reachable()
    missing = [_rel(p) for p in docs_files() if p.resolve() not in reached]
    assert not missing, (
        "not reachable by links from README.md or docs/README.md (link each from the index, "
        "docs/README.md, or a benchmark record from docs/benchmarks/README.md):\n  " + "\n  ".join(missing))


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = []
    for page in markdown_pages():
        for number, target in links(page):
            _, _, problem = resolve(page, target)
            if problem:
                problems.append(f"{_rel(page)}:{number}: link '{target}': {problem}")
    assert not problems, "broken links in the docs:\n  " + "\n  ".join(problems)


def test_every_docs_reference_in_the_code_resolves() -> None:
    problems = []
    for path in [*code_files(), ROOT / "README.md"]:  # the README's command examples name docs too
        text = _read(path)
        if text is None or "docs/" not in text:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in _CODE_REF.finditer(line):
                written = match.group(1).rstrip(".")
                if written == "docs/" or "*" in line[match.end(1):match.end(1) + 1]:
                    continue  # the folder itself, or a glob such as docs/**/*.md
                anchor = (match.group(2) or "")[1:]
                target = ROOT / written
                if not target.exists():
                    problems.append(f"{_rel(path)}:{number}: '{written}' does not exist")
                elif anchor and (target.suffix != ".md" or anchor not in anchors(target.resolve())):
                    problems.append(f"{_rel(path)}:{number}: '{written}' has no heading with the anchor "
                                    f"'#{anchor}' (headings: docs/explanation/design.md lists the design's)")
    assert not problems, "docs references in the code that lead nowhere:\n  " + "\n  ".join(problems)


def _label_hits(path: Path, patterns: tuple[re.Pattern, ...]) -> list[str]:
    text = _read(path) or ""
    return [f"{_rel(path)}:{text.count(chr(10), 0, m.start()) + 1}: '{m.group(0)}'"
            for pattern in patterns for m in pattern.finditer(text)]


def test_no_insider_labels() -> None:
    problems = []
    for path in [*docs_files(), ROOT / "README.md"]:
        problems += _label_hits(path, (INSIDER_IN_DOCS, WORK_LABEL))
    for path in code_files():
        if path != Path(__file__).resolve():  # the patterns themselves
            problems += _label_hits(path, (INSIDER_IN_CODE, WORK_LABEL))
    assert not problems, (
        "wording of how the work was divided (state the conditions instead: machine, load, what ran "
        "beside it; name things by what they are):\n  " + "\n  ".join(problems))
