"""Export a trained model folder to ONNX: fp32, and static int8 checked for parity with PyTorch.

    python -m train.export runs/cnn [--dataset ../shared/data/chest_xray] [--calibration-images 256]

Writes ``model.onnx`` (fp32) and ``model.int8.onnx`` (static int8: QDQ, per-channel int8
weights, uint8 activations, calibrated on training films through the model's own
preprocessing) into the folder, and records their parity with the PyTorch model on the test
split in ``metrics.json`` ("onnx"). An int8 model that misses the parity bar (decisions
identical on at least 99% of films, mean |ΔP(PNEUMONIA)| at most 0.01, and the same verdict of the
out-of-distribution gate on at least 99%) is not kept: the
folder then serves fp32 ONNX.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import datasets
import numpy as np
import torch

import pneumonia
from pneumonia.backends import ONNX_FILES, OnnxLogits
from pneumonia.modeling import calibrated_probabilities
from pneumonia.ood import INT8_GATE_FILE, OodGate
from pneumonia.torch_model import WithGateFeatures, gate_layers
from pneumonia.presets import UsageError
from train.config import saved_training_config, split_seed_of
from train.data import XrayDataset, load_splits, subsample
from train.gate.fit import collect_features, fit_gate
from train.gate.scope import load_scope

PARITY_BAR = {"decision_agreement": 0.99, "mean_abs_dp": 0.01, "outcome_agreement": 0.98}
CALIBRATION_IMAGES = 256  # training films int8 is calibrated on
INPUT_NAME = "pixel_values"


def export_folder(folder: Path, calibration_rows: datasets.Dataset, parity_rows: datasets.Dataset,
                  batch_size: int = 32, num_workers: int = 2, gate_splits: datasets.DatasetDict | None = None) -> dict:
    """Write the ONNX files into ``folder`` and return (and record) their parity. With
    ``gate_splits`` (the run's splits), int8 gets a gate calibrated on its own features."""
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    input_size = tuple(classifier.data_config["input_size"])
    training = saved_training_config(folder)
    scope_set = load_scope(training.get("scope_data")) if classifier.gate and classifier.gate.heads else None

    def batches(rows):
        images = XrayDataset(rows, classifier.transform, input_size)
        for batch in torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers):
            yield batch["pixel_values"][batch["readable"]]

    fp32_file, int8_file = folder / ONNX_FILES["onnx-fp32"], folder / ONNX_FILES["onnx-int8"]
    export_fp32(classifier.model, input_size, fp32_file, classifier.gate)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.int8.onnx"
        quantize_int8(fp32_file, candidate, batches(calibration_rows), Path(tmp))
        int8 = OnnxLogits(candidate)
        int8_gate = classifier.gate
        if classifier.gate and classifier.gate.heads and gate_splits is not None:
            def int8_forward(pixels: torch.Tensor) -> list[torch.Tensor]:
                return [torch.from_numpy(output) for output in int8.run(pixels.numpy())]

            found = collect_features(int8_forward, folder, gate_splits, training, scope_set, batch_size, num_workers)
            int8_gate = fit_gate(classifier.gate.layers, classifier.gate.widths, found)
        judged = [parity_rows] + ([scope_set.rows()] if scope_set else [])
        found = parity(classifier, {"fp32": (OnnxLogits(fp32_file), classifier.gate), "int8": (int8, int8_gate)},
                       [batches(rows) for rows in judged])
        found["int8"]["kept"] = within_bar(found["int8"])
        int8_file.unlink(missing_ok=True)
        _store_int8_gate(folder, int8_gate if found["int8"]["kept"] and int8_gate is not classifier.gate else None)
        if found["int8"]["kept"]:
            candidate.replace(int8_file)
    found.update(calibration_images=len(calibration_rows), parity_split="test" + (" + scope" if scope_set else ""),
                 bar=PARITY_BAR)
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["onnx"] = found
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return found


def _store_int8_gate(folder: Path, gate) -> None:
    """Save int8's own gate calibration beside the folder's gate, or remove a stale one."""
    config = json.loads((folder / "config.json").read_text())
    backends = config.get("ood", {}).pop("backends", {})
    backends.pop("onnx-int8", None)
    (folder / INT8_GATE_FILE).unlink(missing_ok=True)
    if gate is not None:
        gate.save(folder, INT8_GATE_FILE)
        backends["onnx-int8"] = {**gate.to_config(), "file": INT8_GATE_FILE}
    if backends:
        config["ood"]["backends"] = backends
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_from_splits(folder: Path, splits: datasets.DatasetDict, seed: int, batch_size: int = 32,
                       num_workers: int = 2, calibration_images: int = CALIBRATION_IMAGES) -> dict:
    """``export_folder`` calibrated on a seeded sample of the training films, parity on test."""
    return export_folder(folder, subsample(splits["train"], calibration_images, seed), splits["test"],
                         batch_size, num_workers, gate_splits=splits)


