"""Shared fixtures. Every test runs offline: the Hub is never reached from here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_app import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
BUNDLED_MODEL = ROOT / "models" / "pneumonia-resnet18-half"


def pytest_configure(config):
    # Set before anything imports huggingface_hub/datasets, and inherited by the CLI subprocesses.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HOME", str(Path(config.rootpath) / ".pytest_cache" / "hf_home"))
    os.environ["TQDM_DISABLE"] = "1"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "train" / "NORMAL").is_dir():
        pytest.skip(f"real chest X-rays not found at {DATA} (they sit in ../shared beside the checkout)")
    return DATA


def run_cli(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m", "train"), timeout: int = 900):
    """Run the real training CLI in a subprocess, the way a user does."""
    return subprocess.run(
        [*launcher, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def link_subset(source: Path, target: Path, per_class: int, splits=("train", "test")) -> Path:
    """A Kaggle-layout folder of symlinks to the first real images (nothing is copied)."""
    for split in splits:
        for label in ("NORMAL", "PNEUMONIA"):
            folder = target / split / label
            folder.mkdir(parents=True)
            for image in sorted((source / split / label).iterdir())[:per_class]:
                (folder / image.name).symlink_to(image)
    return target


@pytest.fixture(scope="session")
def app_url(data_dir):
    """One live server of the bundled model for the API and browser tests."""
    process, url = start_app({"PNEUMONIA_MODEL": str(BUNDLED_MODEL)})
    yield url
    stop_app(process)
