"""Single-image latency per preset: PyTorch eager, channels_last, ONNX Runtime fp32 and int8.

    python benchmarks/inference_latency.py [--presets cnn vgg16] [--runs 30] [--rounds 3] [--threads 2]

Batch 1 at each preset's input size (224 px; Inception v3 299 px), random weights (the time
does not depend on them), the int8 model calibrated on real training films through the
model's preprocessing, as `train.export.onnx` does. Each round times every backend in turn
(--runs calls after 5 warm-up calls), so drift on a shared machine reaches all columns alike;
p50 and p95 are over all rounds. PyTorch and ONNX Runtime both get --threads threads.

The last column times the int8 model again in a process of its own that imports only
onnxruntime and numpy: the app holds PyTorch beside ONNX Runtime (Grad-CAM), and on the AMD
machine int8 latency was seen to double with PyTorch models loaded in the same process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pneumonia  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from pneumonia.backends import OnnxLogits  # noqa: E402
from pneumonia.training_transform import XrayPreprocessing  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.export.onnx import export_fp32, quantize_int8  # noqa: E402


def timings(call, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


ALONE = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, pixels_file, threads, runs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.load(pixels_file)}
seconds = []
for _ in range(rounds):
    for _ in range(5):
        session.run(None, feed)
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""


def int8_alone(int8_file: Path, pixels: torch.Tensor, threads: int, runs: int, rounds: int) -> list[float]:
    """int8 latency in a fresh process without PyTorch."""
    pixels_file = int8_file.with_suffix(".npy")
    np.save(pixels_file, pixels.numpy())
    found = subprocess.run([sys.executable, "-c", ALONE, str(int8_file), str(pixels_file), str(threads), str(runs),
                            str(rounds)], capture_output=True, text=True, check=True)
    return json.loads(found.stdout)


def backends(preset: str, workdir: Path, threads: int, calibration: int) -> dict:
    """name -> a zero-argument call running one preprocessed film through that backend."""
    torch.manual_seed(0)
    model = pneumonia.create_model(preset).eval()
    config = pneumonia.data_config_of(model)
    recipe = TrainConfig()
    transform = pneumonia.build_transform(config, XrayPreprocessing(recipe.intensity, recipe.crop_borders))
    films = sorted((DATA / "train" / "NORMAL").iterdir())[:calibration // 2] + \
        sorted((DATA / "train" / "PNEUMONIA").iterdir())[:calibration // 2]
    pixels = torch.stack([transform(pneumonia.open_image(f)) for f in films])
    fp32_file, int8_file = workdir / f"{preset}.onnx", workdir / f"{preset}.int8.onnx"
    export_fp32(model, tuple(config["input_size"]), fp32_file)
    quantize_int8(fp32_file, int8_file, (pixels[i:i + 8] for i in range(0, len(pixels), 8)), workdir)
    one = pixels[:1]
    last = model.to(memory_format=torch.channels_last)
    one_last = one.contiguous(memory_format=torch.channels_last)
    fp32, int8 = OnnxLogits(fp32_file, threads), OnnxLogits(int8_file, threads)
    eager = pneumonia.create_model(preset).eval()
    eager.load_state_dict(model.state_dict())

    def no_grad(fn):
        def call():
            with torch.inference_mode():
                fn()
        return call

    return {
        "PyTorch eager": no_grad(lambda: eager(one)),
        "eager, channels_last": no_grad(lambda: last(one_last)),
        "ONNX Runtime fp32": lambda: fp32(one),
        "ONNX Runtime int8": lambda: int8(one),
    }, int8_file, one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(pneumonia.PRESETS), choices=list(pneumonia.PRESETS))
    parser.add_argument("--runs", type=int, default=30, help="timed calls per backend per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--calibration", type=int, default=32, help="training films to calibrate int8 on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/inference_latency.py --presets {' '.join(args.presets)} --runs {args.runs} "
          f"--rounds {args.rounds} --threads {args.threads}\n")
    print("| preset | input | PyTorch eager p50 / p95 (ms) | eager, channels_last | ONNX Runtime fp32 | ONNX Runtime int8 "
          "| int8 vs eager | int8 vs fp32 | int8, own process without PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            calls, int8_file, one = backends(preset, Path(tmp), args.threads, args.calibration)
            found = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    found[name] += timings(call, args.runs)
            p50 = {name: 1000 * float(np.median(s)) for name, s in found.items()}
            found["alone"] = int8_alone(int8_file, one, args.threads, args.runs, args.rounds)
            cells = {name: f"{1000 * float(np.median(s)):.1f} / {1000 * float(np.percentile(s, 95)):.1f}"
                     for name, s in found.items()}
            size = pneumonia.PRESETS[preset].image_size
            print(f"| {preset} | {size} px | {' | '.join(cells[name] for name in calls)} "
                  f"| {p50['PyTorch eager'] / p50['ONNX Runtime int8']:.1f}x "
                  f"| {p50['ONNX Runtime fp32'] / p50['ONNX Runtime int8']:.1f}x | {cells['alone']} |", flush=True)


if __name__ == "__main__":
    main()
