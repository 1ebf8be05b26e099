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
    from pneumonia.answering import Cutoffs
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


def _cutoff(value: float | None) -> str:
    return "no film" if value is None else f"{value:.3f}"


def _level(classifier: Classifier, cutoffs: Cutoffs) -> str:
    """What the level of the cut-offs promises, in words."""
    if cutoffs.level is None:
        return ""
    confidence = classifier.metrics.get("answering", {}).get("side_confidence")
    with_confidence = f", with {confidence:.0%} confidence for each side" if confidence else ""
    return (f" At this level ({cutoffs.level:.0%}) each side's answers were wrong at most {1 - cutoffs.level:.0%} of the "
            f"time on the shifted validation films{with_confidence}.")


def uncertainty(classifier: Classifier, p: float | str, cutoffs: Cutoffs) -> str:
    """Why no decision is given: both cut-offs, what they promise, and the share they answered on validation."""
    shifted = classifier.metrics.get("shifted_validation", {})
    measured = (f" On the shifted validation films the default level answered {shifted['coverage']:.0%} of them."
                if "coverage" in shifted and cutoffs.level == classifier.level else "")
    return (f"Uncertain: needs a radiologist's read. P(PNEUMONIA) = {_three(p)} lies between the model's two "
            f"cut-offs: it answers NORMAL at or below {_cutoff(cutoffs.normal_at_most)} and PNEUMONIA at or above "
            f"{_cutoff(cutoffs.pneumonia_at_least)}.{_level(classifier, cutoffs)}{measured}")


def _answered(classifier: Classifier, decision: str, p: float | str, cutoffs: Cutoffs) -> str:
    if cutoffs.level is None and cutoffs.pneumonia_at_least == classifier.threshold:  # a folder with no uncertain outcome
        side = "at or above" if decision == POSITIVE_LABEL else "below"
        return (f"P(PNEUMONIA) = {_three(p)} is {side} the model's operating threshold {classifier.threshold:.3f}, "
                "chosen on validation; the decision follows the threshold, not the longer bar.")
    side, cut = (("at or above", cutoffs.pneumonia_at_least) if decision == POSITIVE_LABEL
                 else ("at or below", cutoffs.normal_at_most))
    return (f"P(PNEUMONIA) = {_three(p)} is {side} the model's {decision} cut-off {_cutoff(cut)}; the decision follows "
            f"the cut-off, not the longer bar.{_level(classifier, cutoffs)}")


def _text(classifier: Classifier, outcome: str, kind: str | None, decision: str | None, p: float | str,
          cutoffs: Cutoffs) -> str:
    if outcome == "refuse":
        return f"### NOT ASSESSED\n{refusal(kind)}"
    warning = f"> **{caution(classifier)}**\n\n" if kind == "adult" else ""
    if outcome == "uncertain":
        return f"### UNCERTAIN\n{warning}{uncertainty(classifier, p, cutoffs)}"
    return f"### {decision}\n{warning}{_answered(classifier, decision, p, cutoffs)}"


def decision(classifier: Classifier, reading: Reading) -> str:
    """The outcome in words, headed by the decision."""
    return _text(classifier, reading.outcome, reading.kind, reading.decision,
                 "" if reading.refused else reading.probabilities[POSITIVE_LABEL], classifier.cutoffs(reading.level))


def outcome(classifier: Classifier, reading: Reading) -> dict:
    """The outcome for API callers, without parsing prose, and the gate's scores. ``uncertain_band``
    is [the NORMAL cut-off, the PNEUMONIA cut-off] at ``level`` (null for a side that answers no film)."""
    assessed = not reading.refused
    p = reading.probabilities[POSITIVE_LABEL] if assessed else None
    cutoffs = classifier.cutoffs(reading.level)
    reasons = [reading.reason if reading.refused else None,
               uncertainty(classifier, p, cutoffs) if reading.uncertain else None,
               caution(classifier) if reading.adult else None]
    return {"outcome": reading.outcome, "kind": reading.kind,
            "reason": " ".join(r for r in reasons if r) or None,
            "decision": reading.decision, "p_pneumonia": p, "threshold": classifier.threshold,
            "level": reading.level, "uncertain_band": cutoffs.band, "scores": reading.scores}


def browser_templates(classifier: Classifier) -> dict:
    """Every text ``decision`` can give at the default level, with P_SLOT for P(PNEUMONIA): the
    browser's private mode picks one by outcome, kind and decision and fills the slot, so its words
    are these."""
    negative = next(name for name in classifier.label_names if name != POSITIVE_LABEL)
    cutoffs = classifier.cutoffs()
    templates = {"refuse": {kind: _text(classifier, "refuse", kind, None, P_SLOT, cutoffs) for kind in REASONS}}
    for adult, key in ((False, ""), (True, "adult")):
        kind = "adult" if adult else None
        templates[f"uncertain{'_' + key if key else ''}"] = _text(classifier, "uncertain", kind, None, P_SLOT, cutoffs)
        templates[f"answer{'_' + key if key else ''}"] = {
            verdict: _text(classifier, "caution" if adult else "answer", kind, verdict, P_SLOT, cutoffs)
            for verdict in (negative, POSITIVE_LABEL)}
    return {"p_slot": P_SLOT, **templates}
