"""Start `python app.py` the way a Space does, on a free local port (tests and benchmarks)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env: dict[str, str], timeout: float = 180, cwd: Path = ROOT,
              command: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """The app process (``cwd``'s app.py, or ``command``) and its URL, once the server answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", **env}
    # The app logs a line per upload: to a file, as a pipe nobody reads would fill and stall it.
    log = tempfile.NamedTemporaryFile("w+", prefix="app-", suffix=".log", delete=False)
    process = subprocess.Popen(command or [sys.executable, "app.py"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log_path = Path(log.name)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}: {process.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s")


def stop_app(process: subprocess.Popen) -> str:
    """Stop the app; returns what it logged."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    logged = process.log_path.read_text()
    process.log_path.unlink(missing_ok=True)
    return logged
