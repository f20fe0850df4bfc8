"""The documentation stands alone: every link in README.md, CHANGELOG.md and docs/*.md
points at a file, or a heading of a file, inside the repository."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Documents that live outside the repository, which a clone cannot read.
OUTSIDE = ("../shared", "CONTRACT.md", "DESIGN.md")
#: Sections of those documents, cited by name.
OUTSIDE_SECTIONS = re.compile(r"\b(?:CONTRACT|DESIGN) (?:§|invariant)")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_INLINE_LINK = re.compile(
    r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s)>\]]+|\bwww\.[^\s)>\]]+")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def outside_fences(markdown: str) -> str:
    """The text with every line of a fenced code block blanked."""
    kept: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines():
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened[1]
        elif fence is not None:
            if opened and opened[1][0] == fence[0] and len(opened[1]) >= len(fence):
                fence = None
        else:
            kept.append(line)
            continue
        kept.append("")
    return "\n".join(kept)


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and code spans, where links are links."""
    return _CODE_SPAN.sub(lambda span: " " * len(span[0]), outside_fences(markdown))


def links(markdown: str) -> list[str]:
    """The targets of the inline links, reference definitions and autolinks, and the bare
    URLs GitHub turns into links."""
    text = prose(markdown)
    found = [match[1].strip("<>") for match in _INLINE_LINK.finditer(text)]
    found += [match[1].strip("<>") for match in _DEFINITION.finditer(text)]
    found += [match[1] for match in _AUTOLINK.finditer(text)]
    without_links = _AUTOLINK.sub(" ", _INLINE_LINK.sub(" ", _DEFINITION.sub(" ", text)))
    return found + _BARE_URL.findall(without_links)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation but `-` and `_`
    dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]*>|[`*]", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a document's headings; a repeated one gets `-1`, `-2`, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in outside_fences(path.read_text(encoding="utf-8")).splitlines():
        if heading := _HEADING.match(line):
            base = slug(heading[1])
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return frozenset(found)


def problem(document: Path, target: str) -> str | None:
    """Why ``target``, linked from ``document``, does not point inside the repository."""
    if _SCHEME.match(target) or target.startswith(("//", "www.")):
        return "an absolute link: the documentation must stand alone"
    path_part, _, anchor = target.partition("#")
    path = (document.parent / unquote(path_part)).resolve() if path_part else document
    if not path.is_relative_to(ROOT):
        return "outside the repository"
    if not path.exists():
        return "no such file"
    if anchor and (path.suffix != ".md" or unquote(anchor) not in anchors(path)):
        return f"no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


def test_the_documents_exist() -> None:
    """README.md, CHANGELOG.md and the docs (events, schema, guarantees, service) are there."""
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "CHANGELOG.md", "docs/events.md", "docs/schema.md"} <= names
    assert {"docs/guarantees.md", "docs/service.md"} <= names
    assert all(path.is_file() for path in DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_links_point_inside_the_repository(document: Path) -> None:
    """Every link is a relative path to a file that exists in the repository, and its
    anchor, if any, names a heading of that file; http(s) links are refused."""
    problems = [
        f"{target}: {why}"
        for target in links(document.read_text(encoding="utf-8"))
        if (why := problem(document, target))
    ]
    assert problems == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_document_from_outside_is_named(document: Path) -> None:
    """No text names the team's notes outside the repository (`../shared`, CONTRACT.md,
    DESIGN.md), in prose or in code."""
    text = document.read_text(encoding="utf-8")
    assert [name for name in OUTSIDE if name in text] == []


@pytest.mark.parametrize(
    "document",
    [path for path in DOCUMENTS if path.name != "CHANGELOG.md"],
    ids=lambda path: path.relative_to(ROOT).as_posix(),
)
def test_no_section_from_outside_is_cited(document: Path) -> None:
    """README.md and the docs cite no section of the notes outside the repository
    (`CONTRACT §3`, `DESIGN invariant 9`): they link to their own sections instead.
    CHANGELOG.md keeps its history as written."""
    text = document.read_text(encoding="utf-8")
    assert OUTSIDE_SECTIONS.findall(text) == []


def test_links_are_found_outside_code_only() -> None:
    """Inline links, definitions, autolinks and bare URLs count; code blocks and spans do
    not, and link text may wrap."""
    markdown = (
        "See [the\nschema](docs/schema.md#the-oci-model) and [ref]: ../x.md\n"
        "<https://example.org> or http://example.com/a.\n"
        "`[not](a-link.md)` and `http://127.0.0.1:PORT/metrics`\n"
        "```sh\n[no](code.md) https://code.example\n```\n"
    )
    assert links(markdown) == [
        "docs/schema.md#the-oci-model",
        "https://example.org",
        "http://example.com/a.",
    ]


def test_anchors_follow_github() -> None:
    """Headings become GitHub's anchors: code marks and punctuation gone, case folded."""
    assert slug("`collector run`: the service") == "collector-run-the-service"
    assert slug("Configuration (beyond the README's table)") == (
        "configuration-beyond-the-readmes-table"
    )
    assert slug("Rules once, and the orphan sweep") == "rules-once-and-the-orphan-sweep"
    assert slug("The `gc` schema") == "the-gc-schema"
    assert slug("`tag-expired`") == "tag-expired"
    assert slug("Secured brokers: TLS and SASL") == "secured-brokers-tls-and-sasl"


def test_a_broken_link_is_named() -> None:
    """A missing file, a missing heading, a path out of the repository and an absolute
    link each get a reason."""
    document = ROOT / "docs" / "events.md"
    assert problem(document, "schema.md#what-keeps-an-object-alive") is None
    assert problem(document, "#delivery-guarantees") is None
    assert problem(document, "missing.md") == "no such file"
    assert problem(document, "schema.md#nowhere") == "no heading #nowhere in docs/schema.md"
    assert problem(document, "../../elsewhere.md") == "outside the repository"
    assert problem(document, "https://example.org/") is not None
