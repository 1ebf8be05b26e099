"""Shared fixtures. Every test runs offline: the Hub is never reached from here.

On CI (``CI`` set, as ``.ci/run`` does) nothing may be skipped: a missing data folder stops the
run with one message, and any other skip is reported as a failure. On a user's machine the
tests that need the real X-rays skip and say where they looked.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest

from tests.live_app import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PNEUMONIA_TEST_DATA") or ROOT.parent / "shared" / "data" / "chest_xray")
SCOPE = Path(os.environ.get("PNEUMONIA_TEST_SCOPE") or ROOT.parent / "shared" / "data" / "scope")
BUNDLED_MODEL = ROOT / "models" / "pneumonia-mobilenetv2"
# The compact ONNX file the app and the private mode serve from it: int8 when it holds parity, else fp16 weights.
SERVED_BACKEND = "onnx-int8" if (BUNDLED_MODEL / "model.int8.onnx").is_file() else "onnx-fp16"
LABELS = ("NORMAL", "PNEUMONIA")
ON_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    # Set before anything imports huggingface_hub/datasets, and inherited by the CLI subprocesses.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HOME", str(Path(config.rootpath) / ".pytest_cache" / "hf_home"))
    os.environ["TQDM_DISABLE"] = "1"


def missing_data() -> str | None:
    """Why the real X-rays cannot be read from DATA, or None when every class folder holds films."""
    for split in ("train", "test"):
        for label in LABELS:
            folder = DATA / split / label
            if not folder.is_dir() or not any(folder.iterdir()):
                return f"real chest X-rays not found at {DATA} ({split}/{label}/ is missing or empty)"
    return None


def missing_scope() -> str | None:
    """Why the scope images (what the gate must refuse or caution on) cannot be read, or None."""
    if not (SCOPE / "provenance.csv").is_file():
        return f"the scope images were not found at {SCOPE} (no provenance.csv)"
    return None


def pytest_sessionstart(session):
    if ON_CI and (problem := missing_data() or missing_scope()):
        pytest.exit(f"CI needs the whole suite, and {problem}. Put ../shared beside the checkout "
                    "(or set PNEUMONIA_TEST_DATA); unset CI to let these tests skip instead.", returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI a skip hides a broken path (the data is always there): report it as a failure."""
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {reason}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if problem := missing_data():
        pytest.skip(f"{problem}; they sit in ../shared beside the checkout, or set PNEUMONIA_TEST_DATA")
    return DATA


@pytest.fixture(scope="session")
def scope_set():
    """The real CT, MRI, other-body-part, side-view and adult films of ../shared/data/scope."""
    if problem := missing_scope():
        pytest.skip(f"{problem}; they sit in ../shared beside the checkout, or set PNEUMONIA_TEST_SCOPE")
    from train.gate.scope import load_scope

    return load_scope(SCOPE)


@pytest.fixture(scope="session")
def opened_scope(scope_set) -> list:
    """Each scope image opened once for the session (PIL), or None where it is unreadable."""
    import pneumonia
    from pneumonia.image_files import UnreadableImage

    opened = []
    for image in scope_set.images:
        try:
            opened.append(pneumonia.open_image(image))
        except UnreadableImage:
            opened.append(None)
    return opened


@pytest.fixture(scope="session")
def small_scope(scope_set) -> Path:
    """A scope folder of 3 real images from each source (symlinks and their provenance rows): what
    the CLI runs of the suite fit their gates on, in seconds rather than minutes."""
    return _small_scope()


