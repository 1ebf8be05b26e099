"""Gradio app: upload a chest X-ray, get calibrated NORMAL / PNEUMONIA probabilities.

    python app.py                                     # the bundled default model
    PNEUMONIA_MODEL=hf-hub:USER/pneumonia-vgg16 python app.py
    PNEUMONIA_MODEL=runs/vgg16 python app.py          # any folder written by `python -m train`

On a Hugging Face Space without PNEUMONIA_MODEL it serves the Space author's pneumonia-vgg16, else
the bundled model, and says why (serving/model_choice.py). Importing this file does nothing:
``launch()`` chooses and loads the model, ``build_demo(classifier)`` makes the page and its API.

Research and education only: not a diagnosis.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from pneumonia import Classifier, Reading, UsageError, load_classifier, to_model_mode, words
from pneumonia.backends import BACKENDS
from pneumonia.image_files import is_dicom
from serving import gradio_fixes, private_mode
from serving.model_choice import Served, serve
from serving.uploads import Uploads

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pneumonia-mobilenetv2"
DEFAULT_EXAMPLES = Path(__file__).resolve().parent / "examples"
FILM_VIEW_SIDE = 1024  # the page shows the film at most this large
# Gradio keeps each caller's session (a copy of this page's config, about 45 KB) until 10,000 are
# kept, and every HTTP API call is a new session: after 3000 calls a server held 131 MiB more
# (BENCHMARKS.md). No state lives in a session here (no gr.State), so a dropped one costs nothing.
SESSIONS_KEPT = 500
# A 43 x 43 cm detector's film (4300 x 4300 px) is about 37 MB as 16-bit DICOM; Gradio refuses larger uploads
# with a message naming the limit, before they reach the disk.
MAX_UPLOAD = "100mb"
DISCLAIMER = "Research and education only: this is not a medical device and not a diagnosis."
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}
REFUSED = "not assessed"  # the label of a refused upload: no probabilities, no bars
log = logging.getLogger("app")  # each upload's outcome and gate scores (the page shows words only)


@dataclass
class Endpoints:
    """The page's and the API's handlers: each a function of its inputs and the served model.
    Batched endpoints take and return one list per input and output, a row per queued upload."""

    classifier: Classifier
    uploads: Uploads = field(default_factory=Uploads)  # each upload decoded once, for every handler
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # Grad-CAM hooks the PyTorch model

    def predict(self, image: list[str | None]) -> tuple[list, list, list]:
        """/predict: bars, decision and outcome per upload, from one forward pass (ONNX Runtime
        when the model folder has it), at the default answer level. A file that cannot be read
        (check has turned such files away; one may have gone since) gets its message alone."""
        def answer_all(images):
            with self._answering():
                return self.classifier.read(images)

        rows = []
        for path, found in zip(image, self._per_upload(image, answer_all)):
            if isinstance(found, Reading):
                log.info("%s: %s %s %s", Path(path).name, found.outcome, found.kind or "", found.scores)
                rows.append(self._row(found))
            else:
                rows.append((None, found, {"outcome": "unreadable", "reason": found}))
        return tuple(list(column) for column in zip(*rows))

    def heatmap(self, image: list[str | None]) -> tuple[list]:
        """/heatmap, which the page calls once the answer is shown: a LayerCAM overlay per upload
        (None where refused or unreadable), from one PyTorch forward and backward pass."""
        return ([found if isinstance(found, Image.Image) else None for found in self._per_upload(image, self._heat_maps)],)

    def predict_at_level(self, image: str | None, level: float | str | None) -> tuple:
        """/predict_at_level: /predict's three outputs for one upload, answered by the cut-offs of
        ``level`` (the answered accuracy each side's cut-off was chosen for; None: the folder's
        default). A bad file or level fails with its message."""
        level, opened = self._asked_level(level), self.uploads.open(image)
        with self._answering():
            (reading,) = self.classifier.read([opened], level)
        return self._row(reading)

    def film(self, image: str | None) -> dict:
        """The film view's image and caption: the film as the model reads it (a DICOM after its
        window, 16-bit scaled to 8), at most FILM_VIEW_SIDE pixels a side; no image for a file that
        cannot be read (/predict says why)."""
        found = self.uploads.open_or_message(image)
        shown = None
        if isinstance(found, Image.Image):
            shown = to_model_mode(found).convert("L")
            shown.thumbnail((FILM_VIEW_SIDE, FILM_VIEW_SIDE))
        return gr.update(value=shown, label=film_caption(image))

    def check(self, image: list[str | None]) -> list[list[dict]]:
        """The batched endpoints' validator: runs per request before it joins a batch, so a bad
        file fails alone, with its message."""
        opened = [self.uploads.open_or_message(path) for path in image]
        return [[gr.validate(not isinstance(found, str), found if isinstance(found, str) else "") for found in opened]]

    def _row(self, reading: Reading) -> tuple:
        bars = REFUSED if reading.refused else reading.probabilities
        return bars, words.decision(self.classifier, reading), words.outcome(self.classifier, reading)

    def _per_upload(self, image: list[str | None], answer_all) -> list:
        """``answer_all(images)`` for the readable uploads of a batch; a message for the others."""
        opened = [self.uploads.open_or_message(path) for path in image]
        images = [found for found in opened if isinstance(found, Image.Image)]
        answers = iter(answer_all(images) if images else [])
        return [next(answers) if isinstance(found, Image.Image) else found for found in opened]

    def _heat_maps(self, images: list[Image.Image]) -> list[Image.Image | None]:
        from pneumonia.gradcam import overlay  # torch loads with the first heat map, not before the first answer

        with self.model_lock:
            readings, cams = self.classifier.explain(images)  # one forward and backward pass of the PyTorch model
        return [None if reading.refused else overlay(image, cam) for image, reading, cam in zip(images, readings, cams)]

    def _answering(self):
        """The PyTorch model (and the gate's hooks on it) is shared with Grad-CAM; an ONNX Runtime
        session is not. An ONNX file exported before the gate existed leaves the gate's features
        to the PyTorch model, which then needs the lock too."""
        onnx = self.classifier.onnx_logits
        return nullcontext() if onnx and (self.classifier.gate is None or onnx.has_features) else self.model_lock

    def _asked_level(self, value) -> float | None:
        """The answer level an API caller asked for (a number, or its text); None for the default.
        One the folder lacks fails with ``Classifier.cutoffs``'s message, which names its levels."""
        if value is None or value == "":
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            pass  # not a number: the message below names the levels there are
        try:
            self.classifier.cutoffs(value)
        except UsageError as err:
            raise gr.Error(str(err)) from None
        return value


def film_caption(image: str | None) -> str:
    """What the film view shows: a DICOM's caption names the steps its pixels went through."""
    if image and Path(image).is_file() and is_dicom(image):
        return "The film, as read (DICOM: rescaled, windowed, MONOCHROME1 inverted)"
    return "The film, as read"


def model_summary(classifier: Classifier, source: str, note: str | None = None) -> str:
    """The page header's model line: what is served, its test scores and backend, and why (``note``)
    it is not the model the deployment asked for."""
    test = classifier.metrics.get("test")
    scores = f"test F1 {test['f1']:.3f}, ROC-AUC {test['roc_auc']:.3f} (n = {test['n']})" if test else "no test metrics"
    name = f"models/{DEFAULT_MODEL.name} (bundled)" if source == str(DEFAULT_MODEL) else source
    why = f"**{note}**\n\n" if note else ""
    return (f"{why}Model: `{name}` ({scores}; threshold {classifier.threshold:.3f}; answers from {classifier.backend}). "
            f"{gate_summary(classifier)}")


def gate_summary(classifier: Classifier) -> str:
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


def build_demo(classifier: Classifier, *, source: str = str(DEFAULT_MODEL), note: str | None = None,
               max_batch_size: int = 8) -> gr.Blocks:
    """The page and its API on ``classifier``; ``source`` and ``note`` head the page (what is
    served, and why). Up to ``max_batch_size`` queued uploads share one forward pass."""
    gradio_fixes.read_batched_verdicts()
    endpoints = Endpoints(classifier)
    with gr.Blocks(title="Pneumonia on pediatric chest X-rays") as demo:
        gr.Markdown(f"# Pneumonia on pediatric chest X-rays\n{model_summary(classifier, source, note)}\n\n**{DISCLAIMER}**")
        with gr.Tab("Upload (server)"):
            with gr.Row():
                with gr.Column(scale=1):
                    # A file, not gr.Image: gr.Image would decode (and reject DICOM) before predict sees it.
                    upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=["image", ".dcm"], type="filepath")
                    if example_files := examples():
                        gr.Examples(example_files, inputs=upload,
                                    label="Examples: test films of the Kermany data set (CC BY 4.0)")
                with gr.Column(scale=2):
                    # The decision comes first: it follows the answer cut-offs, not the longer bar.
                    verdict = gr.Markdown(label="Decision", elem_id="verdict")
                    probability_bars = gr.Label(num_top_classes=2, label="Calibrated probability", show_heading=False)
                    reading = gr.JSON(visible=False)  # for API callers: outcome, reason, scores
                    # For /predict_at_level's callers: the answered accuracy whose cut-offs answer.
                    answer_level = gr.Number(classifier.level, visible=False, label="answer level")
                    with gr.Row():
                        film = gr.Image(label=film_caption(None), type="pil", elem_id="film")
                        heatmap = gr.Image(label="Heat map (LayerCAM): regions that raised the PNEUMONIA score",
                                           type="pil", elem_id="heatmap")
        with gr.Tab("Private (in your browser)"):
            # The page runs the compact ONNX model in the visitor's browser: the film never leaves it (docs/private-mode.md).
            gr.HTML(private_mode.frame(classifier))
        # The film shows at once; a file it cannot show gets its message from /predict's check.
        upload.change(endpoints.film, inputs=upload, outputs=film, api_name="film", api_visibility="undocumented")
        # The answer first; the heat map (PyTorch, forward and backward) follows and never holds
        # it up. Each step runs one batch at a time: requests that arrive meanwhile gather into
        # the next batch instead of a second, smaller one waiting on the model.
        batched = {"validator": endpoints.check, "batch": True, "max_batch_size": max_batch_size, "concurrency_limit": 1}
        answered = upload.change(endpoints.predict, inputs=upload, outputs=[probability_bars, verdict, reading],
                                 api_name="predict", **batched)
        answered.success(endpoints.heatmap, inputs=upload, outputs=heatmap, api_name="heatmap", **batched)
        # /predict at another answer level, for API callers only. Not batched: Gradio 6.31 cannot
        # validate a batched event of two inputs (it hands the validator one request as a batch of its
        # inputs), and alone a bad file fails by itself anyway.
        gr.on([], endpoints.predict_at_level, inputs=[upload, answer_level], outputs=[probability_bars, verdict, reading],
              api_name="predict_at_level", concurrency_limit=1)
        demo.queue(max_size=64)
    gradio_fixes.bound_analytics(demo)
    return demo


