"""The inference package as users install it: a wheel in a fresh virtual environment, with ONNX
Runtime and nothing of the training stack, reading the bundled folder and an hf-hub: copy of it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import BUNDLED_MODEL, DATA, ROOT, lay_into_hub_cache

pytestmark = pytest.mark.slow
TRAINING_STACK = {"torch", "torchvision", "timm", "gradio", "accelerate", "datasets", "matplotlib", "transformers"}


def _run(*command, **kwargs) -> str:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _wheel(tmp_path) -> str:
    """Built from the package's own files only: pyproject.toml, its readme and pneumonia/."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "pneumonia", source / "pneumonia", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    (source / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "package.md", source / "docs")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source)
    return str(next((tmp_path / "dist").glob("pneumonia_xray-*.whl")))


def test_the_wheel_alone_reads_films_and_the_gate_with_onnx_runtime(tmp_path, bundled_readings, bundled_test_films):
    wheel = _wheel(tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", f"{wheel}[onnx,dicom]")
    installed = {line.split("==")[0].lower() for line in _run(python, "-m", "pip", "freeze").splitlines()}
    assert not installed & TRAINING_STACK, installed & TRAINING_STACK

    cache = tmp_path / "hub-cache"
    lay_into_hub_cache(cache, "someone/pneumonia-mobilenetv2", BUNDLED_MODEL,
                       [p.name for p in BUNDLED_MODEL.iterdir() if p.is_file()])
    rows = bundled_test_films[0]
    picked = list(range(0, 624, 31))  # 21 films of both classes
    files = [str(DATA / "test" / rows[i]["label"] / rows[i]["file"]) for i in picked]
    script = f"""
import json, sys, pneumonia
from pneumonia import load_classifier, open_image
assert pneumonia.__file__.startswith({str(venv)!r}), pneumonia.__file__
out = {{}}
for source in ({str(BUNDLED_MODEL)!r}, "hf-hub:someone/pneumonia-mobilenetv2"):
    readings = load_classifier(source, backend="onnx").read([open_image(f) for f in {files!r}])
    out[source] = [[r.probabilities["PNEUMONIA"], r.outcome, r.kind] for r in readings]
print(json.dumps(out))
"""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HOME": str(tmp_path)}
    found = json.loads(_run(python, "-c", script, cwd=tmp_path, env=env).strip().splitlines()[-1])
    expected = [bundled_readings["served"][i] for i in picked]
    for source, readings in found.items():
        p = np.array([row[0] for row in readings])
        assert np.abs(p - [r.probabilities["PNEUMONIA"] for r in expected]).max() <= 1e-6, source
        assert [(row[1], row[2]) for row in readings] == [(r.outcome, r.kind) for r in expected], source
