"""What follows the last epoch on a model folder: the gate, the ONNX files and their parity, from
one read of the films and the scope images.

``python -m train`` runs it at its end; ``python -m train.gate FOLDER`` (refit the gate) and
``python -m train.export FOLDER`` (re-export) run it on a folder. The steps, each timed:

1. ONNX: fp32 (logits and the gate's features) and a static int8 candidate, calibrated on
   training films (``train.export.onnx``).
2. One read (``train.sweep``) of the splits (the training films also under the shift
   perturbations) and the scope images, each batch through
   PyTorch, fp32 and int8 as far as each needs it.
3. The gate, fitted on PyTorch's features, stored and scored (``train.gate.fit``).
4. int8's own gate calibration on int8's features, and both ONNX files' parity with PyTorch:
   int8 is kept only within the bar. When static int8 misses it, int8 weights with float
   activations are read and tried the same way (a second read, only then), and if they miss
   too, fp16 weights computed in fp32 (``model.fp16.onnx``; a third read).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import datasets
import torch

import pneumonia
from pneumonia import folder_json
from pneumonia.backends import ONNX_FILES, OnnxLogits
from pneumonia.ood import OodGate
from pneumonia.torch_model import WithGateFeatures, gate_layers
from pneumonia.training_transform import XrayPreprocessing
from train import data, sweep
from train.augment import Augment
from train.export.onnx import (CALIBRATION_IMAGES, PARITY_BAR, export_fp32, parity, parity_summary,
                               quantize_int8, quantize_int8_weights, store_fp16_weights, store_int8_gate,
                               within_bar)
from train.gate import fit, scope


class Clock:
    """How long each step took, said as it ends."""

    def __init__(self, say: Callable[[str], None] = print):
        self.say, self.seconds = say, {}

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        self.say(f"[{self.seconds[name]:6.1f} s] {name}")


def complete_folder(folder: Path, splits: datasets.DatasetDict, training: dict, *, gate: bool, onnx: bool,
                    batch_size: int = 32, num_workers: int = 2, scope_dir: str | None = None,
                    calibration_images: int = CALIBRATION_IMAGES, leave_one_out: bool = True,
                    clock: Clock | None = None) -> None:
    """Fit and store the folder's gate (``gate``) and write its ONNX files (``onnx``), reading every
    image once. ``splits`` are the run's own (train, validation, test); ``training`` its saved settings."""
    clock = clock or Clock()
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    kept_gate = None if gate else classifier.gate  # the gate the folder keeps, when not refitted
    with_heads = gate or bool(kept_gate and kept_gate.heads)
    with clock.step("read the scope images' list"):
        scope_set = scope.load_scope(scope_dir or training.get("scope_data")) if with_heads else None
        if scope_set is not None:
            scope_set = scope.in_proportion(scope_set, len(splits["train"]), training["seed"])
    layers, widths = (kept_gate.layers, kept_gate.widths) if kept_gate else gate_layers(classifier.model)
    with tempfile.TemporaryDirectory() as tmp:
        int8_candidate = Path(tmp) / ONNX_FILES["onnx-int8"]
        calibration_rows = data.subsample(splits["train"], calibration_images, training["seed"])
        if onnx:
            with clock.step("ONNX: export fp32, calibrate int8"):
                export_onnx(classifier, folder, kept_gate, int8_candidate, calibration_rows, batch_size, num_workers)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tapped = WithGateFeatures(classifier.model.to(device), layers, kept_gate.halves if kept_gate else True)
        runners = {"pytorch": (sweep.torch_runner(tapped), sets_for(gate, scope_set))}
        if onnx:
            runners["onnx-fp32"] = (OnnxLogits(folder / ONNX_FILES["onnx-fp32"]).run, sets_for(False, scope_set))
            runners["onnx-int8"] = (OnnxLogits(int8_candidate).run, sets_for(with_heads, scope_set))
        with clock.step("read the films and scope images" + (" (PyTorch, fp32, int8)" if onnx else "")):
            found = sweep.sweep(runners, loaders(folder, classifier, splits, scope_set, training, batch_size, num_workers),
                                training["seed"])
        tapped.remove()
        served = kept_gate
        if gate:
            served = fit_and_store_gate(folder, layers, widths, found["pytorch"], scope_set, leave_one_out, clock)
        if onnx:
            def read_again(candidate: Path, gate_features: bool) -> dict:
                runner = {"candidate": (OnnxLogits(candidate).run, sets_for(gate_features, scope_set))}
                images = loaders(folder, classifier, splits, scope_set, training, batch_size, num_workers)
                return sweep.sweep(runner, images, training["seed"])["candidate"]

            result = keep_a_compact_file(folder, found, served, scope_set, int8_candidate, classifier, with_heads,
                                         read_again, clock)
            folder_json.update(folder / "metrics.json", onnx={**result, "calibration_images": len(calibration_rows)})
            clock.say(parity_summary(result))
    classifier.model.cpu()


def sets_for(gate_features: bool, scope_set) -> tuple[str, ...]:
    """What a runner reads: everything a gate is fitted on, or what parity compares."""
    if gate_features:
        return (*sweep.SPLITS, "scope") if scope_set is not None else sweep.SPLITS
    return ("test", "scope_clean") if scope_set is not None else ("test",)


