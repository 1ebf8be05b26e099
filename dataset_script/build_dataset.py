"""Build the chest X-ray dataset as parquet (train / validation / test) from the Kaggle layout.

    python -m dataset_script.build_dataset ../shared/data/chest_xray data/chest-xray-pneumonia
    python -m dataset_script.build_dataset chest-xray-pneumonia.zip data/chest-xray-pneumonia

Validation holds out whole patients from train with the same function training uses, so
`python -m train --dataset data/chest-xray-pneumonia` trains on exactly these splits.
This is a build script, not a loading script (`datasets` 4+ no longer runs those).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import datasets
from datasets.table import embed_table_storage

from pneumonia.presets import UsageError
from train.data import load_splits


def kaggle_root(source: Path, scratch: Path) -> Path:
    """The folder holding train/ and test/: the source itself, or inside the Kaggle zip."""
    if source.suffix.lower() != ".zip":
        return source
    if not zipfile.is_zipfile(source):
        raise UsageError(f"{source} is not a readable zip file; give the Kaggle zip or its unpacked folder")
    with zipfile.ZipFile(source) as archive:
        archive.extractall(scratch)
    # The Kaggle zip nests chest_xray/ (twice, plus __MACOSX/): take the first real one.
    roots = sorted(p.parent for p in scratch.rglob("train") if p.is_dir() and "__MACOSX" not in p.parts)
    if not roots:
        raise UsageError(f"{source} holds no train/ folder; give the Kaggle chest X-ray zip")
    return roots[0]


def build(source: Path, val_fraction: float, seed: int) -> datasets.DatasetDict:
    """train / validation / test with image (bytes embedded), label (ClassLabel) and patient_id."""
    splits = load_splits(str(source), val_fraction, seed)
    return datasets.DatasetDict({
        name: rows.cast_column("image", datasets.Image()).with_format("arrow").map(embed_table_storage, batched=True)
        .with_format(None)
        for name, rows in splits.items()
    })


def save_parquet(dataset: datasets.DatasetDict, output: Path) -> list[Path]:
    """One file per split, named the way `load_dataset(folder)` and the Hub infer splits."""
    (output / "data").mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in dataset.items():
        path = output / "data" / f"{name}-00000-of-00001.parquet"
        rows.to_parquet(str(path))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataset_script.build_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Kaggle-layout folder, or the Kaggle zip")
    parser.add_argument("output", type=Path, help="folder to write data/{train,validation,test}-*.parquet into")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of train patients held out")
    parser.add_argument("--seed", type=int, default=42, help="seed of the patient split (training's default too)")
    args = parser.parse_args(argv)
    try:
        if args.output.exists() and any(args.output.iterdir()):
            raise UsageError(f"{args.output} is not empty: choose a new output folder")
        with tempfile.TemporaryDirectory() as scratch:
            dataset = build(kaggle_root(args.source, Path(scratch)), args.val_fraction, args.seed)
            written = save_parquet(dataset, args.output)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, rows in dataset.items():
        print(f"{name}: {len(rows)} images, {len(set(rows['patient_id']))} patients, {sum(rows['label'])} PNEUMONIA")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
