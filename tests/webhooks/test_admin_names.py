from apps.webhooks.models import WebhookDelivery


def test_the_admin_says_webhook_deliveries():
    assert WebhookDelivery._meta.verbose_name_plural == "webhook deliveries"