@cache
def _small_scope() -> Path:
    folder = Path(_session_dir()) / "scope"
    folder.mkdir()
    with (SCOPE / "provenance.csv").open() as f:
        rows = list(csv.DictReader(f))
    kept, per_source = [], {}
    for row in rows:
        if per_source.setdefault(row["repo"], 0) < 3:
            per_source[row["repo"]] += 1
            kept.append(row)
            (folder / row["file"]).parent.mkdir(exist_ok=True)
            (folder / row["file"]).symlink_to(SCOPE / row["file"])
    with (folder / "provenance.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return folder


@cache
def _session_dir() -> str:
    """A folder for what the session builds before its fixtures run (removed at its end)."""
    return tempfile.mkdtemp(prefix="pneumonia-tests-")


@pytest.fixture(scope="session")
def film(data_dir):
    """film(label, index=0, split="test"): the index-th real X-ray of a class folder, by name."""
    @cache
    def listing(split: str, label: str) -> list[Path]:
        return sorted((data_dir / split / label).iterdir())

    return lambda label, index=0, split="test": listing(split, label)[index]


@pytest.fixture(scope="session")
def write_dicom():
    """write_dicom(path, stored, photometric, **tags): a DICOM of these stored pixels, as a PACS exports it."""
    from train.shift import dicom_bytes

    def write(path: Path, stored, photometric: str, **extra) -> Path:
        path.write_bytes(dicom_bytes(stored, photometric, **extra))
        return path

    return write


def run_cli(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m", "train"), timeout: int = 900):
    """Run the real training CLI in a subprocess, the way a user does."""
    return subprocess.run(
        [*launcher, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def call_cli(main, capsys, *args: str) -> subprocess.CompletedProcess:
    """A CLI's ``main(argv)`` in this process, as ``run_cli`` runs it in a new one but without the
    interpreter's start-up (seconds of imports): its exit status and what it printed."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, printed.out, printed.err)


def link_subset(source: Path, target: Path, per_class: int, splits=("train", "test")) -> Path:
    """A Kaggle-layout folder of symlinks to the first real images (nothing is copied)."""
    for split in splits:
        for label in LABELS:
            folder = target / split / label
            folder.mkdir(parents=True)
            for image in sorted((source / split / label).iterdir())[:per_class]:
                (folder / image.name).symlink_to(image)
    return target


# The one small model the suite trains for the app, evaluate, publish and learning tests: the real
# CLI on 192 real films for 48 steps, with the non-default preprocessing, the gate (fitted on the
# small scope set) and ONNX. Enough steps to learn (test_learning.py states by how much).
TRAINED_ARGS = ("--model", "cnn", "--image-size", "64", "--epochs", "4", "--max-train-samples", "192",
                "--max-eval-samples", "96", "--batch-size", "16", "--num-workers", "0",
                "--intensity", "clahe", "--crop-borders")


def pytest_sessionfinish(session):
    if _session_dir.cache_info().currsize:
        shutil.rmtree(_session_dir(), ignore_errors=True)


@pytest.fixture(scope="session")
def trained_model(data_dir, small_scope) -> Path:
    """A model folder written by `python -m train` on real films. Shared by the whole session:
    read it, never write into it (take ``trained_copy`` for that)."""
    out = Path(_session_dir()) / "trained" / "cnn"
    result = run_cli(*TRAINED_ARGS, "--scope-data", str(small_scope), "--dataset", str(data_dir), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def trained_copy(trained_model, tmp_path) -> Path:
    """A copy of the shared trained folder that a test may change (a card, a push, files removed)."""
    return Path(shutil.copytree(trained_model, tmp_path / trained_model.name, ignore=shutil.ignore_patterns("checkpoints")))


def run_initial_weights(folder: Path):
    """A run's model before its first step, rebuilt from its saved training_config.json."""
    from train.config import TrainConfig
    from train.run import initial_model

    return initial_model(TrainConfig(**json.loads((folder / "training_config.json").read_text()))).eval()


def unmoved_parameters(folder: Path) -> list[str]:
    """Parameters of a trained folder equal to the run's seeded initial values: none when the optimizer steps."""
    import pneumonia
    import torch

    trained = pneumonia.load_classifier(str(folder), backend="pytorch").model
    start = dict(run_initial_weights(folder).named_parameters())
    return [name for name, value in trained.named_parameters() if torch.equal(value, start[name])]


def recorded_predictions(folder: Path, split: str) -> list[dict]:
    """The rows of a model folder's predictions.csv for one split: file, label, p_pneumonia."""
    with (folder / "predictions.csv").open() as f:
        return [{**row, "p_pneumonia": float(row["p_pneumonia"])} for row in csv.DictReader(f) if row["split"] == split]


def clear_films(folder: Path, split: str = "test", margin: float = 0.7, cutoffs=None) -> list[dict]:
    """Recorded films whose P(PNEUMONIA) lies at least ``margin`` in log-odds from the folder's
    answer cut-offs at its default level (``pneumonia.answering``), each with the verdict it must
    get ("expected"): NORMAL at or below the NORMAL cut-off, PNEUMONIA at or above the PNEUMONIA
    one, "UNCERTAIN" between. The margin is twice the largest int8 drift, so every backend must
    agree: 0.345 in log-odds on the bundled model's 624 test films. In log-odds, not in P, because
    the cut-offs sit near 0 and 1 (0.05, 0.89), where int8 moves P by little but the log-odds as
    much as anywhere. ``cutoffs`` (a ``pneumonia.answering.Cutoffs``) stands in for the folder's."""
    from pneumonia.answering import levels_from_config

    if cutoffs is None:
        levels, default = levels_from_config(json.loads((folder / "config.json").read_text()))
        cutoffs = levels[default]
    lower = -math.inf if cutoffs.normal_at_most is None else log_odds(cutoffs.normal_at_most)
    upper = math.inf if cutoffs.pneumonia_at_least is None else log_odds(cutoffs.pneumonia_at_least)
    found = []
    for row in recorded_predictions(folder, split):
        x = log_odds(row["p_pneumonia"])
        if x <= lower - margin:
            found.append({**row, "expected": "NORMAL"})
        elif x >= upper + margin:
            found.append({**row, "expected": "PNEUMONIA"})
        elif lower + margin <= x <= upper - margin:
            found.append({**row, "expected": "UNCERTAIN"})
    return found


def log_odds(p: float) -> float:
    """log(p / (1 - p)), with P clipped to [1e-6, 1 - 1e-6] (about ±13.8): a band edge beyond 0 or 1,
    or a recorded P of 0 or 1 (the CSV's 6 decimals), stays finite."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p) - math.log1p(-p)


def app_endpoints(model_dir: Path):
    """The app's handlers on ``model_dir``, as `PNEUMONIA_MODEL=... python app.py` serves it."""
    import app

    return app.Endpoints(app.choose_model({"PNEUMONIA_MODEL": str(model_dir)}).classifier)


@pytest.fixture(scope="session")
def bundled_app():
    """The app's handlers in-process on the bundled model (its compact ONNX file answers, gate on), as `make demo` serves it."""
    return app_endpoints(BUNDLED_MODEL)


@pytest.fixture(scope="session")
def bundled():
    """The bundled model on PyTorch: the backend its predictions.csv was recorded with."""
    import pneumonia

    return pneumonia.load_classifier(str(BUNDLED_MODEL), backend="pytorch")


@pytest.fixture(scope="session")
def bundled_test_films(data_dir) -> tuple[list[dict], list]:
    """All 624 official test films as the bundled predictions.csv lists them, and the images."""
    import pneumonia

    rows = recorded_predictions(BUNDLED_MODEL, "test")
    return rows, [pneumonia.open_image(data_dir / "test" / row["label"] / row["file"]) for row in rows]


def read_all(classifier, images, batch: int = 64) -> list:
    return [reading for start in range(0, len(images), batch) for reading in classifier.read(images[start:start + batch])]


@pytest.fixture(scope="session")
def bundled_readings(bundled, bundled_test_films) -> dict[str, list]:
    """The bundled model's readings (probabilities and gate verdict) of every test film, on
    PyTorch and on the compact ONNX file the app serves ("served"): about 7 s on 2 cores."""
    import pneumonia

    images = bundled_test_films[1]
    served = pneumonia.load_classifier(str(BUNDLED_MODEL), backend=SERVED_BACKEND)
    return {"pytorch": read_all(bundled, images), "served": read_all(served, images)}


@pytest.fixture(scope="session")
def live_app(data_dir):
    """One live server of the bundled model for the API and browser tests: (process, url); the
    process's ``log_path`` holds what it logs."""
    process, url = start_app({"PNEUMONIA_MODEL": str(BUNDLED_MODEL)})
    yield process, url
    stop_app(process)


@pytest.fixture(scope="session")
def app_url(live_app):
    return live_app[1]


# Headless on a server: no sandbox (CI runs as root), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-first-run", "--metrics-recording-only",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (``make setup-browser``), driven by Playwright, for the page tests."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not chromium:
        pytest.fail("no Chromium found: run `make setup-browser` (installs Debian's chromium) or set CHROMIUM=/path")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def lay_into_hub_cache(cache: Path, repo_id: str, folder: Path, names) -> None:
    """Files of ``folder`` laid out as ``huggingface_hub`` caches a download of ``repo_id``, so that
    ``hf-hub:`` loading works offline (HF_HUB_OFFLINE=1) on exactly these files."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    for name in names:
        (repo / "snapshots" / revision / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, repo / "snapshots" / revision / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
