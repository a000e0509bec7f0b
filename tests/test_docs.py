"""The documentation stands on its own: tools/check_docs.py finds no problem in README.md and docs/
(links and anchors resolve, no machine path, no shared-folder path anywhere, every config key in
docs/cli.md under its section, every docs/ anchor cited in the code exists, the README's CI command
is .ci/run's), and each check fails on a copy broken on purpose."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs", ROOT / "tools" / "check_docs.py")
check_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_docs)

SHARED = "../" + "shared"  # in pieces: this file must not contain the path it looks for


@pytest.mark.parametrize("check", check_docs.CHECKS, ids=lambda f: f.__name__)
def test_the_repository_passes(check):
    assert check(ROOT) == []


@pytest.mark.parametrize("heading,slug", [  # GitHub's rule, derived by hand
    ("A4.4 Stage-1 loss", "a44-stage-1-loss"),
    ("`dmdl train`", "dmdl-train"),
    ("The GPU check: `tools/gpu_check.sh`", "the-gpu-check-toolsgpu_checksh"),
    ("Rank-k / CMC", "rank-k--cmc"),
    ("What's [new](x.md)?", "whats-new"),
    ("RegDB-half runs (v0.5)", "regdb-half-runs-v05"),
])
def test_github_slug(heading, slug):
    assert check_docs.github_slug(heading) == slug


def test_anchors_count_repeated_headings_and_skip_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n<a id=\"x1\"></a>\n## Usage\n```\n## not a heading\n```\n## Usage\n")
    assert check_docs.anchors(page) == {"title", "x1", "usage", "usage-1"}


@pytest.fixture
def copy(tmp_path):
    """README.md, docs/ and .ci/ of the repository in a temporary root, plus a code file."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / ".ci", tmp_path / ".ci")
    (tmp_path / "dmdl").mkdir()
    (tmp_path / "dmdl" / "mod.py").write_text('"""See docs/dmdl.md#A4.1, #A5.5 and docs/dmdl.md#A12.3-#A12.4."""\n')
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_copy_passes(copy):
    assert check_docs.check_links(copy) == check_docs.check_paths(copy) == []
    assert check_docs.check_code_citations(copy) == check_docs.check_ci_command(copy) == []


def test_a_removed_anchor_breaks_the_links_to_it(copy):
    _edit(copy / "docs" / "decisions.md", '<a id="update-order"></a>', "")
    problems = check_docs.check_links(copy)
    assert any(p.startswith("README.md:") and "#update-order" in p for p in problems), problems
    assert any(p.startswith("docs/cli.md:") and "no anchor #update-order in decisions.md" in p for p in problems)


def test_a_link_to_a_missing_file_or_outside_the_repository(copy):
    with open(copy / "docs" / "cli.md", "a", encoding="utf-8") as fh:
        fh.write("\n[a](nowhere.md) [b](../../elsewhere.md) [c](https://example.org/x#y)\n")
    problems = check_docs.check_links(copy)
    assert len(problems) == 2, problems
    assert "no file nowhere.md" in problems[0] and "leaves the repository" in problems[1]


def test_machine_and_shared_paths(copy):
    with open(copy / "docs" / "building.md", "a", encoding="utf-8") as fh:
        fh.write("\nsee " + SHARED + "/spec and /home/someone/data\n")
    (copy / "tests").mkdir()
    (copy / "tests" / "t.py").write_text("DATA = '" + SHARED + "/data'\n")
    problems = check_docs.check_paths(copy)
    assert any(p.startswith("docs/building.md:") and SHARED in p for p in problems), problems
    assert any("absolute path '/home/'" in p for p in problems), problems
    assert any(p.startswith("tests/t.py:1:") for p in problems), problems


def test_config_keys_must_be_in_their_section_table(copy):
    sections = check_docs.config_sections()
    assert "method-dmdl" in sections and "memory_semantics" in sections["run"]
    assert check_docs.check_config_keys(copy, sections) == []
    moved = {"data": ["seed"], "run": ["not_a_key"], "method-third": ["x"]}
    problems = check_docs.check_config_keys(copy, moved)
    assert len(problems) == 3, problems
    assert "`seed` (data section)" in problems[0] and "`not_a_key` (run section)" in problems[1]
    assert "no table of the method-third keys" in problems[2]


def test_code_citations_must_exist(copy):
    d = "docs" + "/"  # in pieces, or the check would find these citations in this file
    (copy / "dmdl" / "bad.py").write_text(f"# {d}dmdl.md#A4.1, #A99.9; {d}nopage.md#x\n# {d}mult.md#B3.4-#B77.\n")
    problems = check_docs.check_code_citations(copy)
    assert problems == [f"dmdl/bad.py:1: cites {d}dmdl.md#A99.9, which does not exist",
                        f"dmdl/bad.py:1: cites {d}nopage.md, which does not exist",
                        f"dmdl/bad.py:2: cites {d}mult.md#B77, which does not exist"]


def test_the_readme_ci_command_is_what_ci_runs(copy):
    _edit(copy / ".ci" / "run", "python -m pytest -q -rs tests", "python -m pytest -q tests")
    assert len(check_docs.check_ci_command(copy)) == 1
