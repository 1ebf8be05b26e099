"""The private mode's pixel steps (web/js/pixels.js), run by Node.js, against Pillow: the model's
resize, equalisation and input tensor, and the gate's thumbnail, on real films at their own size,
upscaled to full resolution and downscaled below the model's input. The browser tests
(tests/test_private_mode.py) then compare whole readings; these pin each step, fast."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import pneumonia
from pneumonia.pixels import model_input, to_model_mode
from tests.conftest import BUNDLED_MODEL, ROOT

SIZES = [None, (1733, 2011), (2000, 2400), (4000, 3001), (90, 75), (300, 260), (257, 900), (513, 511)]
# The other presets' resize: a centre crop after a shorter-side resize (timm's default crop_pct 0.875).
CENTRE_CROP = {"input_size": [3, 224, 224], "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center",
               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

RUNNER = """
import fs from "fs";
import { modelInput, thumbnail } from "%s/web/js/pixels.js";
import { thumbnailSize } from "%s/web/js/gate.js";
const cases = JSON.parse(fs.readFileSync(process.argv[2]));
const out = cases.map(({ raw, width, height, config }) => {
  const plane = { width, height, data: new Uint8Array(fs.readFileSync(raw)) };
  const input = modelInput(plane, config).pixels;
  const size = thumbnailSize(width, height);
  fs.writeFileSync(raw + ".input", Buffer.from(input.buffer));
  if (size) fs.writeFileSync(raw + ".thumb", thumbnail(plane, size[0], size[1]).data);
  return size;
});
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node():
    found = shutil.which("node")
    if not found:
        pytest.skip("Node.js not found: `make web` installs it (Debian's nodejs) with the private mode's packages")
    return found


def test_the_browser_pixels_are_pillows(node, film, tmp_path):
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    other = {**config, "pretrained_cfg": CENTRE_CROP, "xray_preprocessing": {"intensity": "none"}}
    cases, expected = [], []
    for i, size in enumerate(SIZES):
        grey = to_model_mode(pneumonia.open_image(film("NORMAL" if i % 2 else "PNEUMONIA", i))).convert("L")
        grey = grey.resize(size, Image.BICUBIC) if size else grey
        for j, folder_config in enumerate((config, other)):
            if min(grey.size) < 256 and j:
                continue  # the centre crop needs at least 256 px
            raw = tmp_path / f"{i}_{j}.raw"
            np.asarray(grey).tofile(raw)
            cases.append({"raw": str(raw), "width": grey.width, "height": grey.height, "config": folder_config})
            thumb = grey.copy()
            thumb.thumbnail((256, 256))
            expected.append((model_input(grey, folder_config), thumb if thumb.size != grey.size else None))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "run.mjs").write_text(RUNNER % (ROOT, ROOT))
    done = subprocess.run([node, str(tmp_path / "run.mjs"), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads(done.stdout)
    for case, (want_input, want_thumb), size in zip(cases, expected, sizes, strict=True):
        got = np.fromfile(case["raw"] + ".input", dtype=np.float32).reshape(want_input.shape)
        assert np.array_equal(got, want_input), f"{case['width']}x{case['height']}: the input tensor differs"
        if want_thumb is None:
            assert size is None
            continue
        assert tuple(size) == want_thumb.size
        got_thumb = np.fromfile(case["raw"] + ".thumb", dtype=np.uint8).reshape(want_thumb.height, want_thumb.width)
        assert np.array_equal(got_thumb, np.asarray(want_thumb)), f"{case['width']}x{case['height']}: the thumbnail differs"
