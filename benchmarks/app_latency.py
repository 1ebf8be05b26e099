"""The app as its users call it: cold start and /predict latency through gradio_client.

    python benchmarks/app_latency.py [--requests 8] [--callers 8] [--batch-sizes 8 1]

For the bundled model and for VGG16 (random weights: the timing is what matters), each
with the app's batching on (max batch 8) and off (1):
  cold start  `python app.py` started -> first /predict answer received
  1 caller    one client, requests one after another: median and p90 seconds
  8 callers   8 clients at once, each sending --requests uploads: median and p90 seconds
              per request, and requests per second overall
Each request sends a different real test X-ray from ../shared.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import timm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pneumonia  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402

from gradio_client import Client, handle_file  # noqa: E402


def random_vgg16(folder: Path) -> Path:
    """A VGG16 model folder as training writes it, with untrained weights."""
    model = pneumonia.create_model("vgg16")
    timm.models.save_for_hf(model, folder, model_config={"label_names": list(pneumonia.LABEL_NAMES)},
                            safe_serialization=True)
    return folder


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def timed_predict(client: Client, image: Path) -> float:
    started = time.perf_counter()
    client.predict(handle_file(str(image)), api_name="/predict")
    return time.perf_counter() - started


def concurrent_callers(url: str, images: list[Path], callers: int, requests: int) -> tuple[list[float], float]:
    """Per-request seconds from ``callers`` clients at once, and the wall time for all of them."""
    clients = [Client(url, verbose=False) for _ in range(callers)]
    latencies: list[float] = []
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        for r in range(requests):
            latencies.append(timed_predict(clients[index], images[(index * requests + r) % len(images)]))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - began


def measure(model: str, batch_size: int, images: list[Path], args) -> dict:
    started = time.perf_counter()
    process, url = start_app({"PNEUMONIA_MODEL": model, "PNEUMONIA_MAX_BATCH_SIZE": str(batch_size)})
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(images[0])), api_name="/predict")
        cold = time.perf_counter() - started
        single = [timed_predict(client, image) for image in images[1:args.requests + 1]]
        many, wall = concurrent_callers(url, images, args.callers, args.requests)
    finally:
        stop_app(process)
    return {"cold": cold, "single": percentiles(single), "many": percentiles(many), "rps": len(many) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per caller")
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1], help="app max batch sizes to compare")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: the real X-rays are not at {DATA}; this benchmark sends them as uploads")
    images = sorted((DATA / "test" / "PNEUMONIA").iterdir())[: args.callers * args.requests + 1]
    print(f"machine: {machine()}\n")
    print(f"| model | max batch | cold start (s) | 1 caller median / p90 (s) | {args.callers} callers median / p90 (s) "
          f"| {args.callers} callers req/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"bundled resnet18_half (128 px)": str(ROOT / "models" / "pneumonia-resnet18-half"),
                  "VGG16, random weights (224 px)": str(random_vgg16(Path(tmp) / "vgg16"))}
        for name, model in models.items():
            for batch_size in args.batch_sizes:
                found = measure(model, batch_size, images, args)
                print(f"| {name} | {batch_size} | {found['cold']:.1f} | {found['single'][0]:.3f} / {found['single'][1]:.3f} "
                      f"| {found['many'][0]:.3f} / {found['many'][1]:.3f} | {found['rps']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
