"""The app's pure predict() on real X-rays, served by a model folder the test trains."""
from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
import torch

import pneumonia
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def app(data_dir, tmp_path_factory, monkeypatch_module):
    model_dir = tmp_path_factory.mktemp("model") / "cnn"
    result = run_cli("--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(model_dir), "--epochs", "1",
                     "--max-train-samples", "24", "--max-eval-samples", "16", "--batch-size", "8",
                     "--num-workers", "0", "--image-size", "96", "--intensity", "clahe", "--crop-borders",
                     # a folder without ONNX files or a gate (as trained before either existed) still serves
                     "--no-export-onnx", "--no-ood-gate")
    assert result.returncode == 0, result.stderr[-3000:]
    module = _import_app(monkeypatch_module, model_dir)
    module.model_dir = model_dir
    return module


def _import_app(monkeypatch, model_dir: Path):
    monkeypatch.setenv("PNEUMONIA_MODEL", str(model_dir))
    sys.modules.pop("app", None)
    return importlib.import_module("app")


@pytest.fixture(scope="module")
def bundled_app(app, monkeypatch_module):
    """The app on the bundled model, whose out-of-distribution gate was fitted on all the training films."""
    from tests.conftest import BUNDLED_MODEL

    return _import_app(monkeypatch_module, BUNDLED_MODEL)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_predict_matches_the_training_evaluation(app, data_dir):
    with (app.model_dir / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][:6]
    for row in rows:
        probs = app.predict(str(data_dir / "test" / row["label"] / row["file"]))
        assert set(probs) == {"NORMAL", "PNEUMONIA"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert probs["PNEUMONIA"] == pytest.approx(float(row["p_pneumonia"]), abs=1e-5)
    first = str(data_dir / "test" / rows[0]["label"] / rows[0]["file"])
    bars, words = app.classify(first)
    assert bars == app.predict(first)
    assert ("NORMAL" in words or "PNEUMONIA" in words) and "threshold" in words
    heatmap = app.heat_map(first)
    assert heatmap.mode == "RGB" and heatmap.size == (224, 224)  # the test X-rays are 224 px
    metrics = app.classifier.metrics["test"]
    assert f"test F1 {metrics['f1']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}" in app.model_summary()
    assert app.classifier.backend == "pytorch" and "answers from pytorch" in app.model_summary()
    assert app.classifier.gate is None and "The out-of-distribution gate is off" in app.model_summary()


@pytest.mark.slow
def test_what_is_not_a_chest_xray_gets_a_refusal_and_no_bars(bundled_app, data_dir, tmp_path):
    from skimage import data as samples

    assert bundled_app.classifier.gate is not None and "are refused, not classified" in bundled_app.model_summary()
    Image.fromarray(samples.coffee()).save(tmp_path / "cup.jpg")
    Image.fromarray(samples.text()).save(tmp_path / "text.png")
    Image.new("L", (400, 400), 255).save(tmp_path / "white.png")
    reasons = {"cup.jpg": "it is a colour image", "text.png": "its features are unlike the training films'",
               "white.png": "it is blank"}
    film = str(sorted((data_dir / "test" / "PNEUMONIA").iterdir())[0])
    uploads = [str(tmp_path / name) for name in reasons]
    bars, words = bundled_app.classify_batch([uploads[0], film, *uploads[1:]])
    (heatmaps,) = bundled_app.heat_map_batch([uploads[0], film, *uploads[1:]])
    for i, (name, reason) in zip([0, 2, 3], reasons.items()):
        assert bars[i] == bundled_app.REFUSED and heatmaps[i] is None
        assert words[i].startswith("### NOT ASSESSED\nThe upload does not look like a chest X-ray this model was "
                                   "trained on: " + reason), words[i]
        with pytest.raises(gr.Error, match="does not look like a chest X-ray"):
            bundled_app.predict(str(tmp_path / name))
    assert bars[1] == pytest.approx(bundled_app.predict(film), abs=1e-5) and heatmaps[1] is not None


@pytest.mark.slow
def test_bad_uploads_get_a_clear_message(app, tmp_path):
    with pytest.raises(gr.Error, match="No image"):
        app.predict(None)
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    with pytest.raises(gr.Error, match="not a readable image"):
        app.predict(str(junk))


@pytest.mark.slow
@pytest.mark.parametrize("backend, message", [
    ("onnx-int8", "has no model.int8.onnx: export it with `python -m train.export_onnx FOLDER`"),
    ("tensorrt", "PNEUMONIA_BACKEND='tensorrt': choose one of auto, onnx-int8, onnx-fp32, pytorch"),
])
def test_a_backend_the_folder_cannot_serve_stops_the_app_with_a_message(app, backend, message):
    env = {**os.environ, "PNEUMONIA_MODEL": str(app.model_dir), "PNEUMONIA_BACKEND": backend}
    started = subprocess.run([sys.executable, "-c", "import app"], env=env, capture_output=True, text=True,
                             cwd=Path(app.__file__).parent, timeout=300)
    assert started.returncode == 1 and message in started.stderr and "Traceback" not in started.stderr


@pytest.mark.slow
def test_predict_reads_dicom_either_polarity(app, data_dir, tmp_path):
    import numpy as np
    from PIL import Image

    from tests.test_units import _write_dicom

    xray = np.asarray(Image.open(next((data_dir / "test" / "NORMAL").iterdir())).convert("L"), dtype=np.uint16) * 16
    mono2 = app.predict(str(_write_dicom(tmp_path / "a.dcm", xray, "MONOCHROME2")))
    mono1 = app.predict(str(_write_dicom(tmp_path / "b.dcm", 4095 - xray, "MONOCHROME1")))
    assert mono1 == pytest.approx(mono2, abs=1e-6) and sum(mono2.values()) == pytest.approx(1.0)



def test_the_page_shows_the_film_and_offers_the_bundled_examples(app, data_dir, tmp_path, monkeypatch):
    from tests.test_units import _write_dicom

    monkeypatch.delenv("EXAMPLES_DIR", raising=False)
    shipped = [Path(p) for p in app.examples()]
    assert len(shipped) == 4 and {p.parent.name for p in shipped} == {"NORMAL", "PNEUMONIA"}
    assert all(p.parent.parent == Path(app.__file__).parent / "examples" for p in shipped)
    film = np.asarray(Image.open(next((data_dir / "test" / "NORMAL").iterdir())).convert("L"))
    big = np.asarray(Image.fromarray(film).resize((2000, 1600)), dtype=np.uint16) * 16  # 12-bit, full resolution
    shown = app.film_view(str(_write_dicom(tmp_path / "film.dcm", 4095 - big, "MONOCHROME1")))
    assert shown.mode == "L" and shown.size == (1024, 819)  # at most 1024 px, aspect kept
    # MONOCHROME1 inverted and the 12 bits scaled to 8: the film, not its negative
    expected = np.asarray(Image.fromarray(np.round(big / 16).astype(np.uint8)).resize(shown.size), dtype=float)
    assert np.abs(np.asarray(shown, dtype=float) - expected).mean() < 3
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    assert app.film_view(str(junk)) is None and app.film_view(None) is None

@pytest.mark.slow
def test_full_resolution_upload_and_its_dicom_get_what_training_evaluation_gives(app, data_dir, tmp_path):
    """A film as a hospital sends it (full resolution, 8-bit PNG or 12-bit DICOM, with a black
    margin to crop): the app's answer equals training's evaluation path on the same file."""
    import json

    import numpy as np
    from PIL import Image

    from pneumonia.preprocessing import XrayPreprocessing
    from train.data import XrayDataset
    from train.shift import dicom_bytes

    film = Image.open(sorted((data_dir / "test" / "NORMAL").iterdir())[3]).convert("L").resize((1900, 1600), Image.BICUBIC)
    framed = Image.new("L", (2000, 1700), 0)
    framed.paste(film, (60, 40))
    framed.save(tmp_path / "full.png")
    (tmp_path / "full.dcm").write_bytes(dicom_bytes(np.asarray(framed, dtype=np.uint16) * 16, "MONOCHROME2"))

    settings = json.loads((app.model_dir / "training_config.json").read_text())
    training_eval = pneumonia.build_transform(  # as train/run.py builds its evaluation loaders
        pneumonia.data_config_of(app.classifier.model), XrayPreprocessing(settings["intensity"], settings["crop_borders"]))
    rows = [{"image": {"path": str(tmp_path / name), "bytes": None}, "label": 0} for name in ("full.png", "full.dcm")]
    pixels = torch.stack([XrayDataset(rows, training_eval, (3, 96, 96))[i]["pixel_values"] for i in range(2)])
    with torch.no_grad():
        expected = pneumonia.probabilities(app.classifier.model(pixels), app.classifier.temperature)[:, 1]
    from_png, from_dicom = (app.predict(str(tmp_path / name))["PNEUMONIA"] for name in ("full.png", "full.dcm"))
    assert from_png == pytest.approx(float(expected[0]), abs=1e-5)
    assert from_dicom == pytest.approx(float(expected[1]), abs=1e-5)
    assert from_dicom == pytest.approx(from_png, abs=0.01)


@pytest.mark.slow
def test_a_batch_answers_each_upload_as_if_alone(app, data_dir, tmp_path):
    goods = [str(p) for p in sorted((data_dir / "test" / "PNEUMONIA").iterdir())[:3]]
    gone = str(tmp_path / "deleted-after-upload.png")  # passed the check, then vanished
    bars, words = app.classify_batch([goods[0], gone, *goods[1:]])
    (heatmaps,) = app.heat_map_batch([goods[0], gone, *goods[1:]])
    assert bars[1] is None and heatmaps[1] is None and "deleted-after-upload.png is not a readable image" in words[1]
    for i, path in zip([0, 2, 3], goods):
        alone = app.predict(path)
        assert bars[i] == pytest.approx(alone, abs=1e-5) and words[i] == app.decision(pneumonia.Reading(bars[i]))
        assert np.allclose(np.asarray(heatmaps[i], float), np.asarray(app.heat_map(path), float), atol=2)
