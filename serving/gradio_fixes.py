"""What the app changes in Gradio, and why: each for the Gradio version below (requirements.txt
pins it). ``tests/test_app.py`` fails when the installed Gradio is another, so an upgrade
re-checks each: drop one when its test passes without it.
"""
from __future__ import annotations

import os

import gradio as gr

FOR_GRADIO = "6.31.0"


def read_batched_verdicts() -> None:
    """Gradio ignores a batched validator's verdicts (they arrive as a tuple where it looks for a
    list), which would let a bad file into a batch and fail its neighbours.
    tests/test_app_server.py checks that a bad file is turned away alone. Patching twice is harmless."""
    from gradio import queueing

    original = queueing.process_validation_response
    if getattr(original, "reads_tuples", False):
        return

    def process_validation_response(response, fn=None):
        return original(list(response) if isinstance(response, tuple) else response, fn)

    process_validation_response.reads_tuples = True
    queueing.process_validation_response = process_validation_response


def bound_analytics(demo: gr.Blocks, max_events: int = 1000, cache_frequency: int = 100) -> None:
    """Gradio re-summarises its log of up to 10,000 events with pandas after every event, for the
    API page's figures: after 3000 API calls a server answered 1.3x slower (BENCHMARKS.md). The
    queue reads its two limits from the environment when it is made; a deployer's own
    GRADIO_ANALYTICS_MAX_EVENTS / GRADIO_ANALYTICS_CACHE_FREQUENCY win."""
    queue = demo._queue
    if "GRADIO_ANALYTICS_MAX_EVENTS" not in os.environ:
        queue.ANALYTICS_MAX_EVENTS = max_events
    if "GRADIO_ANALYTICS_CACHE_FREQUENCY" not in os.environ:
        queue.ANAYLTICS_CACHE_FREQUENCY = cache_frequency  # sic: Gradio's spelling
