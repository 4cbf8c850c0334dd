import pytest

from apps.governance import services
from tests.factories import UserFactory
from tests.generation.conftest import fake_server  # noqa: F401  (fixture)

RULES = {
    "pii": {"email": "redact", "phone": "flag", "ssn": "block", "secret": "redact"},
    "blocked_terms": ["Project Falcon"],
}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def policy(squad):
    return services.policy_update(
        actor=UserFactory(username="compliance"), squad=squad, rules=RULES, note="first"
    )
