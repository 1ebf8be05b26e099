"""Gradio app: upload a chest X-ray, get calibrated NORMAL / PNEUMONIA probabilities.

    python app.py                                     # the bundled default model
    PNEUMONIA_MODEL=hf-hub:USER/pneumonia-vgg16 python app.py
    PNEUMONIA_MODEL=runs/vgg16 python app.py          # any folder written by `python -m train`

Research and education only: not a diagnosis.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import gradio as gr
from PIL import Image

from pneumonia import POSITIVE_LABEL, load_classifier, open_image
from pneumonia.gradcam import grad_cam, overlay
from pneumonia.preprocessing import UnreadableImage

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pneumonia-cnn"
MODEL_SOURCE = os.environ.get("PNEUMONIA_MODEL", str(DEFAULT_MODEL))
classifier = load_classifier(MODEL_SOURCE)  # once, at start-up
model_lock = threading.Lock()

DISCLAIMER = "Research and education only: this is not a medical device and not a diagnosis."
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def model_summary() -> str:
    test = classifier.metrics.get("test")
    scores = f"test F1 {test['f1']:.3f}, ROC-AUC {test['roc_auc']:.3f} (n = {test['n']})" if test else "no test metrics"
    return f"Model: `{MODEL_SOURCE}` ({scores}; threshold {classifier.threshold:.3f})."


def examples() -> list[str]:
    """Up to 8 files from EXAMPLES_DIR (searched recursively); none when it is unset."""
    folder = os.environ.get("EXAMPLES_DIR")
    if not folder:
        return []
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
    return [str(p) for p in files[:: max(1, len(files) // 8)][:8]]


def _open(image_path: str | None) -> Image.Image:
    if not image_path:
        raise gr.Error("No image received: upload a chest X-ray (PNG, JPEG or DICOM).")
    try:
        return open_image(image_path)
    except UnreadableImage:
        raise gr.Error(f"{Path(image_path).name} is not a readable image: upload a PNG, JPEG or DICOM chest X-ray.") from None


def predict(image_path: str | None) -> dict[str, float]:
    """An image file -> calibrated probability per label, e.g. {"NORMAL": 0.1, "PNEUMONIA": 0.9}."""
    image = _open(image_path)
    with model_lock:
        return classifier.predict(image)


def decision(probs: dict[str, float]) -> str:
    p = probs[POSITIVE_LABEL]
    verdict = classifier.decide(probs)
    return f"**{verdict}** at the model's operating threshold (P(PNEUMONIA) = {p:.3f}, threshold {classifier.threshold:.3f})."


def classify(image_path: str | None) -> tuple[dict[str, float], str, Image.Image]:
    """Probability bars, the decision in words, and a Grad-CAM heat map of the PNEUMONIA score."""
    image = _open(image_path)
    # Grad-CAM hooks the shared model: one request at a time uses it.
    with model_lock:
        probs = classifier.predict(image)
        heat = overlay(image, grad_cam(classifier.model, classifier.transform(image)))
    return probs, decision(probs), heat


with gr.Blocks(title="Pneumonia on pediatric chest X-rays") as demo:
    gr.Markdown(f"# Pneumonia on pediatric chest X-rays\n{model_summary()}\n\n**{DISCLAIMER}**")
    with gr.Row():
        # A file, not gr.Image: gr.Image would decode (and reject DICOM) before predict sees it.
        upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=["image", ".dcm"], type="filepath")
        with gr.Column():
            bars = gr.Label(num_top_classes=2, label="Calibrated probability")
            verdict = gr.Markdown()
            heatmap = gr.Image(label="Grad-CAM: regions that raised the PNEUMONIA score", type="pil")
    example_files = examples()
    if example_files:
        gr.Examples(example_files, inputs=upload)
    upload.change(classify, inputs=upload, outputs=[bars, verdict, heatmap], api_name="predict")
    demo.queue(default_concurrency_limit=2)

if __name__ == "__main__":
    demo.launch(show_error=True)  # gr.Error messages reach API callers too
