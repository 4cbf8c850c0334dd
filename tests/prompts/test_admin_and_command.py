import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from apps.audit.models import AuditEvent
from apps.prompts.models import Label
from tests.factories import PASSWORD, UserFactory
from tests.prompts.factories import make_prompt
from tests.reviews.factories import approve

pytestmark = pytest.mark.django_db


@pytest.fixture
def template(squad):
    return make_prompt(squad, UserFactory(username="owner"))


def test_command_moves_labels_through_the_gated_service(template):
    call_command("move_label", "acme", "support", "staging", "1", "--as", "engineer")
    assert Label.objects.get(name="staging").version.number == 1
    with pytest.raises(CommandError, match="Label 'production' is protected"):
        call_command("move_label", "acme", "support", "production", "1", "--as", "engineer")
    with pytest.raises(CommandError, match="not found"):
        call_command("move_label", "acme", "support", "staging", "1", "--as", "outsider")
    approve(template.latest_version)
    call_command(
        "move_label", "acme", "support", "production", "1", "--as", "owner", "--note", "go"
    )
    event = AuditEvent.objects.filter(action="prompt.label_moved").last()
    assert event.data["note"] == "go" and event.actor_label == "owner"


def test_admin_label_move_uses_the_service(template):
    staff = UserFactory(username="ops", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username=staff.username, password=PASSWORD)
    approve(template.latest_version)
    response = client.post(
        "/admin/prompts/label/add/",
        {"template": template.pk, "name": "production", "version": template.latest_version.pk},
    )
    assert response.status_code == 302, response.content[:1500]
    assert AuditEvent.objects.filter(action="prompt.label_moved", actor_label="ops").exists()
    # Versions are read-only in the console.
    version = template.latest_version
    assert client.post(f"/admin/prompts/promptversion/{version.pk}/delete/").status_code == 403