def choose_model(environ: Mapping[str, str]) -> Served:
    """PNEUMONIA_MODEL and PNEUMONIA_BACKEND (auto: int8 ONNX, else fp16-weights ONNX, else fp32 ONNX,
    else PyTorch), loaded once; SystemExit with the reason when they cannot be served."""
    backend = environ.get("PNEUMONIA_BACKEND", "auto")
    if backend not in BACKENDS:
        raise SystemExit(f"error: PNEUMONIA_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
    try:
        return serve(environ, DEFAULT_MODEL, lambda source: load_classifier(source, backend=backend))
    except UsageError as err:
        raise SystemExit(f"error: PNEUMONIA_MODEL / PNEUMONIA_BACKEND: {err}") from None


def max_batch_size(environ: Mapping[str, str]) -> int:
    """PNEUMONIA_MAX_BATCH_SIZE: concurrent /predict requests gathered into one forward pass (1 = no batching)."""
    value = environ.get("PNEUMONIA_MAX_BATCH_SIZE", "8")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"error: PNEUMONIA_MAX_BATCH_SIZE={value!r}: give a whole number of requests, 1 or more")
    return int(value)


def launch(environ: Mapping[str, str] = os.environ, **options) -> gr.Blocks:
    """`python app.py`: the model ``environ`` asks for, its page, its API and the private mode's
    files. ``options`` go to ``demo.launch`` (e.g. ``prevent_thread_lock=True``)."""
    batch = max_batch_size(environ)
    served = choose_model(environ)
    demo = build_demo(served.classifier, source=served.source, note=served.note, max_batch_size=batch)
    demo.launch(show_error=True, max_file_size=MAX_UPLOAD,  # gr.Error messages reach API callers too
                state_session_capacity=SESSIONS_KEPT, app_kwargs={"routes": private_mode.routes(served.classifier)},
                **options)
    return demo


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    log.setLevel(logging.INFO)
    launch()
