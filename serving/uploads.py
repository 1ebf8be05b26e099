"""Each upload decoded once: the validator, /predict, /heatmap and the film view share it.

Gradio hands every event of one upload the same temporary path, and several events read it
(the validator and /predict, the film view beside them, /heatmap after the answer). A decoded
film is kept by its path and its file's identity (size, modification time, inode), so a file
replaced under the same name is read again, until it has gone unused for KEPT_SECONDS or newer
uploads push it past the byte budget. Two events asking at once wait for one decode. A file that
cannot be read keeps its message.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from PIL import Image

from pneumonia.image_files import ImageOutOfLimits, UnreadableImage, open_image

# A batch of 8 films of 2000 x 1600 px is 26 MB decoded, a 4300 x 4300 px DICOM 74 MB (float32).
KEPT_BYTES = 128 * 2**20
# One upload's steps (check, answer, heat map, film view) end within seconds, even queued behind 64 others.
KEPT_SECONDS = 30.0
NO_IMAGE = "No image received: upload a chest X-ray (PNG, JPEG or DICOM)."


class _Entry:
    def __init__(self):
        self.lock = threading.Lock()  # held by the one decode; other readers of the file wait on it
        self.found: Image.Image | str | None = None  # the image, or the message of a file that cannot be read
        self.nbytes = 0
        self.used = time.monotonic()


class Uploads:
    """``open(path)``: the upload's image, decoded at most once while it is kept."""

    def __init__(self, kept_bytes: int = KEPT_BYTES, kept_seconds: float = KEPT_SECONDS):
        self.kept_bytes, self.kept_seconds = kept_bytes, kept_seconds
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, path: str | None) -> Image.Image:
        """The upload's image; gr.Error naming the problem and what to upload instead."""
        found = self.open_or_message(path)
        if isinstance(found, str):
            raise gr.Error(found)
        return found

    def open_or_message(self, path: str | None) -> Image.Image | str:
        """The upload's image, or the message that says why it cannot be read."""
        if not path:
            return NO_IMAGE
        try:
            stat = os.stat(path)
        except OSError:
            return _unreadable(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            entry.used = time.monotonic()
            self._entries.move_to_end(key)
        with entry.lock:  # decoding a large film takes a while: only this file's readers wait
            if entry.found is None:
                entry.found = _decode(path)
                entry.nbytes = _nbytes(entry.found)
                self._forget_oldest(keep=key)
        return entry.found

    def _forget_oldest(self, keep: tuple) -> None:
        """Drops the least recently used films while over the budget, and any unused for too long."""
        with self._lock:
            total, now = sum(entry.nbytes for entry in self._entries.values()), time.monotonic()
            for key, entry in list(self._entries.items()):  # least recently used first
                if total <= self.kept_bytes and now - entry.used <= self.kept_seconds:
                    break
                if key != keep:
                    total -= self._entries.pop(key).nbytes


def _decode(path: str) -> Image.Image | str:
    try:
        return open_image(path)
    except ImageOutOfLimits as err:
        return f"{Path(path).name}: {err.problem}."
    except UnreadableImage:
        return _unreadable(path)


def _unreadable(path: str) -> str:
    return f"{Path(path).name} is not a readable image: upload a PNG, JPEG or DICOM chest X-ray."


def _nbytes(found: Image.Image | str) -> int:
    if isinstance(found, str):
        return len(found)
    # PIL holds 1, P and L in a byte a pixel, 16-bit grey in two, every other mode (RGB included) in four
    per_pixel = 1 if found.mode in ("1", "L", "P") else 2 if found.mode.startswith("I;16") else 4
    return found.width * found.height * per_pixel
