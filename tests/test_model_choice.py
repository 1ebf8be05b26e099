"""Which model the app serves (serving/model_choice.py): off a Space, on a Space with and without its
author's VGG16 on the Hub, offline. The Hub is replaced at its boundary: the Hub cache on disk, and
huggingface_hub's own HTTP client, whose transport answers here."""
from __future__ import annotations

import json
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import OfflineModeIsEnabled

import pneumonia
from serving import model_choice
from serving.model_choice import serve
from tests.conftest import BUNDLED_MODEL, lay_into_hub_cache
from tests.live_app import free_port

FILES = ["config.json", "model.safetensors", "ood.safetensors"]  # what the PyTorch backend reads


def load(source: str) -> pneumonia.Classifier:
    return pneumonia.load_classifier(source, backend="pytorch")


@pytest.fixture
def space(monkeypatch, tmp_path):
    """A Space's variables, an empty Hub cache of its own, and the Hub answering through ``answers``
    (path -> (status, JSON)); every request it is sent is kept in ``requests``."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    requests, answers = [], {}

    def respond(request: httpx2.Request) -> httpx2.Response:
        if constants.HF_HUB_OFFLINE:  # as huggingface_hub's own client does
            raise OfflineModeIsEnabled(f"Cannot reach {request.url}: offline mode is enabled.")
        requests.append(request)
        # the Hub answers a missing (or private) repo's API call with 401 and this error code
        status, body = answers.get(request.url.path, (401, {"error": "Repository not found"}))
        headers = {"X-Error-Code": "RepoNotFound"} if status == 401 else {}
        return httpx2.Response(status, json=body, headers=headers)

    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(respond)))
    yield {"SPACE_ID": "someone/pneumonia-demo", "SPACE_AUTHOR_NAME": "someone"}, requests, answers
    huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


def test_off_a_space_the_bundled_model_or_the_one_asked_for():
    served = serve({}, BUNDLED_MODEL, load)
    assert served.source == str(BUNDLED_MODEL) and served.note is None
    assert serve({"SPACE_AUTHOR_NAME": "someone"}, BUNDLED_MODEL, load).source == str(BUNDLED_MODEL)
    asked = serve({"PNEUMONIA_MODEL": str(BUNDLED_MODEL), "SPACE_ID": "a/b", "SPACE_AUTHOR_NAME": "a"}, Path("nowhere"), load)
    assert asked.source == str(BUNDLED_MODEL) and asked.note is None
    with pytest.raises(pneumonia.UsageError, match="no config.json"):  # asked for by name: its error stops the app
        serve({"PNEUMONIA_MODEL": "nowhere"}, BUNDLED_MODEL, load)


def test_a_space_serves_its_authors_vgg16_from_the_hub(space, monkeypatch):
    environ, _, _ = space
    lay_into_hub_cache(Path(constants.HF_HUB_CACHE), "someone/pneumonia-vgg16", BUNDLED_MODEL, FILES)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # from the cache, as a restarted Space would
    served = serve(environ, Path("nowhere"), load)
    assert served.source == "hf-hub:someone/pneumonia-vgg16" and served.note is None
    assert served.classifier.source == "hf-hub:someone/pneumonia-vgg16"


def test_a_space_whose_author_has_no_vgg16_serves_the_bundled_model_and_says_why(space):
    environ, requests, _ = space
    served = serve(environ, BUNDLED_MODEL, load)
    assert served.source == str(BUNDLED_MODEL)
    assert served.note == ("Serving the bundled model: this Space's own `hf-hub:someone/pneumonia-vgg16` could not be "
                           "loaded (no such model on the Hub, or it is private).")
    assert [r.url.path for r in requests] == ["/api/models/someone/pneumonia-vgg16"]


def test_offline_or_broken_or_too_large_the_bundled_model_serves(space, monkeypatch):
    environ, requests, answers = space
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline, nothing cached
    assert "the Hub could not be reached" in serve(environ, BUNDLED_MODEL, load).note
    broken = Path(constants.HF_HUB_CACHE).parent / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architecture": "no_such_net", "num_classes": 2}))
    lay_into_hub_cache(Path(constants.HF_HUB_CACHE), "someone/pneumonia-vgg16", broken, ["config.json"])
    assert "it did not load" in serve(environ, BUNDLED_MODEL, load).note
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sizes = [{"rfilename": "model.safetensors", "size": model_choice.MAX_WEIGHTS_BYTES},
             {"rfilename": "model.int8.onnx", "size": 1}, {"rfilename": "README.md", "size": 10**12}]
    answers["/api/models/someone/pneumonia-vgg16"] = (200, {"id": "someone/pneumonia-vgg16", "siblings": sizes})
    served = serve(environ, BUNDLED_MODEL, load)
    assert served.source == str(BUNDLED_MODEL) and "over this app's limit of 2 GB" in served.note
    assert all("/resolve/" not in r.url.path for r in requests)  # refused before any download


def test_the_pages_header_says_which_model_serves_and_why(space, monkeypatch):
    """The app launched on a Space that cannot reach its author's VGG16: its header's first line says so."""
    import gradio as gr

    import app

    environ, _, _ = space
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    demo = app.launch(environ, prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        header = next(block.value for block in demo.blocks.values()
                      if isinstance(block, gr.Markdown) and str(block.value).startswith("# Pneumonia"))
    finally:
        demo.close()
    assert header.splitlines()[1] == (
        "**Serving the bundled model: this Space's own `hf-hub:someone/pneumonia-vgg16` could not be loaded (the Hub "
        "could not be reached: HF_HUB_OFFLINE is set and it is not in the Hub cache).**")
    assert f"Model: `models/{BUNDLED_MODEL.name} (bundled)`" in header
