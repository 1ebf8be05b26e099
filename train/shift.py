"""The shifted validation: the held-out films as another site's scanner might deliver them.

Each validation film gets one seeded, fixed draw of what differs between sites: a crop,
a small rotation or black borders; resolution loss and blur; gamma, contrast and brightness;
then either JPEG re-compression or the app's own path for a full-resolution upload (scaled
up, saved as PNG, JPEG or 12-bit DICOM, and read back with ``open_image``). Kinds that the
training augmentation also uses are drawn from strengths outside ``TRAIN_RANGES``, so the
score measures robustness beyond what training saw, not the augmentation.

Same seed and film name, same shifted film: every run of a comparison sees the same set.
"""
from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageFilter

from train.augment import adjust_brightness, adjust_contrast, apply_gamma
from pneumonia.image_files import open_image

# Strengths, each drawn from one of two intervals (below or above the training range).
SHIFT_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "blur_sigma": ((1.2, 2.5),),             # pixels of a 224 px film
    "resolution": ((0.3, 0.5),),             # downscale factor before scaling back up
    "gamma": ((0.55, 0.75), (1.33, 1.8)),
    "contrast": ((0.6, 0.8), (1.2, 1.4)),
    "brightness": ((0.7, 0.82), (1.18, 1.3)),
}
# Cut off one or two sides: one side leaves an aspect ratio below 0.84, two sides an area
# below 71% or a ratio below 0.68, all outside the training crops (CROP_SCALE, CROP_RATIO).
CROP_SHARE = (0.16, 0.25)
ROTATION_DEGREES = (2.0, 8.0)  # either direction, black corners
BORDER_SHARE = (0.03, 0.12)    # black margin added on one to four sides
JPEG_QUALITY = (15, 40)
UPLOAD_LONG_SIDE = (1000, 2200)  # pixels of the full-resolution file
UPLOAD_ASPECT = (1.0, 1.4)       # width / height of the uploaded file
UPLOAD_FORMATS = ("png", "jpeg", "dicom")
KIND_PROBABILITY = 0.5


def shifted_film(image: Image.Image, name: str, seed: int) -> Image.Image:
    """``image`` as the shifted validation holds it: a fixed draw for (``seed``, ``name``)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    film = image.convert("L")
    for kind in (_crop, _rotate, _borders, _resolution, _blur, _intensity):
        if rng.random() < KIND_PROBABILITY:
            film = kind(film, rng)
    return _as_upload(film, rng) if rng.random() < 0.5 else _recompress(film, rng)


def _strength(rng: np.random.Generator, kind: str) -> float:
    intervals = SHIFT_RANGES[kind]
    low, high = intervals[rng.integers(len(intervals))]
    return float(rng.uniform(low, high))


def _crop(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = film.size
    cut = [0.0] * 4  # left, top, right, bottom
    for side in rng.choice(4, size=rng.integers(1, 3), replace=False):
        cut[side] = rng.uniform(*CROP_SHARE)
    box = (cut[0] * width, cut[1] * height, width - cut[2] * width, height - cut[3] * height)
    return film.crop(tuple(round(v) for v in box))


def _rotate(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(*ROTATION_DEGREES) * rng.choice((-1, 1))
    return film.rotate(angle, resample=Image.BILINEAR, fillcolor=0)


def _borders(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = film.size
    pad = [round(rng.uniform(*BORDER_SHARE) * (width if i % 2 == 0 else height)) if rng.random() < 0.5 else 0
           for i in range(4)]  # left, top, right, bottom
    if not any(pad):
        pad[rng.integers(4)] = round(BORDER_SHARE[1] * width)
    canvas = Image.new("L", (width + pad[0] + pad[2], height + pad[1] + pad[3]), 0)
    canvas.paste(film, (pad[0], pad[1]))
    return canvas.resize(film.size, Image.BILINEAR)  # the same film size: the borders take space


def _resolution(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = _strength(rng, "resolution")
    small = (max(8, round(film.width * factor)), max(8, round(film.height * factor)))
    return film.resize(small, Image.BILINEAR).resize(film.size, Image.BILINEAR)


def _blur(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    return film.filter(ImageFilter.GaussianBlur(_strength(rng, "blur_sigma") * min(film.size) / 224))


def _intensity(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    steps = [("gamma", apply_gamma), ("contrast", adjust_contrast), ("brightness", adjust_brightness)]
    for index in rng.permutation(3)[: rng.integers(1, 4)]:
        name, step = steps[index]
        film = step(film, _strength(rng, name))
    return film


def _recompress(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    film.save(buffer, "JPEG", quality=int(rng.integers(*JPEG_QUALITY, endpoint=True)))
    return open_image(buffer.getvalue())


def _as_upload(film: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The film as a full-resolution file read back by the app's ``open_image``."""
    long_side = int(rng.integers(*UPLOAD_LONG_SIDE, endpoint=True))
    aspect = rng.uniform(*UPLOAD_ASPECT)
    size = (long_side, round(long_side / aspect))
    large = film.resize(size, Image.BICUBIC)
    kind = UPLOAD_FORMATS[rng.integers(len(UPLOAD_FORMATS))]
    if kind == "dicom":
        stored = np.asarray(large, dtype=np.uint16) * 16  # 12-bit
        inverted = rng.random() < 0.5
        data = dicom_bytes(4095 - stored if inverted else stored, "MONOCHROME1" if inverted else "MONOCHROME2")
    else:
        buffer = io.BytesIO()
        large.save(buffer, kind.upper(), **({"quality": 90} if kind == "jpeg" else {"compress_level": 1}))
        data = buffer.getvalue()
    return open_image(data)


def dicom_bytes(stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **attributes) -> bytes:
    """A minimal single-frame grayscale DICOM file (secondary capture, CR) holding ``stored``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    allocated = 8 if bits_stored <= 8 else 16
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = allocated, bits_stored, bits_stored - 1, 0
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.PixelData = stored.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()  # signed: two's complement
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
