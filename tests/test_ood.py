"""The out-of-distribution gate: its pieces, and the bundled model's gate on real films, on non-X-rays
and on the real images it must refuse or caution on (../shared/data/scope)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.covariance import LedoitWolf

import pneumonia
from pneumonia import ood, torch_model
from tests.conftest import BUNDLED_MODEL as BUNDLED
from tests.conftest import SERVED_BACKEND, log_odds


def _grey_film(size=(256, 300), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, size[0])[None, :]
    y = np.linspace(-1, 1, size[1])[:, None]
    body = 200 * np.exp(-(x ** 2 + y ** 2)) + rng.normal(0, 8, (size[1], size[0]))
    return Image.fromarray(np.clip(body, 0, 255).astype(np.uint8))


def test_cheap_checks_pass_grey_films_in_any_mode_and_refuse_colour_and_blank():
    film = _grey_film()
    for image in (film, film.convert("RGB"), Image.fromarray(np.asarray(film).astype(np.uint16) * 257, "I;16")):
        assert ood.colourfulness(image) < 1e-9 and ood.image_check(image) is None, image.mode
    tinted = Image.merge("RGB", [film.point(lambda v: min(255, v + 6)), film, film.point(lambda v: max(0, v - 6))])
    assert 0 < ood.colourfulness(tinted) < ood.MAX_COLOURFULNESS and ood.image_check(tinted) is None
    colour = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert ood.image_check(Image.fromarray(colour))[0] == "colour"
    assert ood.image_verdict(Image.fromarray(colour)).outcome == "refuse" and ood.image_verdict(film) is None
    for blank in (Image.new("L", (300, 300), 255), Image.new("RGB", (300, 300), (90, 90, 90)),
                  Image.fromarray(np.full((300, 300), 1000, np.uint16), "I;16")):
        assert ood.image_check(blank)[0] == "blank"


def _clusters(n, dims, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    mixing = np.random.default_rng(99).normal(size=(dims, dims)) / np.sqrt(dims)  # correlated features
    features = (rng.normal(size=(n, dims)) + 3 * labels[:, None]) @ mixing + shift
    return features, labels


def test_gate_distance_is_the_mahalanobis_distance_to_the_nearest_class():
    features, labels = _clusters(2000, 12)
    part = ood.FeatureGaussians.fit(features, labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
    precision = LedoitWolf().fit(features - means[labels]).precision_
    queries = _clusters(50, 12, shift=1.5, seed=1)[0]
    direct = np.min([np.einsum("ij,jk,ik->i", queries - m, precision, queries - m) for m in means], axis=0)
    assert np.allclose(part.distances(queries), direct, rtol=1e-6)


def test_a_precision_that_rounding_left_not_positive_definite_still_gives_the_distance(monkeypatch):
    """Where Cholesky refuses the precision (it did for VGG16's wide-ranged features), its
    eigen-decomposition whitens instead: the same distance."""
    features, labels = _clusters(2000, 12)
    queries = _clusters(50, 12, shift=1.5, seed=1)[0]
    expected = ood.FeatureGaussians.fit(features, labels).distances(queries)

    def refuse(matrix):
        raise np.linalg.LinAlgError("Matrix is not positive definite")

    monkeypatch.setattr(np.linalg, "cholesky", refuse)
    assert np.allclose(ood.FeatureGaussians.fit(features, labels).distances(queries), expected, rtol=1e-6)


def test_gate_passes_99_percent_of_validation_refuses_far_features_and_round_trips(tmp_path):
    widths = [8, 300]  # the second wider than MAX_DIMS: reduced by PCA
    train, labels = _clusters(3000, sum(widths))
    validation = _clusters(1000, sum(widths), seed=2)[0]
    gate = ood.OodGate.fit(["a", "b"], widths, (train, labels), validation, halves=False)
    assert gate.parts[1].whiten.shape == (300, ood.MAX_DIMS)
    assert 0.99 <= np.mean(gate.scores(validation) <= gate.cutoff) <= 0.992
    far = _clusters(100, sum(widths), shift=3.0, seed=3)[0]
    assert np.all(gate.scores(far) > gate.cutoff)
    assert {(v.outcome, v.kind) for v in gate.verdicts(far)} == {("refuse", "unlike")}
    gate.save(tmp_path)
    loaded = ood.OodGate.load(tmp_path / ood.GATE_FILE, json.loads(json.dumps(gate.to_config())))
    assert np.allclose(loaded.scores(validation), gate.scores(validation), rtol=1e-4)
    assert loaded.cutoff == gate.cutoff and loaded.heads is None


def _gate_with_heads() -> ood.OodGate:
    """A gate whose heads read one coordinate each: easy to steer by hand."""
    widths = [4, 4]  # means, then their halves gaps: 16 columns
    train, labels = _clusters(2000, 16)
    gate = ood.OodGate.fit(["a", "b"], widths, (train, labels), _clusters(500, 16, seed=2)[0])
    d = gate.head_inputs(train[:1]).shape[1]
    unit = lambda i: np.eye(d)[i]  # noqa: E731
    kind = np.stack([unit(2 + i) for i in range(len(ood.KINDS))])
    gate.heads = ood.LinearHeads((10 * unit(0), -5.0), (10 * unit(1), -5.0), (kind, np.zeros(len(ood.KINDS))))
    gate.cuts = {"refuse": 0.5, "adult": 0.5, "kind": 0.8}
    return gate


def test_the_heads_refuse_name_the_kind_caution_adults_and_answer_the_rest(tmp_path):
    gate = _gate_with_heads()
    near = _clusters(5, 16, seed=4)[0]
    inputs = gate.head_inputs(near)
    # (refuse input, adult input, lateral input) -> (outcome, kind): a sure kind is named, an unsure one is
    # not; what the refusal head refuses is never named an adult's film (the adult head knows only films)
    steer = {(0, 0, 0): ("answer", None), (0, 1, 0): ("caution", "adult"), (1, 0, 3): ("refuse", "lateral"),
             (1, 0, 0.1): ("refuse", "not_frontal_chest"), (1, 1, 0.1): ("refuse", "not_frontal_chest")}
    for (refuse, adult, lateral), expected in steer.items():
        forced = inputs.copy()
        forced[:, 0], forced[:, 1], forced[:, 2:2 + len(ood.KINDS)] = refuse, adult, 0
        forced[:, 5] = lateral
        gate.head_inputs = lambda features, forced=forced: forced  # noqa: B023
        verdicts = gate.verdicts(near)
        assert {(v.outcome, v.kind) for v in verdicts} == {expected}, expected
        assert set(verdicts[0].scores) == {"distance", "not_frontal_chest", "adult"}
    # far from every training film, though a frontal chest film to the refusal head: refused as unlike
    # them, or as an adult's film where it looks like one
    far = near + 1e3
    for adult, expected in ((0, ("refuse", "unlike")), (1, ("refuse", "adult"))):
        forced = gate.__class__.head_inputs(gate, far)
        forced[:, 0], forced[:, 1], forced[:, 2:2 + len(ood.KINDS)] = 0, adult, 0
        gate.head_inputs = lambda features, forced=forced: forced  # noqa: B023
        assert {(v.outcome, v.kind) for v in gate.verdicts(far)} == {expected}, expected
    del gate.head_inputs
    gate.save(tmp_path)
    loaded = ood.OodGate.load(tmp_path / ood.GATE_FILE, json.loads(json.dumps(gate.to_config())))
    assert loaded.cuts == gate.cuts and loaded.heads is not None
    assert [v.outcome for v in loaded.verdicts(near)] == [v.outcome for v in gate.verdicts(near)]
    probs, again = gate.heads.probabilities(inputs), loaded.heads.probabilities(inputs)
    assert all(np.allclose(probs[k], again[k], atol=1e-5) for k in probs)


def test_the_cut_off_rule_stays_within_its_budget_and_is_the_lowest_that_does():
    from train.gate.scope import _lowest_cut

    rng = np.random.default_rng(0)
    scores = {"validation": rng.random(1000), "shifted_validation": rng.random(400) ** 0.5}
    none = {name: np.zeros(len(v), bool) for name, v in scores.items()}
    budget = {"validation": 0.01, "shifted_validation": 0.05}
    cut = _lowest_cut(scores, budget, none)
    assert all(np.mean(scores[n] > cut) <= budget[n] for n in budget)
    lower = max(v for values in scores.values() for v in values if v < cut)
    assert any(np.mean(scores[n] > lower) > budget[n] for n in budget)


@pytest.mark.parametrize("preset", list(pneumonia.PRESETS))
def test_gate_features_are_the_means_and_halves_gaps_of_every_stage(preset):
    model = pneumonia.create_model(preset, image_size=160 if preset != "inception_v3" else 299).eval()
    layers, widths = torch_model.gate_layers(model)
    assert layers[-1] == model.feature_info[-1]["module"] and len(layers) >= 3
    maps = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: maps.__setitem__(n, o)) for n in layers]
    tapped = torch_model.WithGateFeatures(model, layers)
    pixels = torch.randn(2, 3, *pneumonia.data_config_of(model)["input_size"][1:])
    with torch.no_grad():
        logits, features = tapped(pixels)
        assert torch.allclose(logits, model(pixels)) and features.shape == (2, 2 * sum(widths))
    halves = [(m[..., :max(m.shape[-1] // 2, 1)].mean(dim=(2, 3)) - m[..., -max(m.shape[-1] // 2, 1):].mean(dim=(2, 3))).abs()
              for m in (maps[n] for n in layers)]
    expected = torch.cat([maps[n].mean(dim=(2, 3)) for n in layers] + halves, dim=1)
    assert torch.allclose(features, expected, atol=1e-6)
    for hook in hooks:
        hook.remove()
    tapped.remove()
    assert not any(module._forward_hooks for module in model.modules())


def test_bundled_gate_passes_the_example_films_and_refuses_what_is_not_an_xray(bundled, tmp_path):
    from skimage import data as samples

    from train.gate.probes import typed_page

    films = sorted(p for p in (BUNDLED.parents[1] / "examples").rglob("*.jpeg"))
    readings = bundled.read([pneumonia.open_image(p) for p in films])
    assert len(films) == 4 and not any(r.refused for r in readings), [r.reason for r in readings]
    rng = np.random.default_rng(5)
    others = {  # drawn or loaded here; saved and opened as an upload is
        "cat.png": Image.fromarray(samples.chelsea()),
        "page.png": Image.fromarray(samples.page()),
        "letter.png": typed_page(400),
        "noise.png": Image.fromarray(rng.integers(0, 256, (300, 300), dtype=np.uint8)),
        "white.png": Image.new("L", (300, 300), 255),
        "grey_photo.png": Image.fromarray(samples.camera()),
    }
    for name, image in others.items():
        image.save(tmp_path / name)
    readings = bundled.read([pneumonia.open_image(tmp_path / name) for name in others])
    assert all(r.refused for r in readings), {n: r.reason for n, r in zip(others, readings)}
    served = pneumonia.load_classifier(str(BUNDLED), backend=SERVED_BACKEND)
    assert served.backend == SERVED_BACKEND and served.onnx_logits.has_features
    assert [r.refused for r in served.read([pneumonia.open_image(tmp_path / n) for n in others])] == [True] * len(others)


def test_an_onnx_file_without_gate_features_falls_back_to_pytorch_features(bundled, film):
    films = [pneumonia.open_image(film("NORMAL", i)) for i in range(3)]
    served = pneumonia.load_classifier(str(BUNDLED), backend=SERVED_BACKEND)
    served.onnx_logits.has_features = False  # as a file exported before the gate existed
    _, features = served.forward(served.pixels(films))
    assert torch.allclose(features, bundled.forward(bundled.pixels(films))[1], atol=1e-5)


def test_bundled_gate_passes_a_film_in_every_format_users_upload(bundled, film, write_dicom, tmp_path):
    """One film in every format and mode users upload (16-bit, RGBA, palette, CMYK, EXIF-rotated,
    DICOM, ...): every variant must still get an answer."""
    big = Image.open(film("PNEUMONIA", 5)).convert("L").resize((1800, 1500), Image.BICUBIC)
    stored = np.asarray(big, dtype=np.uint16) * 16  # 12-bit
    Image.fromarray(np.asarray(big, dtype=np.uint16) * 257).save(tmp_path / "16bit.png")
    big.convert("RGBA").save(tmp_path / "rgba.png")
    big.convert("P").save(tmp_path / "palette.png")
    big.convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    big.rotate(90, expand=True).save(tmp_path / "rotated.jpg", exif=exif)
    for suffix in ("bmp", "tiff", "webp"):
        big.save(tmp_path / f"film.{suffix}")
    big.save(tmp_path / "animated.gif", save_all=True, append_images=[big.point(lambda v: 255 - v)])
    write_dicom(tmp_path / "mono2.dcm", stored, "MONOCHROME2")
    write_dicom(tmp_path / "mono1.dcm", 4095 - stored, "MONOCHROME1")
    write_dicom(tmp_path / "windowed.dcm", stored, "MONOCHROME2", WindowCenter=2048, WindowWidth=4096)
    uploads = sorted(tmp_path.iterdir())
    readings = bundled.read([pneumonia.open_image(path) for path in uploads])
    assert len(uploads) == 12
    assert not [(p.name, r.reason) for p, r in zip(uploads, readings) if r.refused]


@pytest.mark.parametrize("backend", ["pytorch", SERVED_BACKEND])
def test_bundled_gate_refuses_ct_mri_other_body_parts_side_views_and_photos_and_cautions_on_adults(
        scope_set, opened_scope, backend):
    """In-sample: these images fitted the heads (their leave-one-dataset-out figures are in the
    card). Each backend with its own calibration: every image gets its category's outcome."""
    from tests.conftest import read_all

    opened = list(zip(opened_scope, scope_set.categories))
    assert sum(image is None for image, _ in opened) == 1  # one 135x406 crop: refused by its shape before the gate
    classifier = pneumonia.load_classifier(str(BUNDLED), backend=backend)
    readings = read_all(classifier, [image for image, _ in opened if image is not None])
    found = {(category, r.outcome, r.kind) for (_, category), r in zip([o for o in opened if o[0] is not None], readings)}
    # every one gets its category's outcome; a refusal names its kind, or says plainly that the kind is not clear
    expected = {(kind, "refuse", named) for kind in ood.KINDS for named in (kind, "not_frontal_chest")}
    # an adult's film is cautioned (where its P falls in the uncertain band it is uncertain, still with
    # the caution), or refused as an adult's film: at most a quarter of them (measured 0.21), never answered
    adults = {("adult_frontal", outcome, "adult") for outcome in ("caution", "uncertain", "refuse")}
    assert found <= expected | adults, found - expected - adults
    refused_adults = [r.refused for (_, category), r in zip([o for o in opened if o[0] is not None], readings)
                      if category == "adult_frontal"]
    assert len(refused_adults) == 307 and np.mean(refused_adults) <= 0.25
    named = [r.kind == category for (_, category), r in zip([o for o in opened if o[0] is not None], readings)
             if category in ood.KINDS]
    assert np.mean(named) >= 0.9  # measured 1.0 on both backends (these images fitted the heads)


def test_a_films_resolution_alone_does_not_change_its_outcome(bundled, film):
    """Full-resolution uploads and small ones get what the 224 px copy gets, but for scores near a cut-off."""
    films = [pneumonia.open_image(film(label, index)) for label in ("NORMAL", "PNEUMONIA") for index in range(0, 40, 5)]
    stored = bundled.read(films)
    cutoffs = [c for c in bundled.cutoffs().band if c is not None]
    # a film whose P lies within 0.3 in log-odds of a cut-off may cross it; one whose adult score lies
    # within 0.5 of its cut-off may gain or lose the caution
    clear = [i for i, r in enumerate(stored) if min(abs(log_odds(r.probabilities["PNEUMONIA"]) - log_odds(c))
                                                    for c in cutoffs) >= 0.3]
    clear_of_caution = [i for i, r in enumerate(stored)
                        if abs(log_odds(r.scores["adult"]) - log_odds(bundled.gate.cuts["adult"])) >= 0.5]
    assert len(clear) >= 14 and len(clear_of_caution) >= 14  # measured 16 and 14
    # 1792 px, and 168 px, just above the model's 160 px input
    for scale in (8, 0.75):
        resized = bundled.read([f.resize((round(f.width * scale), round(f.height * scale)), Image.BICUBIC) for f in films])
        assert [r.refused for r in resized] == [r.refused for r in stored], scale  # the gate's verdict
        assert [resized[i].kind for i in clear_of_caution] == [stored[i].kind for i in clear_of_caution], scale
        assert [resized[i].decision for i in clear] == [stored[i].decision for i in clear], scale  # None: uncertain
    # 112 px, which the model's input upsamples: the blur makes a film look younger to the adult head
    # (it learned that children's films lose resolution), so a film may lose a caution (2 of these 16
    # do, dark NORMAL films cautioned at 224 px), but none is refused or cautioned that was not
    small = bundled.read([f.resize((f.width // 2, f.height // 2), Image.BICUBIC) for f in films])
    assert [r.refused for r in small] == [r.refused for r in stored]
    assert all(r.kind in (None, s.kind) for r, s in zip(small, stored))


def test_an_adults_film_keeps_its_caution_or_refusal_when_uploaded_small(bundled, scope_set, opened_scope):
    """The adult head learned that a child's film may have lost resolution: a small adult's film must
    not pass for a child's on that account. In-sample (these films fitted the head)."""
    adults = [image for image, category in zip(opened_scope, scope_set.categories) if category == "adult_frontal"]
    for side, most_answered in ((168, 0.0), (112, 0.08)):  # answered without a caution: measured 0.0 and 0.052
        small = [image.resize((round(image.width * side / max(image.size)), round(image.height * side / max(image.size))),
                              Image.BICUBIC) for image in adults]
        answered = [not reading.refused and not reading.adult for reading in bundled.read(small)]
        assert np.mean(answered) <= most_answered, side


def test_the_drawn_photos_and_documents_the_gate_learns_from_are_the_same_on_every_call():
    """They are part of the gate's training data: a fresh random draw (binary_blobs is one unless
    seeded) made the fitted gate, and the test above, change from run to run."""
    from train.gate.probes import photos_and_documents, probe_images

    first, second = photos_and_documents(), photos_and_documents()
    assert [name for name, _ in first] == [name for name, _ in second]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(first, second))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for (_, _, a), (_, _, b) in zip(probe_images(), probe_images()))
