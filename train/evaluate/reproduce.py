"""Train every preset with the project's recipe and write the comparison table.

    python -m train.evaluate.reproduce --dataset ../shared/data/chest_xray --output-root runs/reproduce
    accelerate launch -m train.evaluate.reproduce --dataset DATA --output-root runs/gpu --pretrained   # a GPU machine

Flags other than --output-root and --presets go to every `python -m train` run unchanged
(see `python -m train --help`); the recipe is training's defaults. A finished preset is
skipped and an interrupted one resumed, so the same command continues after a stop.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumonia.presets import PRESETS, UsageError
from train.evaluate.compare import write_comparison
from train.config import parse_config
from train.run import main as train_main


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate.reproduce", description=__doc__.splitlines()[0],
                                     epilog="Any other flag is a `python -m train` flag, passed to every run.")
    parser.add_argument("--output-root", type=Path, required=True, help="one folder per preset is made under it")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS), help="which presets")
    args, train_flags = parser.parse_known_args(argv)
    if any(flag.split("=")[0] in ("--model", "--output-dir", "--resume", "--overwrite") for flag in train_flags):
        parser.error("--model, --output-dir, --resume and --overwrite are set per preset by reproduce")
    return args, train_flags


def run_flags(preset: str, output_dir: Path, train_flags: list[str]) -> list[str]:
    """A preset's `python -m train` flags; --pretrained only where ImageNet weights exist."""
    flags = [*train_flags, "--model", preset, "--output-dir", str(output_dir)]
    if not PRESETS[preset].has_imagenet_weights:
        flags = [f for f in flags if f not in ("--pretrained",) and not f.startswith("--pretrained-file")]
    if (output_dir / "checkpoints").is_dir():
        flags.append("--resume")
    return flags


def main(argv: list[str] | None = None) -> None:
    args, train_flags = parse_args(argv)
    for preset in args.presets:
        output_dir = args.output_root / preset
        if not (output_dir / "metrics.json").is_file():
            parse_config(run_flags(preset, output_dir, train_flags))  # bad flags fail before any training
            print(f"== {preset} -> {output_dir}", flush=True)
            train_main(run_flags(preset, output_dir, train_flags))
    # Every finished preset under the root, also from earlier calls (a time-boxed run is not finished).
    finished = [args.output_root / p for p in PRESETS if (args.output_root / p / "metrics.json").is_file()]
    if finished:
        write_comparison(finished, args.output_root / "comparison.md")
    else:
        print(f"error: no finished run under {args.output_root}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
