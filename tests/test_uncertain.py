"""When the model answers: NORMAL at or below one cut-off, PNEUMONIA at or above another,
"uncertain" between; each side's cut-off chosen on shifted validation by rule 7 (an exact binomial
test in a fixed sequence), the same way in ``Classifier.read``, the page, the API and the browser."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

import pneumonia
from pneumonia import words
from pneumonia.answering import NORMAL, PNEUMONIA, UNCERTAIN, Cutoffs, levels_from_config, threshold_only
from pneumonia.ood import Verdict
from tests.conftest import BUNDLED_MODEL as BUNDLED
from tests.conftest import SERVED_BACKEND, recorded_predictions
from train.metrics import (ANSWER_LEVELS, binomial_p_value, choose_cutoffs, choose_side_cutoff, fewest_to_pass,
                           selective_metrics, side_candidates)


def _passes(wrong: int, answered: int, level: float) -> bool:
    """scipy's exact binomial test, written apart from train.metrics: error < 1 - level at 95%."""
    return answered > 0 and binomtest(wrong, answered, 1 - level, alternative="less").pvalue <= 0.05


def _answered(p, labels, side, cut):
    chosen = p >= cut if side == PNEUMONIA else p <= cut
    return int((labels[chosen] != side).sum()), int(chosen.sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("side", [NORMAL, PNEUMONIA])
def test_each_side_is_the_last_cutoff_of_the_sequence_before_the_binomial_test_first_fails(seed, side):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 800)
    # a calibrated-looking model: P far from the true class is rarer, and some films sit on the wrong side
    p = np.clip(np.where(labels == 1, rng.beta(6, 1, 800), rng.beta(1, 6, 800)), 0.0, 1.0)
    threshold, level = 0.55, 0.97
    chosen = choose_side_cutoff(labels, p, side, level, threshold)
    tested = [cut for cut in side_candidates(side, threshold)
              if _answered(p, labels, side, cut)[1] >= fewest_to_pass(1 - level)]
    passing = [_passes(*_answered(p, labels, side, cut), level) for cut in tested]
    expected = None
    for cut, ok in zip(tested, passing):  # the sequence, from the first candidate that could pass
        if not ok:
            break
        expected = cut
    assert chosen == expected
    if chosen is not None:
        assert chosen < threshold if side == NORMAL else chosen >= threshold


def test_the_binomial_test_and_the_fixed_sequence_are_mapies():
    """MAPIE (Learn-then-Test) computes the same p-values and stops the same fixed sequence."""
    from mapie.risk_control.fwer_control import control_fwer
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    wrong, answered = np.array([0, 1, 2, 3, 9, 14, 2]), np.array([120, 200, 260, 300, 330, 360, 400])
    ours = np.array([binomial_p_value(k, n, 0.03) for k, n in zip(wrong, answered)])
    theirs = compute_hoeffding_bentkus_p_value(wrong / answered, answered.astype(float), 0.03, binary=True)[:, 0]
    assert ours == pytest.approx(theirs, rel=1e-9)
    passed = np.flatnonzero(np.cumprod(ours <= 0.05))  # the sequence stops at its first failure
    assert ours[-1] <= 0.05  # the last would pass alone, but the sequence stopped before it
    assert list(control_fwer(ours, 0.05, "fixed_sequence")) == list(passed) == [0, 1, 2, 3]


def test_a_side_answers_no_film_when_too_few_films_could_certify_its_level():
    labels, p = np.zeros(200, int), np.full(200, 0.001)  # 200 right NORMAL films: 99% needs 299 with none wrong
    assert fewest_to_pass(0.01) == 299 and fewest_to_pass(0.03) == 99
    assert choose_side_cutoff(labels, p, NORMAL, 0.99, 0.5) is None
    assert choose_side_cutoff(labels, p, NORMAL, 0.97, 0.5) == 0.495  # 200 >= 99: every candidate up to t passes
    assert list(Cutoffs(None, None, 0.99).sides([0.0, 0.5, 1.0])) == [UNCERTAIN] * 3


