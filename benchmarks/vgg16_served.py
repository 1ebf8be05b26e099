"""A VGG16 folder served by the app as a Space serves it: int8 ONNX against fp32 ONNX.

    python benchmarks/vgg16_served.py runs/vgg16 [--rounds 3] [--requests 20]

For each backend, `python app.py` is started with PNEUMONIA_MODEL=FOLDER and PNEUMONIA_BACKEND set,
the two backends alternating round after round (medians):
  cold start   process start -> first /predict answer received (gradio_client)
  RSS          the server's resident memory then, and after its first heat map (which loads PyTorch)
  HTTP p50     /predict through Gradio's HTTP API, one caller, real test X-rays one after another
A folder whose int8 file missed the parity bar at export has none; its int8 file is then made here
the way the export makes it (static int8, calibrated on 32 training films), in a copy, and the
table says so: the cost of serving it is the same, the parity is the export's to judge.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.app_latency import http_answer  # noqa: E402
from benchmarks.cold_start import rss_mb  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from pneumonia.backends import ONNX_FILES  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402

BACKENDS = ("onnx-int8", "onnx-fp32")


def with_int8(folder: Path, copy: Path) -> tuple[Path, bool]:
    """The folder, or a copy with a static int8 file made as the export makes it; and whether it was made here."""
    if (folder / ONNX_FILES["onnx-int8"]).is_file():
        return folder, False
    import pneumonia
    from train.export.onnx import quantize_int8

    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoints"))
    classifier = pneumonia.load_classifier(str(copy), backend="onnx-fp32")
    films = sorted((DATA / "train" / "NORMAL").iterdir())[:16] + sorted((DATA / "train" / "PNEUMONIA").iterdir())[:16]
    pixels = classifier.pixels([pneumonia.open_image(f) for f in films])
    quantize_int8(copy / ONNX_FILES["onnx-fp32"], copy / ONNX_FILES["onnx-int8"],
                  (pixels[i:i + 8] for i in range(0, len(pixels), 8)), copy)
    return copy, True


def one_start(folder: Path, backend: str, films: list[Path]) -> dict[str, float]:
    started = time.perf_counter()
    process, url = start_app({"PNEUMONIA_MODEL": str(folder), "PNEUMONIA_BACKEND": backend})
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(films[0])), api_name="/predict")
        found = {"cold": time.perf_counter() - started, "rss": rss_mb(process.pid)}
        with httpx.Client(timeout=120) as http:
            found["http"] = statistics.median(http_answer(http, url, film) for film in films[1:])
        client.predict(handle_file(str(films[0])), api_name="/heatmap")
        found["rss_heat"] = rss_mb(process.pid)
    finally:
        stop_app(process)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a VGG16 folder written by `python -m train --model vgg16`")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="HTTP /predict calls per start")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: the real X-rays are not at {DATA}; this benchmark sends them as uploads")
    films = sorted((DATA / "test" / "PNEUMONIA").iterdir())[: args.requests + 1]
    with tempfile.TemporaryDirectory() as tmp:
        folder, made = with_int8(args.folder, Path(tmp) / args.folder.name)
        sizes = {b: (folder / ONNX_FILES[b]).stat().st_size / 2**20 for b in BACKENDS}
        found = {backend: [] for backend in BACKENDS}
        for _ in range(args.rounds):
            for backend in BACKENDS:
                found[backend].append(one_start(folder, backend, films))
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/vgg16_served.py {args.folder} --rounds {args.rounds} --requests {args.requests}"
          + ("  (int8 file made here: the folder's had missed the parity bar)" if made else "") + "\n")
    print("| backend | file (MB) | cold start to first /predict (s) | RSS then (MB) | RSS after a heat map (MB) "
          "| HTTP /predict p50 (ms) |")
    print("|---|---|---|---|---|---|")
    for backend, runs in found.items():
        cold, rss, heat, http = (statistics.median(run[key] for run in runs) for key in ("cold", "rss", "rss_heat", "http"))
        print(f"| {backend} | {sizes[backend]:.0f} | {cold:.1f} | {rss:.0f} | {heat:.0f} | {1000 * http:.0f} |")


if __name__ == "__main__":
    main()
