"""Judging a model folder: its metrics on any labelled data (``python -m train.evaluate``), the
presets side by side (``python -m train.evaluate.compare``) and every model rebuilt from scratch
(``python -m train.evaluate.reproduce``)."""
