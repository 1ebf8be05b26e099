"""Images that are not X-rays: probes that report what the out-of-distribution gate refuses, and
a separate set of photos and documents it learns from (none of the probes is among them).

Photos and scans come from scikit-image's bundled sample images (public domain or CC0, no
download); documents, noise, blank images and patterns are drawn here, seeded.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SKIMAGE_SAMPLES = {  # name in skimage.data -> (what it is, kind)
    "astronaut": ("a person (colour photo)", "photo"),
    "chelsea": ("a cat (colour photo)", "photo"),
    "coffee": ("a cup of coffee (colour photo)", "photo"),
    "rocket": ("a rocket (colour photo)", "photo"),
    "camera": ("a man with a camera (grey photo)", "photo"),
    "moon": ("the moon's surface (grey photo)", "photo"),
    "coins": ("coins (grey photo)", "photo"),
    "horse": ("a horse's silhouette (black and white)", "drawing"),
    "page": ("a scanned book page", "document"),
    "text": ("a photo of printed text", "document"),
}


# Other bundled samples, grey: what the gate's heads learn "a photo or a document" from.
LEARNING_SAMPLES = ("brick", "grass", "gravel", "clock", "cell", "hubble_deep_field", "logo", "checkerboard",
                    "binary_blobs", "retina", "colorwheel", "immunohistochemistry", "cat")


def photos_and_documents(size: int = 512, seed: int = 7) -> list[tuple[str, Image.Image]]:
    """(name, grey image) of photos, textures, drawings, pages and noise, none of them a probe."""
    from skimage import data as samples

    rng = np.random.default_rng(seed)
    found = [(name, _image(_sample(name, seed)).convert("L")) for name in LEARNING_SAMPLES]
    left, right = samples.stereo_motorcycle()[:2]
    found += [("motorcycle left", _image(left).convert("L")), ("motorcycle right", _image(right).convert("L"))]
    found += [(f"typed page {i}", typed_page(size - 64 * i, words_seed=10 + i)) for i in range(3)]
    found += [(f"noise {i}", Image.fromarray(np.clip(rng.normal(128, 20 + 30 * i, (size, size)), 0, 255).astype(np.uint8)))
              for i in range(2)]
    return found


def probe_images(size: int = 512, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """(name, kind, image) for each probe: photo, document, drawing, noise or blank."""
    from skimage import data as samples

    rng = np.random.default_rng(seed)
    probes = [(name, kind, _image(getattr(samples, name)())) for name, (_, kind) in SKIMAGE_SAMPLES.items()]
    probes += [
        ("typed letter", "document", typed_page(size)),
        ("uniform noise", "noise", Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))),
        ("gaussian noise", "noise", Image.fromarray(np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8))),
        ("colour noise", "noise", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))),
        ("white image", "blank", Image.new("L", (size, size), 255)),
        ("black image", "blank", Image.new("L", (size, size), 0)),
        ("grey image", "blank", Image.new("RGB", (size, size), (128, 128, 128))),
        ("grey gradient", "drawing", Image.linear_gradient("L").resize((size, size))),
    ]
    return probes


def _sample(name: str, seed: int) -> np.ndarray:
    """A scikit-image sample; binary_blobs is drawn afresh on each call unless seeded."""
    from skimage import data as samples

    return samples.binary_blobs(rng=seed) if name == "binary_blobs" else getattr(samples, name)()


def _image(pixels: np.ndarray) -> Image.Image:
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels)


def typed_page(size: int, words_seed: int = 1) -> Image.Image:
    """A white page of typed lines, like a scanned report or letter."""
    page = Image.new("L", (size, round(size * 1.3)), 250)
    draw = ImageDraw.Draw(page)
    words = "patient history findings impression chest radiograph report signed date clinic".split()
    rng = np.random.default_rng(words_seed)
    for line, y in enumerate(range(40, page.height - 40, 22)):
        text = " ".join(rng.choice(words, size=8))
        draw.text((40, y), text if line % 7 else text.upper(), fill=20)
    return page
