"""The code's layout: the package the app and the wheel ship stands alone, and no module imports
one that imports it back. Every import counts, inside functions and under TYPE_CHECKING too (grimp
reads them all)."""
from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("pneumonia", "train", cache_dir=None)


def test_the_shipped_package_imports_nothing_from_training(graph):
    upward = sorted((module, imported) for module in graph.modules if module.split(".")[0] == "pneumonia"
                    for imported in graph.find_modules_directly_imported_by(module) if imported.split(".")[0] == "train")
    assert not upward, f"pneumonia/ imports from train/: {upward}"


def test_no_module_imports_one_that_imports_it_back(graph):
    circles = sorted((module, imported) for module in graph.modules
                     for imported in graph.find_modules_directly_imported_by(module)
                     if graph.chain_exists(importer=imported, imported=module))
    assert not circles, f"import circles (a module, and one it imports that leads back to it): {circles}"


def test_a_model_folders_json_files_have_one_writer():
    """config.json and metrics.json change in several steps (export, cut-offs, gate, int8's gate,
    transformers code, external validation): all through pneumonia/folder_json.py, none by hand."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    reports = {"train/evaluate/score.py", "train/config.py"}  # an evaluation's own report; training_config.json
    sources = [p for d in ("pneumonia", "train", "serving") for p in (root / d).rglob("*.py")] + [root / "app.py"]
    writers = sorted(str(p.relative_to(root)) for p in sources
                     if re.search(r"write_text\(json\.dumps|json\.dump\(", p.read_text())
                     and str(p.relative_to(root)) not in reports | {"pneumonia/folder_json.py"})
    assert not writers, f"these write JSON files themselves; use pneumonia.folder_json: {writers}"
