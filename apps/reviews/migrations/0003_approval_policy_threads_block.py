from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0002_review_item_queue_page"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalpolicy",
            name="threads_block",
            field=models.BooleanField(default=False),
        ),
    ]
