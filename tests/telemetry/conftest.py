import io
import json
import logging
from collections.abc import Callable

import pytest
import structlog
from prometheus_client import REGISTRY


class Samples:
    """Read metric samples from the default registry; differences since `snapshot`."""

    def __init__(self) -> None:
        self.before: dict[tuple[str, tuple], float] = {}

    def value(self, name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def snapshot(self) -> "Samples":
        self.before = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect()
            for s in family.samples
        }
        return self

    def delta(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.value(name, **labels) - self.before.get(key, 0.0)


@pytest.fixture
def samples() -> Samples:
    return Samples().snapshot()


@pytest.fixture
def log_lines() -> Callable[[], list[dict]]:
    """The JSON lines the configured stdout handler writes, parsed: the real pipeline
    (structlog + stdlib records through ProcessorFormatter), its stream swapped for a
    buffer."""
    buffer = io.StringIO()
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler)
        and isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    assert handlers, "settings.LOGGING must put a structlog formatter on the root logger"
    previous = [h.setStream(buffer) for h in handlers]
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    for handler, stream in zip(handlers, previous, strict=True):
        handler.setStream(stream)
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def fake_server():
    from tests.generation.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        yield server
