"""Load test: concurrent gradio_client callers send real films mixed with bad files and non-X-rays.

    python benchmarks/load_test.py [--callers 8] [--uploads 200] [--model models/pneumonia-mobilenetv2]

`python app.py` is started as a Space starts it. Each caller (its own gradio_client) sends
``--uploads`` files to /predict, one after another; of every 10 uploads, 8 are real test films
from ../shared, 1 a bad file (truncated, not an image, a DICOM without pixels, 1x1 px, a 2000x300
strip, a 20000x20000 PNG header) and 1 an image that is not a chest X-ray (a photo, a page, noise,
a blank image). Reported per kind: how many got an answer with bars, the out-of-distribution
gate's refusal, their own message (a bad file's name and problem), or anything else (errors);
which uploads got other than their kind expects (a film the gate refuses is listed, not an
error); p50 and p95 seconds; requests per second, and the server's resident memory (VmRSS) at start,
after the warm-up (the first 1/8 of the uploads), at the end, and at its peak.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import DATA, machine  # noqa: E402
from tests.live_app import start_app, stop_app  # noqa: E402
from tests.test_input_limits import png, png_header_only  # noqa: E402

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError, ValidationError  # noqa: E402


def bad_files(folder: Path, film: Path) -> dict[Path, str]:
    """Files the app must refuse, each with the message it must give."""
    made = {
        "truncated.jpeg": (film.read_bytes()[:2000], "truncated.jpeg is not a readable image"),
        "notes.png": (b"minutes of the meeting", "notes.png is not a readable image"),
        "report.dcm": (b"\0" * 128 + b"DICM", "report.dcm is not a readable image"),
        "dot.png": (png(1, 1), "dot.png: 1x1 px is too small"),
        "strip.png": (png(2000, 300), "strip.png: 2000x300 px is 7 times longer than wide"),
        "bomb.png": (png_header_only(20000, 20000), "bomb.png: 400 megapixels is over the 64-megapixel limit"),
    }
    for name, (data, _) in made.items():
        (folder / name).write_bytes(data)
    return {folder / name: message for name, (_, message) in made.items()}


def not_xrays(folder: Path) -> list[Path]:
    from skimage import data as samples

    rng = np.random.default_rng(0)
    images = {"cat.jpg": Image.fromarray(samples.chelsea()), "page.png": Image.fromarray(samples.page()),
              "noise.png": Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)),
              "white.png": Image.new("L", (512, 512), 255)}
    for name, image in images.items():
        image.save(folder / name)
    return [folder / name for name in images]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Uploads:
    """What upload number k (over all callers) sends, and what it must get back."""

    def __init__(self, films: list[Path], bad: dict[Path, str], others: list[Path]):
        self.films, self.bad, self.others = films, list(bad.items()), others

    def __call__(self, k: int) -> tuple[str, Path, str | None]:
        if k % 10 == 3:
            path, message = self.bad[k // 10 % len(self.bad)]
            return "bad file", path, message
        if k % 10 == 7:
            return "not an X-ray", self.others[k // 10 % len(self.others)], None
        return "film", self.films[k % len(self.films)], None


def outcome(client: Client, kind: str, path: Path, message: str | None) -> str:
    """What the upload got: "answer" (bars), "refused" (the gate's verdict), "its message" (a
    bad file's own message), "wrong message", or "error: ..." (anything else)."""
    try:
        label, decision, reading = client.predict(handle_file(str(path)), api_name="/predict")
    except (ValidationError, AppError) as err:
        return "its message" if message and message in str(err) else f"wrong message: {err}"
    except Exception as err:  # noqa: BLE001 - counted and reported, never hidden
        return f"error: {type(err).__name__}: {err}"
    if reading["outcome"] == "refuse" and "NOT ASSESSED" in decision:
        return "refused"
    if {c["label"] for c in label.get("confidences") or []} == {"NORMAL", "PNEUMONIA"}:
        return "answer"
    return f"error: unexpected answer {label}"


EXPECTED = {"film": "answer", "bad file": "its message", "not an X-ray": "refused"}


def run(url: str, uploads: Uploads, callers: int, per_caller: int, on_warm) -> tuple[list, float]:
    """(kind, seconds, outcome, file) per upload, and the wall time of the whole run."""
    results, lock, warm_after = [], threading.Lock(), callers * per_caller // 8
    clients = [Client(url, verbose=False) for _ in range(callers)]

    def caller(index: int) -> None:
        for j in range(per_caller):
            kind, path, message = uploads(index * per_caller + j)
            started = time.perf_counter()
            got = outcome(clients[index], kind, path, message)
            with lock:
                results.append((kind, time.perf_counter() - started, got, path.name))
                if len(results) == warm_after:
                    on_warm()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "pneumonia-mobilenetv2"))
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=200, help="per caller")
    args = parser.parse_args()
    films = sorted((DATA / "test").glob("*/*.jpeg"))
    if not films:
        sys.exit(f"error: no test films under {DATA}: the load test sends real X-rays from ../shared")
    with tempfile.TemporaryDirectory() as tmp:
        uploads = Uploads(films, bad_files(Path(tmp), films[0]), not_xrays(Path(tmp)))
        process, url = start_app({"PNEUMONIA_MODEL": args.model})
        memory = {"start": rss_mib(process.pid)}
        peak = [memory["start"]]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                peak.append(rss_mib(process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            results, seconds = run(url, uploads, args.callers, args.uploads,
                                   on_warm=lambda: memory.__setitem__("after warm-up", rss_mib(process.pid)))
            memory["end"] = rss_mib(process.pid)
        finally:
            sampling.set()
            sampler.join()
            stop_app(process)
    memory["peak"] = max(peak)
    print(report(results, seconds, memory, args))


def report(results: list, seconds: float, memory: dict, args) -> str:
    lines = [f"Machine: {machine()}; model {Path(args.model).name}; {args.callers} callers x {args.uploads} uploads",
             "", "| upload | sent | answer | refused by the gate | its own message | errors | p50 s | p95 s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in (*EXPECTED, "all"):
        chosen = [r for r in results if kind in (r[0], "all")]
        count = {name: sum(r[2] == name for r in chosen) for name in ("answer", "refused", "its message")}
        times = [r[1] for r in chosen]
        lines.append(f"| {kind} | {len(chosen)} | {count['answer']} | {count['refused']} | {count['its message']} | "
                     f"{len(chosen) - sum(count.values())} | {np.percentile(times, 50):.3f} | {np.percentile(times, 95):.3f} |")
    unexpected = sorted({(r[3], r[2][:160]) for r in results if r[2] != EXPECTED[r[0]]})
    growth = memory["end"] / memory["after warm-up"] - 1
    lines += ["", f"{len(results) / seconds:.1f} requests/s over {seconds:.0f} s", "",
              "| server RSS | MiB |", "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in memory.items()),
              "", f"growth after warm-up: {growth:+.1%} (target under 10%)", "",
              "Not what its kind expects:" if unexpected else "Every upload got what its kind expects.",
              *(f"- {name}: {got}" for name, got in unexpected)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
