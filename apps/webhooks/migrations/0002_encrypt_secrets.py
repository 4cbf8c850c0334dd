"""Signing secrets encrypted at rest: copy each plain secret into `secret_encrypted`
(Fernet, keys from STUDIO_WEBHOOK_SECRET_KEYS), then drop the plain column."""

from django.db import migrations, models


def encrypt_existing(apps, schema_editor):
    from apps.webhooks import vault

    Webhook = apps.get_model("webhooks", "Webhook")
    for webhook in Webhook.objects.using(schema_editor.connection.alias).only("id", "secret"):
        webhook.secret_encrypted = vault.encrypt(webhook.secret)
        webhook.save(update_fields=["secret_encrypted"])


def decrypt_existing(apps, schema_editor):
    from apps.webhooks import vault

    Webhook = apps.get_model("webhooks", "Webhook")
    for webhook in Webhook.objects.using(schema_editor.connection.alias).only(
        "id", "secret_encrypted"
    ):
        webhook.secret = vault.decrypt(webhook.secret_encrypted)
        webhook.save(update_fields=["secret"])


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="webhook",
            name="secret_encrypted",
            field=models.TextField(default=""),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="webhook",
            name="secret",
            field=models.CharField(max_length=200, default=""),
        ),
        migrations.RunPython(encrypt_existing, decrypt_existing),
        migrations.RemoveField(model_name="webhook", name="secret"),
    ]
