"""Cold start of the app as a Space starts it, with PyTorch loaded lazily (for the first heat map)
and with torch and timm imported before the app, as it was: seconds from process start to the
first /predict answer, and the server's resident memory then and after its first heat map.

    python benchmarks/cold_start.py [--rounds 3]

The two variants alternate, round after round, on the bundled model (int8 ONNX); medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import DATA, machine  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402

VARIANTS = {
    "torch loaded lazily (now)": [sys.executable, "app.py"],
    "torch + timm imported at start": [sys.executable, "-c", "import torch, timm, runpy; runpy.run_path('app.py', run_name='__main__')"],
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_start(command: list[str], film: Path) -> dict[str, float]:
    started = time.perf_counter()
    process, url = start_app({}, command=command)
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(film)), api_name="/predict")
        found = {"cold": time.perf_counter() - started, "rss": rss_mb(process.pid)}
        client.predict(handle_file(str(film)), api_name="/heatmap")
        found["rss_heat"] = rss_mb(process.pid)
    finally:
        stop_app(process)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    film = sorted((DATA / "test" / "PNEUMONIA").iterdir())[0]
    found = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, command in VARIANTS.items():
            found[name].append(one_start(command, film))
    print(f"Machine: {machine()}; {args.rounds} rounds, medians")
    print("| app start | cold start to first /predict answer (s) | RSS then (MB) | RSS after a heat map (MB) |")
    print("|---|---|---|---|")
    for name, runs in found.items():
        cold, rss, heat = (statistics.median(run[key] for run in runs) for key in ("cold", "rss", "rss_heat"))
        print(f"| {name} | {cold:.2f} | {rss:.0f} | {heat:.0f} |")


if __name__ == "__main__":
    main()
