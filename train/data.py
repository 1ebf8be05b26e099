"""Chest X-ray splits through HF `datasets`, split by patient, and a skip-safe torch view."""
from __future__ import annotations

import logging
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split

from pneumonia.presets import LABEL_NAMES, UsageError
from train.augment import Augment
from pneumonia.image_files import UnreadableImage, open_image
from pneumonia.ood import image_check
from pneumonia.training_transform import XrayPreprocessing, build_transform
from train.shift import shifted_film

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
_LAYOUT_HINT = (
    "give a folder laid out as train/{NORMAL,PNEUMONIA} and test/{NORMAL,PNEUMONIA} "
    "(val/ optional), a folder saved by dataset_script/, or a Hub dataset id"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")


def patient_id(file_name: str) -> str:
    """`person1000_bacteria_2931.jpeg` -> `person1000`; `IM-0115-0001.jpeg` -> `IM-0115`.

    Names outside the Kermany scheme count as a patient of their own.
    """
    stem = Path(file_name).stem
    match = _PATIENT.match(stem)
    return match.group(1) if match else stem


def split_by_patient(
    patient_ids: list[str], labels: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) row indices: whole patients held out, stratified by the patient's label."""
    label_of_patient: dict[str, Counter] = {}
    for pid, label in zip(patient_ids, labels):
        label_of_patient.setdefault(pid, Counter())[label] += 1
    rng = np.random.default_rng(seed)
    held_out: set[str] = set()
    for label in sorted(set(labels)):
        group = sorted(p for p, counts in label_of_patient.items() if counts.most_common(1)[0][0] == label)
        rng.shuffle(group)
        held_out.update(group[: round(val_fraction * len(group))])
    val = [i for i, pid in enumerate(patient_ids) if pid in held_out]
    train = [i for i, pid in enumerate(patient_ids) if pid not in held_out]
    return train, val


def subsample(dataset: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """A class-stratified random subset of ``n`` rows (all rows when ``n`` is None or too big)."""
    if n is None or n >= len(dataset):
        return dataset
    keep, _ = train_test_split(
        np.arange(len(dataset)), train_size=n, stratify=dataset["label"], random_state=seed
    )
    return dataset.select(sorted(keep))


def _check_kaggle_layout(root: Path) -> None:
    folders = [root / split / label for split in ("train", "test") for label in LABEL_NAMES]
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"dataset {root}: {folder.relative_to(root)}/ is missing; {_LAYOUT_HINT}")
    for folder in folders:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            raise UsageError(f"dataset {root}: {folder.relative_to(root)}/ holds no images; every class needs images")


def _load_raw(source: str) -> datasets.DatasetDict:
    root = Path(source)
    if (root / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(root))
    if (root / "train").is_dir():
        _check_kaggle_layout(root)
        return datasets.load_dataset("imagefolder", data_dir=str(root))
    if root.is_dir() or is_hub_id(source):
        return _load_dataset(source)  # parquet written by dataset_script/, or a Hub id (online)
    raise UsageError(f"dataset {source} not found; {_LAYOUT_HINT}")


def is_hub_id(source: str) -> bool:
    """`user/name` that is not a local path."""
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).exists()


def _load_dataset(source: str) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(source)
    except Exception as err:  # offline, private, no such repo, or files datasets cannot read
        raise UsageError(f"could not load dataset {source} ({type(err).__name__}: {err}); {_LAYOUT_HINT}") from err


def _with_patient_ids(split: datasets.Dataset) -> datasets.Dataset:
    if "patient_id" in split.column_names:
        return split
    return split.map(lambda row: {"patient_id": patient_id(row["image"]["path"] or "")})


def load_splits(source: str, val_fraction: float, seed: int) -> datasets.DatasetDict:
    """train / validation / test with columns image (undecoded), label, patient_id."""
    raw = _checked(_load_raw(source), source)
    if "validation" in raw and "patient_id" in raw["validation"].column_names:
        shared = set(raw["train"]["patient_id"]) & set(raw["validation"]["patient_id"])
        if shared:
            raise UsageError(f"dataset {source}: {len(shared)} patients are in both train and validation; rebuild it with dataset_script/")
        return raw  # built by dataset_script/ with the same patient-level split
    splits = {name: _with_patient_ids(split) for name, split in raw.items()}
    # Kaggle's official val/ holds 16 images: too few to choose anything on. Fold it into
    # train and hold out whole patients instead.
    pool = datasets.concatenate_datasets([splits["train"], splits["validation"]]) if "validation" in splits else splits["train"]
    train_rows, val_rows = split_by_patient(pool["patient_id"], pool["label"], val_fraction, seed)
    return datasets.DatasetDict(train=pool.select(train_rows), validation=pool.select(val_rows), test=splits["test"])


