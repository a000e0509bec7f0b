"""Checks the documentation in docs/ (run from anywhere; exit code 1 with one line per problem).

- every relative link ``[text](file.md#anchor)``, ``[text](#anchor)`` or ``[text](file.md)`` in
  docs/*.md points to an existing file in docs/ and to an anchor that exists there: an explicit
  ``<a id="..."></a>`` or the GitHub slug of a heading;
- no page mentions a path of the machine it was written on: not the development tree's shared
  folder or work directory (``_FORBIDDEN``), and no absolute path (``/usr/...``, ``/home/...``, ...);
- every key of :class:`dmdl.config.Config` is documented in docs/cli.md (as ```key```);
- when docs/_citations.tsv exists (the map from the old specification citations in docstrings to
  these pages), every ``docs/<page>.md#<anchor>`` target in its second column exists.

    python tools/check_docs.py
"""

from __future__ import annotations

import dataclasses
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_ANCHOR = re.compile(r"<a\s+id=\"([^\"]+)\"\s*>")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# a path that starts at the file-system root: "/" right after a space, quote, bracket or line start,
# followed by a name and another "/"
_ABSOLUTE = re.compile(r"(?:^|[\s`'\"(=\[])(/[A-Za-z0-9_.+-]+/)")
# spelt in pieces so that a search of the repository for these paths does not find this file
_FORBIDDEN = ("../" + "shared", "/" + "work" + "/")
_CITATION_TOKEN = re.compile(r"docs/(?P<page>[\w.-]+?\.md)|#(?P<frag>[A-Za-z0-9](?:[\w.]|-(?!#))*)")


def github_slug(text: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    out = []
    for ch in text.strip().lower():
        if ch in (" ", "-"):
            out.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in ("L", "N"):
            out.append(ch)
    return "".join(out)


def anchors(path: Path) -> set[str]:
    """Explicit ``<a id>`` anchors and heading slugs (with GitHub's -1, -2 suffixes) of a page."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        found.update(_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _lines_outside_fences(text: str):
    in_fence = False
    for no, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        yield no, line, in_fence


def check_links(docs: Path = DOCS) -> list[str]:
    pages = sorted(docs.glob("*.md"))
    table = {p.name: anchors(p) for p in pages}
    problems = []
    for page in pages:
        for no, line, in_fence in _lines_outside_fences(page.read_text(encoding="utf-8")):
            if in_fence:
                continue
            for target in _LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file, _, frag = target.partition("#")
                name = file or page.name
                where = f"docs/{page.name}:{no}"
                if "/" in name or not name.endswith(".md"):
                    problems.append(f"{where}: link to {target!r} leaves docs/ or is not a .md page")
                    continue
                if name not in table:
                    problems.append(f"{where}: link to {target!r}: no page docs/{name}")
                elif frag and frag not in table[name]:
                    problems.append(f"{where}: link to {target!r}: no anchor #{frag} in docs/{name}")
    return problems


def check_paths(docs: Path = DOCS) -> list[str]:
    problems = []
    for page in sorted(docs.iterdir()):
        if not page.is_file() or page.suffix not in (".md", ".tsv"):
            continue
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for bad in _FORBIDDEN:
                if bad in line:
                    problems.append(f"docs/{page.name}:{no}: mentions {bad!r}")
            for m in _ABSOLUTE.finditer(line):
                problems.append(f"docs/{page.name}:{no}: absolute path {m.group(1)!r}...")
    return problems


def check_config_keys(docs: Path = DOCS) -> list[str]:
    sys.path.insert(0, str(ROOT))
    try:
        from dmdl.config import Config
    finally:
        sys.path.pop(0)
    text = (docs / "cli.md").read_text(encoding="utf-8")
    return [f"docs/cli.md: config key `{f.name}` is not documented"
            for f in dataclasses.fields(Config) if f"`{f.name}`" not in text]


def check_citation_map(docs: Path = DOCS) -> list[str]:
    path = docs / "_citations.tsv"
    if not path.is_file():
        return []
    table: dict[str, set[str]] = {}
    problems = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if no == 1 or not line.strip():  # header
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[1].strip():
            problems.append(f"docs/_citations.tsv:{no}: no replacement")
            continue
        current = None
        # "docs/dmdl.md#A4.1, #A5.5" (a bare "#anchor" is on the page named last), "#A3-#A5" (a range)
        for m in _CITATION_TOKEN.finditer(cols[1]):
            if m.group("page"):
                current = m.group("page")
                if current not in table:
                    table[current] = anchors(docs / current) if (docs / current).is_file() else set()
                    if not (docs / current).is_file():
                        problems.append(f"docs/_citations.tsv:{no}: no page docs/{current}")
            elif current is None:
                problems.append(f"docs/_citations.tsv:{no}: #{m.group('frag')} before any docs/<page>.md")
            elif m.group("frag") not in table[current]:
                problems.append(f"docs/_citations.tsv:{no}: no anchor #{m.group('frag')} in docs/{current}")
        if current is None:
            problems.append(f"docs/_citations.tsv:{no}: replacement names no docs/<page>.md")
    return problems


def check(docs: Path = DOCS) -> list[str]:
    """Every problem found in ``docs``, one line each (empty when the docs are fine)."""
    return check_links(docs) + check_paths(docs) + check_config_keys(docs) + check_citation_map(docs)


def main() -> int:
    problems = check()
    for p in problems:
        print(p)
    pages = len(list(DOCS.glob("*.md")))
    print(f"check_docs: {pages} pages, {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
