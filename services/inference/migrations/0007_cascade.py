# Cascade deployments: a trained version paired with a policy version that decides the inputs inside an
# uncertainty band; the day's usage counts what was sent to the policy and what its LLM calls cost.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0006_policy_decision"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="policy_model_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deployment",
            name="policy_version",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deployment",
            name="policy_artifact",
            field=models.CharField(blank=True, default="", max_length=500),
        ),
        migrations.AddField(
            model_name="deployment",
            name="cascade",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="usageday",
            name="policy_requests",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usageday",
            name="policy_units",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usageday",
            name="llm_calls",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usageday",
            name="llm_prompt_tokens",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usageday",
            name="llm_completion_tokens",
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