def _checked(raw: datasets.DatasetDict, source: str) -> datasets.DatasetDict:
    """The splits, columns and labels training needs, with images left undecoded."""
    for needed in ("train", "test"):
        if needed not in raw:
            raise UsageError(f"dataset {source} has no {needed!r} split; {_LAYOUT_HINT}")
    if "image" not in raw["train"].column_names:
        raise UsageError(f"dataset {source} has no 'image' column; {_LAYOUT_HINT}")
    names = tuple(getattr(raw["train"].features.get("label"), "names", ()))
    if names != LABEL_NAMES:
        raise UsageError(f"dataset {source} has labels {names or 'none'}; expected a ClassLabel 'label' {LABEL_NAMES}")
    return raw.cast_column("image", datasets.Image(decode=False))


class XrayDataset(torch.utils.data.Dataset):
    """Rows -> (pixels, label, row index, readable, odd, problem); an unreadable image yields zeros,
    readable=0 and what is wrong with it (``logged_batches`` logs it, once). With ``check_images``,
    ``odd`` says whether the out-of-distribution gate's image checks (colour, blank) refuse the image.

    Keeping the row (instead of dropping it) keeps batch shapes equal across processes, so
    evaluation can gather them; the loss and the metrics ignore rows that are not readable.
    """

    def __init__(
        self, rows: datasets.Dataset, transform: Callable, input_size: tuple[int, int, int],
        perturb: Callable[[Image.Image, str], Image.Image] | None = None, check_images: bool = False,
    ):
        self.rows, self.transform, self.input_size, self.perturb = rows, transform, input_size, perturb
        self.check_images = check_images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        odd, problem = False, ""
        try:
            image = open_image(row["image"])
            if self.perturb is not None:
                image = self.perturb(image, _file_name(row["image"], index))
            pixels, readable = self.transform(image), True
            odd = self.check_images and image_check(image) is not None
        except UnreadableImage as err:
            pixels, readable, problem = torch.zeros(self.input_size), False, str(err)
        return {
            "pixel_values": pixels,
            "labels": torch.tensor(row["label"]),
            "index": torch.tensor(index),
            "readable": torch.tensor(readable),
            "odd": torch.tensor(odd),
            "problem": problem,
        }


_LOGGED: set[str] = set()


def logged_batches(loader):
    """The loader's batches; each unreadable image among them is logged once per process, however
    many epochs, draws or models read it (the workers that find it may not live that long)."""
    for batch in loader:
        for problem in batch.get("problem", ()):
            if problem and problem not in _LOGGED:
                _LOGGED.add(problem)
                logger.warning("skipping unreadable image %s", problem)
        yield batch


def load_data(source: str, val_fraction: float, seed: int, max_train: int | None, max_eval: int | None) -> datasets.DatasetDict:
    splits = load_splits(source, val_fraction, seed)
    return datasets.DatasetDict(
        train=subsample(splits["train"], max_train, seed),
        validation=subsample(splits["validation"], max_eval, seed),
        test=subsample(splits["test"], max_eval, seed),
    )


def make_loaders(
    splits: datasets.DatasetDict, data_config: dict, preprocessing: XrayPreprocessing, augment: Augment,
    batch_size: int, balance: str, num_workers: int, shift_seed: int, check_images: bool = False,
    shuffle_train: bool = True,
) -> dict[str, torch.utils.data.DataLoader]:
    """Shuffled (or class-balanced) augmented train loader; plain, ordered eval loaders,
    among them the shifted validation (the validation films, each with its fixed shift) and the
    training films each with a fixed shift of another seed.
    ``check_images``: the eval loaders also run the out-of-distribution gate's image checks."""
    input_size = tuple(data_config["input_size"])

    def loader(name: str, transform: Callable, perturb=None, **kwargs) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            XrayDataset(splits[name], transform, input_size, perturb, check_images and name != "train"),
            batch_size=batch_size,
            num_workers=num_workers, pin_memory=torch.cuda.is_available(), **kwargs,
        )

    sampler = None
    if balance == "sampler":
        labels = torch.tensor(splits["train"]["label"])
        per_class = 1.0 / torch.bincount(labels, minlength=len(LABEL_NAMES)).clamp_min(1).float()
        sampler = torch.utils.data.WeightedRandomSampler(per_class[labels], num_samples=len(labels))
    evaluation = build_transform(data_config, preprocessing)
    training = build_transform(data_config, preprocessing, augment=augment)
    return {
        "train": loader("train", training, shuffle=shuffle_train and sampler is None, sampler=sampler, drop_last=False),
        "validation": loader("validation", evaluation),
        "shifted_validation": loader("validation", evaluation, partial(shifted_film, seed=shift_seed)),
        "test": loader("test", evaluation),
        # Children's films as other sites deliver them, for the gate's heads (never the model's training).
        "shifted_train": loader("train", evaluation, partial(shifted_film, seed=shift_seed + 1)),
    }


def _file_name(image: dict, index: int) -> str:
    return Path(image.get("path") or f"row{index}").name


def file_names(rows: datasets.Dataset, indices) -> list[str]:
    images = rows.select_columns(["image"])
    return [_file_name(images[int(i)]["image"], int(i)) for i in indices]
