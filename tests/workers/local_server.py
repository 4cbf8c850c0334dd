"""Start the local inference server (`python -m workers.server`) for tests and benchmarks.

    with local_server("--adapters-dir", str(root)) as (base_url, process):
        ...

It runs under tests/processes.ManagedProcess: if it dies, the failing test names its
signal and last output.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.processes import ManagedProcess
from tests.workers.llama_server import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0


def health(base_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def wait_healthy(base_url: str, process: ManagedProcess, timeout: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while (status := health(base_url)) is None:
        process.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"local inference server not ready after {timeout:.0f}s\n{process.output_tail()}"
            )
        time.sleep(0.2)
    return status


@contextlib.contextmanager
def local_server(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, ManagedProcess]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "workers.server", "--port", str(port), *args]
    with ManagedProcess("local inference server", command, env=env, cwd=ROOT) as process:
        wait_healthy(base_url, process)
        yield base_url, process
