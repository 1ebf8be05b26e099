"""The one writer of a model folder's JSON files (``config.json``, ``metrics.json``): every step that
changes one (the export, the answer cut-offs, the gate, int8's own gate, the transformers code)
reads, changes and writes it here, in one format (indent 2, a final newline).

Standard library only: ``pneumonia.hub_code`` uses it without transformers or torch.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def rewrite(path: Path, change: Callable[[dict], dict | None]) -> dict:
    """Read ``path``, let ``change`` edit the dict in place (or return a new one) and write it back;
    a file ``change`` leaves as it was is not touched (its time stamp stays)."""
    path = Path(path)
    found = json.loads(path.read_text())
    changed = change(found)
    found = found if changed is None else changed
    text = json.dumps(found, indent=2) + "\n"
    if path.read_text() != text:
        path.write_text(text)
    return found


def update(path: Path, **entries) -> dict:
    """Set top-level ``entries`` of the JSON file at ``path``."""
    return rewrite(path, lambda found: found.update(entries))


def write(path: Path, found: dict) -> None:
    """A new JSON file (a folder's first ``metrics.json``)."""
    Path(path).write_text(json.dumps(found, indent=2) + "\n")
