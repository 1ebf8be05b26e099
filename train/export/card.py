"""A run's model card (README.md) and plots, rendered from `model_card.md` with its own numbers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from pneumonia.backends import ONNX_FILES  # noqa: E402
from pneumonia.pixels import data_config_from  # noqa: E402
from pneumonia.presets import LABEL_NAMES, PRESETS  # noqa: E402
from pneumonia.training_transform import XrayPreprocessing  # noqa: E402
from train.data import is_hub_id  # noqa: E402
from train.export.folder import LICENSE, read_predictions  # noqa: E402
from pneumonia.answering import levels_from_config  # noqa: E402
from train.metrics import THRESHOLD_RULES, risk_coverage, selective_metrics  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "model_card.md"
CARD_METRICS = {"f1": "F1", "precision": "Precision", "recall": "Recall (sensitivity)", "specificity": "Specificity",
                "accuracy": "Accuracy", "roc_auc": "ROC-AUC"}
DATASET_NAME = "chest-xray-pneumonia"  # the repo `python -m dataset_script.build_dataset --push-to-hub` makes
SPLIT_TITLES = {"validation": "validation", "shifted_validation": "shifted validation", "test": "test"}


def render_card(folder: Path, repo_id: str | None = None, space_id: str | None = None, dataset_id: str | None = None) -> ModelCard:
    """The card for the run in ``folder``; ``repo_id`` fills the usage lines."""
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "training_config.json").read_text())
    model_config = json.loads((folder / "config.json").read_text())
    preset = config["model"]
    repo_id = repo_id or f"USER/pneumonia-{preset.replace('_', '-')}"
    dataset_id = dataset_id or (config["dataset"] if is_hub_id(config["dataset"])
                                else f"{repo_id.split('/')[0]}/{DATASET_NAME}")
    base_model = model_config.get("base_model")
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=LICENSE,  # the weights are derived from CC BY 4.0 data
        datasets=[dataset_id],
        base_model=base_model,
        tags=["image-classification", "timm", "medical-imaging", "chest-x-ray", "pneumonia", preset],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(metrics, dataset_id, repo_id),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        space_id=space_id or "http://127.0.0.1:7860/",
        architecture=f"{PRESETS[preset].title} (timm `{PRESETS[preset].timm_name.split('.')[0]}`)",
        base_model=base_model,
        initial_weights=model_config.get("initial_weights"),
        splits=[(SPLIT_TITLES[name], metrics[name]) for name in SPLIT_TITLES if name in metrics],
        external=sorted(metrics.get("external", {}).items()),
        preprocessing=XrayPreprocessing.from_config(model_config),
        preset=preset,
        **_resize_and_normalisation(model_config),
        augment=config.get("augment", "original"),
        label_smoothing=config.get("label_smoothing", 0.0),
        gradcam_share=metrics.get("gradcam_central_share", {}).get("validation"),
        heatmap=metrics.get("gradcam_central_share", {}).get("method", "Grad-CAM of the last feature map"),
        answering=metrics.get("answering"),
        uncertain_band=model_config.get("uncertain_band", 0.0),  # a folder from before the answer levels
        onnx=metrics.get("onnx"),
        ood=metrics.get("ood"),
        ood_config=model_config.get("ood"),
        onnx_files=[name for name in ONNX_FILES.values() if (folder / name).is_file()],
        gradcam_share_pneumonia=metrics.get("gradcam_central_share", {}).get("validation_PNEUMONIA"),
        threshold=metrics["threshold"],
        temperature=metrics["temperature"],
        threshold_rule=THRESHOLD_RULES[metrics["threshold_rule"]],
        train_images=metrics["train_images"],
        val_images=metrics["validation"]["n"],
        best_epoch=metrics["best_epoch"],
        train_seconds=metrics["train_seconds"],
        balance={"loss": "class-weighted loss", "sampler": "class-balanced sampler", "none": "plain loss"}[config["balance"]],
        **{k: config[k] for k in ("epochs", "image_size", "lr", "batch_size", "shear", "zoom", "hflip", "seed", "select_metric")},
    )


def _resize_and_normalisation(model_config: dict) -> dict:
    data_config = data_config_from(model_config)
    return {"interpolation": data_config["interpolation"], "mean": list(data_config["mean"]),
            "std": list(data_config["std"])}


def eval_results(metrics: dict, dataset_id: str, repo_id: str) -> list[EvalResult]:
    """model-index entries: the official test split, and each external data set evaluated; their
    source is this model's own evaluation (metrics.json and predictions.csv in its repo)."""
    sets = [(dataset_id, "Chest X-Ray Images (Pneumonia), Kermany et al. 2018", "test", metrics["test"])]
    sets += [(name, name, "test", found) for name, found in sorted(metrics.get("external", {}).items())]
    return [
        EvalResult(
            task_type="image-classification", task_name="Pneumonia detection (chest X-ray)",
            dataset_type=kind, dataset_name=title, dataset_split=split,
            metric_type=name, metric_name=label, metric_value=found[name],
            source_name="this model's evaluation (metrics.json, predictions.csv)",
            source_url=f"https://huggingface.co/{repo_id}/blob/main/metrics.json",
        )
        for kind, title, split, found in sets
        for name, label in CARD_METRICS.items()
    ]


