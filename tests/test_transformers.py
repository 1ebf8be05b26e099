"""A model folder read by transformers' pipeline gives the project's own answers, or fails.

``pneumonia.hub_code.add_transformers_code`` puts transformers code into every model folder that
training writes, and the bundled folder is committed with it, exactly as a push uploads it;
``pipeline("image-classification", model=FOLDER, trust_remote_code=True)`` must then give
``load_classifier``'s calibrated probabilities (same pixels, same temperature, float32), while
timm and ``load_classifier`` keep reading the folder as before. Offline: everything is local.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BUNDLED_MODEL, LABELS

FILMS_PER_CLASS = 20
# Measured on these 40 test films (20 per class): max |dP| 2.1e-7, float32 rounding (the pixels are
# bit-identical), and 40/40 decisions alike (21 PNEUMONIA). What a skipped step moves: equalisation
# 0.74, temperature 0.077, float16 compute 3.1e-4. The bound sits between, far above rounding.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A copy of the bundled folder as committed (tests that write into it leave the checkout alone)."""
    return Path(shutil.copytree(BUNDLED_MODEL, tmp_path_factory.mktemp("hf") / BUNDLED_MODEL.name))


def test_the_bundled_folder_carries_the_transformers_code_a_push_uploads():
    """Users find the bundled folder first: transformers must read it as it reads a pushed one."""
    from pneumonia.hub_code import CODE_FILES, transformers_config

    stale = [name for name, source in CODE_FILES.items()
             if not (BUNDLED_MODEL / name).is_file() or (BUNDLED_MODEL / name).read_text() != source.read_text()]
    assert not stale, (f"{BUNDLED_MODEL} lacks or has an old copy of {stale}: run "
                       "pneumonia.hub_code.add_transformers_code on it and commit the files")
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    assert config == transformers_config(config)


@pytest.fixture(scope="module")
def film_paths(film) -> list[Path]:
    return [film(label, index) for label in LABELS for index in range(FILMS_PER_CLASS)]


@pytest.fixture(scope="module")
def classifier(hf_folder):
    import pneumonia

    return pneumonia.load_classifier(str(hf_folder), backend="pytorch")


@pytest.fixture(scope="module")
def classify(hf_folder):
    from transformers import pipeline

    return pipeline("image-classification", model=str(hf_folder), trust_remote_code=True)


def pipeline_probabilities(classify, inputs) -> np.ndarray:
    """(N, 2) scores in label order; asks for every label, not the pipeline's top ones."""
    answers = classify(list(inputs), top_k=len(LABELS))
    return np.array([[{a["label"]: a["score"] for a in answer}[name] for name in LABELS] for answer in answers])


def test_pipeline_gives_the_projects_probabilities_and_decisions(classify, classifier, film_paths):
    import torch

    import pneumonia

    expected = classifier.predict_proba([pneumonia.open_image(path) for path in film_paths])
    got = pipeline_probabilities(classify, [str(path) for path in film_paths])
    assert classify.model.dtype == torch.float32  # the weights are stored in float16
    assert np.abs(got - expected).max() < TOLERANCE
    positive = LABELS.index("PNEUMONIA")
    assert list(got[:, positive] >= classifier.threshold) == list(expected[:, positive] >= classifier.threshold)
    assert 0 < (expected[:, positive] >= classifier.threshold).sum() < len(film_paths)  # both decisions occur
    config = classify.model.config  # the card's snippet answers with these cut-offs
    assert config.answer_level == classifier.level and config.answer_cutoffs == [
        levels.to_config() for levels in classifier.levels.values()]


def test_image_processor_gives_the_projects_pixels(classify, classifier, film_paths):
    import pneumonia

    images = [pneumonia.open_image(path) for path in film_paths[::8]]
    pixels = classify.image_processor(images, return_tensors="np")["pixel_values"]
    assert pixels.dtype == np.float32
    assert np.array_equal(pixels, classifier.pixel_array(images))


def test_a_16_bit_film_keeps_its_depth(classify, classifier, film, tmp_path):
    """transformers' own reading makes every file 8-bit RGB, clipping a 16-bit film to white."""
    import pneumonia

    grey = np.asarray(Image.open(film("NORMAL", 3)).convert("L"), dtype=np.uint16) * 200 + 1000
    path = tmp_path / "film16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    expected = classifier.predict_proba([pneumonia.open_image(path)])
    for given in (str(path), Image.open(path), np.asarray(Image.open(path))):
        assert np.abs(pipeline_probabilities(classify, [given]) - expected).max() < TOLERANCE, type(given)


