"""The fourth outcome: films too close to the threshold are answered "uncertain", the same way in
``Classifier.read``, the page and the API; the band is chosen on shifted validation by rule 6."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import pneumonia
from pneumonia.ood import Verdict
from tests.conftest import BUNDLED_MODEL as BUNDLED
from tests.conftest import recorded_predictions
from train.metrics import answered, choose_uncertain_band, risk_coverage, selective_metrics


def test_the_band_is_the_narrowest_whose_answered_films_reach_the_target():
    threshold = 0.5
    # 90 films right far from the threshold, 10 wrong at distances 0.01 .. 0.10 from it
    p = np.concatenate([np.full(45, 0.9), np.full(45, 0.1), threshold + np.arange(1, 11) / 100])
    labels = np.concatenate([np.ones(45), np.zeros(45), np.zeros(10)]).astype(int)
    # at w the films within 0.01 * k of t are held back; 97% needs at most 2 wrong of those answered
    band = choose_uncertain_band(labels, p, threshold, target=0.97, step=0.005)
    kept = selective_metrics(labels, p, threshold, band)
    assert kept["answered_accuracy"] >= 0.97 and band == pytest.approx(0.08)
    narrower = selective_metrics(labels, p, threshold, band - 0.005)
    assert narrower["answered_accuracy"] < 0.97
    assert kept["coverage"] == pytest.approx(92 / 100) and kept["uncertain"] == 8
    # a film exactly at the band's edge is uncertain, the next one out is answered
    assert list(answered(np.array([threshold + band, threshold + band + 1e-9]), threshold, band)) == [False, True]


def test_a_model_that_is_always_right_needs_no_band_and_risk_coverage_ends_at_accuracy():
    labels = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.45, 0.55, 0.7, 0.52])
    assert choose_uncertain_band(labels, p, 0.5) == 0.0
    coverage, accuracy = risk_coverage(labels, np.array([0.1, 0.6, 0.55, 0.7, 0.52]), 0.5)
    assert coverage[-1] == 1.0 and accuracy[-1] == pytest.approx(0.8)
    assert accuracy[0] == 1.0  # the most confident film (0.1) is right


def test_read_marks_exactly_the_films_inside_the_band_uncertain(bundled, bundled_test_films, bundled_readings):
    """With another band, the same test films read with the same probabilities and gate verdicts,
    and exactly those within the band (and not refused) are "uncertain", keeping an adult's kind."""
    images = bundled_test_films[1][:160]
    before = bundled_readings["pytorch"][:160]
    p = np.array([r.probabilities["PNEUMONIA"] for r in before])
    band = float(np.quantile(np.abs(p - bundled.threshold), 0.25))  # about a quarter of the films
    banded = dataclasses.replace(bundled, uncertain_band=band)
    after = banded.read(images)
    inside = np.abs(p - bundled.threshold) <= band
    for old, new, within in zip(before, after, inside):
        assert new.probabilities == pytest.approx(old.probabilities, abs=1e-6)
        expected = "refuse" if old.refused else "uncertain" if within else "caution" if old.adult else "answer"
        assert new.outcome == expected and new.kind == old.kind
    assert 20 <= sum(r.uncertain for r in after) <= 60


def test_the_page_and_the_api_say_uncertain_and_give_no_decision(bundled_app):
    classifier = bundled_app.classifier
    saved = classifier.uncertain_band
    classifier.uncertain_band = 0.1
    try:
        p = classifier.threshold + 0.05
        reading = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, Verdict())
        assert reading.outcome == "uncertain"
        words = bundled_app.decision(reading)
        assert words.startswith("### UNCERTAIN\nUncertain: needs a radiologist's read. "
                                f"P(PNEUMONIA) = {p:.3f} lies in the band")
        api = bundled_app.outcome(reading)
        assert api["outcome"] == "uncertain" and api["decision"] is None and api["p_pneumonia"] == p
        assert api["uncertain_band"] == pytest.approx([classifier.threshold - 0.1, classifier.threshold + 0.1])
        adult = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, Verdict("caution", "adult"))
        assert adult.outcome == "uncertain" and "adult's chest film" in bundled_app.decision(adult)
        far = classifier._reading({"NORMAL": 0.02, "PNEUMONIA": 0.98}, Verdict())
        assert bundled_app.decision(far).startswith("### PNEUMONIA\n") and bundled_app.outcome(far)["decision"] == "PNEUMONIA"
    finally:
        classifier.uncertain_band = saved


def test_the_bundled_band_follows_rule_6_from_its_predictions():
    config = json.loads((BUNDLED / "config.json").read_text())
    metrics = json.loads((BUNDLED / "metrics.json").read_text())
    rows = recorded_predictions(BUNDLED, "shifted_validation")
    labels = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
    p = np.array([r["p_pneumonia"] for r in rows])
    assert config["uncertain_band"] == choose_uncertain_band(labels, p, config["threshold"]) > 0
    assert metrics["shifted_validation"]["answered_accuracy"] >= 0.97
    assert pneumonia.load_classifier(str(BUNDLED), backend="onnx-int8").uncertain_band == config["uncertain_band"]


def test_the_private_modes_word_templates_give_the_pages_words_for_every_outcome(bundled_app):
    """The browser fills words.json's templates with P; each must be the page's text for that reading."""
    from pneumonia import words
    from pneumonia.ood import REASONS

    classifier = bundled_app.classifier
    templates = words.browser_templates(classifier)
    t, w = classifier.threshold, classifier.uncertain_band
    for p in (0.02, t - w - 0.01, t - w / 2, t, t + w / 2, t + w + 0.01, 0.98):
        for verdict in (Verdict(), Verdict("caution", "adult")):
            reading = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, verdict)
            adult = "_adult" if reading.adult else ""
            template = (templates[f"uncertain{adult}"] if reading.uncertain
                        else templates[f"answer{adult}"][classifier.decide(reading.probabilities)])
            assert template.replace(templates["p_slot"], f"{p:.3f}") == bundled_app.decision(reading)
    for kind in REASONS:
        reading = classifier._reading({"NORMAL": 0.5, "PNEUMONIA": 0.5}, Verdict("refuse", kind))
        assert templates["refuse"][kind] == bundled_app.decision(reading)
