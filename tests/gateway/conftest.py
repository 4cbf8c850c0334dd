import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connection
from django.test import Client

from apps.gateway import services
from apps.squads.models import Squad
from tests.factories import UserFactory
from tests.generation.conftest import json_prompt, remote_target, text_prompt  # noqa: F401
from tests.generation.fake_openai import FakeOpenAI
from tests.processes import ManagedProcess
from tests.workers.llama_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def upstream():
    with FakeOpenAI() as server:
        yield server


def make_key(squad: Squad, **scope) -> str:
    scope.setdefault("targets", ["*"])
    scope.setdefault("prompts", ["*"])
    _, secret = services.service_key_create(
        actor=UserFactory(username="owner"), squad=squad, name="app", **scope
    )
    return secret


class V1:
    """Django's test client speaking the gateway's JSON with a service key."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def chat(self, body: object, **headers: str):
        return self.client.post(
            "/v1/chat/completions",
            data=body if isinstance(body, str) else json.dumps(body),
            content_type="application/json",
            headers={**self.headers, **headers},
        )

    def models(self):
        return self.client.get("/v1/models", headers=self.headers)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadedWSGIServer):
    # socketserver's default backlog of 5 resets a burst of 100 connections.
    request_queue_size = 512
    daemon_threads = True


@pytest.fixture
def gateway_server(transactional_db):
    """Studio's WSGI application on a threaded HTTP server on loopback (a thread per
    connection, like Django's runserver), for the openai client and the races."""
    server = _Server(("127.0.0.1", 0), _QuietHandler, allow_reuse_address=True)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _cache_url() -> str:
    cache = settings.CACHES["default"]
    if "Redis" in cache["BACKEND"]:
        return cache["LOCATION"]
    return f"filecache://{cache['LOCATION']}"


@dataclass(frozen=True)
class Served:
    url: str
    process: ManagedProcess  # gunicorn's master process

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.process.output_tail(60)

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []


@contextmanager
def gunicorn_server(
    tmp_path: Path, *args: str, app: str = "studio.asgi:application"
) -> Iterator[Served]:
    """Studio as `make run` serves it (gunicorn with uvicorn workers over the ASGI
    application) on the test database and cache, once /healthz answers. `args` add
    gunicorn options (e.g. --workers)."""
    port = free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "studio.settings.test",
        "DATABASE_URL": _database_url(),
        "CACHE_URL": _cache_url(),
        "STUDIO_DATA_DIR": str(settings.DATA_DIR),
        "STUDIO_LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        # Each worker writes its metric files here (an empty value meant the work tree).
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        app,
        "-c",
        "studio/gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        *(["-k", "uvicorn_worker.UvicornWorker"] if app.startswith("studio.asgi") else []),
        *args,
    ]
    base = f"http://127.0.0.1:{port}"
    with ManagedProcess("gunicorn", command, env=env, cwd=ROOT) as server:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                server.check_alive()
                assert time.monotonic() < deadline, server.output_tail()
                time.sleep(0.2)
        yield Served(base, server)


@pytest.fixture
def asgi_server(transactional_db, tmp_path):
    """Studio as `make run` serves it: gunicorn with one uvicorn worker over
    studio.asgi, on the test database (streams take the async path)."""
    with gunicorn_server(tmp_path, "--workers", "1") as served:
        yield served.url
