"""What the gate learns from real images the model must not judge, and how well that generalises.

The scope set (``../shared/data/scope``: CT and MRI slices, radiographs of other body parts,
side views, adult frontal films, each with its data set in ``provenance.csv``) fits the gate's
heads (``pneumonia.ood.LinearHeads``) against the training films. Its own data sets are not the
uploads that count, so the figures reported are leave-one-dataset-out: each data set's images
are judged by heads fitted without them, whichever repositories they came through.

The rule that sets the cut-offs, fixed before any result was read:
* distance: refuse what lies beyond the 99.9th percentile of clean validation (a wide net for
  what is like nothing seen: photos, documents, noise);
* P(not a frontal chest film): the lowest cut-off at which the gate as a whole refuses at most
  1% of clean validation and 5% of shifted validation;
* P(an adult's film): the lowest cut-off that cautions at most a budget of the clean and the
  shifted validation films the gate lets through (``OPTIONS["adult"]["caution_budget"]``).

The options of each head were chosen by rule 9 of docs/choices.md, on the leave-one-dataset-out
figures of the bundled model (``python -m train.gate FOLDER --compare``).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.ood import KINDS, LinearHeads, OodGate
from train.gate.probes import photos_and_documents

DEFAULT_SCOPE = Path(__file__).resolve().parents[3] / "shared" / "data" / "scope"
CATEGORIES = (*KINDS, "adult_frontal")
WIDE_NET = 0.999  # share of clean validation inside the distance cut-off
REFUSE_BUDGET = {"validation": 0.01, "shifted_validation": 0.05}
# Per head: its regularisation, how many augmented draws of each scope image it sees, and the
# children's films it learns from: the training films under the run's augmentation ("augmented"),
# or those and the training films under the shifted validation's perturbations ("shifted" too).
OPTIONS = {"refuse": {"C": 0.01, "draws": 0, "children": "augmented"},
           "adult": {"C": 0.01, "draws": 0, "children": "shifted",
                     "caution_budget": {"validation": 0.005, "shifted_validation": 0.01}},
           "kind": {"C": 0.1, "draws": 4, "children": "augmented"}}
# A refusal names the kind when the kind head gives it at least this probability: leave-one-source-out, the
# named medical kinds were right for 92% of the 156 of 285 refused images it named (an earlier model; docs/ood-gate.md).
NAMING_CONFIDENCE = 0.8
MIN_PER_SOURCE = 3  # scope images a quick run's gate reads from each source


@dataclass
class ScopeSet:
    """The images the gate learns from: per image, as training's datasets hold images (path or
    bytes), its category, its data set (``provenance.csv``'s ``dataset``: one data set may come
    through several repositories) and the finding ("normal", ...; "" where none)."""

    images: list[dict]
    categories: np.ndarray
    datasets: np.ndarray
    findings: np.ndarray
    drawn_from: int | None = None  # images in the whole set, when this is a sample of it

    def rows(self) -> list[dict]:
        return [{"image": image, "label": 0} for image in self.images]

    @property
    def files(self) -> list[Path]:
        return [Path(image["path"]) for image in self.images if image["path"]]


def load_scope(folder: Path | str | None = None) -> ScopeSet | None:
    """The scope images from ``folder`` (default ../shared/data/scope) and the photos and documents
    drawn in ``train.gate.probes``; None where the folder is absent."""
    folder = Path(folder or DEFAULT_SCOPE)
    if not (folder / "provenance.csv").is_file():
        return None
    with (folder / "provenance.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["category"] in CATEGORIES]
    drawn = photos_and_documents()  # (name, image): scikit-image's samples, then drawn pages and noise
    images = [{"path": str(folder / row["file"]), "bytes": None} for row in rows]
    images += [{"path": None, "bytes": _png(image)} for _, image in drawn]
    return ScopeSet(images, np.array([row["category"] for row in rows] + ["photo_or_document"] * len(drawn)),
                    np.array([row["dataset"] for row in rows] + [_drawn_source(name) for name, _ in drawn]),
                    np.array([row["label"] for row in rows] + [""] * len(drawn)))


def in_proportion(scope_set: ScopeSet, training_films: int, seed: int) -> ScopeSet:
    """About as many scope images as the run has training films: the same share of every data
    set, and at least ``MIN_PER_SOURCE`` from each (seeded). A quick run on a few dozen films fits
    its gate in seconds; a run on the whole training split, on every image."""
    if training_films >= len(scope_set.images):
        return scope_set
    names = np.unique(scope_set.datasets)
    per_source = max(MIN_PER_SOURCE, training_films // len(names))
    rng, keep = np.random.default_rng(seed), []
    for name in names:
        rows = np.flatnonzero(scope_set.datasets == name)
        keep += sorted(rng.permutation(rows)[:per_source].tolist())
    keep = np.array(sorted(keep))
    return ScopeSet([scope_set.images[i] for i in keep], scope_set.categories[keep], scope_set.datasets[keep],
                    scope_set.findings[keep], drawn_from=len(scope_set.images))


def draws_in_proportion(training_films: int, scope_images: int) -> int:
    """Augmented draws of each scope image the heads may read (``OPTIONS``' most), as far as the
    draws keep the scope's reads within the run's training films: none for a quick run."""
    most = max(options["draws"] for options in OPTIONS.values())
    return max(0, min(most, training_films // max(scope_images, 1) - 1))


def _drawn_source(name: str) -> str:
    return "drawn pages and noise" if name.startswith(("typed page", "noise")) else "scikit-image samples"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Features:
    """Gate features of what the heads are fitted and calibrated on."""

    train: np.ndarray               # training films, under training augmentation
    shifted_train: np.ndarray       # training films, under the shifted validation's perturbations
    validation: np.ndarray
    shifted_validation: np.ndarray
    scope: list[np.ndarray]         # [clean, augmented draw 1, ...], each (n, d)
    categories: np.ndarray          # of the readable scope images
    datasets: np.ndarray


def fit_heads(gate: OodGate, found: Features, keep: np.ndarray | None = None, options: dict = OPTIONS) -> None:
    """Fit ``gate``'s heads on the training films and the scope images in ``keep``, and set its
    cut-offs by the rule above."""
    keep = np.ones(len(found.categories), bool) if keep is None else keep
    inputs = {name: gate.head_inputs(x) for name, x in
              (("train", found.train), ("validation", found.validation), ("shifted", found.shifted_validation))}
    draws = [gate.head_inputs(x[keep]) for x in found.scope]
    categories = found.categories[keep]
    asked = any(head_options["children"] == "shifted" for head_options in options.values())
    shifted = gate.head_inputs(found.shifted_train) if asked else None

    def scope_part(head: str, wanted) -> np.ndarray:
        return np.concatenate([d[np.isin(categories, wanted)] for d in draws[:1 + options[head]["draws"]]])

    def children(head: str) -> np.ndarray:
        return inputs["train"] if options[head]["children"] == "augmented" else np.concatenate([inputs["train"], shifted])

    # P(not a frontal chest film): the other kinds against the children's and the adults' frontal
    # films; P(adult): adults' against children's frontal films. Each group weighs the same.
    refuse = _logistic([(children("refuse"), 0), (scope_part("refuse", ["adult_frontal"]), 0),
                        (scope_part("refuse", KINDS), 1)], options["refuse"]["C"])
    adults = scope_part("adult", ["adult_frontal"])
    adult = (_logistic([(children("adult"), 0), (adults, 1)], options["adult"]["C"]) if len(adults)
             else (np.zeros(inputs["train"].shape[1]), -1e4))  # no adult films to learn from: never a caution
    kind = _multinomial([(scope_part("kind", [k]), i) for i, k in enumerate(KINDS)], options["kind"]["C"])
    gate.heads = LinearHeads(refuse, adult, kind)
    _set_cuts(gate, found, inputs, options["adult"]["caution_budget"])


def _set_cuts(gate: OodGate, found: Features, inputs: dict, caution_budget: dict[str, float]) -> None:
    distance = {"validation": gate.scores(found.validation), "shifted_validation": gate.scores(found.shifted_validation)}
    gate.cutoff = float(np.quantile(distance["validation"], WIDE_NET, method="inverted_cdf"))
    gate.pass_share = WIDE_NET
    p = {"validation": gate.heads.probabilities(inputs["validation"]),
         "shifted_validation": gate.heads.probabilities(inputs["shifted"])}
    far = {name: distance[name] > gate.cutoff for name in distance}
    gate.cuts["refuse"] = _lowest_cut({n: p[n]["not_frontal_chest"] for n in p}, REFUSE_BUDGET, far)
    passed = {n: ~(far[n] | (p[n]["not_frontal_chest"] > gate.cuts["refuse"])) for n in p}
    gate.cuts["adult"] = _lowest_cut({n: p[n]["adult"][passed[n]] for n in p}, caution_budget,
                                     {n: np.zeros(passed[n].sum(), bool) for n in p})
    gate.cuts["kind"] = NAMING_CONFIDENCE
    gate.budgets = {"refuse": dict(REFUSE_BUDGET), "caution": dict(caution_budget)}


def _lowest_cut(scores: dict[str, np.ndarray], budget: dict[str, float], already: dict[str, np.ndarray]) -> float:
    """The lowest cut-off c at which (already | score > c) stays within each split's budget."""
    for cut in np.unique(np.concatenate([*scores.values(), [1.0]])):
        if all(np.mean(already[n] | (scores[n] > cut)) <= budget[n] for n in budget):
            return float(cut)
    return 1.0


def _logistic(groups: list[tuple[np.ndarray, int]], c: float) -> tuple[np.ndarray, float]:
    """Weights and bias of P(label 1) from (inputs, label) groups that each weigh the same in
    total; the inputs' standardisation is folded into the weights."""
    from sklearn.linear_model import LogisticRegression

    x, y, weight = _stacked(groups)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / std, y, sample_weight=weight)
    weights = model.coef_[0] / std
    return weights, float(model.intercept_[0] - mean @ weights)


