"""Gradio app: upload a chest X-ray, get calibrated NORMAL / PNEUMONIA probabilities.

    python app.py                                     # the bundled default model
    PNEUMONIA_MODEL=hf-hub:USER/pneumonia-vgg16 python app.py
    PNEUMONIA_MODEL=runs/vgg16 python app.py          # any folder written by `python -m train`

Research and education only: not a diagnosis.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pneumonia import POSITIVE_LABEL, load_classifier, open_image
from pneumonia.preprocessing import UnreadableImage

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pneumonia-cnn"
MODEL_SOURCE = os.environ.get("PNEUMONIA_MODEL", str(DEFAULT_MODEL))
classifier = load_classifier(MODEL_SOURCE)  # once, at start-up

DISCLAIMER = "Research and education only: this is not a medical device and not a diagnosis."


def predict(image_path: str | None) -> dict[str, float]:
    """An image file -> calibrated probability per label, e.g. {"NORMAL": 0.1, "PNEUMONIA": 0.9}."""
    if not image_path:
        raise gr.Error("No image received: upload a chest X-ray (PNG, JPEG or DICOM).")
    try:
        image = open_image(image_path)
    except UnreadableImage:
        raise gr.Error(f"{Path(image_path).name} is not a readable image: upload a PNG, JPEG or DICOM chest X-ray.") from None
    return classifier.predict(image)


def decision(probs: dict[str, float]) -> str:
    p = probs[POSITIVE_LABEL]
    verdict = classifier.decide(probs)
    return f"**{verdict}** at the model's operating threshold (P(PNEUMONIA) = {p:.3f}, threshold {classifier.threshold:.3f})."


def classify(image_path: str | None) -> tuple[dict[str, float], str]:
    probs = predict(image_path)
    return probs, decision(probs)


with gr.Blocks(title="Pneumonia on pediatric chest X-rays") as demo:
    gr.Markdown(f"# Pneumonia on pediatric chest X-rays\nModel: `{MODEL_SOURCE}`. {DISCLAIMER}")
    with gr.Row():
        upload = gr.Image(type="filepath", label="Chest X-ray", image_mode=None)
        with gr.Column():
            bars = gr.Label(num_top_classes=2, label="Calibrated probability")
            verdict = gr.Markdown()
    upload.change(classify, inputs=upload, outputs=[bars, verdict], api_name="predict")

if __name__ == "__main__":
    demo.launch()
