"""Training images/second per preset on this machine: the real data loader vs in-memory tensors.

    python benchmarks/train_throughput.py [--presets cnn vgg16] [--image-size 128] [--steps 4] [--rounds 2] [--workers 2]

Both columns run the same optimizer steps (forward, backward, AdamW) at the preset's image
(or --image-size) and batch size; "real loader" reads, preprocesses and augments JPEGs from
../shared through the training DataLoader with training's default recipe, "in memory" reuses
tensors already in RAM. Their ratio is the loader overhead.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pneumonia  # noqa: E402
from train.augment import Augment  # noqa: E402
from pneumonia.training_transform import XrayPreprocessing  # noqa: E402
from train import data  # noqa: E402
from train.config import TrainConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def train_steps(model, optimizer, batches, steps: int, warmup: int) -> float:
    """Images per second over ``steps`` optimizer steps after ``warmup`` untimed ones."""
    model.train()
    seen, started = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            seen += len(batch["labels"])
        if i + 1 == warmup + steps:
            break
    return seen / (time.perf_counter() - started)


def measure(preset: str, size: int, splits, steps: int, warmup: int, workers: int, rounds: int) -> tuple[float, float, int]:
    """Best-of-``rounds`` img/s, real loader and in memory, measured alternately so that
    drift on this shared machine hits both columns alike."""
    config = pneumonia.PRESETS[preset]
    torch.manual_seed(0)
    model = pneumonia.create_model(preset, image_size=size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    recipe = TrainConfig()
    loader = data.make_loaders(
        splits, pneumonia.data_config_of(model), XrayPreprocessing(recipe.intensity, recipe.crop_borders),
        Augment(recipe.shear, recipe.zoom, recipe.hflip, recipe.augment), config.batch_size, "loss", workers, 0,
    )["train"]
    cached = next(iter(loader))
    real, in_memory = [], []
    for _ in range(rounds):
        in_memory.append(train_steps(model, optimizer, (cached for _ in range(warmup + steps)), steps, warmup))
        real.append(train_steps(model, optimizer, loader, steps, warmup))
    return max(real), max(in_memory), config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(pneumonia.PRESETS), choices=list(pneumonia.PRESETS))
    parser.add_argument("--image-size", type=int, help="square input side for every preset; default: each preset's")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements per column; the best is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (loader start-up, allocator)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, as in training")
    parser.add_argument("--dataset", default=str(DATA))
    args = parser.parse_args()
    splits = data.load_data(args.dataset, val_fraction=0.15, seed=0, max_train=None, max_eval=None)

    print(f"machine: {machine()}")
    size_flag = f" --image-size {args.image_size}" if args.image_size else ""
    print(f"command: python benchmarks/train_throughput.py{size_flag} --steps {args.steps} --rounds {args.rounds} "
          f"--workers {args.workers}\n")
    print("| preset | image | batch | real loader (img/s) | in memory (img/s) | loader overhead |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        size = args.image_size or pneumonia.PRESETS[preset].image_size
        real, in_memory, batch = measure(preset, size, splits, args.steps, args.warmup, args.workers, args.rounds)
        print(f"| {preset} | {size} px | {batch} | {real:.1f} | {in_memory:.1f} | {in_memory / real:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
