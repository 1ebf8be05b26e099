"""`python -m train.evaluate` on labelled films of any kind, and `python -m train.evaluate.reproduce`."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

import pneumonia
from tests.conftest import call_cli, link_subset, run_cli
from train.shift import dicom_bytes

pytestmark = pytest.mark.slow

TINY = ("--epochs", "1", "--max-train-samples", "24", "--max-eval-samples", "16", "--batch-size", "8",
        "--num-workers", "0", "--image-size", "64", "--no-ood-gate")
EVALUATE = (sys.executable, "-m", "train.evaluate")


def _hospital_films(film, folder):
    """A full-resolution PNG, a 12-bit DICOM and a broken file, listed in a CSV."""
    normal, sick = film("NORMAL"), film("PNEUMONIA")
    folder.mkdir()
    Image.open(normal).convert("L").resize((1800, 1500), Image.BICUBIC).save(folder / "normal_full.png")
    pixels = np.asarray(Image.open(sick).convert("L"), dtype=np.uint16) * 16
    (folder / "sick.dcm").write_bytes(dicom_bytes(4095 - pixels, "MONOCHROME1"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "films.csv").write_text("file,label\nnormal_full.png,NORMAL\nsick.dcm,pneumonia\nbroken.png,1\n")
    return folder / "films.csv"


def test_csv_of_png_dicom_and_broken_file_gives_metrics_and_card(trained_copy, film, tmp_path):
    model_dir = trained_copy  # --card writes into the folder
    films = _hospital_films(film, tmp_path / "hospital")
    out = tmp_path / "report"
    result = run_cli(model_dir.as_posix(), str(films), "--name", "Hospital X", "--output-dir", str(out),
                     "--card", "--num-workers", "0", launcher=EVALUATE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 unreadable file(s): broken.png" in result.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"] == 2 and report["skipped_unreadable"] == 1 and report["skipped_files"] == ["broken.png"]
    assert {"roc_auc", "accuracy", "recall", "specificity", "f1", "ece", "confusion_matrix"} <= set(report)
    assert all((out / name).is_file() for name in ("roc_curve.png", "confusion_matrix.png", "predictions.csv"))

    # the probabilities are the app's: same loader, same preprocessing, temperature and threshold
    classifier = pneumonia.load_classifier(str(model_dir))
    with (out / "predictions.csv").open() as f:
        rows = {r["file"]: float(r["p_pneumonia"]) for r in csv.DictReader(f)}
    for name in ("normal_full.png", "sick.dcm"):
        expected = classifier.probabilities(pneumonia.open_image(films.parent / name))["PNEUMONIA"]
        assert rows[name] == pytest.approx(expected, abs=1e-5)

    # --card: recorded in metrics.json, a section in the card and a model-index entry naming the data
    assert json.loads((model_dir / "metrics.json").read_text())["external"]["Hospital X"]["n"] == 2
    card = ModelCard.load(model_dir / "README.md")
    assert "## External validation" in card.text and "| Hospital X | 2 | 1 |" in card.text
    named = [r for r in card.data.eval_results if r.dataset_name == "Hospital X"]
    assert {r.metric_type for r in named} >= {"f1", "roc_auc", "specificity"}
    assert next(r for r in named if r.metric_type == "f1").metric_value == report["f1"]


def test_the_gate_names_the_films_the_app_would_refuse(film, tmp_path):
    from skimage import data as samples

    from tests.conftest import BUNDLED_MODEL

    folder = tmp_path / "mixed"
    folder.mkdir()
    films = [film(label) for label in ("NORMAL", "PNEUMONIA")]
    Image.fromarray(samples.coffee()).save(folder / "cup.png")  # a photo filed as a film by mistake
    Image.fromarray(samples.page()).save(folder / "scan.png")
    (folder / "films.csv").write_text("file,label\n" + "".join(f"{f},{f.parent.name}\n" for f in films)
                                      + "cup.png,NORMAL\nscan.png,PNEUMONIA\n")
    out = tmp_path / "report"
    result = run_cli(str(BUNDLED_MODEL), str(folder / "films.csv"), "--output-dir", str(out), "--num-workers", "0",
                     launcher=EVALUATE)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"] == 4 and report["ood_refused"] == 2 and report["ood_files"]["refuse"] == ["cup.png", "scan.png"]
    assert report["ood_outcomes"] == {"answer": 2, "caution": 0, "refuse": 2}  # the two films answered, and named
    assert "the out-of-distribution gate, of 4 films: answer 2 (50.0%)" in result.stdout
    assert "[refuse: cup.png, scan.png] (the metrics include them all)" in result.stdout


def test_outcome_shares_of_any_folder_of_images(scope_set, tmp_path):
    from tests.conftest import BUNDLED_MODEL

    folder = tmp_path / "mixed"
    folder.mkdir()
    linked = {category: [p for p in scope_set.files if p.parent.name == category][:3] for category in ("lateral", "adult_frontal")}
    for path in linked["lateral"] + linked["adult_frontal"]:
        (folder / path.name).symlink_to(path)
    (folder / "notes.txt").write_text("not an image")  # skipped: not a picture
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run_cli(str(BUNDLED_MODEL), str(folder), "--outcomes", "--output-dir", str(tmp_path / "report"),
                     "--num-workers", "0", launcher=EVALUATE)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "report" / "outcomes.json").read_text())
    assert found["images"] == 6 and found["skipped_unreadable"] == 1
    # none answered: the side views refused, the adults cautioned or refused (the bundled gate refuses
    # about a fifth of adults' films as unlike a child's: one of these three)
    assert found["shares"] == {"answer": 0.0, "caution": pytest.approx(2 / 6), "refuse": pytest.approx(4 / 6)}
    adults = {p.name for p in linked["adult_frontal"]}
    assert {p.name for p in linked["lateral"]} <= set(found["files"]["refuse"])
    assert set(found["files"]["refuse"]) - {p.name for p in linked["lateral"]} < adults


def test_kaggle_folder_split_and_class_folders(trained_model, data_dir, tmp_path):
    data = link_subset(data_dir, tmp_path / "kaggle", per_class=5)
    for source, extra in ((data, ["--split", "test"]), (data / "train", [])):
        out = tmp_path / f"report-{source.name}"
        result = run_cli(str(trained_model), str(source), "--output-dir", str(out), "--num-workers", "0", *extra,
                         launcher=EVALUATE)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((out / "metrics.json").read_text())
        assert report["n"] == 10 and report["confusion_matrix"]["tp"] + report["confusion_matrix"]["fn"] == 5


@pytest.mark.parametrize("make, args, message", [
    (lambda d: d.joinpath("bad.csv").write_text("file,label\na.png,NORMAL\nb.png,maybe\n"), ["{d}/bad.csv"],
     "not so on line 3 ('maybe')"),
    (lambda d: d.joinpath("cols.csv").write_text("path,diagnosis\na.png,NORMAL\n"), ["{d}/cols.csv"],
     "needs the columns file,label"),
    (lambda d: None, ["{d}/nowhere"], "not found"),
    (lambda d: d.joinpath("ok.csv").write_text("file,label\na.png,NORMAL\n"), ["{d}/ok.csv", "--model-hub"],
     "--card needs a local model folder"),
    (lambda d: d.joinpath("gone.csv").write_text("file,label\na.png,NORMAL\n"), ["{d}/gone.csv"],
     "none of its 1 files is a readable image"),
])
def test_bad_input_gets_one_line_error(make, args, message, trained_model, tmp_path, capsys):
    from train.evaluate.score import main

    make(tmp_path)
    args = [a.format(d=tmp_path) for a in args]
    model = str(trained_model)
    if "--model-hub" in args:
        args.remove("--model-hub")
        model, args = "hf-hub:someone/pneumonia", [*args, "--card"]
    result = call_cli(main, capsys, model, *args, "--output-dir", str(tmp_path / "out"), "--num-workers", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], result.stderr


def test_reproduce_trains_each_preset_once_and_writes_the_table(data_dir, tmp_path):
    root = tmp_path / "reproduce"
    args = ("--output-root", str(root), "--presets", "cnn", "resnet18_half", "--dataset", str(data_dir), *TINY)
    launcher = (sys.executable, "-m", "train.evaluate.reproduce")
    first = run_cli(*args, launcher=launcher)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("== ") == 2
    table = (root / "comparison.md").read_text().splitlines()
    assert len(table) == 4 and "`--model cnn --image-size 64 --epochs 1" in table[2] and "resnet18_half" in table[3]
    # compare re-derives the run's own threshold from its predictions.csv, and another rule's
    from train.evaluate.compare import rethresholded

    own = json.loads((root / "cnn" / "metrics.json").read_text())
    assert rethresholded(root / "cnn", "balanced")["threshold"] == pytest.approx(own["threshold"], abs=1e-6)
    again_test = rethresholded(root / "cnn", "balanced")["test"]
    assert again_test["confusion_matrix"] == own["test"]["confusion_matrix"]
    assert again_test["roc_auc"] == pytest.approx(own["test"]["roc_auc"], abs=1e-4)
    assert rethresholded(root / "cnn", "f1")["threshold_rule"] == "f1"
    again = run_cli(*args, launcher=launcher)
    assert again.returncode == 0 and "== " not in again.stdout  # finished presets are not trained again
    bad = run_cli("--output-root", str(root), "--model", "cnn", launcher=launcher)
    assert bad.returncode == 2 and "set per preset" in bad.stderr
