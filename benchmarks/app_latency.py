"""The app as its users call it: cold start and /predict latency through gradio_client.

    python benchmarks/app_latency.py [--requests 8] [--callers 8] [--batch-size 8]

For the bundled model and for VGG16 (random weights: the timing is what matters; its int8 model
calibrated on training films), each on ONNX Runtime int8 and on PyTorch, `python app.py` is
started as a Space starts it:
  cold start    process start -> first /predict answer received
  answer        /predict alone: the decision and the bars
  + heat map    /predict, then /heatmap, as the page calls them: until the heat map is back
  1 caller      one client, requests one after another: p50 and p95 seconds
  HTTP API      the same lone caller through Gradio's HTTP API (upload, POST /call/predict, read the
                event stream) instead of gradio_client, whose result polling sleeps 50 ms per message
  8 callers     8 clients at once, each sending --requests uploads: p50, p95, requests/s
Then where a lone caller's answer goes: the same films through the same loader in this process,
timed step by step (decode, preprocessing, model); the rest of the end-to-end time is upload,
queue and HTTP. Each request sends a different real test X-ray from ../shared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pneumonia  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402
from train.export.onnx import export_fp32, quantize_int8  # noqa: E402

from gradio_client import Client, handle_file  # noqa: E402

BUNDLED = ROOT / "models" / "pneumonia-mobilenetv2"


def random_vgg16(folder: Path) -> Path:
    """A VGG16 model folder as training writes it, with untrained weights."""
    model = pneumonia.create_model("vgg16")
    timm.models.save_for_hf(model, folder, model_config={"label_names": list(pneumonia.LABEL_NAMES)},
                            safe_serialization=True)
    return folder


def with_onnx(folder: Path, calibration: list[Path]) -> Path:
    """The folder plus model.onnx and model.int8.onnx, calibrated on ``calibration`` films."""
    classifier = pneumonia.load_classifier(str(folder))
    pixels = classifier.pixels([pneumonia.open_image(f) for f in calibration])
    export_fp32(classifier.model, tuple(pixels.shape[1:]), folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", (pixels[i:i + 8] for i in range(0, len(pixels), 8)),
                  folder)
    return folder


def http_answer(http: httpx.Client, url: str, image: Path) -> float:
    """Seconds for one /predict answer through Gradio's HTTP API, as curl or a browser would call it."""
    started = time.perf_counter()
    with image.open("rb") as f:
        path = http.post(f"{url}gradio_api/upload", files={"files": (image.name, f)}).json()[0]
    event = http.post(f"{url}gradio_api/call/predict",
                      json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}).json()["event_id"]
    stream = http.get(f"{url}gradio_api/call/predict/{event}").text
    assert "event: complete" in stream, stream[-300:]
    return time.perf_counter() - started


def p50_p95(seconds: list[float]) -> str:
    return f"{np.percentile(seconds, 50):.3f} / {np.percentile(seconds, 95):.3f}"


def timed_request(client: Client, image: Path, heat_map: bool) -> float:
    started = time.perf_counter()
    upload = handle_file(str(image))
    client.predict(upload, api_name="/predict")
    if heat_map:
        client.predict(upload, api_name="/heatmap")
    return time.perf_counter() - started


def concurrent_callers(url: str, images: list[Path], callers: int, requests: int, heat_map: bool) -> tuple[list[float], float]:
    """Per-request seconds from ``callers`` clients at once, and the wall time for all of them."""
    clients = [Client(url, verbose=False) for _ in range(callers)]
    latencies: list[float] = []
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        for r in range(requests):
            latencies.append(timed_request(clients[index], images[(index * requests + r) % len(images)], heat_map))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - began


def measure_app(model: str, backend: str, images: list[Path], args) -> dict:
    started = time.perf_counter()
    env = {"PNEUMONIA_MODEL": model, "PNEUMONIA_BACKEND": backend, "PNEUMONIA_MAX_BATCH_SIZE": str(args.batch_size)}
    process, url = start_app(env)
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(images[0])), api_name="/predict")
        found = {"cold": time.perf_counter() - started}
        lone = images[1:args.requests + 1]
        with httpx.Client(timeout=120) as http:
            found["http"] = [http_answer(http, url, image) for image in lone]
        for heat_map in (False, True):
            found[heat_map, 1] = [timed_request(client, image, heat_map) for image in lone]
            latencies, wall = concurrent_callers(url, images, args.callers, args.requests, heat_map)
            found[heat_map, args.callers] = latencies
            found[heat_map, "rps"] = len(latencies) / wall
    finally:
        stop_app(process)
    return found


