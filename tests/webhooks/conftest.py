import pytest

from apps.squads.models import Squad
from apps.webhooks import services
from tests.factories import UserFactory
from tests.webhooks.receiver import Receiver


@pytest.fixture
def scheduled(monkeypatch):
    """Deliveries queued to Celery, as (delivery id, countdown), instead of a broker."""
    from apps.webhooks.tasks import deliver

    calls: list[tuple[int, float]] = []
    monkeypatch.setattr(
        deliver,
        "apply_async",
        lambda args, countdown=0, **kw: calls.append((args[0], countdown)),
    )
    return calls


@pytest.fixture
def receiver():
    """receiver(500, 200): a local server answering 500, then 200 to every later call."""
    started: list[Receiver] = []

    def make(*codes: int) -> Receiver:
        started.append(Receiver(list(codes) or [200]).start())
        return started[-1]

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def make_webhook(squad):
    def make(url: str = "http://127.0.0.1:9/hook", events=("version.created",), **kw):
        owner = UserFactory(username="owner")
        return services.webhook_create(
            actor=owner, squad=Squad.objects.get(slug="acme"), url=url, events=list(events), **kw
        )

    return make