@pytest.mark.parametrize("trust", [False, None], ids=["refused", "not-given"])
def test_without_trust_remote_code_it_fails(hf_folder, trust):
    from transformers import AutoModelForImageClassification, pipeline

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("image-classification", model=str(hf_folder), trust_remote_code=trust)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForImageClassification.from_pretrained(str(hf_folder), trust_remote_code=trust)


def test_timm_and_load_classifier_still_read_the_folder(hf_folder, classifier, film_paths):
    import timm
    import torch

    import pneumonia.presets  # noqa: F401  (registers pneumonia_cnn with timm)

    batch = classifier.pixels([pneumonia.open_image(path) for path in film_paths[:4]])
    with torch.inference_mode():
        before = timm.create_model(f"local-dir:{BUNDLED_MODEL}", pretrained=True).eval()(batch)
        after = timm.create_model(f"local-dir:{hf_folder}", pretrained=True).eval()(batch)
    assert torch.equal(before, after)
    assert classifier.temperature == json.loads((BUNDLED_MODEL / "config.json").read_text())["temperature"]


def test_a_folder_saved_by_transformers_stays_a_timm_folder(classify, hf_folder, classifier, film_paths, tmp_path):
    """``save_pretrained`` writes timm's weight names (float32 now), as it does for TimmWrapper."""
    import timm
    import torch

    import pneumonia

    classify.save_pretrained(tmp_path / "saved")
    batch = classifier.pixels([pneumonia.open_image(path) for path in film_paths[:4]])
    with torch.inference_mode():
        saved = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True).eval()(batch)
        original = timm.create_model(f"local-dir:{hf_folder}", pretrained=True).eval()(batch)
    assert torch.equal(saved, original)


def test_config_keeps_what_timm_and_the_project_read(hf_folder):
    original = json.loads((BUNDLED_MODEL / "config.json").read_text())
    updated = json.loads((hf_folder / "config.json").read_text())
    for key, value in original.items():
        if key == "model_args":
            assert updated[key] == {k: v for k, v in value.items() if k != "num_classes"}
        else:
            assert updated[key] == value, key
    assert updated["model_type"] == "pneumonia_xray" and updated["dtype"] == "float32"


# What a user without this project runs: transformers and the folder, nothing else on the path.
STANDALONE_PIPELINE = """
import json, sys
from transformers import pipeline
classify = pipeline("image-classification", model=sys.argv[1], trust_remote_code=True)
answers = classify(sys.argv[2:], top_k=2)
print(json.dumps([{a["label"]: a["score"] for a in answer} for answer in answers]))
"""


def test_a_from_scratch_cnn_folder_needs_nothing_of_the_project(film_paths, tmp_path):
    """The ``cnn`` preset's architecture is the project's own (``pneumonia_cnn``): the folder brings
    it along. Random float16 weights, with the other preprocessing (CLAHE, border crop)."""
    import os

    import pneumonia
    from pneumonia.hub_code import add_transformers_code

    folder = cnn_folder(tmp_path / "cnn")
    add_transformers_code(folder)
    paths = [str(path) for path in film_paths[::5]] + [str(framed_film(film_paths[0], tmp_path / "framed.png"))]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-P", "-c", STANDALONE_PIPELINE, str(folder), *paths],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.array([[answer[name] for name in LABELS] for answer in json.loads(result.stdout.splitlines()[-1])])
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    expected = classifier.predict_proba([pneumonia.open_image(path) for path in paths])
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.ptp(expected[:, 0]) > 0.1  # answers that differ, so the comparison has something to compare


def framed_film(source: Path, path: Path) -> Path:
    """A film inside wide black margins, as a scanned print comes: what the border crop removes."""
    image = Image.open(source).convert("L")
    framed = Image.new("L", (image.width * 3 // 2, image.height * 3 // 2))
    framed.paste(image, (image.width // 4, image.height // 4))
    framed.save(path)
    return path


def cnn_folder(folder: Path) -> Path:
    """A small ``cnn`` preset folder as training writes it (timm's save_for_hf, float16), untrained."""
    import timm.models
    import torch

    from pneumonia.presets import create_model

    torch.manual_seed(0)
    model = create_model("cnn", image_size=64).eval()
    with torch.no_grad():
        model.get_classifier().weight *= 100  # confident answers, so that a changed pixel shows
    model = model.half()
    timm.models.save_for_hf(model, folder, safe_serialization=True, model_config={
        "label_names": list(LABELS), "positive_label": "PNEUMONIA", "threshold": 0.5, "temperature": 0.7,
        "xray_preprocessing": {"intensity": "clahe", "crop_borders": True}, "preset": "cnn"})
    return folder


def test_adding_the_code_twice_changes_nothing(hf_folder):
    from pneumonia.hub_code import add_transformers_code

    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in hf_folder.iterdir()}
    add_transformers_code(hf_folder)
    after = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in hf_folder.iterdir()}
    assert after == before