def test_candidates_answering_too_few_films_are_skipped_not_failed():
    # 50 right films at P = 0.02 and 60 more at 0.04: below 0.04 too few (50 < 99) to pass even with no error
    labels, p = np.zeros(110, int), np.concatenate([np.full(50, 0.02), np.full(60, 0.04)])
    assert choose_side_cutoff(labels, p, NORMAL, 0.97, 0.6) == 0.595  # from 0.04 on, every candidate passes
    with_a_miss = np.concatenate([labels, [1]]), np.concatenate([p, [0.3]])  # a PNEUMONIA film at 0.3 stops it there
    assert choose_side_cutoff(*with_a_miss, NORMAL, 0.97, 0.6) == 0.295


def test_films_at_a_cut_off_are_answered_and_those_between_are_uncertain():
    cutoffs = Cutoffs(0.05, 0.89, 0.97)
    p = [0.0, 0.05, np.nextafter(0.05, 1), 0.5, np.nextafter(0.89, 0), 0.89, 1.0]
    assert list(cutoffs.sides(p)) == [NORMAL, NORMAL, UNCERTAIN, UNCERTAIN, UNCERTAIN, PNEUMONIA, PNEUMONIA]
    assert list(Cutoffs(None, 0.89).sides([0.0, 0.9])) == [UNCERTAIN, PNEUMONIA]
    assert list(threshold_only(0.6).sides([np.nextafter(0.6, 0), 0.6])) == [NORMAL, PNEUMONIA]


def test_folders_from_before_the_levels_keep_loading(tmp_path):
    assert levels_from_config({"threshold": 0.6, "uncertain_band": 0.2}) == ({None: Cutoffs(0.6 - 0.2, 0.6 + 0.2)}, None)
    assert levels_from_config({"threshold": 0.6}) == ({None: threshold_only(0.6)}, None)
    with pytest.raises(pneumonia.UsageError, match="answer_level 0.9 is not one of its answer_cutoffs' levels"):
        levels_from_config({"answer_level": 0.9, "answer_cutoffs": [{"level": 0.97, "normal_at_most": 0.1,
                                                                       "pneumonia_at_least": 0.9}]})
    old = tmp_path / "old"
    shutil.copytree(BUNDLED, old)
    config = json.loads((old / "config.json").read_text())
    del config["answer_level"], config["answer_cutoffs"]
    config["uncertain_band"] = 0.35  # as this folder was written before the levels
    (old / "config.json").write_text(json.dumps(config))
    classifier = pneumonia.load_classifier(str(old), backend=SERVED_BACKEND)
    t = classifier.threshold
    assert classifier.level is None and classifier.cutoffs() == Cutoffs(t - 0.35, t + 0.35)
    reading = classifier._reading({"NORMAL": 0.5, "PNEUMONIA": 0.5}, Verdict(), int(classifier.cutoffs().sides([0.5])[0]), None)
    assert reading.outcome == "uncertain" and words.outcome(classifier, reading)["level"] is None
    with pytest.raises(pneumonia.UsageError, match="one level only"):
        classifier.cutoffs(0.97)


def test_read_answers_each_film_by_the_cut_offs_of_the_level_asked(bundled, bundled_test_films, bundled_readings):
    images, before = bundled_test_films[1][:160], bundled_readings["pytorch"][:160]
    p = np.array([r.probabilities["PNEUMONIA"] for r in before])
    for level in ANSWER_LEVELS:
        sides = bundled.cutoffs(level).sides(p)
        for old, new, side in zip(before, bundled.read(images, level), sides):
            assert new.probabilities == pytest.approx(old.probabilities, abs=1e-6) and new.level == level
            expected = ("refuse" if old.refused else "uncertain" if side == UNCERTAIN
                        else "caution" if old.adult else "answer")
            assert new.outcome == expected and new.kind == old.kind
            assert new.decision == (None if expected in ("refuse", "uncertain") else ["NORMAL", "PNEUMONIA"][side])
    assert [r.outcome for r in bundled.read(images[:20])] == [r.outcome for r in bundled.read(images[:20], 0.97)]
    with pytest.raises(pneumonia.UsageError, match="answer level 0.9: this model answers at 0.95, 0.97, 0.99"):
        bundled.read(images[:1], 0.9)


