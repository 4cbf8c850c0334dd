from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("finetune", "0004_job_lease"),
    ]

    operations = [
        migrations.AddField(
            model_name="finetunejob",
            name="devices",
            field=models.PositiveSmallIntegerField(default=1),
        ),
        migrations.AddConstraint(
            model_name="finetunejob",
            constraint=models.CheckConstraint(
                condition=models.Q(devices__gte=1), name="finetune_job_devices_min_1"
            ),
        ),
    ]
