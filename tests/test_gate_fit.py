"""How the gate's heads are fitted and judged (train/gate/scope.py), on features drawn by hand:
which children's films the adult head learns from, and that every figure holds out whole data sets."""
from __future__ import annotations

import numpy as np

from pneumonia.ood import OodGate
from train.gate import scope

WIDTHS = [4, 4]  # two stages' means, then their halves gaps: 16 columns


def _films(n: int, centre: dict[int, float], seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, 2 * sum(WIDTHS)))
    for column, value in centre.items():
        x[:, column] += value
    return x


def _features(seed: int = 0) -> scope.Features:
    """Children's films at the origin; the same films as another site delivers them moved along
    column 0; adults' films moved along column 0 *and* column 1; CT slices far away. Adults and
    CT slices each come from two data sets."""
    adults = [_films(40, {0: 3.0, 1: 2.0}, seed + 1), _films(30, {0: 3.0, 1: 2.0}, seed + 2)]
    ct = _films(40, {5: 8.0}, seed + 3)
    return scope.Features(
        train=_films(1000, {}, seed + 4), shifted_train=_films(1000, {0: 3.0}, seed + 5),
        validation=_films(400, {}, seed + 6), shifted_validation=_films(400, {0: 0.5}, seed + 7),
        scope=[np.concatenate([*adults, ct])],
        categories=np.array(["adult_frontal"] * 70 + ["ct"] * 40),
        datasets=np.array(["NIH"] * 40 + ["JSRT"] * 30 + ["CT set"] * 20 + ["other CT set"] * 20))


def _gate(found: scope.Features) -> OodGate:
    labels = np.arange(len(found.train)) % 2
    return OodGate.fit(["a", "b"], WIDTHS, (found.train, labels), found.validation)


def _options(children: str) -> dict:
    return {**scope.OPTIONS, "adult": {**scope.OPTIONS["adult"], "children": children}}


def test_the_adult_head_learns_that_a_shifted_childs_film_is_still_a_childs():
    """Without the shifted children's films, what moves a film towards the adults' (column 0) is
    taken for age; with them, the head must find what only the adults have (column 1)."""
    found = _features()
    fresh_shifted_children = _gate(found).head_inputs(_films(500, {0: 3.0}, seed=99))
    cautioned = {}
    for children in ("augmented", "shifted"):
        gate = _gate(found)
        scope.fit_heads(gate, found, options=_options(children))
        p_adult = gate.heads.probabilities(fresh_shifted_children)["adult"]
        cautioned[children] = np.mean(p_adult > gate.cuts["adult"])
    assert cautioned["augmented"] > 0.2 and cautioned["shifted"] < 0.05, cautioned  # measured 0.35 and 0.03


def test_every_figure_on_the_scope_images_holds_out_a_whole_data_set(monkeypatch):
    found, folds = _features(), []
    fit_heads = scope.fit_heads

    def recording(gate, features, keep=None, options=scope.OPTIONS):
        folds.append(keep.copy())
        fit_heads(gate, features, keep, options)

    monkeypatch.setattr(scope, "fit_heads", recording)
    shares = scope.leave_one_dataset_out(_gate(found), found)
    assert len(folds) == 4
    for keep in folds:  # each fold leaves out exactly one data set, all of its images
        assert len(set(found.datasets[~keep])) == 1 and not np.isin(found.datasets[keep], found.datasets[~keep]).any()
    adults = shares["adult_frontal"]
    assert set(adults["by_dataset"]) == {"NIH", "JSRT"} and adults["images"] == 70
    for held in adults["by_dataset"].values():
        assert held["answered"] + held["cautioned"] + held["refused"] == 1.0
        assert 0 <= held["refused_as_adult"] <= held["refused"]
    assert shares["ct"]["refused"] == 1.0


def test_the_scope_set_is_grouped_by_data_set_not_by_repository(scope_set):
    """NIH ChestX-ray14, Shenzhen and JSRT each came through two repositories: one data set each."""
    adults = scope_set.categories == "adult_frontal"
    assert set(scope_set.datasets[adults]) == {"NIH-ChestXray14", "OpenIST", "Shenzhen", "JSRT", "xinario chestViewSplit"}
    assert (scope_set.datasets == "NIH-ChestXray14").sum() == 160