def test_the_page_and_the_api_name_both_cut_offs_and_the_level(bundled_app):
    classifier = bundled_app.classifier
    cutoffs = classifier.cutoffs()
    p = (cutoffs.normal_at_most + cutoffs.pneumonia_at_least) / 2
    reading = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, Verdict(), UNCERTAIN, cutoffs.level)
    said = words.decision(bundled_app.classifier, reading)
    assert said.startswith(f"### UNCERTAIN\nUncertain: needs a radiologist's read. P(PNEUMONIA) = {p:.3f} lies between "
                           f"the model's two cut-offs: it answers NORMAL at or below {cutoffs.normal_at_most:.3f} and "
                           f"PNEUMONIA at or above {cutoffs.pneumonia_at_least:.3f}. At this level (97%)"), said
    api = words.outcome(bundled_app.classifier, reading)
    assert api["outcome"] == "uncertain" and api["decision"] is None and api["p_pneumonia"] == p
    assert api["level"] == 0.97 and api["uncertain_band"] == [cutoffs.normal_at_most, cutoffs.pneumonia_at_least]
    adult = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, Verdict("caution", "adult"), UNCERTAIN, cutoffs.level)
    assert adult.outcome == "uncertain" and "adult's chest film" in words.decision(bundled_app.classifier, adult)
    answered = classifier._reading({"NORMAL": 0.02, "PNEUMONIA": 0.98}, Verdict(), PNEUMONIA, 0.95)
    assert words.decision(bundled_app.classifier, answered).startswith(
        f"### PNEUMONIA\nP(PNEUMONIA) = 0.980 is at or above the model's PNEUMONIA cut-off "
        f"{classifier.cutoffs(0.95).pneumonia_at_least:.3f}; the decision follows the cut-off, not the longer bar. "
        "At this level (95%) each side's answers were wrong at most 5% of the time")
    api = words.outcome(bundled_app.classifier, answered)
    assert api["decision"] == "PNEUMONIA" and api["level"] == 0.95


def test_the_bundled_cut_offs_follow_rule_7_and_hold_its_guarantee_on_shifted_validation():
    config = json.loads((BUNDLED / "config.json").read_text())
    metrics = json.loads((BUNDLED / "metrics.json").read_text())["answering"]
    rows = recorded_predictions(BUNDLED, "shifted_validation")
    labels = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
    p = np.array([r["p_pneumonia"] for r in rows])
    levels, default = levels_from_config(config)
    assert default == 0.97 and list(levels) == list(ANSWER_LEVELS)
    for level, cutoffs in levels.items():
        assert cutoffs == choose_cutoffs(labels, p, config["threshold"], level)
        shifted = selective_metrics(labels, p, cutoffs)
        assert metrics["levels"][f"{level:g}"]["shifted_validation"]["coverage"] == pytest.approx(shifted["coverage"])
        for side in ("normal", "pneumonia"):  # the guarantee, at each side that answers
            assert shifted[side]["answered"] == 0 or shifted[side]["error_bound"] <= 1 - level + 1e-12
    assert levels[0.97].normal_at_most is not None and levels[0.97].pneumonia_at_least is not None  # both sides answer
    assert pneumonia.load_classifier(str(BUNDLED), backend=SERVED_BACKEND).levels == levels


def test_the_private_modes_word_templates_give_the_pages_words_for_every_outcome(bundled_app):
    """The browser fills words.json's templates with P; each must be the page's text for that reading."""
    from pneumonia.ood import REASONS

    classifier = bundled_app.classifier
    templates = words.browser_templates(classifier)
    cutoffs = classifier.cutoffs()
    low, high = cutoffs.normal_at_most, cutoffs.pneumonia_at_least
    for p in (0.001, low, low + 0.01, classifier.threshold, high - 0.01, high, 0.999):
        for verdict in (Verdict(), Verdict("caution", "adult")):
            reading = classifier._reading({"NORMAL": 1 - p, "PNEUMONIA": p}, verdict, int(cutoffs.sides([p])[0]), cutoffs.level)
            adult = "_adult" if reading.adult else ""
            template = (templates[f"uncertain{adult}"] if reading.uncertain else templates[f"answer{adult}"][reading.decision])
            assert template.replace(templates["p_slot"], f"{p:.3f}") == words.decision(bundled_app.classifier, reading)
    for kind in REASONS:
        reading = classifier._reading({"NORMAL": 0.5, "PNEUMONIA": 0.5}, Verdict("refuse", kind), UNCERTAIN, cutoffs.level)
        assert templates["refuse"][kind] == words.decision(bundled_app.classifier, reading)
