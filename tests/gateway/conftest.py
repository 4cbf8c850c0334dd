import json
import threading

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.test import Client

from apps.gateway import services
from apps.squads.models import Squad
from tests.factories import UserFactory
from tests.generation.conftest import json_prompt, remote_target, text_prompt  # noqa: F401
from tests.generation.fake_openai import FakeOpenAI


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
