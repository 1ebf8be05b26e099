"""How long a user's quick run takes: one epoch of `python -m train` on 48 real films, wall-clock.

    .venv/bin/python benchmarks/quick_run.py [--presets cnn vgg16] [--per-class 24]

A Kaggle-layout folder of symlinks to the first PER_CLASS films of each class (train and test) is
trained on for one epoch with every other setting at its default (the gate on the scope images
beside the checkout, the ONNX export), as a user trying the project would. The table gives the
run's wall-clock seconds, the training epoch's, and each step after the last epoch as the run
printed it ("[ 12.3 s] step").
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.train_throughput import machine  # noqa: E402
from tests.conftest import DATA, link_subset  # noqa: E402

STEP = re.compile(r"^\[\s*([0-9.]+) s\] (.+)$")
EPOCH = re.compile(r"^epoch 1: .*\((\d+)s\)$")


def quick_run(preset: str, data: Path, out: Path) -> tuple[float, dict[str, float], str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "train", "--model", preset, "--dataset", str(data), "--output-dir",
                           str(out), "--epochs", "1"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: the {preset} run failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    steps = {match[2]: float(match[1]) for match in map(STEP.match, lines) if match}
    epoch = next((match[1] for match in map(EPOCH.match, lines) if match), "?")
    return seconds, steps, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cnn", "vgg16"])
    parser.add_argument("--per-class", type=int, default=24)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = link_subset(DATA, Path(tmp) / "data", per_class=args.per_class)
        for preset in args.presets:
            seconds, steps, epoch = quick_run(preset, data, Path(tmp) / preset)
            print(f"\n{preset}: {seconds:.0f} s wall-clock, the epoch {epoch} s, after it {sum(steps.values()):.0f} s")
            print("| step after the last epoch | seconds |\n|---|---|")
            for name, value in steps.items():
                print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
