"""The app as users meet it: a live server started by the test, called with gradio_client."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from PIL import Image

import pneumonia
from pneumonia.answering import levels_from_config
from tests.conftest import BUNDLED_MODEL as BUNDLED
from tests.conftest import SERVED_BACKEND, clear_films, recorded_predictions
from tests.test_bundled_model import REFUSED_TEST_FILMS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(app_url):
    return Client(app_url, verbose=False)


def _p_pneumonia(label: dict) -> float:
    return next(c["confidence"] for c in label["confidences"] if c["label"] == "PNEUMONIA")


def test_real_xrays_and_dicom_through_the_api(server, film, write_dicom, tmp_path):
    image = film("PNEUMONIA", 3)  # recorded P(PNEUMONIA) 0.997 on PyTorch, above the band
    label, decision, _ = server.predict(handle_file(str(image)), api_name="/predict")
    # served by the bundled model's compact ONNX file: what it gives in-process (measured: equal)
    served = pneumonia.load_classifier(str(BUNDLED), backend=SERVED_BACKEND).probabilities(pneumonia.open_image(image))
    assert _p_pneumonia(label) == pytest.approx(served["PNEUMONIA"], abs=1e-6)
    assert decision.startswith("### PNEUMONIA\n")
    with Image.open(server.predict(handle_file(str(image)), api_name="/heatmap")) as shown:
        assert shown.mode == "RGB" and shown.size == (224, 224)
    xray = np.asarray(Image.open(image).convert("L"), dtype=np.uint16) * 16
    mono1 = server.predict(handle_file(str(write_dicom(tmp_path / "m1.dcm", 4095 - xray, "MONOCHROME1"))), api_name="/predict")
    mono2 = server.predict(handle_file(str(write_dicom(tmp_path / "m2.dcm", xray, "MONOCHROME2"))), api_name="/predict")
    assert _p_pneumonia(mono1[0]) == pytest.approx(_p_pneumonia(mono2[0]), abs=1e-6)


def test_the_verdict_over_http_is_the_side_of_the_threshold_the_film_falls_on(server, data_dir):
    clear = clear_films(BUNDLED)
    picked = [row for label in ("NORMAL", "PNEUMONIA") for row in [r for r in clear if r["expected"] == r["label"] == label][:2]]
    for row in picked:
        label, decision, _ = server.predict(handle_file(str(data_dir / "test" / row["label"] / row["file"])), api_name="/predict")
        assert decision.startswith(f"### {row['expected']}\n"), (row, decision)
        assert abs(_p_pneumonia(label) - row["p_pneumonia"]) <= 0.05  # the compact file vs PyTorch: at most 0.003 (fp16 weights) on the 624 test films


def _bad_files(tmp_path, good):
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good.read_bytes()[:2000])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    report = tmp_path / "report.dcm"
    report.write_bytes(b"\0" * 128 + b"DICM")  # a DICOM without pixel data
    return [truncated, not_an_image, report]


def test_a_child_an_adult_a_side_view_and_a_ct_get_their_outcomes_through_the_api(server, live_app, film, scope_set):
    """The outcome travels as JSON (the third output), so callers need not parse the prose."""
    uploads = {"answer": str(film("PNEUMONIA", 3)), **{kind: next(str(p) for p in scope_set.files if p.parent.name == folder)
                                                 for kind, folder in (("caution", "adult_frontal"), ("lateral", "lateral"),
                                                                      ("ct", "ct"))}}
    for expected, path in uploads.items():
        label, decision, reading = server.predict(handle_file(path), api_name="/predict")
        assert set(reading["scores"]) == {"distance", "not_frontal_chest", "adult"}
        if expected in ("answer", "caution"):
            assert reading["outcome"] == expected and reading["decision"] in ("NORMAL", "PNEUMONIA")
            assert decision.startswith(f"### {reading['decision']}\n") and label["confidences"]
            assert ("Caution: this looks like an adult's chest film" in decision) == (expected == "caution")
        else:
            assert (reading["outcome"], reading["kind"], reading["decision"]) == ("refuse", expected, None)
            assert label == {"label": "not assessed", "confidences": None} and reading["reason"] in decision
            assert server.predict(handle_file(path), api_name="/heatmap") is None
    logged = live_app[0].log_path.read_text()  # the scores go to the log, a line per upload
    assert all(f"{Path(path).name}: {outcome}" in logged for outcome, path in
               (("answer", uploads["answer"]), ("caution adult", uploads["caution"]), ("refuse lateral", uploads["lateral"])))
    assert "'not_frontal_chest': " in logged


def test_bad_uploads_get_messages_and_the_server_keeps_serving(server, film, tmp_path):
    good = film("NORMAL")
    for bad in _bad_files(tmp_path, good):
        with pytest.raises(ValidationError, match=f"{bad.name} is not a readable image: upload a PNG, JPEG or DICOM"):
            server.predict(handle_file(str(bad)), api_name="/predict")
    with pytest.raises(ValidationError, match="No image received"):
        server.predict(None, api_name="/predict")
    with pytest.raises(ValidationError, match="notes.png is not a readable image"):
        server.predict(handle_file(str(tmp_path / "notes.png")), api_name="/heatmap")
    label, *_ = server.predict(handle_file(str(good)), api_name="/predict")
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"}


def test_what_is_not_a_chest_xray_is_refused_through_the_api(server, film, tmp_path):
    from skimage import data as samples

    rng = np.random.default_rng(0)
    others = {"astronaut.jpg": Image.fromarray(samples.astronaut()), "page.png": Image.fromarray(samples.page()),
              "noise.png": Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)),
              "blank.png": Image.new("L", (256, 256), 0)}
    for name, image in others.items():
        image.save(tmp_path / name)
        label, decision, _ = server.predict(handle_file(str(tmp_path / name)), api_name="/predict")
        assert label["label"] == "not assessed" and not label.get("confidences"), (name, label)
        assert decision.startswith("### NOT ASSESSED\nThis upload is not assessed: ")
        assert server.predict(handle_file(str(tmp_path / name)), api_name="/heatmap") is None
    good = film("NORMAL")  # recorded P(PNEUMONIA) 0.028
    label, decision, _ = server.predict(handle_file(str(good)), api_name="/predict")  # a film still gets its answer
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"} and decision.startswith("### NORMAL\n")


def test_uploads_outside_the_limits_are_named_with_the_limit(server, film, tmp_path):
    from tests.test_input_limits import png, png_header_only

    cases = {"dot.png": (png(1, 1), "dot.png: 1x1 px is too small: the shorter side must be at least 64 px"),
             "strip.png": (png(2000, 300), "strip.png: 2000x300 px is 7 times longer than wide"),
             "bomb.png": (png_header_only(20000, 20000), "bomb.png: 400 megapixels is over the 64-megapixel limit: upload a downscaled copy")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValidationError, match=message):
            server.predict(handle_file(str(tmp_path / name)), api_name="/predict")
    good = film("NORMAL")
    label, *_ = server.predict(handle_file(str(good)), api_name="/predict")  # and the server keeps serving
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"}


def test_an_upload_over_100_mb_is_refused_with_the_limit(server, app_url, film, tmp_path):
    import httpx

    huge = tmp_path / "huge.dcm"
    with huge.open("wb") as f:  # sparse: 101 MiB on the wire, almost nothing on disk
        f.write(b"\0" * 128 + b"DICM")
        f.seek(101 * 2**20)
        f.write(b"\0")
    with pytest.raises(ValueError, match="exceeds the maximum file size of 104857600 bytes"):
        server.predict(handle_file(str(huge)), api_name="/predict")  # gradio_client checks before sending
    with huge.open("rb") as f:  # a raw HTTP upload is refused by the server
        answer = httpx.post(app_url + "gradio_api/upload", files={"files": ("huge.dcm", f)}, timeout=120)
    assert answer.status_code == 413 and "maximum allowed size of 104857600 bytes" in answer.text
    good = film("NORMAL")
    label, *_ = server.predict(handle_file(str(good)), api_name="/predict")
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"}


def test_concurrent_callers_share_batches_and_a_bad_file_fails_alone(server, film, tmp_path):
    goods = [film("PNEUMONIA", i) for i in range(6)]
    alone = {image: _p_pneumonia(server.predict(handle_file(str(image)), api_name="/predict")[0]) for image in goods}
    jobs = [server.submit(handle_file(str(path)), api_name="/predict")
            for path in [*goods[:3], *_bad_files(tmp_path, goods[0])[:1], *goods[3:]]]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(_p_pneumonia(job.result(timeout=120)[0]))
        except ValidationError as err:
            outcomes.append(str(err))
    assert "truncated.jpeg is not a readable image" in outcomes[3]
    assert outcomes[:3] + outcomes[4:] == pytest.approx([alone[image] for image in goods], abs=1e-5)


def test_an_api_caller_may_ask_for_another_answer_level(server, data_dir):
    """/predict answers at the folder's default level, as before; /predict_at_level takes the level
    as a second, optional argument, and the outcome says which level answered."""
    levels, default = levels_from_config(json.loads((BUNDLED / "config.json").read_text()))
    loose, strict = levels[0.95], levels[default]  # PNEUMONIA at or above 0.840 and 0.965
    row = next(r for r in recorded_predictions(BUNDLED, "test") if r["file"] not in REFUSED_TEST_FILMS
               and loose.pneumonia_at_least + 0.04 <= r["p_pneumonia"] <= strict.pneumonia_at_least - 0.04)
    film = handle_file(str(data_dir / "test" / row["label"] / row["file"]))
    for called in (server.predict(film, api_name="/predict"), server.predict(film, api_name="/predict_at_level")):
        _, decision, outcome = called
        assert decision.startswith("### UNCERTAIN\n") and outcome["level"] == default and outcome["decision"] is None
    for level in (0.95, "0.95"):
        _, decision, outcome = server.predict(film, level, api_name="/predict_at_level")
        assert decision.startswith("### PNEUMONIA\n") and (outcome["level"], outcome["decision"]) == (0.95, "PNEUMONIA")
    with pytest.raises(Exception, match="level 0.9: this model answers at 0.95, 0.97, 0.99"):
        server.predict(film, 0.9, api_name="/predict_at_level")
