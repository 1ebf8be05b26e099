"""dataset_script/ on real images: parquet splits by patient, and training accepts them."""
from __future__ import annotations

import json
import zipfile

import datasets
import pytest

from dataset_script.build_dataset import main as build_main
from tests.conftest import link_subset, run_cli
from train.data import load_splits


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    source = link_subset(data_dir, tmp_path_factory.mktemp("kaggle"), per_class=30)
    output = tmp_path_factory.mktemp("parquet") / "chest-xray"
    build_main([str(source), str(output), "--val-fraction", "0.25", "--seed", "7"])
    return source, output


def test_parquet_splits_by_patient_with_labels(built):
    source, output = built
    assert sorted(p.name for p in (output / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    dataset = datasets.load_dataset(str(output))
    assert dataset["train"].features["label"].names == ["NORMAL", "PNEUMONIA"]
    assert len(dataset["train"]) + len(dataset["validation"]) == 60 and len(dataset["test"]) == 60
    assert not set(dataset["train"]["patient_id"]) & set(dataset["validation"]["patient_id"])
    assert set(dataset["validation"]["label"]) == {0, 1}
    assert dataset["test"][0]["image"].size == (224, 224)  # bytes embedded, decodable without the source
    # the same split training makes from the folder itself
    from_folder = load_splits(str(source), val_fraction=0.25, seed=7)
    assert set(from_folder["validation"]["patient_id"]) == set(dataset["validation"]["patient_id"])


@pytest.mark.slow
def test_training_runs_on_the_built_dataset(built, tmp_path):
    _, output = built
    result = run_cli("--model", "cnn", "--dataset", str(output), "--output-dir", str(tmp_path / "run"),
                     "--epochs", "1", "--batch-size", "16", "--image-size", "96", "--num-workers", "0", "--no-ood-gate", "--no-export-onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 60 and metrics["train_images"] + metrics["validation"]["n"] == 60


def test_kaggle_zip_is_accepted(data_dir, tmp_path):
    source = link_subset(data_dir, tmp_path / "kaggle", per_class=3)
    archive = tmp_path / "chest-xray-pneumonia.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.rglob("*.jpeg"):
            zf.write(path.resolve(), f"chest_xray/{path.relative_to(source)}")
            zf.writestr(f"__MACOSX/chest_xray/{path.relative_to(source)}", b"resource fork")
    build_main([str(archive), str(tmp_path / "out"), "--val-fraction", "0.34"])
    dataset = datasets.load_dataset(str(tmp_path / "out"))
    assert len(dataset["test"]) == 6 and len(dataset["train"]) + len(dataset["validation"]) == 6


def test_refuses_a_non_empty_output(built, capsys):
    source, output = built
    with pytest.raises(SystemExit) as exit_info:
        build_main([str(source), str(output)])
    assert exit_info.value.code == 2 and "not empty" in capsys.readouterr().err
