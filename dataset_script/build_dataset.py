"""Build the chest X-ray dataset as parquet (train / validation / test) from the Kaggle layout.

    python -m dataset_script.build_dataset ../shared/data/chest_xray data/chest-xray-pneumonia
    python -m dataset_script.build_dataset chest-xray-pneumonia.zip data/chest-xray-pneumonia
    python -m dataset_script.build_dataset ../shared/data/chest_xray data/cxr --push-to-hub USER/chest-xray-pneumonia

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
from huggingface_hub import DatasetCard, DatasetCardData

from pneumonia.presets import UsageError
from train.data import load_splits
from train.publish.hub import push_folder, require_token

CARD_TEMPLATE = Path(__file__).resolve().parent / "dataset_card.md"


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


def write_card(dataset: datasets.DatasetDict, output: Path, repo_id: str, val_fraction: float, seed: int) -> None:
    """README.md: YAML (license, task, split sizes, data files) and the text a Hub user reads first."""
    sizes = {name: len(rows) for name, rows in dataset.items()}
    card_data = DatasetCardData(
        license="cc-by-4.0",
        task_categories=["image-classification"],
        tags=["medical", "chest-x-ray", "pneumonia", "pediatric"],
        pretty_name="Chest X-Ray Images (Pneumonia), split by patient",
        size_categories=["1K<n<10K"],
        configs=[{"config_name": "default", "data_files": [
            {"split": name, "path": f"data/{name}-*.parquet"} for name in dataset]}],
        dataset_info={"splits": [{"name": name, "num_examples": n} for name, n in sizes.items()]},
    )
    split_rows = [
        {"name": name, "images": len(rows), "normal": len(rows) - sum(rows["label"]), "pneumonia": sum(rows["label"]),
         "patients": len(set(rows["patient_id"]))}
        for name, rows in dataset.items()
    ]
    card = DatasetCard.from_template(card_data, template_path=str(CARD_TEMPLATE), split_rows=split_rows,
                                     repo_id=repo_id, val_fraction=val_fraction, seed=seed)
    card.save(output / "README.md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataset_script.build_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Kaggle-layout folder, or the Kaggle zip")
    parser.add_argument("output", type=Path, help="folder to write data/{train,validation,test}-*.parquet into")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of train patients held out")
    parser.add_argument("--seed", type=int, default=42, help="seed of the patient split (training's default too)")
    parser.add_argument("--push-to-hub", metavar="USER/NAME", help="then push the parquet and its card to this dataset repo")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    args = parser.parse_args(argv)
    try:
        if args.output.exists() and any(args.output.iterdir()):
            raise UsageError(f"{args.output} is not empty: choose a new output folder")
        if args.push_to_hub:
            require_token()  # before the build, not after it
        with tempfile.TemporaryDirectory() as scratch:
            dataset = build(kaggle_root(args.source, Path(scratch)), args.val_fraction, args.seed)
            written = save_parquet(dataset, args.output)
        write_card(dataset, args.output, args.push_to_hub or "USER/chest-xray-pneumonia", args.val_fraction, args.seed)
        if args.push_to_hub:
            push_folder(args.output, args.push_to_hub, ["README.md", "data/*.parquet"], repo_type="dataset",
                        private=args.private, commit_message="Upload the patient-split chest X-ray dataset")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, rows in dataset.items():
        print(f"{name}: {len(rows)} images, {len(set(rows['patient_id']))} patients, {sum(rows['label'])} PNEUMONIA")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
