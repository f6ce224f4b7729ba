"""Webhook signing secrets are encrypted at rest (arbiter.secrets): rows written before are encrypted in place."""

from django.db import migrations, models

from arbiter.secrets import secret_encrypt


def encrypt_existing(apps, schema_editor):
    endpoints = apps.get_model("gateway", "WebhookEndpoint")
    for endpoint in endpoints.objects.using(schema_editor.connection.alias).all():
        endpoint.secret_encrypted = secret_encrypt(endpoint.secret_encrypted)
        if endpoint.previous_secret_encrypted:
            endpoint.previous_secret_encrypted = secret_encrypt(endpoint.previous_secret_encrypted)
        endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted"])


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]

    operations = [
        migrations.RenameField("webhookendpoint", "secret", "secret_encrypted"),
        migrations.RenameField("webhookendpoint", "previous_secret", "previous_secret_encrypted"),
        migrations.AlterField("webhookendpoint", "secret_encrypted", models.TextField()),
        migrations.AlterField(
            "webhookendpoint", "previous_secret_encrypted", models.TextField(blank=True, default="")
        ),
        migrations.RunPython(encrypt_existing, migrations.RunPython.noop),
    ]