def within_bar(found: dict) -> bool:
    return (found["decision_agreement"] >= PARITY_BAR["decision_agreement"]
            and found["mean_abs_dp"] <= PARITY_BAR["mean_abs_dp"]
            and found.get("outcome_agreement", 1.0) >= PARITY_BAR["outcome_agreement"])


def export_fp32(model: torch.nn.Module, input_size: tuple[int, int, int], path: Path, gate: OodGate | None = None) -> None:
    """The eval-mode model as one self-contained ONNX file with a dynamic batch axis; its
    outputs are the logits and the features of ``gate`` (by default, of the current gate layout)."""
    example = torch.zeros(2, *input_size)
    layers, halves = (gate.layers, gate.halves) if gate else (gate_layers(model)[0], True)
    with_features = WithGateFeatures(model, layers, halves).eval()
    try:
        with warnings.catch_warnings():
            # The hooks hand the feature maps over in a dict; torch.export traces them into the graph (the
            # parity check compares the features) but warns that the dict's tensors are not buffers.
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
            torch.onnx.export(
                with_features, (example,), str(path), input_names=[INPUT_NAME], output_names=["logits", "ood_features"],
                dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=1024)}},
                dynamo=True, external_data=False, verbose=False,
            )
    finally:
        with_features.remove()


def quantize_int8(fp32_file: Path, out: Path, calibration_batches, workdir: Path) -> None:
    """Static int8 (QDQ, per-channel), as onnxruntime.quantization recommends for CNNs on x86."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(fp32_file), str(prepared))  # shape inference and graph fusions first
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def parity(classifier: pneumonia.Classifier, candidates: dict, judged: list) -> dict:
    """Per ONNX model (with the gate it is served with): on the first of the ``judged`` batch
    streams (test films), the share of films with PyTorch's decision and the mean / max
    |ΔP(PNEUMONIA)|; over all of them (test films and scope images), the share given the same
    outcome (answer, caution, refuse) as PyTorch with its gate."""
    result = {name: {} for name in candidates}
    outcomes = {name: [] for name in ["pytorch", *candidates]}
    for i, batches in enumerate(judged):
        reference, found = _outputs(classifier, batches, candidates)
        outcomes["pytorch"].append(reference[1])
        for name, (p, outcome) in found.items():
            outcomes[name].append(outcome)
            if i == 0:
                gap = np.abs(p - reference[0])
                agree = (p >= classifier.threshold) == (reference[0] >= classifier.threshold)
                result[name] = {"decision_agreement": float(np.mean(agree)), "mean_abs_dp": float(gap.mean()),
                                "max_abs_dp": float(gap.max()), "n": int(len(p))}
    if classifier.gate:
        reference = np.concatenate(outcomes.pop("pytorch"))
        for name, found in outcomes.items():
            result[name]["outcome_agreement"] = float(np.mean(np.concatenate(found) == reference))
            result[name]["outcome_n"] = int(len(reference))
    return result


def _outputs(classifier, batches, candidates) -> tuple[tuple, dict]:
    """(P(PNEUMONIA), the gate's outcome) per image from PyTorch and from each ONNX session."""
    def read(run, gate, pixels):
        logits, features = run(pixels)
        p = calibrated_probabilities(logits, classifier.temperature)[:, 1]
        outcome = [v.outcome for v in gate.verdicts(features)] if gate else ["answer"] * len(p)
        return p, np.array(outcome)

    parts = {name: [] for name in ["pytorch", *candidates]}
    for pixels in batches:
        parts["pytorch"].append(read(classifier.run, classifier.gate, pixels.numpy()))
        for name, (session, gate) in candidates.items():
            parts[name].append(read(session.run, gate, pixels.numpy()))
    joined = {name: tuple(np.concatenate(column) for column in zip(*rows)) for name, rows in parts.items()}
    return joined.pop("pytorch"), joined


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train`")
    parser.add_argument("--dataset", help="the labelled data (train split for calibration, test for parity); "
                                          "default: the dataset the model was trained on")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, help="training films to calibrate int8 on")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        training = saved_training_config(args.folder)
        splits = load_splits(args.dataset or training["dataset"], training["val_fraction"], split_seed_of(training))
        found = export_from_splits(args.folder, splits, training["seed"], num_workers=args.num_workers,
                                   calibration_images=args.calibration_images)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(parity_summary(found))
    if (args.folder / "predictions.csv").is_file():
        from train.export.card import write_card

        write_card(args.folder)


def parity_summary(found: dict) -> str:
    lines = [f"{name}: decisions agree on {found[name]['decision_agreement']:.2%} of {found[name]['n']} test films, "
             f"mean |dP| {found[name]['mean_abs_dp']:.4f}, max {found[name]['max_abs_dp']:.4f}"
             + (f", the same outcome for {found[name]['outcome_agreement']:.2%} of {found[name]['outcome_n']} test films "
                "and scope images" if "outcome_agreement" in found[name] else "")
             for name in ("fp32", "int8")]
    kept = "kept" if found["int8"]["kept"] else "NOT kept (misses the parity bar): the folder serves fp32 ONNX"
    return "\n".join(lines + [f"int8: {kept}"])


if __name__ == "__main__":
    main()
