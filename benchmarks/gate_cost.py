"""What a change costs a lone HTTP API caller of the bundled app: /predict latency of this
checkout against a baseline revision, both served at once and called in alternating rounds
(the machine is shared and noisy, so only the ratio measured in one run is reported).

    python benchmarks/gate_cost.py [--baseline HEAD] [--rounds 6] [--requests 20] [--served 0] [--side 0]

The baseline is checked out into a temporary git worktree beside this one (it shares this
checkout's .venv); both apps serve the model folder each checkout bundles, on its default backend.
``--served N`` first sends each app N calls, as a Space that has been up a while has answered
(each HTTP API call is a new Gradio session); the server's resident memory (VmRSS) is read after
the warm-up call and at the end. ``--side N`` uploads each film resized to N px on its longer side
(PNG), as a hospital's full-resolution film arrives, where decoding it costs more than the model.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.app_latency import http_answer  # noqa: E402
from benchmarks.load_test import rss_mib  # noqa: E402
from benchmarks.train_throughput import DATA, machine  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with (its committed tree)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=20, help="requests per app per round")
    parser.add_argument("--served", type=int, default=0, help="calls each app answers before the measured rounds")
    parser.add_argument("--side", type=int, default=0, help="upload the films at this longer side in px (0: as stored)")
    args = parser.parse_args()
    images = sorted((DATA / "test" / "PNEUMONIA").iterdir())[:args.requests]
    with tempfile.TemporaryDirectory() as tmp:
        if args.side:
            images = [_resized(image, args.side, Path(tmp)) for image in images]
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        (baseline / ".venv").symlink_to(ROOT / ".venv")
        apps = {}
        try:
            for name, checkout in (("baseline", baseline), ("this checkout", ROOT)):
                bundled, = (checkout / "models").glob("pneumonia-*")  # each checkout bundles one model folder
                apps[name] = start_app({"PNEUMONIA_MODEL": str(bundled)}, cwd=checkout)
            seconds = {name: [] for name in apps}
            with httpx.Client(timeout=120) as http:
                for name, (_, url) in apps.items():
                    http_answer(http, url, images[0])  # warm-up
                memory = {name: [rss_mib(process.pid)] for name, (process, _) in apps.items()}
                for name, (_, url) in apps.items():
                    for served in range(args.served):
                        http_answer(http, url, images[served % len(images)])
                for _ in range(args.rounds):
                    for name, (_, url) in apps.items():
                        seconds[name] += [http_answer(http, url, image) for image in images]
                for name, (process, _) in apps.items():
                    memory[name].append(rss_mib(process.pid))
        finally:
            for process, _ in apps.values():
                stop_app(process)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/gate_cost.py --baseline {args.baseline} --rounds {args.rounds} "
          f"--requests {args.requests} --served {args.served} --side {args.side}\n")
    print("| app | served before | requests | HTTP /predict p50 (ms) | p95 (ms) | p50 / baseline's "
          "| RSS after warm-up (MiB) | RSS at end (MiB) |\n|---|---|---|---|---|---|---|---|")
    base = float(np.median(seconds["baseline"]))
    for name, found in seconds.items():
        print(f"| {name} | {args.served} | {len(found)} | {1000 * np.median(found):.1f} "
              f"| {1000 * np.percentile(found, 95):.1f} | {np.median(found) / base:.2f} "
              f"| {memory[name][0]:.0f} | {memory[name][1]:.0f} |")


def _resized(image: Path, side: int, folder: Path) -> Path:
    with Image.open(image) as film:
        scale = side / max(film.size)
        resized = film.convert("L").resize((round(film.width * scale), round(film.height * scale)), Image.BICUBIC)
    resized.save(folder / f"{image.stem}.png")
    return folder / f"{image.stem}.png"


if __name__ == "__main__":
    main()
