"""Pure unit tests: splitting, preprocessing, metrics, calibration, config."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pneumonia
from train.augment import Augment
from pneumonia.image_files import UnreadableImage
from train.config import TrainConfig, build_parser, parse_config
from train.data import patient_id, split_by_patient
from train.metrics import binary_metrics, choose_threshold, expected_calibration_error, fit_temperature


@pytest.mark.parametrize("name, patient", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("person1_virus_12_0001.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0117-0001-0002.jpeg", "IM-0117"),
    ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
    ("scan_from_elsewhere.png", "scan_from_elsewhere"),
])
def test_patient_id_from_file_name(name, patient):
    assert patient_id(name) == patient


def _train_names(data_dir: Path) -> tuple[list[str], list[int]]:
    names, labels = [], []
    for label, folder in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted(p.name for p in (data_dir / "train" / folder).iterdir())
        names += files
        labels += [label] * len(files)
    return names, labels


def test_patient_split_has_no_overlap_and_keeps_class_ratio(data_dir):
    names, labels = _train_names(data_dir)
    patients = [patient_id(n) for n in names]
    # The data README counts 1278 NORMAL patients because it reads IM-0429-0001-0002 as patient
    # IM-0429-0001; we group every image of IM-0429 together, which can only merge, never split.
    assert len(set(patients)) == 1211 + 1635
    train, val = split_by_patient(patients, labels, val_fraction=0.15, seed=0)
    assert sorted(train + val) == list(range(len(names)))
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    share = lambda rows: np.mean([labels[i] for i in rows])  # noqa: E731
    assert abs(share(val) - share(train)) < 0.03
    assert 0.12 < len(val) / len(names) < 0.18
    assert split_by_patient(patients, labels, 0.15, seed=0) == (train, val)
    assert split_by_patient(patients, labels, 0.15, seed=1)[1] != val


def _gradient(size=(300, 200)) -> np.ndarray:
    """An 8-bit ramp that spans 0..255 in both directions."""
    x = np.linspace(0, 1, size[0])[None, :]
    y = np.linspace(0, 1, size[1])[:, None]
    return np.round(255 * (x * y)).astype(np.uint8)


@pytest.mark.parametrize("preset", list(pneumonia.PRESETS))
def test_every_mode_becomes_the_same_input(preset):
    model = pneumonia.create_model(preset)
    config = pneumonia.data_config_of(model)
    transform = pneumonia.build_transform(config)
    size = pneumonia.PRESETS[preset].image_size
    gray = _gradient()
    variants = {
        "L": Image.fromarray(gray, "L"),
        "RGB": Image.fromarray(np.stack([gray] * 3, -1), "RGB"),
        "RGBA opaque": Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "RGBA"),
        "LA opaque": Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA"),
        "16-bit": Image.fromarray(gray.astype(np.uint16) * 257, "I;16"),
        "32-bit": Image.fromarray(gray.astype(np.int32) * 16, "I"),
        "float": Image.fromarray(gray.astype(np.float32) / 255, "F"),
        "palette": Image.fromarray(gray, "L").convert("P"),
    }
    reference = transform(variants["L"])
    assert reference.shape == (3, size, size) and reference.dtype == torch.float32
    mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
    assert torch.all(reference >= (0 - mean) / std - 1e-5) and torch.all(reference <= (1 - mean) / std + 1e-5)
    assert reference.min() < ((0.05 - mean) / std).min() and reference.max() > ((0.95 - mean) / std).max()
    for name, image in variants.items():
        assert torch.allclose(transform(image), reference, atol=1e-6), name


def test_transparent_pixels_become_black_background():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[16:48, 16:48, 3] = 255  # opaque square on a transparent field
    out = np.asarray(pneumonia.to_model_mode(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (64, 64, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[32, 32].tolist() == [200, 200, 200]


def test_training_transform_without_augmentation_is_the_eval_transform():
    config = pneumonia.data_config_of(pneumonia.create_model("cnn"))
    image = Image.fromarray(_gradient(), "L")
    no_aug = pneumonia.build_transform(config, augment=Augment(shear=0.0, zoom=0.0, hflip=0.0))
    assert torch.allclose(no_aug(image), pneumonia.build_transform(config)(image), atol=1e-6)
    torch.manual_seed(0)
    augmented = pneumonia.build_transform(config, augment=Augment())(image)
    assert augmented.shape == (3, 224, 224) and not torch.allclose(augmented, no_aug(image))


def test_a_lab_tiff_is_read_as_grey(tmp_path):
    gray = _gradient()
    Image.fromarray(np.stack([gray] * 3, -1), "RGB").convert("LAB").save(tmp_path / "film.tif")
    image = pneumonia.open_image(tmp_path / "film.tif")  # PIL converts LAB to RGB but not to grey
    grey = np.asarray(pneumonia.to_model_mode(image).convert("L"), dtype=float)
    assert image.mode == "RGB" and np.abs(grey - gray).mean() < 3


def test_unreadable_bytes_give_a_clear_error():
    with pytest.raises(UnreadableImage, match="not a readable image"):
        pneumonia.open_image(b"this is not an image")
    buffer = io.BytesIO()
    Image.fromarray(_gradient(), "L").save(buffer, "JPEG")
    with pytest.raises(UnreadableImage):
        pneumonia.open_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_metrics_equal_hand_counts():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0, 1])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.6, 0.2, 0.1, 0.95, 0.3, 0.55])
    found = binary_metrics(labels, p, threshold=0.5)
    # predicted positive: 0.9 0.8 0.7 0.6 0.95 0.55 -> tp 5 (0.9 .8 .7 .95 .55), fp 1 (0.6); fn 1 (0.4); tn 3
    assert found["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 5}
    assert found["accuracy"] == pytest.approx(8 / 10)
    assert found["precision"] == pytest.approx(5 / 6)
    assert found["recall"] == pytest.approx(5 / 6)
    assert found["specificity"] == pytest.approx(3 / 4)
    assert found["f1"] == pytest.approx(5 / 6)
    # AUC = share of the 6 x 4 (positive, negative) pairs ranked right: 0.4 and 0.55 lose to 0.6
    assert found["roc_auc"] == pytest.approx(22 / 24)
    assert found["n"] == 10


def test_ece_of_a_hand_made_example():
    labels = np.array([1, 1, 1, 0])
    p = np.array([0.9, 0.9, 0.9, 0.9])  # confidence 0.9, accuracy 0.75
    assert expected_calibration_error(labels, p) == pytest.approx(0.15)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0)


def test_temperature_recovers_an_overconfident_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    labels = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros_like(z), 3 * z], axis=1)  # 3x too confident
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.05)


def test_threshold_rules():
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    # p >= 0.6 gives tp 3, fp 0, fn 1 -> F1 6/7; p >= 0.35 gives tp 4, fp 1 -> F1 8/9 (best)
    assert choose_threshold(labels, p, "f1") == pytest.approx(0.35)
    assert choose_threshold(labels, p, "sensitivity95") == pytest.approx(0.35)  # every positive caught
    labels = np.array([0] * 10 + [1] * 20)
    p = np.concatenate([np.linspace(0, 0.5, 10), np.linspace(0.3, 1, 20)])
    t = choose_threshold(labels, p, "sensitivity95")
    assert (p[labels == 1] >= t).mean() >= 0.95


def test_cli_help_and_unknown_keys(capsys):
    with pytest.raises(SystemExit) as help_exit:
        build_parser().parse_args(["--help"])
    assert help_exit.value.code == 0 and "--freeze-epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        parse_config(["--dataset", "d", "--output-dir", "o", "--epoch", "3x"])
    assert bad.value.code == 2


def test_config_fills_preset_defaults():
    config = parse_config(["--model", "inception_v3", "--dataset", "d", "--output-dir", "o", "--lr", "0.01"])
    assert (config.image_size, config.batch_size, config.lr) == (299, 16, 0.01)
    assert isinstance(config, TrainConfig) and config.shear == 0.2 and math.isclose(config.zoom, 0.2)


def test_pretrained_file_loads_into_the_backbone(tmp_path):
    source = pneumonia.create_model("resnet50")  # stands in for ImageNet weights
    weights = {k: v for k, v in source.state_dict().items()}
    weights["fc.weight"], weights["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    torch.save(weights, tmp_path / "imagenet.pth")
    loaded = pneumonia.create_model("resnet50", pretrained_file=str(tmp_path / "imagenet.pth"))
    fresh = pneumonia.create_model("resnet50")
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert not torch.equal(fresh.conv1.weight, source.conv1.weight)
    assert loaded.get_classifier().out_features == 2


def test_cnn_width_is_saved_with_the_weights_and_rebuilt_on_load(tmp_path):
    import timm

    torch.manual_seed(0)
    model = pneumonia.create_model("cnn", cnn_width=8, image_size=64).eval()
    assert [model.features[4 * i].out_channels for i in range(3)] == [8, 16, 32]
    timm.models.save_for_hf(model, tmp_path, model_config={"label_names": list(pneumonia.LABEL_NAMES)},
                            safe_serialization=True)
    loaded = pneumonia.load_classifier(str(tmp_path))
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(pixels), model(pixels), atol=1e-6)
    for preset, width in [("vgg16", 8), ("cnn", 0)]:
        with pytest.raises(pneumonia.UsageError, match="--cnn-width"):
            pneumonia.create_model(preset, cnn_width=width)


def test_pretrained_offline_names_the_alternatives(monkeypatch):
    with pytest.raises(pneumonia.UsageError, match="--pretrained-file"):
        pneumonia.create_model("vgg16", pretrained=True)
    with pytest.raises(pneumonia.UsageError, match="from scratch"):
        pneumonia.create_model("cnn", pretrained=True)


def test_hub_dataset_offline_gives_a_clear_error():
    from train.data import load_splits

    with pytest.raises(pneumonia.UsageError, match="could not load dataset someone/chest-xrays"):
        load_splits("someone/chest-xrays", val_fraction=0.15, seed=0)
    with pytest.raises(pneumonia.UsageError, match="not found"):
        load_splits("/no/such/folder", val_fraction=0.15, seed=0)


def test_dicom_monochrome1_and_2_give_the_model_the_same_input(film, write_dicom, tmp_path):
    xray = np.asarray(Image.open(film("PNEUMONIA")).convert("L"), dtype=np.uint16)
    stored = xray * 16  # 12-bit
    mono2 = write_dicom(tmp_path / "mono2.dcm", stored, "MONOCHROME2", RescaleSlope=1, RescaleIntercept=0)
    mono1 = write_dicom(tmp_path / "mono1", 4095 - stored, "MONOCHROME1")  # no suffix: found by its DICM magic
    transform = pneumonia.build_transform(pneumonia.data_config_of(pneumonia.create_model("cnn")))
    from_mono2 = transform(pneumonia.open_image(mono2))
    assert torch.allclose(transform(pneumonia.open_image(mono1)), from_mono2, atol=1e-5)
    assert torch.allclose(transform(pneumonia.open_image(mono1.read_bytes())), from_mono2, atol=1e-5)
    stretched = (xray - xray.min()) * (255.0 / (xray.max() - xray.min()))  # what to_model_mode does to 12-bit
    reference = transform(Image.fromarray(np.round(stretched).astype(np.uint8), "L"))
    assert torch.allclose(from_mono2, reference, atol=1e-5)


def test_dicom_without_pixels_or_broken_gives_a_clear_error(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(UnreadableImage, match="without pixel data"):
        pneumonia.open_image(tmp_path / "report.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(UnreadableImage, match="broken.dcm"):
        pneumonia.open_image(tmp_path / "broken.dcm")


@pytest.mark.parametrize("preset", list(pneumonia.PRESETS))
def test_grad_cam_for_every_preset(preset):
    from pneumonia.gradcam import grad_cam, overlay

    torch.manual_seed(0)
    model = pneumonia.create_model(preset).train()
    if pneumonia.PRESETS[preset].zero_head:  # a head at zero has no gradient to map yet; a trained one has
        torch.nn.init.normal_(model.get_classifier().weight, std=0.05)
    transform = pneumonia.build_transform(pneumonia.data_config_of(model))
    image = Image.fromarray(_gradient((640, 480)), "L")
    other = Image.fromarray(255 - _gradient((300, 500)), "L")
    batch = torch.stack([transform(image), transform(other)])
    logits, cams = grad_cam(model, batch)
    size = pneumonia.PRESETS[preset].image_size
    assert cams.shape == (2, size, size) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max(axis=(1, 2)) == pytest.approx([1.0, 1.0])
    assert model.training and all(p.grad is None for p in model.parameters())  # left as it was found
    with torch.no_grad():
        assert torch.allclose(logits, model.eval()(batch), atol=1e-5)  # the same single forward pass
    # In a batch each image gets the map it gets alone.
    alone_logits, alone_cam = grad_cam(model, batch[1:])
    assert torch.allclose(alone_logits, logits[1:], atol=1e-5) and np.allclose(alone_cam[0], cams[1], atol=1e-4)
    shown = overlay(image, cams[0])
    assert shown.mode == "RGB" and shown.size == (512, 384)


def test_grad_cam_under_bf16_autocast():
    """Training's end-of-run Grad-CAM runs under accelerate's bf16 autocast on a GPU (it once
    crashed there: numpy has no bfloat16); CPU autocast makes the same bf16 maps."""
    from pneumonia.gradcam import central_share, grad_cam

    torch.manual_seed(0)
    model = pneumonia.create_model("resnet18_half", image_size=64).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cams = grad_cam(model, pixels)
    assert logits.dtype == torch.float32 and cams.dtype == np.float32 and cams.shape == (2, 64, 64)
    assert ((central_share(cams) >= 0) & (central_share(cams) <= 1)).all()


def test_layercam_is_the_grad_cam_librarys_layercam():
    """The heat map is LayerCAM over three stages, written here (the app needs no OpenCV); the
    grad-cam library (pytorch_grad_cam, a dev dependency) is its reference."""
    pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from pneumonia.gradcam import STAGES, grad_cam, stage_layers

    torch.manual_seed(0)
    model = pneumonia.create_model("resnet18_half", image_size=96).eval()
    pixels = torch.randn(3, 3, 96, 96)
    _, ours = grad_cam(model, pixels, "PNEUMONIA")
    with pytorch_grad_cam.LayerCAM(model, stage_layers(model, STAGES)) as cam:
        theirs = cam(pixels, targets=[ClassifierOutputTarget(1)] * 3)
    assert len(stage_layers(model, STAGES)) == 3
    assert np.abs(ours - theirs).max() < 1e-5  # measured 2.4e-7 (OpenCV's bilinear resize against torch's)
    _, gradcam = grad_cam(model, pixels, "PNEUMONIA", method="gradcam", stages=(-1,))
    with pytorch_grad_cam.GradCAM(model, stage_layers(model, (-1,))) as cam:
        assert np.abs(gradcam - cam(pixels, targets=[ClassifierOutputTarget(1)] * 3)).max() < 1e-5  # measured 3.6e-7
