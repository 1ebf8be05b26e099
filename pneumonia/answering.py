"""When a film is answered: NORMAL when its calibrated P(PNEUMONIA) is at or below one cut-off,
PNEUMONIA at or above another, UNCERTAIN in between (rule 7 of docs/choices.md chooses them).

A model folder's ``config.json`` carries the cut-offs for a few levels of answered accuracy and the
level the app uses by default::

    "answer_level": 0.97,
    "answer_cutoffs": [{"level": 0.95, "normal_at_most": 0.21, "pneumonia_at_least": 0.90}, ...]

A null cut-off means that side answers no film at that level. Folders written before the levels
carry a symmetric ``uncertain_band`` w around the threshold t, read as t - w and t + w; folders
older still have no uncertain outcome: the threshold decides every film.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumonia.labels import UsageError

NORMAL, PNEUMONIA, UNCERTAIN = 0, 1, -1  # what ``Cutoffs.sides`` gives per film


@dataclass(frozen=True)
class Cutoffs:
    """The two cut-offs on calibrated P(PNEUMONIA) at one level of answered accuracy."""

    normal_at_most: float | None      # NORMAL when P <= this; None: no film is answered NORMAL
    pneumonia_at_least: float | None  # PNEUMONIA when P >= this; None: no film is answered PNEUMONIA
    level: float | None = None        # the answered accuracy each side was chosen for; None for older folders

    def sides(self, p_pneumonia) -> np.ndarray:
        """NORMAL (0), PNEUMONIA (1) or UNCERTAIN (-1) for each P(PNEUMONIA)."""
        p = np.asarray(p_pneumonia, dtype=float)
        side = np.full(p.shape, UNCERTAIN)
        if self.normal_at_most is not None:
            side[p <= self.normal_at_most] = NORMAL
        if self.pneumonia_at_least is not None:
            side[p >= self.pneumonia_at_least] = PNEUMONIA
        return side

    @property
    def band(self) -> list[float | None]:
        """The ends of the uncertain band, [normal_at_most, pneumonia_at_least], for API callers."""
        return [self.normal_at_most, self.pneumonia_at_least]

    def to_config(self) -> dict:
        return {"level": self.level, "normal_at_most": self.normal_at_most, "pneumonia_at_least": self.pneumonia_at_least}


def threshold_only(threshold: float) -> Cutoffs:
    """No uncertain outcome: PNEUMONIA at or above the threshold, NORMAL below it."""
    return Cutoffs(float(np.nextafter(threshold, -np.inf)), threshold)


def levels_from_config(config: dict) -> tuple[dict[float | None, Cutoffs], float | None]:
    """The folder's cut-offs by level, and its default level (None for folders without levels)."""
    if config.get("answer_cutoffs"):
        levels = {float(row["level"]): Cutoffs(_float_or_none(row["normal_at_most"]),
                                               _float_or_none(row["pneumonia_at_least"]), float(row["level"]))
                  for row in config["answer_cutoffs"]}
        default = float(config.get("answer_level", max(levels)))
        if default not in levels:
            raise UsageError(f"config.json: answer_level {default} is not one of its answer_cutoffs' levels "
                             f"({', '.join(f'{level:g}' for level in levels)}); set it to one of them")
        return levels, default
    threshold = float(config.get("threshold", 0.5))
    band = float(config.get("uncertain_band", 0.0))
    return {None: Cutoffs(threshold - band, threshold + band) if band > 0 else threshold_only(threshold)}, None


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)
