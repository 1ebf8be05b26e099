"""The app as users meet it: a live server started by the test, called with gradio_client."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import ROOT
from tests.test_units import _write_dicom

pytestmark = pytest.mark.slow
BUNDLED = ROOT / "models" / "pneumonia-cnn"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data_dir):
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "PNEUMONIA_MODEL": str(BUNDLED)}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            client = Client(url, verbose=False)
            break
        except Exception:
            if process.poll() is not None:
                pytest.fail(f"app.py exited: {process.stdout.read()[-3000:]}")
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("app.py did not answer within 120 s")
    yield client
    process.terminate()
    process.wait(timeout=30)


def _p_pneumonia(label: dict) -> float:
    return next(c["confidence"] for c in label["confidences"] if c["label"] == "PNEUMONIA")


def test_real_xrays_and_dicom_through_the_api(server, data_dir, tmp_path):
    image = sorted((data_dir / "test" / "PNEUMONIA").iterdir())[0]
    label, decision, heatmap = server.predict(handle_file(str(image)), api_name="/predict")
    recorded = next(line.split(",")[3] for line in (BUNDLED / "predictions.csv").read_text().splitlines()
                    if line.startswith(f"test,{image.name},"))
    assert _p_pneumonia(label) == pytest.approx(float(recorded), abs=1e-5)
    assert "threshold" in decision and Image.open(heatmap).mode == "RGB"
    xray = np.asarray(Image.open(image).convert("L"), dtype=np.uint16) * 16
    mono1 = server.predict(handle_file(str(_write_dicom(tmp_path / "m1.dcm", 4095 - xray, "MONOCHROME1"))), api_name="/predict")
    mono2 = server.predict(handle_file(str(_write_dicom(tmp_path / "m2.dcm", xray, "MONOCHROME2"))), api_name="/predict")
    assert _p_pneumonia(mono1[0]) == pytest.approx(_p_pneumonia(mono2[0]), abs=1e-6)


def test_bad_uploads_get_messages_and_the_server_keeps_serving(server, data_dir, tmp_path):
    truncated = tmp_path / "truncated.jpeg"
    good = sorted((data_dir / "test" / "NORMAL").iterdir())[0]
    truncated.write_bytes(good.read_bytes()[:2000])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    report = tmp_path / "report.dcm"
    report.write_bytes(b"\0" * 128 + b"DICM")
    for bad, message in [(truncated, "not a readable image"), (not_an_image, "not a readable image"),
                         (report, "not a readable image")]:
        with pytest.raises(Exception, match=message):
            server.predict(handle_file(str(bad)), api_name="/predict")
    label, _, _ = server.predict(handle_file(str(good)), api_name="/predict")
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"}
