"""Finds the citations of the old project specification (``algorithm.md §A4.4``, ``datasets.md``
sections, ``performance.md §3``, bare ``§B3 step 4``, source tags such as ``[CODE-D]``) in the
source tree and maps each to its place in docs/.

    python tools/spec_citations.py                       # summary: citations left, by file
    python tools/spec_citations.py --tsv docs/_citations.tsv   # write the replacement table

The table has one row per distinct citation string (whitespace collapsed; line breaks inside
comments and docstrings count as one space): the string, its replacement, the number of
occurrences, where they are, and whether an occurrence spans a line break (then a plain string
replacement will not find it). Replacements name the page once and the following anchors of the
same page as ``#anchor``: ``algorithm.md §A4.1, §A5.5`` -> ``docs/dmdl.md#A4.1, #A5.5``.

Transitional: once the docstrings cite docs/ directly this finds nothing and can be deleted.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCAN = ("dmdl", "csrc", "kernels", "tests", "bench", "tools", "setup.py", "CMakeLists.txt", "README.md")
SUFFIXES = {".py", ".cpp", ".cu", ".cuh", ".h", ".yaml", ".md", ".txt", ".toml", ".cfg"}
SKIP = {"tools/spec_citations.py", "tools/check_docs.py"}

# ---------------------------------------------------------------------------- targets
_DMDL_IDS = {"A", "A1", "A1.1", "A1.2", "A2", "A3", "A4", "A4.1", "A4.2", "A4.3", "A4.4", "A5", "A5.1", "A5.2",
             "A5.3", "A5.4", "A5.5", "A5.6", "A6", "A7", "A7.1", "A7.2", "A7.3", "A8", "A9", "A10", "A11", "A12",
             "A12.1", "A12.2", "A12.3", "A12.4", "A12.5", "A13", "C"}
_MULT_IDS = {"B", "B1", "B2", "B3", "B4", "B5", "B6"}
_STEPS = {("A1.2", 9): ("dmdl.md", "A1.2.9"), ("B1", 3): ("mult.md", "B1.3")}
_STEPS.update({("B3", n): ("mult.md", f"B3.{n}") for n in range(1, 7)})
_DATASETS = {"1": "sysu", "1.1": "sysu-layout", "1.2": "sysu-training", "1.3": "sysu-protocol",
             "1.4": "sysu-camera-rule", "1.5": "metrics", "1.6": "sysu-market", "2": "regdb",
             "2.1": "regdb-layout", "2.2": "regdb-loading", "2.3": "regdb-protocol", "3": "llcm",
             "3.1": "llcm-layout", "3.2": "llcm-protocol", "4": "summary", "5": "reader-notes",
             "1.1-1.3": "sysu"}
_PERFORMANCE = {"1": "jaccard", "2": "dbscan", "3": "memory-step", "4": "propagation", "5": "targets"}
_TOOLCHAIN = {None: ("building.md", "no-gpu")}
_TAGS = {"[CODE-D]": ("README.md", "code-d"), "[CODE-M]": ("README.md", "code-m"),
         "[CODE-PGM]": ("README.md", "code-pgm"), "[PAPER-D]": ("README.md", "paper-d"),
         "[PAPER-M]": ("README.md", "paper-m"), "[SMC]": ("README.md", "smc"), "[CC]": ("README.md", "cc"),
         "[PAPER≠CODE]": ("decisions.md", "paper-vs-code"), "[INFERRED]": ("README.md", "tags"),
         "[NOT FOUND]": ("README.md", "tags")}


def _algorithm_target(atom: str) -> list[tuple[str, str]]:
    """(page, anchor) pairs for one algorithm.md atom such as ``§A4.4``, ``§B3 step 2-3``, ``Part C``."""
    a = re.sub(r"\s+", " ", atom.strip())
    m = re.fullmatch(r"Part ([A-D])", a)
    if m:
        return [{"A": ("dmdl.md", "A"), "B": ("mult.md", "B"), "C": ("dmdl.md", "C"),
                 "D": ("decisions.md", "D3")}[m.group(1)]]
    if re.fullmatch(r'§ ?A11 "Metrics"', a):
        return [("datasets.md", "metrics")]
    m = re.fullmatch(r"§ ?([A-D][\d.]*) steps? (\d+)(?: ?- ?(\d+))?", a)
    if m:
        first, last = int(m.group(2)), int(m.group(3) or m.group(2))
        return [_STEPS[(m.group(1), n)] for n in range(first, last + 1)]
    m = re.fullmatch(r"§ ?([A-D][\d.]*)", a)
    if m:
        sid = m.group(1)
        if sid in _DMDL_IDS:
            return [("dmdl.md", sid)]
        if sid in _MULT_IDS:
            return [("mult.md", sid)]
        if sid == "D3":
            return [("decisions.md", "D3")]
    raise KeyError(f"no docs target for algorithm.md {atom!r}")


def _numbered_target(spec: str, atom: str) -> list[tuple[str, str]]:
    a = re.sub(r"^(?:§|sections?)\s*", "", atom.strip())
    table, page = {"datasets.md": (_DATASETS, "datasets.md"), "performance.md": (_PERFORMANCE, "benchmarks.md")}[spec]
    if a in table:
        return [(page, table[a])]
    m = re.fullmatch(r"(\d+)-(\d+)", a)
    if m:
        return [(page, table[str(n)]) for n in range(int(m.group(1)), int(m.group(2)) + 1)]
    raise KeyError(f"no docs target for {spec} {atom!r}")


def targets(spec: str | None, atom: str) -> list[tuple[str, str]]:
    if spec in (None, "algorithm.md"):
        return _algorithm_target(atom)
    if spec == "toolchain.md":
        return [_TOOLCHAIN[None]]
    return _numbered_target(spec, atom)


# ---------------------------------------------------------------------------- scanning
_PREFIX = r"(?P<open>``|`)?(?P<spec>algorithm|datasets|performance|toolchain)\.md(?(open)(?P=open))"
_LETTER_ATOM = r"(?:§ ?[A-D]\d+(?:\.\d+)*(?: steps? \d+(?: ?- ?\d+)?)?(?: \"Metrics\")?|§[A-D]\b|Part [A-D]\b)"
_NUM_ATOM = r"(?:(?:§ ?|sections? )\d+(?:\.\d+)*(?:-\d+(?:\.\d+)*)?|\d+\.\d+(?:-\d+\.\d+)?)"
_SEP = r"(?:(?: \([A-Za-z0-9 -]+\))?(?: ?(?:,|/|-|–|and) ?| ))"
_GROUP_PREFIXED = re.compile(
    _PREFIX + r"(?P<lead> ?\(? ?)(?P<atoms>(?:" + _LETTER_ATOM + "|" + _NUM_ATOM + r")(?:" + _SEP + r"(?:"
    + _LETTER_ATOM + "|" + _NUM_ATOM + r"))*)?")
_GROUP_BARE = re.compile(r"(?<![\w.])(?P<atoms>" + _LETTER_ATOM + r"(?:" + _SEP + _LETTER_ATOM + r")*)")
_ATOM = re.compile(_LETTER_ATOM + "|" + _NUM_ATOM)
_TAG = re.compile("|".join(re.escape(t) for t in _TAGS))


def joined(text: str) -> tuple[str, list[int]]:
    """The text with each line break (and the next line's indentation and comment marker) as one
    space, and the 1-based source line of every character."""
    out, lines = [], []
    line = 1
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            m = re.compile(r"\n[ \t]*(?:#|//|\*(?!\*))?[ \t]*").match(text, i)
            out.append(" ")
            lines.append(line)
            line += 1
            i = m.end()
            continue
        out.append(ch)
        lines.append(line)
        i += 1
    return "".join(out), lines


def _replacement(spec: str | None, lead: str, atoms_text: str) -> str:
    parts, pos, current = [], 0, None
    for k, m in enumerate(_ATOM.finditer(atoms_text)):
        sep = atoms_text[pos:m.start()]
        pos = m.end()
        refs = []
        for page, anchor in targets(spec, m.group(0)):
            refs.append(f"#{anchor}" if page == current else f"docs/{page}#{anchor}")
            current = page
        parts.append(("" if k == 0 else sep) + ", ".join(refs))
    out = "".join(parts) + atoms_text[pos:]
    return ("(" if "(" in lead else "") + out


def scan(root: Path = ROOT) -> dict[str, dict]:
    """``{citation: {"replacement", "where": [file:line], "spans": bool}}`` over the source tree."""
    found: dict[str, dict] = {}
    files = []
    for entry in SCAN:
        p = root / entry
        files += [p] if p.is_file() else [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in SUFFIXES]
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel in SKIP:
            continue
        text, lines = joined(path.read_text(encoding="utf-8", errors="replace"))
        taken = []

        def add(key, repl, start, end):
            row = found.setdefault(key, {"replacement": repl, "where": [], "spans": False})
            row["where"].append(f"{rel}:{lines[start]}")
            row["spans"] |= lines[start] != lines[end - 1]
            taken.append((start, end))

        for m in _GROUP_PREFIXED.finditer(text):
            spec = m.group("spec") + ".md"
            atoms = m.group("atoms") or ""
            if atoms:
                key = text[m.start():m.end()].rstrip()
                repl = _replacement(spec, m.group("lead"), atoms)
            else:
                key = text[m.start():m.start("lead")]
                repl = f"docs/{ {'algorithm.md': 'dmdl.md', 'datasets.md': 'datasets.md', 'performance.md': 'benchmarks.md', 'toolchain.md': 'building.md'}[spec] }"
            add(key, repl, m.start(), m.start() + len(key))
        for m in _GROUP_BARE.finditer(text):
            if any(s <= m.start() < e for s, e in taken):
                continue
            key = m.group("atoms").rstrip()
            add(key, _replacement(None, "", key), m.start(), m.start() + len(key))
        for m in _TAG.finditer(text):
            page, anchor = _TAGS[m.group(0)]
            add(m.group(0), f"docs/{page}#{anchor}", m.start(), m.end())
    return found


def write_tsv(found: dict[str, dict], path: Path) -> None:
    rows = ["citation\treplacement\tcount\tspans_lines\twhere"]
    for key in sorted(found):
        r = found[key]
        where = r["where"][:8] + ([f"+{len(r['where']) - 8} more"] if len(r["where"]) > 8 else [])
        rows.append("\t".join([key, r["replacement"], str(len(r["where"])), "yes" if r["spans"] else "no",
                               " ".join(where)]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", type=Path, help="write the replacement table here")
    args = ap.parse_args()
    found = scan()
    if args.tsv:
        write_tsv(found, args.tsv)
    by_file: dict[str, int] = defaultdict(int)
    for r in found.values():
        for w in r["where"]:
            by_file[w.rsplit(":", 1)[0]] += 1
    for f, n in sorted(by_file.items()):
        print(f"{n:4d}  {f}")
    total = sum(by_file.values())
    print(f"{len(found)} distinct citations, {total} occurrences in {len(by_file)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
