"""Uploads no chest film looks like are refused from their header, with the limit named."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import pneumonia
from pneumonia.image_files import MAX_PIXELS, MIN_SIDE, ImageOutOfLimits, UnreadableImage
from train.shift import dicom_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with one tiny data chunk:
    what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data, message", [
    (png(1, 1), "1x1 px is too small: the shorter side must be at least 64 px"),
    (png(63, 400), "63x400 px is too small"),
    (png(10000, 40), "10000x40 px is too small"),
    (png(2000, 300), "2000x300 px is 7 times longer than wide, no chest film's shape (at most 3:1)"),
    (png_header_only(9000, 9000), "9000x9000 px (81 megapixels) is over the 64-megapixel limit"),
    (png_header_only(20000, 20000), "400 megapixels is over the 64-megapixel limit"),  # PIL's bomb check, reworded
])
def test_images_outside_the_limits_are_refused_with_the_limit_named(data, message):
    with pytest.raises(ImageOutOfLimits, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        pneumonia.open_image(data)
    assert isinstance(refused.value, UnreadableImage)  # training and evaluate skip and count it like any bad file
    assert "upload" in refused.value.problem and str(refused.value).startswith("image bytes: ")
    # The header-only files hold no decodable pixels: refusing them by name shows nothing was decoded.


def test_a_dicom_is_checked_from_its_header():
    bomb = dicom_bytes(np.zeros((100, 100), np.uint16), Rows=20000, Columns=20000)  # 20 kB claiming 400 MP
    with pytest.raises(ImageOutOfLimits, match="20000x20000 px .* over the 64-megapixel limit"):
        pneumonia.open_image(bomb)
    with pytest.raises(ImageOutOfLimits, match="32x32 px is too small"):
        pneumonia.open_image(dicom_bytes(np.zeros((32, 32), np.uint16)))


def test_films_inside_the_limits_pass():
    for width, height in [(MIN_SIDE, MIN_SIDE), (224, 224), (2000, 2500), (1000, 2900)]:
        assert pneumonia.open_image(png(width, height)).size == (width, height)
    assert MAX_PIXELS >= 4300 * 4300 * 3  # the largest flat-panel detector's film, with room to spare
