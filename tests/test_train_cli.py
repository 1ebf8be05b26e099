"""Smoke runs of the real training CLI on real X-rays, and parity of what it writes."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import pneumonia
import pneumonia.torch_model
from tests.conftest import call_cli, link_subset, run_cli, run_initial_weights, unmoved_parameters

pytestmark = pytest.mark.slow

# A few dozen real images per run: enough to exercise every code path in seconds.
TINY = ("--epochs", "1", "--max-train-samples", "24", "--max-eval-samples", "16", "--batch-size", "8", "--num-workers", "0")
# What a test leaves out when another test covers it: the gate and the ONNX files (the preset runs).
BARE = ("--no-ood-gate", "--no-export-onnx")


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("preset", list(pneumonia.PRESETS))
def test_each_preset_trains_and_its_folder_reloads_to_the_same_probabilities(preset, data_dir, small_scope, tmp_path):
    out = tmp_path / preset
    # at 96 px (Inception v3 needs 75): each preset at its own size is read by tests/test_portable.py and test_ood.py
    _ok(run_cli("--model", preset, "--dataset", str(data_dir), "--output-dir", str(out), *TINY, "--image-size", "96",
                "--scope-data", str(small_scope)))
    for name in ("config.json", "model.safetensors", "metrics.json", "training_config.json", "predictions.csv"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["label_names"] == ["NORMAL", "PNEUMONIA"]
    assert config["threshold"] == metrics["threshold"] and config["temperature"] == metrics["temperature"]
    for split in ("validation", "test"):
        assert metrics[split]["n"] == 16
        assert {"accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "ece", "confusion_matrix"} <= set(metrics[split])
    assert metrics["steps"] == 3 and json.loads((out / "training_config.json").read_text())["model"] == preset
    assert not unmoved_parameters(out)  # the 3 steps moved every weight from the run's seeded start

    # timm alone rebuilds it (the architecture registered by importing pneumonia)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

    # the app's loading path gives the probabilities training recorded for each test image
    classifier = pneumonia.load_classifier(str(out))
    with (out / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    images = [pneumonia.open_image(data_dir / "test" / r["label"] / r["file"]) for r in rows]
    recorded = np.array([float(r["p_pneumonia"]) for r in rows])
    assert np.abs(classifier.predict_proba(images)[:, 1] - recorded).max() <= 2e-6  # measured at most 5.1e-7 (6 decimals in the CSV)

    # the ONNX export at the end of training: fp32 gives the same probabilities; int8 is kept only within the bar
    onnx = metrics["onnx"]
    assert onnx["fp32"]["n"] == 16 and onnx["fp32"]["decision_agreement"] == 1.0
    fp32 = pneumonia.load_classifier(str(out), backend="onnx-fp32")
    fp32_p = fp32.predict_proba(images)[:, 1]
    assert fp32.backend == "onnx-fp32" and np.abs(fp32_p - recorded).max() <= 2e-6  # measured at most 5.4e-7
    int8 = onnx["int8"]
    within_bar = int8["decision_agreement"] >= 0.99 and int8["mean_abs_dp"] <= 0.01 and int8["outcome_agreement"] >= 0.98
    assert (out / "model.int8.onnx").is_file() == int8["kept"] == within_bar
    fp16_kept = onnx.get("fp16", {}).get("kept", False)  # tried only when neither int8 file is kept
    assert (out / "model.fp16.onnx").is_file() == fp16_kept and not (fp16_kept and within_bar)
    served = "onnx-int8" if within_bar else "onnx-fp16" if fp16_kept else "onnx-fp32"
    assert pneumonia.load_classifier(str(out), backend="auto").backend == served

    # the out-of-distribution gate, fitted at the end of training, travels with the folder
    assert (out / "ood.safetensors").is_file() and config["ood"]["layers"] == pneumonia.torch_model.gate_layers(model)[0]
    assert metrics["ood"]["splits"]["validation"]["pass_rate"] >= 0.99 and len(metrics["ood"]["probes"]) >= 15
    assert classifier.gate is not None and classifier.gate.heads is not None and onnx["fp32"]["outcome_agreement"] == 1.0
    _, onnx_features = fp32.forward(fp32.pixels(images))
    pytorch_features = classifier.forward(classifier.pixels(images))[1]
    assert torch.linalg.norm(onnx_features - pytorch_features) <= 1e-5 * torch.linalg.norm(pytorch_features)  # measured <= 1.0e-6
    assert "## What it judges: the out-of-distribution gate" in (out / "README.md").read_text()


def test_fit_gate_gives_an_old_folder_its_gate_and_its_onnx_the_gate_features(data_dir, film, small_scope, tmp_path):
    out = tmp_path / "old"
    _ok(run_cli("--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(out), "--image-size", "96",
                "--no-ood-gate", *TINY))
    assert not (out / "ood.safetensors").exists() and "ood" not in json.loads((out / "config.json").read_text())
    assert pneumonia.load_classifier(str(out)).gate is None  # gate off: loads as before
    xray = pneumonia.open_image(film("NORMAL"))
    before = pneumonia.load_classifier(str(out), backend="pytorch").probabilities(xray)

    result = _ok(run_cli(str(out), "--num-workers", "0", "--scope", str(small_scope),
                         launcher=(sys.executable, "-m", "train.gate")))
    assert "validation films pass" in result.stdout and "non-X-ray probes" in result.stdout
    config, metrics = (json.loads((out / name).read_text()) for name in ("config.json", "metrics.json"))
    assert config["ood"]["cutoff"] > 0 and metrics["ood"]["splits"]["test"]["films"] == 16
    assert "outcome_agreement" in metrics["onnx"]["fp32"]  # the ONNX files were exported again, with the features
    classifier = pneumonia.load_classifier(str(out), backend="onnx-fp32")
    assert classifier.gate is not None and classifier.onnx_logits.has_features
    assert classifier.probabilities(xray) == pytest.approx(before, abs=5e-6)  # unchanged: fp32 ONNX within 1e-6 of PyTorch
    assert "## What it judges: the out-of-distribution gate" in (out / "README.md").read_text()

    result = run_cli(str(tmp_path / "nothing"), launcher=(sys.executable, "-m", "train.gate"))
    assert result.returncode == 2 and "is not a model folder written by `python -m train`" in result.stderr
    (out / "ood.safetensors").unlink()
    with pytest.raises(pneumonia.UsageError, match="ood.safetensors is missing"):
        pneumonia.load_classifier(str(out))


@pytest.mark.parametrize("args, message", [
    (("--dataset", "{missing}"), "not found"),
    (("--dataset", "{wrong_layout}"), "test/NORMAL/ is missing"),
    (("--dataset", "{empty_class}"), "train/NORMAL/ holds no images"),
    (("--dataset", "{data}", "--output-dir", "{taken}"), "holds another run"),
    (("--dataset", "{data}", "--resume"), "nothing to resume"),
    (("--dataset", "{data}", "--model", "vgg16", "--pretrained"), "--pretrained-file"),
    (("--dataset", "{data}", "--model", "unet"), "invalid choice"),
])
def test_bad_input_gets_one_line_error(args, message, data_dir, tmp_path, capsys):
    from train.run import main

    (tmp_path / "wrong_layout" / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "wrong_layout" / "train" / "PNEUMONIA").mkdir(parents=True)
    empty = link_subset(data_dir, tmp_path / "empty_class", per_class=2)
    for image in (empty / "train" / "NORMAL").iterdir():
        image.unlink()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    places = {"missing": tmp_path / "nope", "wrong_layout": tmp_path / "wrong_layout", "empty_class": empty,
              "taken": tmp_path / "taken", "data": data_dir}
    args = [a.format(**places) for a in args]
    if "--output-dir" not in args:
        args += ["--output-dir", str(tmp_path / "out")]
    result = call_cli(main, capsys, *args, *TINY)  # in this process: `python -m train` is main(sys.argv[1:])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert (tmp_path / "taken" / "config.json").read_text() == "{}"  # nothing of the other run lost


def test_resume_after_a_stop_matches_an_uninterrupted_run(data_dir, tmp_path, capsys):
    from train.run import main

    args = ("--model", "cnn", "--dataset", str(data_dir), *TINY, "--epochs", "3", "--image-size", "96", *BARE)
    _ok(run_cli(*args, "--output-dir", str(tmp_path / "straight")))
    stopped = _ok(run_cli(*args, "--output-dir", str(tmp_path / "resumed"), "--stop-after-epochs", "1"))
    assert "continue with --resume" in stopped.stdout
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    changed = call_cli(main, capsys, *args, "--output-dir", str(tmp_path / "resumed"), "--resume", "--lr", "0.5")
    assert changed.returncode == 2 and "settings that differ" in changed.stderr
    _ok(run_cli(*args, "--output-dir", str(tmp_path / "resumed"), "--resume"))

    straight, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed"))
    assert resumed["steps"] == straight["steps"] == 9
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_roc_auc"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in straight["history"]], key
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not unmoved_parameters(tmp_path / "resumed")  # equal, and trained: not both left at the seeded start


def test_two_ddp_processes_finish_and_agree(data_dir, tmp_path):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train")
    out = tmp_path / "ddp"
    result = _ok(run_cli("--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(out), *TINY,
                         "--image-size", "96", "--max-eval-samples", "15", *BARE, launcher=launcher))
    assert "2 process(es)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    # gather_for_metrics drops the padding DDP adds to uneven splits: every image counted once
    assert metrics["validation"]["n"] == metrics["test"]["n"] == 15
    assert metrics["steps"] == 2  # 24 images / (2 processes x 8) per step, rounded up
    assert not unmoved_parameters(out)


def test_unreadable_images_are_skipped_and_counted(data_dir, tmp_path):
    data = link_subset(data_dir, tmp_path / "data", per_class=12)
    (data / "train" / "NORMAL" / "garbage.jpeg").write_bytes(b"not an image at all")
    real = (data_dir / "train" / "PNEUMONIA").iterdir().__next__().read_bytes()
    (data / "train" / "PNEUMONIA" / "truncated.jpeg").write_bytes(real[: len(real) // 3])
    out = tmp_path / "out"
    result = _ok(run_cli("--model", "cnn", "--dataset", str(data), "--output-dir", str(out), "--epochs", "2",
                         "--batch-size", "8", "--num-workers", "0", "--image-size", "96", "--val-fraction", "0.25",
                         *BARE))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "skipping unreadable image" in result.stderr
    logged = [line for line in result.stderr.splitlines() if "garbage.jpeg" in line]
    assert len(logged) == 1, logged  # read in both epochs (or validations), logged once
    # the 2 bad files sit in train or in the patients held out for validation: counted once each
    skipped_in_train = metrics["history"][0]["skipped_unreadable"]
    validation_rows = 26 - metrics["train_images"]
    skipped_in_validation = validation_rows - metrics["validation"]["n"]
    assert skipped_in_train + skipped_in_validation == 2
    assert metrics["test"]["n"] == 24


def test_frozen_warmup_leaves_the_pretrained_backbone_untouched(data_dir, tmp_path):
    source = pneumonia.create_model("resnet50")
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    out = tmp_path / "out"
    _ok(run_cli("--model", "resnet50", "--pretrained-file", str(tmp_path / "imagenet.pth"), "--freeze-epochs", "1",
                "--dataset", str(data_dir), "--output-dir", str(out), *TINY, "--image-size", "64", *BARE))
    trained = load_file(out / "model.safetensors")
    start = run_initial_weights(out).state_dict()  # the run's own seeded start: ImageNet backbone, new head
    conv = "conv1.weight"
    assert torch.equal(start[conv], source.state_dict()[conv]) and torch.equal(trained[conv], start[conv])
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])  # while the head learned
    assert json.loads((out / "config.json").read_text())["base_model"] == "timm/resnet50.a1_in1k"


def test_float16_weights_halve_the_file_and_reload_to_the_recorded_probabilities(data_dir, tmp_path):
    out = tmp_path / "half"
    _ok(run_cli("--model", "resnet18_half", "--dataset", str(data_dir), "--output-dir", str(out), *TINY,
                "--image-size", "64", "--weights-dtype", "float16", *BARE))
    weights = load_file(out / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    classifier = pneumonia.load_classifier(str(out))  # timm loads them into float32 parameters
    assert next(classifier.model.parameters()).dtype == torch.float32
    with (out / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    images = [pneumonia.open_image(data_dir / "test" / r["label"] / r["file"]) for r in rows]
    recorded = np.array([float(r["p_pneumonia"]) for r in rows])
    assert np.abs(classifier.predict_proba(images)[:, 1] - recorded).max() <= 2e-6  # metrics are of the shipped weights


def test_int8_that_misses_the_parity_bar_is_not_shipped(data_dir, tmp_path, monkeypatch):
    from train.export import onnx as export_onnx
    from train.export.card import write_card
    from train.data import load_splits
    from train.post_training import complete_folder

    out = tmp_path / "cnn"
    _ok(run_cli("--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(out), *TINY, "--image-size", "64",
                "--no-export-onnx", "--no-ood-gate"))
    assert not list(out.glob("*.onnx")) and pneumonia.load_classifier(str(out), backend="auto").backend == "pytorch"
    with pytest.raises(pneumonia.UsageError, match="no model.int8.onnx: export it with"):
        pneumonia.load_classifier(str(out), backend="onnx-int8")

    splits = load_splits(str(data_dir), 0.15, 42)
    splits = {"train": splits["train"].select(range(16)), "validation": splits["validation"].select(range(8)),
              "test": splits["test"].select(range(8))}
    monkeypatch.setitem(export_onnx.PARITY_BAR, "mean_abs_dp", -1.0)  # a bar no model meets
    complete_folder(out, splits, json.loads((out / "training_config.json").read_text()), gate=False, onnx=True,
                    num_workers=0)
    found = json.loads((out / "metrics.json").read_text())["onnx"]
    assert not found["int8"]["kept"] and not (out / "model.int8.onnx").exists() and (out / "model.onnx").is_file()
    assert found["int8"]["scheme"] == "weights-only" and not found["int8_static"]["kept"]  # both were tried
    assert not found["fp16"]["kept"] and not (out / "model.fp16.onnx").exists()  # and fp16 weights last
    assert pneumonia.load_classifier(str(out), backend="auto").backend == "onnx-fp32"  # what the app then serves
    write_card(out)
    assert "missed the parity bar" in (out / "README.md").read_text()


@pytest.mark.parametrize("broken, served", [(("quantize_int8",), "onnx-int8"),
                                             (("quantize_int8", "quantize_int8_weights"), "onnx-fp16")])
def test_the_next_compact_file_is_shipped_when_one_misses_the_bar(data_dir, tmp_path, monkeypatch, broken, served):
    """A quantizer whose file gets the answers wrong (its classifier negated) is dropped, and the next
    compact file is kept: int8 weights after static int8, fp16 weights after both. The kept file
    meets the bar, the app serves it, the private mode serves it, the card says what it is."""
    import onnx
    from onnx import numpy_helper

    from serving import private_mode
    from train import post_training
    from train.data import load_splits
    from train.export.card import write_card

    def negated_classifier(fp32_file, out, *args, **options):
        model = onnx.load(str(fp32_file))
        classifier = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
        for init in model.graph.initializer:
            if init.name == classifier.input[1]:
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, str(out))

    out = tmp_path / "cnn"
    _ok(run_cli("--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(out), *TINY, "--image-size", "64",
                "--no-export-onnx", "--no-ood-gate"))
    splits = load_splits(str(data_dir), 0.15, 42)
    splits = {"train": splits["train"].select(range(16)), "validation": splits["validation"].select(range(8)),
              "test": splits["test"].select(range(32))}
    for name in broken:
        monkeypatch.setattr(post_training, name, negated_classifier)
    post_training.complete_folder(out, splits, json.loads((out / "training_config.json").read_text()), gate=False,
                                  onnx=True, num_workers=0)
    found = json.loads((out / "metrics.json").read_text())["onnx"]
    assert not found["int8_static"]["kept"] and found["int8"]["scheme"] == "weights-only"
    kept = found["int8"] if served == "onnx-int8" else found["fp16"]
    assert kept["kept"] and kept["mean_abs_dp"] < 0.01 and found["int8"]["kept"] == (served == "onnx-int8")
    assert (out / "model.fp16.onnx").is_file() == (served == "onnx-fp16") != (out / "model.int8.onnx").is_file()
    graph = onnx.load(str(out / ("model.int8.onnx" if served == "onnx-int8" else "model.fp16.onnx"))).graph
    stored = onnx.TensorProto.INT8 if served == "onnx-int8" else onnx.TensorProto.FLOAT16
    assert sum(init.data_type == stored for init in graph.initializer) >= 4  # 3 convolutions, the head
    classifier = pneumonia.load_classifier(str(out), backend="auto")
    assert classifier.backend == served and private_mode.available(classifier)
    write_card(out)
    assert ("int8 weights" if served == "onnx-int8" else "fp16 weights") in (out / "README.md").read_text()
