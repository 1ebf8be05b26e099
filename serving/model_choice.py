"""Which model folder the app serves, and why.

* ``PNEUMONIA_MODEL`` set (a folder or ``hf-hub:USER/REPO``; ``python -m train.publish --space-id``
  sets it on a Space): that model, and a clear error at start-up if it cannot be loaded.
* On a Hugging Face Space (``SPACE_ID`` set) without it: the Space author's own VGG16,
  ``hf-hub:{SPACE_AUTHOR_NAME}/pneumonia-vgg16``. If it is missing, the Hub cannot be reached, the
  folder is broken or its weights are over ``MAX_WEIGHTS_BYTES``, the bundled model, and one line
  on the page says which model is served and why.
* Anywhere else: the bundled model.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pneumonia import Classifier, UsageError

SPACE_MODEL = "pneumonia-vgg16"  # the repo a Space looks for under its author's name
# A free Space has 16 GB of memory; the app holds the PyTorch weights (for the heat map, in float32:
# twice a float16 file) beside one ONNX file. VGG16 in float16 is 0.27 GB on disk.
MAX_WEIGHTS_BYTES = 2 * 2**30
WEIGHT_SUFFIXES = (".safetensors", ".onnx")


@dataclass
class Served:
    classifier: Classifier
    source: str              # what was loaded: a folder or hf-hub:USER/REPO
    note: str | None = None  # why the app serves this model rather than the Space's own, for the page


def serve(environ: Mapping[str, str], bundled: Path, load: Callable[[str], Classifier]) -> Served:
    """The classifier the app serves: see the module's docstring. ``load(source)`` loads one."""
    asked = environ.get("PNEUMONIA_MODEL")
    if asked:
        return Served(load(asked), asked)  # the deployer's choice: its errors stop the app
    if not environ.get("SPACE_ID") or not environ.get("SPACE_AUTHOR_NAME"):
        return Served(load(str(bundled)), str(bundled))
    own = f"hf-hub:{environ['SPACE_AUTHOR_NAME']}/{SPACE_MODEL}"
    try:
        _check_size(own.removeprefix("hf-hub:"))
        return Served(load(own), own)
    except Exception as err:  # missing, offline, broken or too large: the bundled model serves
        return Served(load(str(bundled)), str(bundled),
                      f"Serving the bundled model: this Space's own `{own}` could not be loaded ({_why(err)}).")


class TooLarge(UsageError):
    pass


def _check_size(repo_id: str) -> None:
    """Refuse a repo whose weight files add up to more than MAX_WEIGHTS_BYTES, before any download.
    Offline (HF_HUB_OFFLINE=1) the Hub cannot be asked; cached files are loaded as they are."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        if not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set and it is not in the Hub cache")
        return
    files = HfApi().model_info(repo_id, files_metadata=True).siblings or []
    size = sum(f.size or 0 for f in files if f.rfilename.endswith(WEIGHT_SUFFIXES))
    if size > MAX_WEIGHTS_BYTES:
        raise TooLarge(f"its weight files are {size / 2**30:.1f} GB, over this app's limit of "
                       f"{MAX_WEIGHTS_BYTES / 2**30:.0f} GB")


def _why(err: Exception) -> str:
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(err, TooLarge):
        return str(err)
    if isinstance(err, RepositoryNotFoundError):
        return "no such model on the Hub, or it is private"
    unreachable = isinstance(err, (OfflineModeIsEnabled, ConnectionError, OSError)) or type(err).__module__.startswith("httpx")
    if unreachable and not isinstance(err, UsageError):
        return f"the Hub could not be reached: {_first_line(err) if isinstance(err, OfflineModeIsEnabled) else type(err).__name__}"
    return f"it did not load: {_first_line(err)}"


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]
