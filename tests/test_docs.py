"""The README and docs/ name only what exists: every `python -m` module imports (is found), every
repository path in backticks is there, and every relative link leads to a file and, with an
anchor, to one of its headings."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("pneumonia/", "train/", "tests/", "docs/", "benchmarks/", "web/", "models/", "serving/", "examples/",
       "dataset_script/", ".ci/")
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)")
PATH = re.compile(r"`([\w./-]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped,
    spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_m_module_in_the_docs_is_found(doc):
    missing = sorted({name for name in MODULE.findall(doc.read_text()) if importlib.util.find_spec(name) is None})
    assert not missing, f"{doc.name} runs modules that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_in_the_docs_exists(doc):
    named = {token.rstrip("/.") for token in PATH.findall(doc.read_text()) if token.startswith(TOP)}
    missing = sorted(path for path in named if not any(ROOT.glob(path)))
    assert not missing, f"{doc.name} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{doc.name} links to missing files or headings: {broken}"