def write_card(folder: Path, repo_id: str | None = None, space_id: str | None = None, dataset_id: str | None = None) -> None:
    """README.md plus the confusion-matrix and ROC plots it shows."""
    metrics = json.loads((folder / "metrics.json").read_text())
    plot_confusion_matrix(metrics["test"]["confusion_matrix"], folder / "confusion_matrix.png")
    plot_roc(folder / "predictions.csv", folder / "roc_curve.png")
    model_config = json.loads((folder / "config.json").read_text())
    if "answer_cutoffs" in model_config or "uncertain_band" in model_config:
        levels, default = levels_from_config(model_config)
        plot_risk_coverage(read_predictions(folder / "predictions.csv"), metrics["threshold"], levels, default,
                           folder / "risk_coverage.png")
    render_card(folder, repo_id, space_id, dataset_id).save(folder / "README.md")


def plot_confusion_matrix(counts: dict, path: Path, title: str = "Test split") -> None:
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABEL_NAMES, yticklabels=LABEL_NAMES,
           xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(predictions: Path, path: Path, splits: tuple[str, ...] = tuple(SPLIT_TITLES)) -> None:
    with predictions.open() as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(4, 3.6))
    for split in splits:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            continue
        fpr, tpr, _ = roc_curve([r["label"] == "PNEUMONIA" for r in chosen], [float(r["p_pneumonia"]) for r in chosen])
        ax.plot(fpr, tpr, label=SPLIT_TITLES.get(split, split))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (PNEUMONIA positive)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_risk_coverage(predictions: dict, threshold: float, levels: dict, default, path: Path) -> None:
    """Accuracy among answered films against coverage, films most likely right answered first; a
    marker where each level's cut-offs (``levels``, by level) answer on each split, the default's
    a dot."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    shapes = iter("s^vD")
    markers = {level: "o" if level == default else next(shapes, "x") for level in levels}
    for split, (labels, p) in predictions.items():
        coverage, accuracy = risk_coverage(labels, p, threshold)
        line, = ax.plot(coverage, accuracy, label=SPLIT_TITLES.get(split, split))
        for level, cutoffs in levels.items():
            at = selective_metrics(labels, p, cutoffs)
            if at["uncertain"] < len(labels):  # a level that answers no film has no point
                ax.plot([at["coverage"]], [at["answered_accuracy"]], markers[level], color=line.get_color())
    names = ", ".join(f"{level:.0%} none answered" if levels[level].band == [None, None] else
                      f"{'dot' if m == 'o' else {'s': 'square', '^': 'triangle'}.get(m, m)} {level:.0%}"
                      for level, m in markers.items() if level is not None)
    ax.set(xlabel="coverage (share of films answered)", ylabel="accuracy among answered films",
           ylim=(0.8, 1.001))
    ax.set_title(f"Risk-coverage; the answer levels: {names}" if names else "Risk-coverage; dots: the band",
                 fontsize=9)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