def loaders(folder: Path, classifier, splits, scope_set, training: dict, batch_size: int, num_workers: int,
            draws: int | None = None) -> dict:
    """``train.sweep.loaders`` for this folder's preprocessing and the run's augmentation; the
    scope images with as many augmented draws as the gate's heads read, in proportion to the run."""
    if draws is None:
        draws = scope.draws_in_proportion(len(splits["train"]), len(scope_set.images) if scope_set else 0)
    augment = Augment(training["shear"], training["zoom"], training["hflip"], training.get("augment", "original"))
    preprocessing = XrayPreprocessing.from_config(json.loads((folder / "config.json").read_text()))
    return sweep.loaders(splits, scope_set.rows() if scope_set else None, classifier.data_config, preprocessing, augment,
                         draws, batch_size, num_workers, training.get("shift_seed", 2026))


def export_onnx(classifier, folder: Path, kept_gate: OodGate | None, int8_file: Path, calibration_rows,
                batch_size: int, num_workers: int) -> None:
    """model.onnx into the folder, and the int8 candidate calibrated on ``calibration_rows``."""
    input_size = tuple(classifier.data_config["input_size"])
    export_fp32(classifier.model.cpu(), input_size, folder / ONNX_FILES["onnx-fp32"], kept_gate)
    images = data.XrayDataset(calibration_rows, classifier.transform, input_size)
    batches = (batch["pixel_values"][batch["readable"]] for batch in data.logged_batches(
        torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)))
    quantize_int8(folder / ONNX_FILES["onnx-fp32"], int8_file, batches, int8_file.parent)


def fit_and_store_gate(folder: Path, layers, widths, found: dict, scope_set, leave_one_out: bool, clock: Clock) -> OodGate:
    """The gate on PyTorch's features, saved into the folder and scored into metrics.json."""
    with clock.step("gate: fit"):
        gate = fit.fit_gate(layers, widths, found, scope_set)
        gate.save(folder)
        folder_json.update(folder / "config.json", ood=gate.to_config())
    step = "gate: score" + (" (leave-one-dataset-out)" if leave_one_out and scope_set is not None else "")
    with clock.step(step):
        classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
        report = fit.gate_report(gate, found, classifier, scope_set, leave_one_out)
        folder_json.update(folder / "metrics.json", ood=report)
    clock.say(fit.summary(report))
    return gate


def keep_a_compact_file(folder: Path, found: dict, gate: OodGate | None, scope_set, int8_candidate: Path, classifier,
                        with_heads: bool, read_again: Callable[[Path, bool], dict], clock: Clock) -> dict:
    """The browser's file, the first within the parity bar: static int8; int8 weights with float
    activations; fp16 weights. Each fallback is read again only when the one before missed."""
    with clock.step("ONNX: int8's gate, parity"):
        result = keep_int8_or_not(folder, found, gate, scope_set, int8_candidate, classifier, "static")
    if not result["int8"]["kept"]:
        with clock.step("ONNX: int8 weights only, its gate, parity"):
            quantize_int8_weights(folder / ONNX_FILES["onnx-fp32"], int8_candidate)
            found["onnx-int8"] = read_again(int8_candidate, with_heads)
            static = result["int8"]
            result = keep_int8_or_not(folder, found, gate, scope_set, int8_candidate, classifier, "weights-only")
            result["int8_static"] = static
    fp16_file = folder / ONNX_FILES["onnx-fp16"]
    fp16_file.unlink(missing_ok=True)
    if not result["int8"]["kept"]:
        with clock.step("ONNX: fp16 weights, parity"):
            store_fp16_weights(folder / ONNX_FILES["onnx-fp32"], fp16_file)
            fp16 = parity((found["pytorch"], gate), {"fp16": (read_again(fp16_file, False), gate)},
                          classifier.threshold, classifier.temperature)["fp16"]
            result["fp16"] = fp16 | {"kept": within_bar(fp16)}
            if not result["fp16"]["kept"]:
                fp16_file.unlink()
    return result

def keep_int8_or_not(folder: Path, found: dict, gate: OodGate | None, scope_set, int8_candidate: Path, classifier,
                     scheme: str) -> dict:
    """int8's gate (its own calibration where the gate has heads), parity, and int8 kept (moved
    into the folder) or not: metrics.json's "onnx". ``scheme``: how the candidate was quantized."""
    int8_gate = gate
    if gate is not None and gate.heads is not None:
        int8_gate = fit.fit_gate(gate.layers, gate.widths, found["onnx-int8"], scope_set)
    result = parity((found["pytorch"], gate), {"fp32": (found["onnx-fp32"], gate), "int8": (found["onnx-int8"], int8_gate)},
                    classifier.threshold, classifier.temperature)
    result["int8"] |= {"kept": within_bar(result["int8"]), "scheme": scheme}
    int8_file = folder / ONNX_FILES["onnx-int8"]
    int8_file.unlink(missing_ok=True)
    store_int8_gate(folder, int8_gate if result["int8"]["kept"] and int8_gate is not gate else None)
    if result["int8"]["kept"]:
        shutil.move(int8_candidate, int8_file)
    return {**result, "parity_split": "test" + (" + scope" if scope_set is not None else ""), "bar": PARITY_BAR}