def in_process_steps(model: str, backend: str, images: list[Path], threads: int) -> dict[str, list[float]]:
    """Seconds per film for each step of /predict's work, in this process, as the app does it."""
    os.environ["PNEUMONIA_ONNX_THREADS"] = str(threads)
    classifier = pneumonia.load_classifier(model, backend=backend)
    steps: dict[str, list[float]] = {"decode": [], "preprocessing": [], "model": []}
    for image_path in [images[0], *images]:  # the first is a warm-up
        started = time.perf_counter()
        image = pneumonia.open_image(image_path)
        decoded = time.perf_counter()
        pixels = classifier.pixel_array([image])
        preprocessed = time.perf_counter()
        classifier.run(pixels)
        done = time.perf_counter()
        for name, seconds in zip(steps, (decoded - started, preprocessed - decoded, done - preprocessed)):
            steps[name].append(seconds)
    return {name: seconds[1:] for name, seconds in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per caller")
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers")
    parser.add_argument("--batch-size", type=int, default=8, help="the app's PNEUMONIA_MAX_BATCH_SIZE")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: the real X-rays are not at {DATA}; this benchmark sends them as uploads")
    images = sorted((DATA / "test" / "PNEUMONIA").iterdir())[: args.callers * args.requests + 1]
    threads = torch.get_num_threads()
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/app_latency.py --requests {args.requests} --callers {args.callers} "
          f"--batch-size {args.batch_size}\n")
    n = args.callers
    print(f"| model | backend | cold start (s) | 1 caller: answer p50 / p95 (s) | 1 caller: + heat map "
          f"| 1 caller, HTTP API: answer | {n} callers: answer | {n} callers: answer req/s | {n} callers: + heat map "
          f"| {n} callers: + heat map req/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    breakdown = []
    with tempfile.TemporaryDirectory() as tmp:
        calibration = sorted((DATA / "train" / "NORMAL").iterdir())[:16] + sorted((DATA / "train" / "PNEUMONIA").iterdir())[:16]
        vgg16 = str(with_onnx(random_vgg16(Path(tmp) / "vgg16"), calibration))
        served = pneumonia.load_classifier(str(BUNDLED), backend="auto")  # its compact file, as the app serves it
        bundled = f"bundled {json.loads((BUNDLED / 'training_config.json').read_text())['model']} " \
                  f"({served.data_config['input_size'][-1]} px)"
        runs = [(bundled, str(BUNDLED), served.backend),
                (bundled, str(BUNDLED), "pytorch"),
                ("VGG16, random weights (224 px)", vgg16, "onnx-int8"),
                ("VGG16, random weights (224 px)", vgg16, "pytorch")]
        for name, model, backend in runs:
            found = measure_app(model, backend, images, args)
            print(f"| {name} | {backend} | {found['cold']:.1f} | {p50_p95(found[False, 1])} | {p50_p95(found[True, 1])} "
                  f"| {p50_p95(found['http'])} | {p50_p95(found[False, n])} | {found[False, 'rps']:.2f} | {p50_p95(found[True, n])} "
                  f"| {found[True, 'rps']:.2f} |", flush=True)
            steps = in_process_steps(model, backend, images[1:args.requests + 1], threads)
            breakdown.append((name, backend, steps, float(np.median(found[False, 1])), float(np.median(found["http"]))))
    print("\nA lone caller's answer, step by step (medians, ms; the steps timed in this process on the same films):\n")
    print("| model | backend | decode | preprocessing | model | sum | end to end, gradio_client "
          "| the rest (upload, queue, HTTP, client polling) | end to end, HTTP API | the rest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, backend, steps, end_to_end, http in breakdown:
        medians = {step: 1000 * float(np.median(seconds)) for step, seconds in steps.items()}
        total = sum(medians.values())
        print(f"| {name} | {backend} | {medians['decode']:.1f} | {medians['preprocessing']:.1f} | {medians['model']:.1f} "
              f"| {total:.1f} | {1000 * end_to_end:.1f} | {1000 * end_to_end - total:.1f} | {1000 * http:.1f} "
              f"| {1000 * http - total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