def _multinomial(groups: list[tuple[np.ndarray, int]], c: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax weights and biases over KINDS; a kind with no images gets a bias it never wins with."""
    from sklearn.linear_model import LogisticRegression

    x, y, weight = _stacked(groups)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    weights, bias = np.zeros((len(KINDS), x.shape[1])), np.full(len(KINDS), -1e4)
    if len(np.unique(y)) == 1:
        bias[int(y[0])] = 0.0
        return weights, bias
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / std, y, sample_weight=weight)
    coef = model.coef_ if len(model.classes_) > 2 else np.stack([-model.coef_[0], model.coef_[0]]) / 2
    intercept = model.intercept_ if len(model.classes_) > 2 else np.array([-1, 1]) * model.intercept_[0] / 2
    rows = model.classes_.astype(int)
    weights[rows] = coef / std
    bias[rows] = intercept - weights[rows] @ mean
    return weights, bias


def _stacked(groups: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    groups = [(x, label) for x, label in groups if len(x)]
    weight = np.concatenate([np.full(len(x), len(groups[0][0]) / len(x)) for x, _ in groups])
    return (np.concatenate([x for x, _ in groups]), np.concatenate([np.full(len(x), label) for x, label in groups]),
            weight / weight.mean())


def shares(verdicts, categories: np.ndarray, datasets: np.ndarray | None = None) -> dict[str, dict]:
    """Per category: images, the share refused, refused and named as that kind, refused as an
    adult's film, and cautioned; for adults' films also per data set (with ``datasets``)."""
    def share_of(rows: np.ndarray) -> dict:
        return {"images": int(rows.sum()), "refused": float(refused[rows].mean()), "named": float((refused & named)[rows].mean()),
                "refused_as_adult": float((refused & as_adult)[rows].mean()), "cautioned": float(cautioned[rows].mean()),
                "answered": float((~refused & ~cautioned)[rows].mean())}

    refused = np.array([v.outcome == "refuse" for v in verdicts])
    kinds = np.array([v.kind for v in verdicts])
    named, as_adult = kinds == categories, kinds == "adult"
    cautioned = np.array([v.outcome == "caution" for v in verdicts])
    found = {c: share_of(categories == c) for c in CATEGORIES if (categories == c).any()}
    adults = categories == "adult_frontal"
    if datasets is not None and adults.any():
        found["adult_frontal"]["by_dataset"] = {name: share_of(adults & (datasets == name))
                                                for name in sorted(set(datasets[adults]))}
    return found


def leave_one_dataset_out(gate: OodGate, found: Features, options: dict = OPTIONS) -> dict[str, dict]:
    """Per category (and per adult data set), the shares refused and cautioned when each data
    set's images are judged by heads fitted without that data set. ``gate`` keeps its own heads."""
    import copy

    verdicts = [None] * len(found.categories)
    for name in np.unique(found.datasets):
        held = found.datasets == name
        fold = copy.deepcopy(gate)
        fit_heads(fold, found, keep=~held, options=options)
        for i, verdict in zip(np.flatnonzero(held), fold.verdicts(found.scope[0][held])):
            verdicts[i] = verdict
    return shares(verdicts, found.categories, found.datasets)
