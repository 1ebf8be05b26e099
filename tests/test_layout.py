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
