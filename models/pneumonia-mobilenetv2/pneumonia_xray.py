"""transformers code of a pneumonia model folder: ``pipeline("image-classification", model=FOLDER,
trust_remote_code=True)`` gives the project's own calibrated probabilities.

``pneumonia.hub_code.add_transformers_code`` copies this file into each folder, beside
``xray_pixels.py`` (a verbatim copy of ``pneumonia/pixels.py``, the one inference preprocessing):
transformers loads both from the folder (and ``xray_cnn.py``, a copy of ``pneumonia/cnn.py``, for
the from-scratch CNN), so nothing of the ``pneumonia`` package is needed here. Plain ``TimmWrapper``
would be silently wrong on these folders: it skips the X-ray intensity standardisation and the
calibration temperature, and runs the float16 weights in float16.

The pipeline gives scores only: the project answers PNEUMONIA when P(PNEUMONIA) reaches the
``pneumonia_at_least`` of ``model.config.answer_cutoffs`` at ``answer_level``, NORMAL when it is at
or below ``normal_at_most``, and UNCERTAIN between (not the top label). It has no
out-of-distribution gate (a CT or a photo gets an answer too) and reads no DICOM.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import timm
from PIL import Image, ImageOps
from transformers import BatchFeature, ImageClassificationPipeline, TimmWrapperConfig, TimmWrapperForImageClassification
from transformers.image_processing_utils import BaseImageProcessor

from .xray_pixels import data_config_from, preprocess


class PneumoniaXrayConfig(TimmWrapperConfig):
    """TimmWrapper's config plus what turns logits into the project's answer.

    ``temperature`` is a declared field on purpose: transformers drops an undeclared config key of
    that name (it takes it for a generation parameter), and the folder's ``config.json`` keeps the
    one key every reader of the folder (timm, ``load_classifier``, the app) shares.
    """

    model_type = "pneumonia_xray"

    temperature: float = 1.0        # calibration: probabilities = softmax(logits / temperature)
    threshold: float = 0.5          # the operating threshold on the calibrated P(PNEUMONIA)
    answer_level: float | None = None        # the level of answered accuracy the project's app answers at
    answer_cutoffs: list | None = None       # per level: NORMAL when P <= normal_at_most, PNEUMONIA when
                                             # P >= pneumonia_at_least, UNCERTAIN between (null: no film)
    xray_preprocessing: dict | None = None


class PneumoniaXrayForImageClassification(TimmWrapperForImageClassification):
    """The timm model with calibrated logits (divided by the temperature), so that the
    pipeline's softmax gives the probabilities ``load_classifier`` gives. A training ``loss``
    stays on the raw logits, as the project trained them."""

    config_class = PneumoniaXrayConfig

    def __init__(self, config: PneumoniaXrayConfig):
        _register_architecture(config.architecture)
        super().__init__(config)

    def forward(self, pixel_values, labels=None, return_dict: bool | None = None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = super().forward(pixel_values, labels=labels, return_dict=True, **kwargs)
        outputs.logits = outputs.logits / self.config.temperature
        return outputs if return_dict else outputs.to_tuple()


def _register_weight_names() -> None:
    """Save timm's weight names, as TimmWrapper does: the folder holds "conv1.weight", the wrapper
    "timm_model.conv1.weight". transformers renames them for its own classes only, and loading adds
    the prefix anyway (it is ``base_model_prefix``), but ``save_pretrained`` would keep it, and timm
    could no longer read the saved folder."""
    try:
        from transformers.conversion_mapping import register_checkpoint_conversion_mapping
        from transformers.core_model_loading import PrefixChange
    except ImportError:  # a transformers without this API: saved folders keep the prefix, for transformers only
        return
    register_checkpoint_conversion_mapping(
        PneumoniaXrayForImageClassification.__name__, [PrefixChange(prefix_to_add="timm_model")], overwrite=True
    )


_register_weight_names()


def _register_architecture(name: str) -> None:
    """Teach timm the project's from-scratch CNN (``xray_cnn.py``, a copy of ``pneumonia/cnn.py``)
    when the folder holds one and nothing registered it yet (``import pneumonia`` does)."""
    if name == "pneumonia_cnn" and not timm.is_model(name):
        from .xray_cnn import pneumonia_cnn  # noqa: F401  (registers it with timm)


class PneumoniaXrayImageProcessor(BaseImageProcessor):
    """``xray_pixels.preprocess`` on each image, with the numbers of the folder's ``config.json``
    (``pretrained_cfg`` and ``xray_preprocessing``): the pixels ``load_classifier`` feeds its model."""

    model_input_names = ["pixel_values"]

    def __init__(self, pretrained_cfg: dict, xray_preprocessing: dict | None = None, **kwargs):
        # The rest of config.json (the gate, the model's shape ...) is not the processor's business.
        super().__init__()
        self.pretrained_cfg = pretrained_cfg
        self.xray_preprocessing = dict(xray_preprocessing or {})
        self.data_config = data_config_from({"pretrained_cfg": pretrained_cfg})

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """Read config.json, as timm folders keep their preprocessing there, not in preprocessor_config.json."""
        kwargs.setdefault("image_processor_filename", "config.json")
        return super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list: PIL images (any mode) or NumPy arrays (H, W) or (H, W, C); a uint16
        array keeps its full depth, as ``pneumonia.open_image`` would read the film."""
        images = images if isinstance(images, (list, tuple)) else [images]
        intensity = self.xray_preprocessing.get("intensity", "none")
        crop = bool(self.xray_preprocessing.get("crop_borders", False))
        pixels = np.stack([preprocess(_as_pil(image), self.data_config, intensity, crop) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("data_config", None)  # derived from pretrained_cfg
        return output


def _as_pil(image) -> Image.Image:
    """A PIL image of an input; arrays as PIL reads them (uint16 -> I;16, HxWx3 uint8 -> RGB)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


class PneumoniaXrayPipeline(ImageClassificationPipeline):
    """The image-classification pipeline, reading files in their own mode: transformers' ``load_image``
    makes every image 8-bit RGB first, which clips a 16-bit film to white (a confident wrong answer)
    and drops transparency instead of laying it on black. URLs and base64 strings still go
    through ``load_image``, so they must hold 8-bit films."""

    def preprocess(self, image, timeout=None):
        if isinstance(image, str) and os.path.isfile(image):
            image = Image.open(image)
        if not isinstance(image, Image.Image):
            return super().preprocess(image, timeout=timeout)
        return self.image_processor(images=ImageOps.exif_transpose(image), return_tensors="pt").to(self.dtype)
