"""The bundled model read every way a Hub user can read it, against `load_classifier` (PyTorch):
on all 624 official test films, the largest and mean |dP(PNEUMONIA)| and how many decisions agree.

    python benchmarks/parity_anywhere.py

Routes: this package on fp32 and int8 ONNX (with the gate: outcomes compared too), transformers'
pipeline with the folder's own code, and plain ONNX Runtime or timm with `xray_pixels.model_input`
(the card's snippets). The folder is the bundled one as `train.publish` uploads it (fp32
`model.onnx` written again, the transformers code added), in a temporary copy.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pneumonia  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from train.publish.model import publish  # noqa: E402

BUNDLED = ROOT / "models" / "pneumonia-mobilenetv2"


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def plain_routes(folder: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """The card's snippets: ``xray_pixels.model_input``, then ONNX Runtime or timm, then softmax / T."""
    import onnxruntime as ort
    import timm
    import torch
    from PIL import Image

    sys.path.insert(0, str(folder))
    import xray_pixels

    config = json.loads((folder / "config.json").read_text())
    pixels = np.stack([xray_pixels.model_input(Image.open(f), config) for f in files])
    session = ort.InferenceSession(str(folder / "model.onnx"))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.inference_mode():
        timm_logits = model(torch.from_numpy(pixels)).numpy()
    onnx_logits = session.run(None, {"pixel_values": pixels})[0]
    return {"ONNX Runtime alone, fp32 model.onnx": softmax(onnx_logits, config["temperature"])[:, 1],
            "timm alone": softmax(timm_logits, config["temperature"])[:, 1]}


def pipeline_route(folder: Path, files: list[Path]) -> np.ndarray:
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    found = classify([str(f) for f in files], top_k=None, batch_size=32)
    return np.array([next(s["score"] for s in scores if s["label"] == "PNEUMONIA") for scores in found])


def main() -> None:
    files = sorted((DATA / "test").glob("*/*.jpeg"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / BUNDLED.name
        shutil.copytree(BUNDLED, folder)
        publish(folder, "someone/pneumonia-mobilenetv2", dry_run=True)
        reference = pneumonia.load_classifier(str(folder))
        images = [pneumonia.open_image(f) for f in files]
        expected = reference.read(images)
        p_ref = np.array([r.probabilities["PNEUMONIA"] for r in expected])
        routes, outcomes = {}, {}
        for backend in ("onnx-fp32", "onnx-int8"):
            readings = pneumonia.load_classifier(str(folder), backend=backend).read(images)
            routes[f"pneumonia package, {backend}"] = np.array([r.probabilities["PNEUMONIA"] for r in readings])
            outcomes[f"pneumonia package, {backend}"] = sum(r.outcome == e.outcome for r, e in zip(readings, expected))
        routes["transformers pipeline (trust_remote_code)"] = pipeline_route(folder, files)
        routes.update(plain_routes(folder, files))
    threshold = reference.threshold
    print(f"Machine: {machine()}; the bundled model, {len(files)} official test films; reference: "
          "load_classifier(backend='pytorch')")
    print("| route | max abs dP | mean abs dP | decisions identical | gate outcomes identical |")
    print("|---|---|---|---|---|")
    for name, p in routes.items():
        gap = np.abs(p - p_ref)
        agree = int(np.sum((p >= threshold) == (p_ref >= threshold)))
        gate = f"{outcomes[name]}/{len(files)}" if name in outcomes else "no gate"
        print(f"| {name} | {gap.max():.1e} | {gap.mean():.1e} | {agree}/{len(files)} | {gate} |")


if __name__ == "__main__":
    main()
