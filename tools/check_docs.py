"""Checks the documentation: README.md and docs/ (run from anywhere; exit code 1 with one line per problem).

- every relative link ``[text](target#anchor)`` in README.md and docs/*.md points to a file of the
  repository, and, for a ``.md`` target (or ``#anchor`` alone: the page itself), to an anchor that
  exists there: an explicit ``<a id="..."></a>`` or the GitHub slug of a heading;
- no page mentions a path of the machine it was written on: not the development tree's shared
  folder or work directory (``FORBIDDEN``), and no absolute path (``/usr/...``, ``/home/...``, ...);
  the shared folder is not mentioned anywhere in the repository's own files either (``SCAN``);
- every config key of every section (``dmdl.config.SHARED_SECTIONS`` and the registered method
  sections ``dmdl.config.METHOD_CONFIGS``) is documented in docs/cli.md, in a table row of its own
  section: between ``<a id="keys-<section>">`` (``keys-method-<name>`` for a method) and the next
  ``keys-`` anchor;
- every ``docs/<page>.md#<anchor>`` cited in the code (``SCAN``: dmdl/, csrc/, kernels/, tests/,
  bench/, tools/, ...) exists, also the anchors that follow it as ``, #A5.5`` or ``-#A12.4``;
- when docs/_citations.tsv exists (the map from the old specification citations in docstrings to
  these pages), every ``docs/<page>.md#<anchor>`` target in its second column exists;
- the README's second set-up command is the one CI runs (``.ci/run``), verbatim.

    python tools/check_docs.py

Every check takes the repository root, so that the tests can run it on a broken copy.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_ANCHOR = re.compile(r"<a\s+id=\"([^\"]+)\"\s*>")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# a path that starts at the file-system root: "/" right after a space, quote, bracket or line start,
# followed by a name and another "/"
_ABSOLUTE = re.compile(r"(?:^|[\s`'\"(=\[])(/[A-Za-z0-9_.+-]+/)")
# spelt in pieces so that a search of the repository for these paths does not find this file
FORBIDDEN = ("../" + "shared", "/" + "work" + "/")
SHARED_DIR = FORBIDDEN[0]
_FRAG = r"[A-Za-z0-9](?:[\w.]|-(?!#))*"
_CITATION_TOKEN = re.compile(r"docs/(?P<page>[\w.-]+?\.md)|#(?P<frag>" + _FRAG + ")")
# a citation in the code: docs/<page>.md#<anchor>, then ", #anchor" / "; #anchor" / "-#anchor" of the same page
_CODE_CITATION = re.compile(r"docs/(?P<page>[a-z_]+\.md)#(?P<first>" + _FRAG + r")"
                            r"(?P<more>(?:(?:\s*[,;]\s*|-)#" + _FRAG + r")*)")
_MORE = re.compile(r"#(" + _FRAG + ")")
# what the code citations and the shared-folder check scan
SCAN = ("dmdl", "csrc", "kernels", "tests", "bench", "tools", "docs", ".ci", "README.md", "setup.py",
        "CMakeLists.txt", "pyproject.toml", "requirements.txt")
CODE_DIRS = ("dmdl", "csrc", "kernels", "tests", "bench", "tools")
SUFFIXES = {".py", ".cpp", ".cu", ".cuh", ".h", ".yaml", ".yml", ".md", ".txt", ".toml", ".cfg", ".sh", ".tsv", ""}
_SKIP_DIRS = {"__pycache__", "build", ".pytest_cache", ".benchmarks", ".venv"}


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


def _lines_outside_fences(text: str):
    in_fence = False
    for no, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        yield no, line, in_fence


def anchors(path: Path) -> set[str]:
    """Explicit ``<a id>`` anchors and heading slugs (with GitHub's -1, -2 suffixes) of a page."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line, in_fence in _lines_outside_fences(path.read_text(encoding="utf-8")):
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


def pages(root: Path = ROOT) -> list[Path]:
    """The documentation pages: README.md and docs/*.md."""
    out = [root / "README.md"] if (root / "README.md").is_file() else []
    return out + sorted((root / "docs").glob("*.md"))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def check_links(root: Path = ROOT) -> list[str]:
    """Relative links of README.md and docs/*.md: the file exists in the repository, the anchor on it."""
    table: dict[Path, set[str]] = {}
    problems = []
    for page in pages(root):
        for no, line, in_fence in _lines_outside_fences(page.read_text(encoding="utf-8")):
            if in_fence:
                continue
            for target in _LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file, _, frag = target.partition("#")
                where = f"{_rel(page, root)}:{no}"
                dest = (page.parent / file).resolve() if file else page
                try:
                    dest.relative_to(root.resolve())
                except ValueError:
                    problems.append(f"{where}: link to {target!r} leaves the repository")
                    continue
                if not dest.exists():
                    problems.append(f"{where}: link to {target!r}: no file {file}")
                    continue
                if frag and dest.suffix != ".md":
                    problems.append(f"{where}: link to {target!r}: an anchor on a file that is not a .md page")
                elif frag:
                    if dest not in table:
                        table[dest] = anchors(dest)
                    if frag not in table[dest]:
                        problems.append(f"{where}: link to {target!r}: no anchor #{frag} in {file or page.name}")
    return problems


def _scanned_files(root: Path, tops=SCAN):
    for top in tops:
        path = root / top
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES and not _SKIP_DIRS.intersection(f.relative_to(root).parts):
                    yield f


def check_paths(root: Path = ROOT) -> list[str]:
    """No machine path in the pages (README.md, docs/*.md, docs/*.tsv); no shared-folder path in any
    file of the repository (``SCAN``)."""
    problems = []
    docs = pages(root) + sorted((root / "docs").glob("*.tsv"))
    for page in docs:
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for bad in FORBIDDEN:
                if bad in line:
                    problems.append(f"{_rel(page, root)}:{no}: mentions {bad!r}")
            for m in _ABSOLUTE.finditer(line):
                problems.append(f"{_rel(page, root)}:{no}: absolute path {m.group(1)!r}...")
    for f in _scanned_files(root):
        if f in docs:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for no, line in enumerate(text.splitlines(), start=1):
            if SHARED_DIR in line:
                problems.append(f"{_rel(f, root)}:{no}: mentions {SHARED_DIR!r}")
    return problems


def config_sections() -> dict[str, list[str]]:
    """``{"run": [keys], ..., "method-dmdl": [keys], "method-mult": [keys]}`` of the installed
    package (``import dmdl`` registers the methods' sections)."""
    import dataclasses

    sys.path.insert(0, str(ROOT))
    try:
        import dmdl  # noqa: F401  (registers the DMDL and MULT sections)
        from dmdl.config import METHOD_CONFIGS, SHARED_SECTIONS
    finally:
        sys.path.pop(0)
    out = {cls.section: [f.name for f in dataclasses.fields(cls)] for cls in SHARED_SECTIONS}
    out.update({f"method-{name}": [f.name for f in dataclasses.fields(cls)]
                for name, cls in sorted(METHOD_CONFIGS.items())})
    return out


def _key_tables(cli_md: Path) -> dict[str, str]:
    """The text of docs/cli.md between each ``keys-<section>`` anchor and the next ``keys-`` anchor."""
    text = cli_md.read_text(encoding="utf-8")
    marks = [(m.start(), m.group(1)) for m in re.finditer(r"<a\s+id=\"keys-([\w-]+)\"\s*>", text)]
    return {name: text[start:(marks[i + 1][0] if i + 1 < len(marks) else len(text))]
            for i, (start, name) in enumerate(marks)}


def check_config_keys(root: Path = ROOT, sections: dict[str, list[str]] | None = None) -> list[str]:
    """Every key of every config section in a table row of its section in docs/cli.md."""
    sections = config_sections() if sections is None else sections
    tables = _key_tables(root / "docs" / "cli.md")
    problems = []
    for section, keys in sections.items():
        if section not in tables:
            problems.append(f"docs/cli.md: no table of the {section} keys (<a id=\"keys-{section}\">)")
            continue
        rows = [ln.split("|")[1] for ln in tables[section].splitlines() if ln.startswith("|") and ln.count("|") > 2]
        for key in keys:
            if not any(f"`{key}`" in cell for cell in rows):
                problems.append(f"docs/cli.md: config key `{key}` ({section} section) is not in the table of "
                                f"its section (#keys-{section})")
    return problems


def _anchor_table(root: Path, cache: dict, page: str) -> set[str] | None:
    if page not in cache:
        path = root / "docs" / page
        cache[page] = anchors(path) if path.is_file() else None
    return cache[page]


def check_code_citations(root: Path = ROOT) -> list[str]:
    """Every ``docs/<page>.md#<anchor>`` cited in the code (``CODE_DIRS``, setup.py, CMakeLists.txt)
    and the anchors following it (``, #A5.5``, ``-#A12.4``) exist."""
    cache: dict[str, set[str] | None] = {}
    problems = []
    for f in _scanned_files(root, CODE_DIRS + ("setup.py", "CMakeLists.txt")):
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for no, line in enumerate(text.splitlines(), start=1):
            for m in _CODE_CITATION.finditer(line):
                table = _anchor_table(root, cache, m.group("page"))
                if table is None:
                    problems.append(f"{_rel(f, root)}:{no}: cites docs/{m.group('page')}, which does not exist")
                    continue
                for frag in [m.group("first")] + _MORE.findall(m.group("more")):
                    frag = frag.rstrip(".")
                    if frag not in table:
                        problems.append(f"{_rel(f, root)}:{no}: cites docs/{m.group('page')}#{frag}, which does "
                                        "not exist")
    return problems


def check_citation_map(root: Path = ROOT) -> list[str]:
    """The targets of docs/_citations.tsv exist (when the file does)."""
    docs = root / "docs"
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


def readme_commands(root: Path = ROOT) -> list[str]:
    """The lines of the README's first code block (the set-up commands)."""
    block, inside = [], False
    for line in (root / "README.md").read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            if inside:
                return block
            inside = True
            continue
        if inside and line.strip():
            block.append(line.strip())
    return block


def check_ci_command(root: Path = ROOT) -> list[str]:
    """The README's second set-up command is a line of ``.ci/run``, verbatim."""
    ci = root / ".ci" / "run"
    if not ci.is_file():
        return []
    commands = readme_commands(root)
    if len(commands) < 2:
        return ["README.md: the first code block does not hold the two set-up commands"]
    lines = [ln.strip() for ln in ci.read_text(encoding="utf-8").splitlines()]
    if commands[1] not in lines:
        return [f"README.md: the second set-up command is not the one .ci/run runs: {commands[1]!r}"]
    return []


CHECKS = (check_links, check_paths, check_config_keys, check_code_citations, check_citation_map, check_ci_command)


def check(root: Path = ROOT) -> list[str]:
    """Every problem found, one line each (empty when the docs are fine)."""
    return [p for fn in CHECKS for p in fn(root)]


def main() -> int:
    problems = check()
    for p in problems:
        print(p)
    print(f"check_docs: {len(pages())} pages, {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
