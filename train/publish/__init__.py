"""Pushing a model folder to the Hub with its card (``python -m train.publish``); ``hub`` is the
one place that talks to the Hub (the dataset script pushes through it too)."""
