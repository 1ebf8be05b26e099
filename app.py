"""Gradio app: upload a chest X-ray, get calibrated NORMAL / PNEUMONIA probabilities.

    python app.py                                     # the bundled default model
    PNEUMONIA_MODEL=hf-hub:USER/pneumonia-vgg16 python app.py
    PNEUMONIA_MODEL=runs/vgg16 python app.py          # any folder written by `python -m train`

On a Hugging Face Space without PNEUMONIA_MODEL it serves the Space author's pneumonia-vgg16, else
the bundled model, and says why (serving/model_choice.py).

Research and education only: not a diagnosis.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import nullcontext
from pathlib import Path

import gradio as gr
from PIL import Image

from pneumonia import Reading, UsageError, load_classifier, open_image, to_model_mode, words
from pneumonia.backends import BACKENDS
from pneumonia.preprocessing import ImageOutOfLimits, UnreadableImage, is_dicom
from serving import private_mode
from serving.model_choice import serve

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pneumonia-mobilenetv2"
DEFAULT_EXAMPLES = Path(__file__).resolve().parent / "examples"
FILM_VIEW_SIDE = 1024  # the page shows the film at most this large


def _backend() -> str:
    """Where /predict's logits come from: auto (int8 ONNX, else fp16-weights ONNX, else fp32 ONNX, else
    PyTorch), or one of them."""
    value = os.environ.get("PNEUMONIA_BACKEND", "auto")
    if value not in BACKENDS:
        raise SystemExit(f"error: PNEUMONIA_BACKEND={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


try:
    served = serve(os.environ, DEFAULT_MODEL, lambda source: load_classifier(source, backend=_backend()))  # once
except UsageError as err:
    raise SystemExit(f"error: PNEUMONIA_MODEL / PNEUMONIA_BACKEND: {err}") from None
classifier, MODEL_SOURCE = served.classifier, served.source
model_lock = threading.Lock()  # the heat map hooks the PyTorch model: one batch at a time uses it
log = logging.getLogger("app")  # each upload's outcome and gate scores (the page shows words only)


def _max_batch_size() -> int:
    """Concurrent /predict requests that Gradio gathers into one forward pass (1 = no batching)."""
    value = os.environ.get("PNEUMONIA_MAX_BATCH_SIZE", "8")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"error: PNEUMONIA_MAX_BATCH_SIZE={value!r}: give a whole number of requests, 1 or more")
    return int(value)


MAX_BATCH_SIZE = _max_batch_size()

# Gradio keeps each caller's session (a copy of this page's config, about 45 KB) until 10,000 are
# kept, and re-summarises its log of up to 10,000 events with pandas after every event, for the
# API page's figures. Every HTTP API call is a new session: after 3000 calls the server held
# 131 MiB more and answered 1.3x slower (BENCHMARKS.md). No state lives in a session here (no
# gr.State), so a dropped one costs nothing. A deployer's own GRADIO_ANALYTICS_* settings win;
# they must be set before gr.Blocks creates its queue.
SESSIONS_KEPT = 500
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

# A 43 x 43 cm detector's film (4300 x 4300 px) is about 37 MB as 16-bit DICOM; Gradio refuses larger uploads
# with a message naming the limit, before they reach the disk.
MAX_UPLOAD = "100mb"
DISCLAIMER = "Research and education only: this is not a medical device and not a diagnosis."
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def model_summary() -> str:
    test = classifier.metrics.get("test")
    scores = f"test F1 {test['f1']:.3f}, ROC-AUC {test['roc_auc']:.3f} (n = {test['n']})" if test else "no test metrics"
    name = f"models/{DEFAULT_MODEL.name} (bundled)" if MODEL_SOURCE == str(DEFAULT_MODEL) else MODEL_SOURCE
    why = f"**{served.note}**\n\n" if served.note else ""
    return f"{why}Model: `{name}` ({scores}; threshold {classifier.threshold:.3f}; answers from {classifier.backend}). {gate_summary()}"


def gate_summary() -> str:
    if classifier.gate is None:
        return ("**The out-of-distribution gate is off**: this model folder has none, so any image gets an answer, "
                "X-ray or not (fit one with `python -m train.gate FOLDER`).")
    if classifier.gate.heads is None:
        return ("Images that do not look like the chest X-rays the model was trained on (photos, documents, blank "
                "images) are refused, not classified.")
    return ("Uploads that are not a frontal chest X-ray (CT or MRI slices, other body parts, side views, photos, "
            "documents) are refused, not classified; adults' films are answered with a caution.")


def examples() -> list[str]:
    """Up to 8 files from EXAMPLES_DIR (searched recursively), by default the bundled examples/."""
    folder = Path(os.environ.get("EXAMPLES_DIR") or DEFAULT_EXAMPLES)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
    return [str(p) for p in files[:: max(1, len(files) // 8)][:8]]


def _open(image_path: str | None) -> Image.Image:
    if not image_path:
        raise gr.Error("No image received: upload a chest X-ray (PNG, JPEG or DICOM).")
    try:
        return open_image(image_path)
    except ImageOutOfLimits as err:
        raise gr.Error(f"{Path(image_path).name}: {err.problem}.") from None
    except UnreadableImage:
        raise gr.Error(f"{Path(image_path).name} is not a readable image: upload a PNG, JPEG or DICOM chest X-ray.") from None


def _open_or_message(image_path: str | None) -> Image.Image | str:
    try:
        return _open(image_path)
    except gr.Error as err:
        return err.message


def _answering():
    """The PyTorch model (and the gate's hooks on it) is shared with Grad-CAM; an ONNX Runtime
    session is not. An ONNX file exported before the gate existed leaves the gate's features
    to the PyTorch model, which then needs the lock too."""
    onnx_alone = classifier.onnx_logits and (classifier.gate is None or classifier.onnx_logits.has_features)
    return nullcontext() if onnx_alone else model_lock


def film_view(image_path: str | None) -> Image.Image | None:
    """The uploaded film as the model reads it (a DICOM after its window, 16-bit scaled to 8),
    at most FILM_VIEW_SIDE pixels a side; None for a file that cannot be read."""
    image = _open_or_message(image_path)
    if not isinstance(image, Image.Image):
        return None
    shown = to_model_mode(image).convert("L")
    shown.thumbnail((FILM_VIEW_SIDE, FILM_VIEW_SIDE))
    return shown


def film_caption(image_path: str | None) -> str:
    """What the film view shows: a DICOM's caption names the steps its pixels went through."""
    if image_path and Path(image_path).is_file() and is_dicom(image_path):
        return "The film, as read (DICOM: rescaled, windowed, MONOCHROME1 inverted)"
    return "The film, as read"


def show_film(image_path: str | None) -> gr.Image:
    return gr.Image(value=film_view(image_path), label=film_caption(image_path))


def predict(image_path: str | None) -> dict[str, float]:
    """An image file -> calibrated probability per label, e.g. {"NORMAL": 0.1, "PNEUMONIA": 0.9};
    gr.Error with the reason for an image the out-of-distribution gate refuses."""
    image = _open(image_path)
    with _answering():
        (reading,) = classifier.read([image])
    if reading.refused:
        raise gr.Error(words.refusal(reading.kind))
    return reading.probabilities


REFUSED = "not assessed"  # the label of a refused upload: no probabilities, no bars


def decision(reading: Reading) -> str:
    """The outcome in words, headed by the decision (### NORMAL, ### PNEUMONIA, ### UNCERTAIN or
    ### NOT ASSESSED): ``pneumonia.words``, which the private mode's page shares."""
    return words.decision(classifier, reading)


def outcome(reading: Reading) -> dict:
    """/predict's third output, for API callers: the outcome without parsing prose, and the scores."""
    return words.outcome(classifier, reading)


def bars(reading: Reading) -> dict[str, float] | str:
    return REFUSED if reading.refused else reading.probabilities


def classify(image_path: str | None) -> tuple[dict[str, float] | str, str]:
    """Probability bars (or the refusal label) and the decision in words."""
    return predict_at_level(image_path, None)[:2]


def predict_at_level(image: str | None, level: float | None) -> tuple[dict[str, float] | str, str, dict]:
    """The /predict_at_level endpoint: /predict's three outputs for one upload, answered by the
    cut-offs of ``level`` (the answered accuracy each side's cut-off was chosen for; None: the
    folder's default). A bad file or level fails with its message."""
    level, opened = _asked_level(level), _open(image)
    with _answering():
        (reading,) = classifier.read([opened], level)
    return bars(reading), decision(reading), outcome(reading)


def heat_map(image_path: str | None) -> Image.Image | None:
    """A heat map (LayerCAM) of the PNEUMONIA score over the X-ray; None for a refused image."""
    return heat_maps([_open(image_path)])[0]


def heat_maps(images: list[Image.Image]) -> list[Image.Image | None]:
    from pneumonia.gradcam import overlay  # torch loads with the first heat map, not before the first answer

    with model_lock:
        readings, cams = classifier.explain(images)  # one forward and backward pass of the PyTorch model
    return [None if reading.refused else overlay(image, cam) for image, reading, cam in zip(images, readings, cams)]


def check_uploads(image: list[str | None]) -> list[list[dict]]:
    """Runs per request before it joins a batch, so a bad file fails alone, with its message."""
    opened = [_open_or_message(path) for path in image]
    return [[gr.validate(isinstance(item, Image.Image), "" if isinstance(item, Image.Image) else item)
             for item in opened]]


def _asked_level(value) -> float | None:
    """The answer level an API caller asked for (a number, or its text); None for the default.
    One the folder lacks fails with ``Classifier.cutoffs``'s message, which names its levels."""
    if value is None or value == "":
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        pass  # not a number: the message below names the levels there are
    try:
        classifier.cutoffs(value)
    except UsageError as err:
        raise gr.Error(str(err)) from None
    return value


def _read_batched_verdicts() -> None:
    """Gradio 6.31 ignores a batched validator's verdicts (they arrive as a tuple where it
    looks for a list), which would let a bad file into a batch and fail its neighbours.
    tests/test_app_server.py checks that a bad file is turned away alone."""
    from gradio import queueing

    original = queueing.process_validation_response
    if getattr(original, "reads_tuples", False):
        return

    def process_validation_response(response, fn=None):
        return original(list(response) if isinstance(response, tuple) else response, fn)

    process_validation_response.reads_tuples = True
    queueing.process_validation_response = process_validation_response


_read_batched_verdicts()


def _per_upload(image: list[str | None], answer_all) -> list:
    """``answer_all(images)`` for the readable uploads of a batch; a message for the others.
    check_uploads has turned bad files away; one that went bad since then fails alone."""
    opened = [_open_or_message(path) for path in image]
    images = [item for item in opened if isinstance(item, Image.Image)]
    answers = iter(answer_all(images) if images else [])
    return [next(answers) if isinstance(item, Image.Image) else item for item in opened]


def classify_batch(image: list[str | None]) -> tuple[list, list, list]:
    """The /predict endpoint: bars, decision and outcome for up to MAX_BATCH_SIZE queued uploads,
    from one forward pass (ONNX Runtime when the model folder has it), at the default answer level."""
    def answer_all(images):
        with _answering():
            return classifier.read(images)

    rows = []
    for path, found in zip(image, _per_upload(image, answer_all)):
        if isinstance(found, Reading):
            log.info("%s: %s %s %s", Path(path).name, found.outcome, found.kind or "", found.scores)
            rows.append((bars(found), decision(found), outcome(found)))
        else:
            rows.append((None, found, {"outcome": "unreadable", "reason": found}))
    return tuple(list(column) for column in zip(*rows))


def heat_map_batch(image: list[str | None]) -> tuple[list]:
    """The /heatmap endpoint, which the page calls once the answer is shown: LayerCAM
    overlays for up to MAX_BATCH_SIZE uploads from one PyTorch forward and backward pass."""
    return ([found if isinstance(found, Image.Image) else None for found in _per_upload(image, heat_maps)],)


with gr.Blocks(title="Pneumonia on pediatric chest X-rays") as demo:
    gr.Markdown(f"# Pneumonia on pediatric chest X-rays\n{model_summary()}\n\n**{DISCLAIMER}**")
    with gr.Tab("Upload (server)"):
        with gr.Row():
            with gr.Column(scale=1):
                # A file, not gr.Image: gr.Image would decode (and reject DICOM) before predict sees it.
                upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=["image", ".dcm"], type="filepath")
                example_files = examples()
                if example_files:
                    gr.Examples(example_files, inputs=upload, label="Examples: test films of the Kermany data set (CC BY 4.0)")
            with gr.Column(scale=2):
                # The decision comes first: it follows the answer cut-offs, not the longer bar.
                verdict = gr.Markdown(label="Decision", elem_id="verdict")
                probability_bars = gr.Label(num_top_classes=2, label="Calibrated probability", show_heading=False)
                reading = gr.JSON(visible=False)  # for API callers: outcome, reason, scores
                # For /predict_at_level's callers: the answered accuracy whose cut-offs answer.
                answer_level = gr.Number(classifier.level, visible=False, label="answer level")
                with gr.Row():
                    film = gr.Image(label=film_caption(None), type="pil", elem_id="film")
                    heatmap = gr.Image(label="Heat map (LayerCAM): regions that raised the PNEUMONIA score", type="pil",
                                       elem_id="heatmap")
    with gr.Tab("Private (in your browser)"):
        # The page runs the compact ONNX model (int8, else fp16 weights) in the visitor's browser: the film never leaves it (web/, docs/private-mode.md).
        gr.HTML(private_mode.frame(classifier))
    # The film shows at once; a file it cannot show gets its message from /predict's check.
    upload.change(show_film, inputs=upload, outputs=film, api_name="film", api_visibility="undocumented")
    # The answer first; the heat map (PyTorch, forward and backward) follows and never holds
    # it up. Each step runs one batch at a time: requests that arrive meanwhile gather into
    # the next batch instead of a second, smaller one waiting on the model.
    batched = {"validator": check_uploads, "batch": True, "max_batch_size": MAX_BATCH_SIZE, "concurrency_limit": 1}
    answered = upload.change(classify_batch, inputs=upload, outputs=[probability_bars, verdict, reading],
                             api_name="predict", **batched)
    answered.success(heat_map_batch, inputs=upload, outputs=heatmap, api_name="heatmap", **batched)
    # /predict at another answer level, for API callers only. Not batched: Gradio 6.31 cannot
    # validate a batched event of two inputs (it hands the validator one request as a batch of its
    # inputs), and alone a bad file fails by itself anyway.
    gr.on([], predict_at_level, inputs=[upload, answer_level], outputs=[probability_bars, verdict, reading],
          api_name="predict_at_level", concurrency_limit=1)
    demo.queue(max_size=64)


def launch(**options) -> None:
    """Serves the page, the API and the private mode's files; ``options`` go to ``demo.launch``."""
    demo.launch(show_error=True, max_file_size=MAX_UPLOAD,  # gr.Error messages reach API callers too
                state_session_capacity=SESSIONS_KEPT, app_kwargs={"routes": private_mode.routes(classifier)},
                **options)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    log.setLevel(logging.INFO)
    launch()
