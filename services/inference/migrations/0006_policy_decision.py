# Policy versions' decisions, cached by (artifact, input hash), with the LLM calls and tokens they cost.

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0005_batch_worker"),
    ]

    operations = [
        migrations.CreateModel(
            name="PolicyDecision",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("org_id", models.BigIntegerField(db_index=True, editable=False)),
                ("artifact", models.CharField(max_length=500)),
                ("input_sha256", models.CharField(max_length=64)),
                ("decision", models.JSONField()),
                ("llm_calls", models.PositiveIntegerField(default=0)),
                ("prompt_tokens", models.PositiveIntegerField(default=0)),
                ("completion_tokens", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "indexes": [models.Index(fields=["org_id", "created_at"], name="inference_policy_decision_day")],
                "constraints": [
                    models.UniqueConstraint(fields=("artifact", "input_sha256"), name="inference_policy_decision_once")
                ],
            },
        ),
    ]
