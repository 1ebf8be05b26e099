"""Post-training int8 variants of a model folder's fp32 ONNX, each against fp32 on the run's clean
validation films (never test): decisions at the folder's threshold, |dP|, file size.

    python benchmarks/int8_variants.py runs/transfer/T

The variants: the project's own (static QDQ, per-channel, MinMax calibration on 256 training films,
``train.export.onnx.quantize_int8``), with the depthwise convolutions or the first and last two
convolutions left in fp32, with percentile or entropy calibration, and int8 weights with float
activations (``quantize_int8_weights``, what the export tries when static int8 misses the bar). The training export keeps
int8 only within the parity bar: decisions agree on >= 99% of films and mean |dP| <= 0.01.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import CalibrationMethod  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

import pneumonia  # noqa: E402
from pneumonia.backends import OnnxLogits  # noqa: E402
from train import data  # noqa: E402
from train.config import split_seed_of  # noqa: E402
from train.export.onnx import CALIBRATION_IMAGES, quantize_int8, quantize_int8_weights  # noqa: E402


def pixels(rows, classifier) -> np.ndarray:
    films = data.XrayDataset(rows, classifier.transform, tuple(classifier.data_config["input_size"]))
    return torch.cat([batch["pixel_values"] for batch in torch.utils.data.DataLoader(films, batch_size=64)]).numpy()


def p_pneumonia(path: Path, films: np.ndarray, temperature: float) -> np.ndarray:
    session = OnnxLogits(path)
    logits = np.concatenate([session.run(films[i:i + 64])[0] for i in range(0, len(films), 64)]) / temperature
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder with model.onnx (written by python -m train)")
    folder = parser.parse_args().folder
    if not (folder / "model.onnx").is_file():
        sys.exit(f"error: {folder} has no model.onnx; train with --export-onnx or run python -m train.export {folder}")
    config = json.loads((folder / "config.json").read_text())
    training = json.loads((folder / "training_config.json").read_text())
    splits = data.load_splits(training["dataset"], training["val_fraction"], split_seed_of(training))
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    calibration = pixels(data.subsample(splits["train"], CALIBRATION_IMAGES, training["seed"]), classifier)
    validation = pixels(splits["validation"], classifier)
    reference = p_pneumonia(folder / "model.onnx", validation, config["temperature"])
    work = Path(tempfile.mkdtemp())
    quant_pre_process(str(folder / "model.onnx"), str(work / "prepared.onnx"))
    convolutions = [node for node in onnx.load(str(work / "prepared.onnx")).graph.node if node.op_type == "Conv"]
    depthwise = [node.name for node in convolutions if any(a.name == "group" and a.i > 1 for a in node.attribute)]
    variants = {
        "the project's (QDQ, per-channel, MinMax)": {},
        f"{len(depthwise)} depthwise convolutions in fp32": {"nodes_to_exclude": depthwise},
        "first and last two convolutions in fp32": {"nodes_to_exclude": [n.name for n in convolutions[:1] + convolutions[-2:]]},
        "percentile calibration": {"calibrate_method": CalibrationMethod.Percentile},
        "entropy calibration": {"calibrate_method": CalibrationMethod.Entropy},
    }
    print(f"machine: {platform.processor() or platform.machine()}, {cpu_name()}; {folder}: {len(validation)} validation films, "
          f"threshold {config['threshold']:.3f}\n")
    print("| int8 variant | decisions as fp32 | mean abs dP | max abs dP | MB |\n|---|---|---|---|---|")
    variants["int8 weights, float activations (the export's fallback)"] = None
    for name, options in variants.items():
        out = work / "int8.onnx"
        batches = (torch.from_numpy(calibration[i:i + 32]) for i in range(0, len(calibration), 32))
        if options is None:
            quantize_int8_weights(folder / "model.onnx", out)
        else:
            quantize_int8(folder / "model.onnx", out, batches, work, **options)
        p, t = p_pneumonia(out, validation, config["temperature"]), config["threshold"]
        print(f"| {name} | {np.mean((p >= t) == (reference >= t)):.4f} | {np.abs(p - reference).mean():.4f} "
              f"| {np.abs(p - reference).max():.3f} | {out.stat().st_size / 1e6:.2f} |", flush=True)


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


if __name__ == "__main__":
    main()
