"""The private mode in headless Chromium on this machine: how long the page takes to be ready
(ONNX Runtime Web's session created), how long a film takes from its file to its answer (decode,
preprocessing, model, gate), and what the page downloads, as sent and gzipped.

    python benchmarks/private_mode.py [--loads 5] [--films 40]

Needs `make web` (the runtime's local copy) and `make setup-browser` (Chromium). Films: test films
at their stored 224 px, and the same films upscaled to about 2000 x 2400 px and saved as JPEG
(quality 95), as a full-resolution film arrives.
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import BUNDLED_MODEL, CHROMIUM_ARGS, DATA  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402
from tests.test_private_mode import read_in_browser, wait_for  # noqa: E402


def machine(chromium: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, {version}, wasm with 1 thread"


def full_resolution_films(films: list[Path], folder: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i, film in enumerate(films):
        path = folder / f"large_{i}.jpeg"
        Image.open(film).convert("L").resize((2000, 2400), Image.BICUBIC).save(path, quality=95)
        paths.append(path)
    return paths


def page_load(context, url: str) -> tuple[float, int, dict]:
    """ms to a created session, the bytes the responses' bodies took on the wire, and the ms of
    the load's two phases (files fetched and checked; ONNX Runtime's session created)."""
    page = context.new_page()
    responses = []
    page.on("requestfinished", lambda request: responses.append(request))
    page.goto(url + "private/")
    wait_for(page, "window.privateMode.ready || window.privateMode.error")
    ready, phases = page.evaluate("[window.privateMode.readyMs, window.privateMode.phases]")
    sent = sum(request.sizes()["responseBodySize"] for request in responses)
    page.close()
    return ready, sent, phases


def download_sizes() -> tuple[int, int]:
    """The page's files: bytes, and bytes gzipped (what a gzip-serving host sends)."""
    import pneumonia
    from pneumonia.backends import ONNX_FILES
    from pneumonia.private_mode import gate_file

    served = pneumonia.load_classifier(str(BUNDLED_MODEL), backend="auto")  # the compact file the page fetches
    files = [*ROOT.glob("web/*.html"), *ROOT.glob("web/js/*.js"), *(ROOT / "web" / "vendor").glob("*.*"),
             BUNDLED_MODEL / "config.json", BUNDLED_MODEL / ONNX_FILES[served.backend],
             BUNDLED_MODEL / gate_file(served.config)]
    raw = sum(f.stat().st_size for f in files)
    return raw, sum(len(gzip.compress(f.read_bytes(), 6)) for f in files)


def per_film(page, paths: list[Path]) -> tuple[list[float], list[float]]:
    """ms from file to answer, and of those the decode's, per film."""
    found = read_in_browser(page, paths)
    assert all(f["outcome"] != "unreadable" for f in found), found
    return [f["totalMs"] for f in found], [f["decodedMs"] for f in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="page loads timed (the first one with an empty cache)")
    parser.add_argument("--films", type=int, default=40, help="films of each size timed, after 3 untimed")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    films = sorted((DATA / "test" / "PNEUMONIA").glob("*.jpeg"))[:3 + args.films]
    process, url = start_app({"PNEUMONIA_MODEL": str(BUNDLED_MODEL)})
    folder = Path(tempfile.mkdtemp())
    try:
        large = full_resolution_films(films, folder)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context()  # one browser cache: the first load finds it empty, the next ones full
            loads = [page_load(context, url) for _ in range(args.loads)]
            page = browser.new_page()
            page.goto(url + "private/")
            wait_for(page, "window.privateMode.ready")
            small_ms, small_decode = (times[3:] for times in per_film(page, films))
            large_ms, large_decode = (times[3:] for times in per_film(page, large))
            browser.close()
    finally:
        stop_app(process)
        shutil.rmtree(folder, ignore_errors=True)
    raw, zipped = download_sizes()
    print(f"machine: {machine(chromium)}")
    print("| what | median | p95 / range | target |\n|---|---|---|---|")
    print(f"| page ready, first load (empty cache) | {loads[0][0] / 1000:.2f} s | | <= 2 s |")
    print(f"| of which files fetched and checked / session created | {loads[0][2]['fetched'] / 1000:.2f} s / "
          f"{loads[0][2]['session'] / 1000:.2f} s | | |")
    warm = [ms for ms, _, _ in loads[1:]]
    if warm:
        print(f"| page ready, reloads with the browser's cache ({len(warm)}) | {statistics.median(warm) / 1000:.2f} s | {min(warm) / 1000:.2f}-{max(warm) / 1000:.2f} s | |")
    rows = (("224 px film (stored JPEG)", small_ms, small_decode, "<= 50 ms"),
            ("2000 x 2400 px JPEG film", large_ms, large_decode, "<= 150 ms"))
    for name, times, decode, target in rows:
        p95 = sorted(times)[int(0.95 * (len(times) - 1))]
        print(f"| {name}, file to answer ({len(times)} films) | {statistics.median(times):.1f} ms | {p95:.1f} ms | {target} |")
        print(f"| of which decoded to grey pixels | {statistics.median(decode):.1f} ms | | |")
    print(f"| download, first load, as the app sends it | {loads[0][1] / 1e6:.1f} MB | | |")
    print(f"| download, the page's files gzipped | {zipped / 1e6:.1f} MB | ({raw / 1e6:.1f} MB raw) | <= 8 MB |")


if __name__ == "__main__":
    main()
