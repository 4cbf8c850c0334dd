from django.db import migrations


def create(apps, schema_editor):
    ModelTarget = apps.get_model("generation", "ModelTarget")
    ModelTarget.objects.get_or_create(
        name="local",
        squad=None,
        defaults={
            "kind": "local",
            "base_model": "smollm2-135m-instruct",
            "description": "SmolLM2-135M-Instruct on the workers (CPU or CUDA)",
            "context_length": 8192,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("generation", "0001_initial")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
