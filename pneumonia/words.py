"""A reading's outcome in plain words: the same on the page, in the API and in the browser's
private mode, which receives them as templates (``browser_templates``) and fills in P(PNEUMONIA).

Every text is Markdown, headed by the decision: ### NORMAL, ### PNEUMONIA, ### UNCERTAIN or
### NOT ASSESSED.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pneumonia.labels import POSITIVE_LABEL
from pneumonia.ood import REASONS, UPLOAD_INSTEAD

if TYPE_CHECKING:
    from pneumonia.modeling import Classifier, Reading

P_SLOT = "{p}"  # in a browser template, where P(PNEUMONIA) goes, written with three decimals


def _three(p: float | str) -> str:
    return p if isinstance(p, str) else f"{p:.3f}"


def refusal(kind: str) -> str:
    return f"This upload is not assessed: {REASONS[kind]}. No diagnosis is given; {UPLOAD_INSTEAD}."


def caution(classifier: Classifier) -> str:
    """Why an adult's film is answered only with a caution, with what was measured on such films."""
    adults = classifier.metrics.get("ood", {}).get("adult_films")
    measured = (f" Of {adults['films']} healthy adults' films from another source, it called "
                f"{adults['called_pneumonia']:.0%} PNEUMONIA." if adults else "")
    return ("Caution: this looks like an adult's chest film. The model learned from children aged 1 to 5 "
            f"and is not made for adults.{measured}")


def uncertainty(classifier: Classifier, p: float | str) -> str:
    """Why no decision is given, with what the band costs and buys on validation."""
    low, high = classifier.threshold - classifier.uncertain_band, classifier.threshold + classifier.uncertain_band
    shifted = classifier.metrics.get("shifted_validation", {})
    measured = (f" Outside this band the model was right on {shifted['answered_accuracy']:.1%} of the shifted "
                f"validation films and answered {shifted['coverage']:.0%} of them." if "coverage" in shifted else "")
    return (f"Uncertain: needs a radiologist's read. P(PNEUMONIA) = {_three(p)} lies in the band {low:.3f} to "
            f"{high:.3f} around the operating threshold {classifier.threshold:.3f}, where the model is too often "
            f"wrong to give a decision.{measured}")


def _text(classifier: Classifier, outcome: str, kind: str | None, verdict: str | None, p: float | str) -> str:
    if outcome == "refuse":
        return f"### NOT ASSESSED\n{refusal(kind)}"
    warning = f"> **{caution(classifier)}**\n\n" if kind == "adult" else ""
    if outcome == "uncertain":
        return f"### UNCERTAIN\n{warning}{uncertainty(classifier, p)}"
    side = "at or above" if verdict == POSITIVE_LABEL else "below"
    return (f"### {verdict}\n{warning}P(PNEUMONIA) = {_three(p)} is {side} the model's operating "
            f"threshold {classifier.threshold:.3f}, chosen on validation; the decision follows the threshold, not the "
            "longer bar.")


def decision(classifier: Classifier, reading: Reading) -> str:
    """The outcome in words, headed by the decision."""
    if reading.refused:
        return _text(classifier, "refuse", reading.kind, None, "")
    return _text(classifier, reading.outcome, reading.kind, classifier.decide(reading.probabilities),
                 reading.probabilities[POSITIVE_LABEL])


def outcome(classifier: Classifier, reading: Reading) -> dict:
    """The outcome for API callers, without parsing prose, and the gate's scores."""
    assessed = not reading.refused
    p = reading.probabilities[POSITIVE_LABEL] if assessed else None
    reasons = [reading.reason if reading.refused else None,
               uncertainty(classifier, p) if reading.uncertain else None,
               caution(classifier) if reading.adult else None]
    return {"outcome": reading.outcome, "kind": reading.kind,
            "reason": " ".join(r for r in reasons if r) or None,
            "decision": classifier.decide(reading.probabilities) if assessed and not reading.uncertain else None,
            "p_pneumonia": p, "threshold": classifier.threshold,
            "uncertain_band": [classifier.threshold - classifier.uncertain_band,
                               classifier.threshold + classifier.uncertain_band] if classifier.uncertain_band else None,
            "scores": reading.scores}


def browser_templates(classifier: Classifier) -> dict:
    """Every text ``decision`` can give, with P_SLOT for P(PNEUMONIA): the browser's private mode
    picks one by outcome, kind and decision and fills the slot, so its words are these."""
    negative = next(name for name in classifier.label_names if name != POSITIVE_LABEL)
    templates = {"refuse": {kind: _text(classifier, "refuse", kind, None, P_SLOT) for kind in REASONS}}
    for adult, key in ((False, ""), (True, "adult")):
        kind = "adult" if adult else None
        templates[f"uncertain{'_' + key if key else ''}"] = _text(classifier, "uncertain", kind, None, P_SLOT)
        templates[f"answer{'_' + key if key else ''}"] = {
            verdict: _text(classifier, "caution" if adult else "answer", kind, verdict, P_SLOT)
            for verdict in (negative, POSITIVE_LABEL)}
    return {"p_slot": P_SLOT, **templates}
