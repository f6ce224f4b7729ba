# Batches run by the batch worker a chunk at a time; batches wait for input files still on their way;
# Mistral batch jobs with inline requests.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0004_mistral_batch_jobs"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="awaiting_files",
            field=models.JSONField(default=list),
        ),
        migrations.AddField(
            model_name="batch",
            name="inline_requests",
            field=models.JSONField(default=list),
        ),
        migrations.AddField(
            model_name="batch",
            name="cursor",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.CreateModel(
            name="BatchLine",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("position", models.PositiveIntegerField()),
                ("error", models.BooleanField(default=False)),
                ("line", models.TextField()),
                (
                    "batch",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lines",
                        to="inference.batch",
                    ),
                ),
            ],
            options={
                "ordering": ["position"],
                "constraints": [
                    models.UniqueConstraint(fields=("batch", "position"), name="inference_batch_line_once")
                ],
            },
        ),
    ]
