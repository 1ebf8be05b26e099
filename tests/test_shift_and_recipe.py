"""The shifted validation, the saved preprocessing, the shift augmentation and the threshold rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import pneumonia
from train.augment import CROP_RATIO, CROP_SCALE, TRAIN_RANGES, Augment, EdgeErasing, apply_gamma
from pneumonia.pixels import crop_borders, standardise_intensity
from pneumonia.training_transform import XrayPreprocessing
from train.metrics import choose_threshold
from train.shift import CROP_SHARE, SHIFT_RANGES, shifted_film


def _film(film, label="NORMAL", index=0) -> tuple[Image.Image, str]:
    """A training film, opened as an upload is, and its name."""
    path = film(label, index, split="train")
    return pneumonia.open_image(path), path.name


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(pneumonia.to_model_mode(image))


def test_shifted_validation_is_the_same_films_for_the_same_seed(film):
    for index in range(6):
        xray, name = _film(film, index=index)
        first, again = shifted_film(xray, name, seed=7), shifted_film(xray, name, seed=7)
        assert np.array_equal(_pixels(first), _pixels(again)), name
    films = [_film(film, index=i) for i in range(6)]
    changed = [not np.array_equal(_pixels(shifted_film(f, n, 7)), _pixels(shifted_film(f, n, 8))) for f, n in films]
    assert all(changed)  # another seed, another draw
    assert not np.array_equal(_pixels(shifted_film(*films[0], 7)), _pixels(films[0][0]))  # never the clean film


def test_shift_strengths_lie_outside_the_training_augmentation():
    for kind, intervals in SHIFT_RANGES.items():
        low, high = TRAIN_RANGES[kind]
        for start, stop in intervals:
            assert stop <= low or start >= high, f"{kind}: shifted {start}..{stop} overlaps training {low}..{high}"
    # a crop of one side (aspect) or of two sides (area, or aspect when opposite) leaves the training crops' box
    least = CROP_SHARE[0]
    assert 1 - least < CROP_RATIO[0] and 1 / (1 - least) > CROP_RATIO[1]
    assert (1 - least) ** 2 < CROP_SCALE[0] and 1 - 2 * least < CROP_RATIO[0]


def test_preprocessing_is_saved_in_the_config_and_old_folders_get_none():
    chosen = XrayPreprocessing(intensity="clahe", crop_borders=True)
    assert XrayPreprocessing.from_config({"architecture": "resnet18", **chosen.to_config()}) == chosen
    assert XrayPreprocessing.from_config({"architecture": "resnet18"}) == XrayPreprocessing()
    with pytest.raises(ValueError, match="choose one of"):
        XrayPreprocessing(intensity="gamma")


# Global equalisation is blind to any monotone change of grey levels; CLAHE (clipped, local)
# and percentile windowing (linear) undo only part of a gamma change.
@pytest.mark.parametrize("method, remaining", [("equalize", 0.05), ("clahe", 0.75), ("percentile", 0.75)])
def test_intensity_standardisation_undoes_a_darker_flatter_film(method, remaining, film):
    xray = pneumonia.to_model_mode(_film(film, index=3)[0])
    darker = apply_gamma(xray, 1.5).point(lambda v: round(0.8 * v + 10))  # another scanner: darker, flatter
    raw_gap = np.abs(_pixels(darker).astype(float) - _pixels(xray)).mean()
    gap = np.abs(_pixels(standardise_intensity(darker, method)).astype(float) - _pixels(standardise_intensity(xray, method))).mean()
    assert gap < remaining * raw_gap, (method, gap, raw_gap)
    assert standardise_intensity(xray, method).mode == xray.mode == "RGB"


def test_border_crop_removes_margins_and_leaves_a_film_without_them(film):
    xray = pneumonia.to_model_mode(_film(film, index=5)[0]).convert("L")
    padded = Image.new("L", (xray.width + 40, xray.height + 26), 0)
    padded.paste(xray, (30, 6))  # black margins: 30 px left, 10 right, 6 top, 20 bottom
    cropped = crop_borders(padded)
    assert abs(cropped.width - xray.width) <= 4 and abs(cropped.height - xray.height) <= 4
    no_margin = crop_borders(xray)
    assert xray.width - no_margin.width <= 8 and xray.height - no_margin.height <= 8
    blank = Image.new("L", (100, 80), 0)  # all margin: never cropped past 20% a side
    assert crop_borders(blank).size == (60, 48)


@pytest.mark.parametrize("index", [0, 5, 100])  # 100 has margins of its own
def test_a_folder_trained_with_border_crop_gets_its_margins_cropped(film, index):
    config = pneumonia.data_config_of(pneumonia.create_model("cnn", image_size=96))
    xray = pneumonia.to_model_mode(pneumonia.open_image(film("NORMAL", index))).convert("L")
    framed = Image.new("L", (xray.width + 40, xray.height + 26), 0)
    framed.paste(xray, (30, 6))  # as a scanner's export frames a film
    cropping = pneumonia.build_transform(config, XrayPreprocessing(crop_borders=True))
    plain = pneumonia.build_transform(config)
    assert torch.allclose(cropping(framed), cropping(xray), atol=1e-6)  # measured: equal
    assert (plain(framed) - plain(xray)).abs().mean() > 0.2  # what the frame does uncropped: measured 0.29 to 0.43


def test_shift_augmentation_changes_films_and_erases_only_an_edge_strip(film):
    config = pneumonia.data_config_of(pneumonia.create_model("cnn", image_size=96))
    xray = _film(film)[0]
    plain = pneumonia.build_transform(config)(xray)
    torch.manual_seed(0)
    outputs = [pneumonia.build_transform(config, augment=Augment(family="shift"))(xray) for _ in range(4)]
    assert all(o.shape == plain.shape for o in outputs) and not any(torch.allclose(o, plain) for o in outputs)
    pixels = torch.ones(3, 96, 96)
    erased = [EdgeErasing(p=1.0)(pixels) for _ in range(20)]
    for out in erased:
        zero = (out == 0).all(dim=0)
        rows, cols = torch.nonzero(zero, as_tuple=True)
        assert zero.any() and (rows.min() == 0 or rows.max() == 95 or cols.min() == 0 or cols.max() == 95)
        assert zero.float().mean() <= 0.12
    assert torch.equal(pixels, torch.ones(3, 96, 96))  # the input is left alone


def test_balanced_threshold_ignores_how_common_pneumonia_is():
    rng = np.random.default_rng(0)
    normal, pneumonia_ = rng.normal(0.4, 0.15, 200), rng.normal(0.6, 0.15, 200)  # overlapping
    few = np.concatenate([normal, pneumonia_[:50]]), np.r_[np.zeros(200), np.ones(50)]
    many = np.concatenate([normal[:50], pneumonia_]), np.r_[np.zeros(50), np.ones(200)]
    balanced = [choose_threshold(labels, scores, "balanced") for scores, labels in (few, many)]
    f1 = [choose_threshold(labels, scores, "f1") for scores, labels in (few, many)]
    assert all(0.4 < t < 0.6 for t in balanced) and abs(balanced[0] - balanced[1]) < 0.1  # near the midpoint either way
    assert f1[1] < f1[0] - 0.1  # F1 slides its threshold down when positives are common
