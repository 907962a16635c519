"""A real Chroma server for tests: ``chroma run`` from the venv, on loopback, in a temporary folder.

Use :func:`chroma_server` as a pytest fixture (import it into a test module) or
:func:`running_chroma_server` as a context manager. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _chroma_cli() -> Path:
    """The ``chroma`` entry point next to this interpreter (the venv's bin), never one from PATH."""
    cli = Path(sys.executable).parent / "chroma"
    if not cli.exists():
        pytest.skip(f"the chroma CLI is not installed next to {sys.executable}")
    return cli


def _wait_for_heartbeat(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    url = f"http://{HOST}:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma run exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"chroma run did not answer {url} within {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def running_chroma_server(path: Path) -> Iterator[tuple[str, int]]:
    """Start ``chroma run --path PATH --host 127.0.0.1 --port FREE``; yield ``(host, port)``; stop it."""
    path.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = path.parent / f"{path.name}-server.log"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "NO_COLOR": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(_chroma_cli()), "run", "--path", str(path), "--host", HOST, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_for_heartbeat(proc, port, log_path)
        yield HOST, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a Chroma server started once for the test module."""
    with running_chroma_server(tmp_path_factory.mktemp("chroma-server") / "data") as address:
        yield address
