"""Which heat map looks where: Grad-CAM variants compared on a model's validation films.

    python -m train.evaluate.heatmaps models/pneumonia-mobilenetv2 --sheet docs/img/heatmaps.jpg

For each method: the mean share of the map's mass in the central chest box (a uniform map
scores 0.45), over all films and per true label, and its CPU milliseconds per film. The
methods come from the ``grad-cam`` library (``pytorch_grad_cam``) beside this project's own
Grad-CAM, on the model's feature stages named in timm's ``feature_info`` (stage -1 = the last,
coarsest map). ``--sheet`` draws three of them (``SHEET``) on six NORMAL and six PNEUMONIA
films, to check them by eye.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import pneumonia
from pneumonia import folder_json
from pneumonia.gradcam import central_share, grad_cam, overlay
from pneumonia.image_files import open_image
from pneumonia.labels import LABEL_NAMES, POSITIVE_LABEL
from train.config import split_seed_of
from train.data import load_splits


def stage(model, index: int):
    return model.get_submodule(model.feature_info[index]["module"])


def library_method(name: str, stages: tuple[int, ...], decided: bool = False):
    """A pytorch_grad_cam method on the given feature stages, as (model, pixels) -> maps (N, H, W):
    of the PNEUMONIA score, or with ``decided`` of the class the model leans to."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run(model, pixels: torch.Tensor) -> np.ndarray:
        if decided:
            with torch.no_grad():
                classes = model(pixels).argmax(dim=1).tolist()
        else:
            classes = [LABEL_NAMES.index(POSITIVE_LABEL)] * len(pixels)
        with getattr(pytorch_grad_cam, name)(model, [stage(model, i) for i in stages]) as cam:
            return cam(pixels, targets=[ClassifierOutputTarget(c) for c in classes])
    return run


APP_METHOD = "LayerCAM, stages -3 to -1 (pneumonia.gradcam)"  # pneumonia.gradcam's defaults: what the app draws
METHODS = {
    "Grad-CAM, last stage (the app before LayerCAM)": lambda model, pixels: grad_cam(model, pixels, method="gradcam", stages=(-1,))[1],
    APP_METHOD: lambda model, pixels: grad_cam(model, pixels)[1],
    "GradCAM, last stage (library)": library_method("GradCAM", (-1,)),
    "GradCAM, stage -2": library_method("GradCAM", (-2,)),
    "HiResCAM, stage -2": library_method("HiResCAM", (-2,)),
    "GradCAM, stages -2 and -1": library_method("GradCAM", (-2, -1)),
    "LayerCAM, stages -2 and -1": library_method("LayerCAM", (-2, -1)),
    "LayerCAM, stages -3 to -1": library_method("LayerCAM", (-3, -2, -1)),
    "GradCAM++, stages -2 and -1": library_method("GradCAMPlusPlus", (-2, -1)),
    "HiResCAM, stages -2 and -1": library_method("HiResCAM", (-2, -1)),
    "GradCAM, stages -2 and -1, decided class": library_method("GradCAM", (-2, -1), decided=True),
    "LayerCAM, stages -2 and -1, decided class": library_method("LayerCAM", (-2, -1), decided=True),
    "HiResCAM, stages -2 and -1, decided class": library_method("HiResCAM", (-2, -1), decided=True),
}


# The sheet shows the map the app drew before LayerCAM, the app's map, and the best-scoring alternative.
SHEET = ("Grad-CAM, last stage (the app before LayerCAM)", APP_METHOD, "HiResCAM, stage -2")


def validation_films(folder: str, limit: int) -> tuple[list, np.ndarray]:
    training = json.loads((Path(folder) / "training_config.json").read_text())
    splits = load_splits(training["dataset"], training["val_fraction"], split_seed_of(training))
    rows = splits["validation"]
    picked = np.linspace(0, len(rows) - 1, num=min(limit, len(rows))).round().astype(int)
    return [open_image(rows[int(i)]["image"]) for i in picked], np.array([rows[int(i)]["label"] for i in picked])


def compare(classifier, images, labels, batch_size: int = 16) -> tuple[list[dict], dict[str, np.ndarray]]:
    model = classifier.model.eval()
    table, maps = [], {}
    for name, method in METHODS.items():
        started, found = time.perf_counter(), []
        for start in range(0, len(images), batch_size):
            found.append(method(model, classifier.pixels(images[start:start + batch_size])))
        seconds = time.perf_counter() - started
        maps[name] = np.concatenate(found)
        shares = central_share(maps[name])
        row = {"method": name, "all": float(np.nanmean(shares)), "ms per film": 1000 * seconds / len(images)}
        row |= {label: float(np.nanmean(shares[labels == i])) for i, label in enumerate(LABEL_NAMES)}
        table.append(row)
    return table, maps


def contact_sheet(images, labels, maps: dict[str, np.ndarray], path: Path, per_label: int = 6) -> None:
    from matplotlib import pyplot as plt

    chosen = [i for index in range(len(LABEL_NAMES)) for i in np.flatnonzero(labels == index)[:per_label]]
    maps = {name: maps[name] for name in SHEET}
    figure, axes = plt.subplots(len(maps), len(chosen), figsize=(1.4 * len(chosen), 1.5 * len(maps)))
    for row, (name, cams) in enumerate(maps.items()):
        for column, i in enumerate(chosen):
            axes[row, column].imshow(overlay(images[i], cams[i], max_side=128))
            axes[row, column].set_xticks([]), axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(LABEL_NAMES[labels[i]], fontsize=7)
        axes[row, 0].set_ylabel(name.replace(", ", "\n"), fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100, pil_kwargs={"quality": 85} if path.suffix.lower() in (".jpg", ".jpeg") else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a model folder written by `python -m train`")
    parser.add_argument("--limit", type=int, default=120, help="validation films, spread evenly (training measures 120)")
    parser.add_argument("--sheet", type=Path, help="also draw three methods on 12 films into this image (PNG or JPEG)")
    parser.add_argument("--write", action="store_true", help="record the app's method's shares in the folder's "
                        "metrics.json (gradcam_central_share), as training does, and re-render its card")
    args = parser.parse_args()
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise SystemExit("the comparison needs the grad-cam library: pip install -r requirements-dev.txt") from None
    torch.set_grad_enabled(True)
    classifier = pneumonia.load_classifier(args.folder, backend="pytorch")
    images, labels = validation_films(args.folder, args.limit)
    table, maps = compare(classifier, images, labels)
    print(f"{args.folder}: {len(images)} validation films, central share of the PNEUMONIA map (uniform = 0.45)")
    print("| method | all | NORMAL | PNEUMONIA | ms per film |\n|---|---|---|---|---|")
    for row in table:
        print(f"| {row['method']} | {row['all']:.3f} | {row['NORMAL']:.3f} | {row['PNEUMONIA']:.3f} | {row['ms per film']:.1f} |")
    if args.sheet:
        contact_sheet(images, labels, maps, args.sheet)
    if args.write:
        record(Path(args.folder), next(row for row in table if row["method"] == APP_METHOD))


def record(folder: Path, row: dict) -> None:
    from pneumonia.gradcam import DESCRIPTION
    from train.export.card import write_card

    folder_json.update(folder / "metrics.json", gradcam_central_share={
        "validation": row["all"], **{f"validation_{label}": row[label] for label in LABEL_NAMES}, "method": DESCRIPTION})
    write_card(folder)


if __name__ == "__main__":
    main()
