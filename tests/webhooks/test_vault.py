"""Signing secrets are encrypted at rest with a rotatable key; the data migration
encrypts the rows that existed before."""

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.audit.models import AuditEvent
from apps.webhooks import vault
from apps.webhooks.models import Webhook

pytestmark = pytest.mark.django_db


def _stored(webhook_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_encrypted FROM webhooks_webhook WHERE id = %s", [webhook_id])
        return cursor.fetchone()[0]


def test_the_database_holds_no_usable_secret(make_webhook) -> None:
    webhook, secret = make_webhook()
    stored = _stored(webhook.pk)
    assert secret.startswith("whsec_")
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert Webhook.objects.get(pk=webhook.pk).secret == secret


def test_rotating_the_key_re_encrypts_every_secret(make_webhook, settings) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.STUDIO_WEBHOOK_SECRET_KEYS = old
    first, first_secret = make_webhook(url="https://a.example/hook")
    second, second_secret = make_webhook(url="https://b.example/hook")
    before = _stored(first.pk)

    settings.STUDIO_WEBHOOK_SECRET_KEYS = f"{new},{old}"  # new first, old still decrypts
    assert Webhook.objects.get(pk=first.pk).secret == first_secret
    call_command("webhook_secrets_rotate")
    assert _stored(first.pk) != before
    assert AuditEvent.objects.filter(
        action="webhook.secrets_reencrypted", data__webhooks=2
    ).exists()

    settings.STUDIO_WEBHOOK_SECRET_KEYS = new  # the old key dropped
    assert Webhook.objects.get(pk=first.pk).secret == first_secret
    assert Webhook.objects.get(pk=second.pk).secret == second_secret
    settings.STUDIO_WEBHOOK_SECRET_KEYS = old
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        Webhook.objects.get(pk=first.pk).secret  # noqa: B018


def test_a_malformed_key_is_a_configuration_error(settings) -> None:
    settings.STUDIO_WEBHOOK_SECRET_KEYS = "not-a-key"
    with pytest.raises(ImproperlyConfigured, match="entry 1 is not a Fernet key"):
        vault.encrypt("whsec_x")


@pytest.mark.django_db(transaction=True)
def test_migration_encrypts_existing_plain_secrets() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("webhooks", "0001_initial")])
    old_apps = executor.loader.project_state([("webhooks", "0001_initial")]).apps
    Squad = old_apps.get_model("squads", "Squad")
    squad = Squad.objects.create(name="Old", slug="old")
    plain = "whsec_" + "A" * 43 + "="
    hook = old_apps.get_model("webhooks", "Webhook").objects.create(
        squad_id=squad.pk, url="https://r.example/h", events=["label.moved"], secret=plain
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert plain not in _stored(hook.pk)
    assert Webhook.objects.get(pk=hook.pk).secret == plain
