"""The code a Hub user copies from a model card: each snippet run as written, offline, on the
files a push uploads, gives the project's own answer (timm, transformers, ONNX Runtime and this
package)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pneumonia
from pneumonia.backends import ONNX_FILES
from tests.conftest import BUNDLED_MODEL, SERVED_BACKEND, lay_into_hub_cache
from train.publish.model import MODEL_FILES, OPTIONAL_FILES, publish

REPO = "someone/pneumonia-mobilenetv2"


@pytest.fixture(scope="module")
def published(tmp_path_factory, film):
    """The bundled folder as `train.publish.model` uploads it, laid into an offline Hub cache; a film."""
    root = tmp_path_factory.mktemp("published")
    folder = root / "folder"
    shutil.copytree(BUNDLED_MODEL, folder)
    publish(folder, REPO, dry_run=True)  # writes model.onnx, the transformers code and the card
    sent = [name for name in [*MODEL_FILES, *OPTIONAL_FILES] if (folder / name).is_file()]
    lay_into_hub_cache(root / "cache", REPO, folder, sent)
    shutil.copy(film("NORMAL", 7), root / "chest_xray.jpeg")
    return root, folder, sent


def _snippets(card: str) -> list[str]:
    return [block for block in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "gradio_client" not in block]


def _start(root, code: str, names: list[str]) -> tuple[str, subprocess.Popen]:
    """``code`` as written, in a fresh interpreter, offline, that prints the values of ``names``
    as JSON; started, not awaited (``_result``), so that the snippets run side by side."""
    dump = "\nimport json as _j, numpy as _n\nprint(_j.dumps({k: (_n.asarray(v).tolist() if not isinstance(v, (dict, str)) " \
           "else v) for k, v in ((k, globals()[k]) for k in " + repr(names) + ")}))\n"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(root),
           "PYTHONPATH": str(BUNDLED_MODEL.parents[1]), "TRANSFORMERS_VERBOSITY": "error"}
    return code, subprocess.Popen([sys.executable, "-c", code + dump], cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)


def _result(started: tuple[str, subprocess.Popen]) -> dict:
    code, process = started
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, code + "\n" + stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_cards_snippets_give_the_projects_answer(published):
    root, folder, sent = published
    assert {"model.onnx", ONNX_FILES[SERVED_BACKEND], "xray_pixels.py", "pneumonia_xray.py"} <= set(sent)
    film = pneumonia.open_image(root / "chest_xray.jpeg")
    reading = pneumonia.load_classifier(str(folder)).read([film])[0]
    exact = reading.probabilities["PNEUMONIA"]
    int8 = pneumonia.load_classifier(str(folder), backend="onnx").read([film])[0]
    package, with_transformers, with_onnxruntime, with_timm = _snippets((folder / "README.md").read_text())

    started = [_start(root, package + "\nprobabilities = reading.probabilities\noutcome = reading.outcome\n",
                      ["probabilities", "outcome"]),
               _start(root, with_transformers, ["scores", "decision"]),
               *(_start(root, plain, ["p"]) for plain in (with_onnxruntime, with_timm))]  # fp32 ONNX, safetensors
    found = _result(started[0])
    assert found["probabilities"]["PNEUMONIA"] == pytest.approx(int8.probabilities["PNEUMONIA"], abs=1e-6)
    assert found["outcome"] == int8.outcome

    found = _result(started[1])
    assert found["scores"]["PNEUMONIA"] == pytest.approx(exact, abs=1e-5)
    assert found["decision"] == (reading.decision or "UNCERTAIN")  # the project's, cut-offs and all

    for plain in started[2:]:
        assert np.asarray(_result(plain)["p"])[0, 1] == pytest.approx(exact, abs=1e-5)
