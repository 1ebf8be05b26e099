"""Reading films without torch: NumPy preprocessing identical to training's, and the ONNX backends
in a process where torch, timm and torchvision cannot be imported."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import ImageOps

import pneumonia
from pneumonia.pixels import data_config_from, preprocess
from tests.conftest import BUNDLED_MODEL, DATA, ROOT, SERVED_BACKEND

BLOCKED = ("torch", "timm", "torchvision", "matplotlib", "gradio", "accelerate", "datasets", "cv2")


def test_numpy_pixels_equal_the_training_transform_on_every_test_film(bundled, bundled_test_films):
    """The app and every backend use pneumonia.pixels; training and its evaluation use timm and
    torchvision. Equal to the bit on all 624 films, at the bundled model's settings."""
    transform = pneumonia.build_transform(pneumonia.data_config_of(bundled.model), bundled.preprocessing)
    images = bundled_test_films[1]
    assert len(images) == 624
    differing = [i for i, image in enumerate(images)
                 if not np.array_equal(preprocess(image, bundled.data_config, "equalize"), transform(image).numpy())]
    assert bundled.preprocessing.intensity == "equalize" and differing == []


@pytest.mark.parametrize("name", list(pneumonia.PRESETS))
def test_numpy_pixels_equal_timm_for_each_preset_any_shape_and_every_step(name, film):
    """Each preset's size and interpolation; films of other shapes and modes; CLAHE, border crop,
    percentile; and timm's centre-crop mode, which a fine-tuned folder of someone else may carry."""
    model = pneumonia.create_model(name)
    config = pneumonia.data_config_of(model)
    assert data_config_from({"pretrained_cfg": model.pretrained_cfg}) == {**config, "mean": tuple(config["mean"]),
                                                                         "std": tuple(config["std"])}
    base = pneumonia.open_image(film("PNEUMONIA", 3))
    framed = ImageOps.expand(base.convert("L"), border=(60, 0, 60, 30), fill=0)  # black margins to crop
    shapes = [base.resize((700, 560)), base.resize((333, 517)).convert("L"), base.convert("I;16"), framed]
    assert not np.array_equal(preprocess(framed, config, crop=True), preprocess(framed, config))  # the crop acts
    for intensity, crop in (("none", False), ("clahe", True), ("percentile", False), ("equalize", True)):
        transform = pneumonia.build_transform(config, pneumonia.XrayPreprocessing(intensity, crop))
        for image in shapes:
            assert np.array_equal(preprocess(image, config, intensity, crop), transform(image).numpy()), (intensity, crop)
    centre = {**config, "crop_mode": "center", "crop_pct": 0.875}
    for image in shapes:
        assert np.array_equal(preprocess(image, centre), pneumonia.build_transform(centre)(image).numpy())


def _without_torch(script: str) -> dict:
    """Run ``script`` where importing torch, timm, torchvision (and the app's stack) fails; its last
    line of output is JSON."""
    blocker = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
    done = subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_onnx_backends_read_films_without_torch(bundled_readings, bundled_test_films, tmp_path):
    """int8 (the file the app serves): the same probabilities and outcomes as in a process with
    torch; fp32 (published folders carry it): PyTorch's probabilities and outcomes."""
    import shutil

    from train.export.onnx import export_fp32

    folder = tmp_path / "bundled"
    shutil.copytree(BUNDLED_MODEL, folder)
    bundled = pneumonia.load_classifier(str(folder))
    export_fp32(bundled.model, tuple(bundled.data_config["input_size"]), folder / "model.onnx", bundled.gate)
    rows = bundled_test_films[0]
    picked = list(range(0, 624, 13))  # 48 films of both classes
    files = [str(DATA / "test" / rows[i]["label"] / rows[i]["file"]) for i in picked]
    found = _without_torch(f"""
        import json, pneumonia
        files = {files!r}
        out = {{}}
        for backend in ({SERVED_BACKEND!r}, "onnx-fp32"):
            classifier = pneumonia.load_classifier({str(folder)!r}, backend=backend)
            readings = classifier.read([pneumonia.open_image(f) for f in files])
            out[backend] = [[r.probabilities["PNEUMONIA"], r.outcome, r.kind] for r in readings]
        assert not [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None]
        print(json.dumps(out))
    """)
    for backend, reference in ((SERVED_BACKEND, bundled_readings["served"]), ("onnx-fp32", bundled_readings["pytorch"])):
        expected = [reference[i] for i in picked]
        p = np.array([row[0] for row in found[backend]])
        tolerance = 1e-6 if backend == SERVED_BACKEND else 2e-6  # the same file; fp32 ONNX vs PyTorch (measured 5.9e-7)
        assert np.abs(p - [r.probabilities["PNEUMONIA"] for r in expected]).max() <= tolerance, backend
        assert [(row[1], row[2]) for row in found[backend]] == [(r.outcome, r.kind) for r in expected], backend


def test_without_torch_the_heat_map_says_what_to_install():
    example = sorted((ROOT / "examples" / "NORMAL").iterdir())[0]
    message = _without_torch(f"""
        import json, pneumonia
        classifier = pneumonia.load_classifier({str(BUNDLED_MODEL)!r}, backend={SERVED_BACKEND!r})
        try:
            classifier.explain([pneumonia.open_image({str(example)!r})])
        except pneumonia.UsageError as err:
            print(json.dumps(str(err)))
    """)
    assert "pneumonia-xray[torch]" in message


def test_a_light_install_names_the_extra_it_lacks(write_dicom, tmp_path):
    """Without onnxruntime, backend="onnx" says which extra to install; without pydicom, so does a
    DICOM upload; neither is a bare ImportError."""
    dicom = write_dicom(tmp_path / "film.dcm", np.full((300, 300), 2000, np.uint16), "MONOCHROME2")
    found = _without_torch(f"""
        import json, sys
        sys.modules["onnxruntime"] = None
        sys.modules["pydicom"] = None
        import pneumonia
        from pneumonia.image_files import UnreadableImage
        messages = []
        try:
            pneumonia.load_classifier({str(BUNDLED_MODEL)!r}, backend="onnx")
        except pneumonia.UsageError as err:
            messages.append(str(err))
        try:
            pneumonia.open_image({str(dicom)!r})
        except UnreadableImage as err:
            messages.append(str(err))
        print(json.dumps(messages))
    """)
    assert len(found) == 2 and '"pneumonia-xray[onnx]"' in found[0] and '"pneumonia-xray[dicom]"' in found[1]
