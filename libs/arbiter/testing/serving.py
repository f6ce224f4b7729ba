"""A served classification model for the serving benchmark and the serving tests: an org, a small two-head
model deployed on the inference service, in a private ARBITER_HOME on SQLite or on PostgreSQL databases of
their own. `python -m arbiter.testing.serving --home H [--database-url URL] [--log-requests]` sets one up in
a fresh process and prints what a client needs (JSON: env, key, path, runtime, databases).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

SERVICES = "gateway,inference"

TOXIC = [
    "you are an idiot",
    "I hate you so much",
    "shut up you moron",
    "you are worthless trash",
    "go away loser",
    "what a stupid fool you are",
    "you disgusting pig",
    "nobody likes you, idiot",
]
SAFE = [
    "have a nice day",
    "thanks for your help",
    "the weather is lovely today",
    "I like this song",
    "see you tomorrow",
    "great work on the project",
    "the meeting is at noon",
    "I enjoyed the book",
]
SPAM = [
    "buy cheap pills now",
    "click here to win money",
    "free prize waiting for you",
    "limited offer, act now",
    "earn cash from home fast",
    "cheap watches on sale today",
    "win a free phone now",
    "lowest loan rates",
]


def training_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for suffix in ("", "!", "."):
        for texts, toxicity, topic in (
            (TOXIC, "toxic", ["insult"]),
            (SAFE, "safe", []),
            (SPAM, "safe", ["spam"]),
        ):
            for text in texts:
                rows.append(
                    {
                        "row": len(rows) + 1,
                        "input": text + suffix,
                        "labels": {"toxicity": [toxicity], "topic": topic},
                        "split": "train",
                    }
                )
    return rows


def trained_artifact() -> bytes:
    """The model's artifact, trained once and kept in the temp directory (keyed by the ML core's source)."""
    from arbiter.testing.artifacts import cached_head_artifact

    return cached_head_artifact(
        cache_dir=Path(tempfile.gettempdir()),
        prefix="arbiter-bench-inference-",
        rows=training_rows(),
        heads=[
            {"name": "toxicity", "labels": ["safe", "toxic"]},
            {"name": "topic", "labels": ["insult", "spam"], "multi_label": True},
        ],
        max_epochs=40,
    )


def serving_env(database_url: str | None, home: Path) -> tuple[dict[str, str], list[str]]:
    """The environment of a server (and of this set-up) on `home`; creates its PostgreSQL databases."""
    # The serving knobs (workers, threads, batching, the key cache) pass through, to be measured.
    tuning = ("ARBITER_WEB_WORKERS", "ARBITER_WEB_THREADS", "ARBITER_INFERENCE_", "ARBITER_API_KEY_")
    env = {
        key: value
        for key, value in os.environ.items()
        if key.startswith(tuning)
        or not key.startswith(("DATABASE_URL", "ARBITER_", "DJANGO_SETTINGS_MODULE"))
    }
    env.update(
        ARBITER_HOME=str(home),
        ARBITER_SERVICES=SERVICES,
        ARBITER_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ARBITER_ENV="development",
    )
    if not database_url:
        return env, []
    import psycopg

    prefix = f"arbiter_serving_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{service}" for service in SERVICES.split(",")]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    env.update(DATABASE_URL=database_url, ARBITER_DB_NAME=prefix)
    return env, names


def databases_drop(database_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serving_setup(*, log_requests: bool = False) -> dict[str, Any]:
    """In this process, configured by `serving_env`'s variables: migrate, create the org, deliver the model's
    `training.completed`, deploy it and load it through the inference service's own handlers."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from arbiter.events.envelope import Event
    from arbiter.events.handlers import handlers_for
    from arbiter.events.models import OutboxEvent
    from arbiter.storage import get_blob_store
    from arbiter.tenancy.logic import org_bootstrap
    from arbiter.tenancy.scoping import org_scope
    from services.inference.logic import deployment_create
    from services.inference.models import Deployment
    from services.inference.serving.cache import model_cache

    call_command("migrate_services", verbosity=0)
    boot = org_bootstrap(slug="bench", email="bench@example.com")
    get_blob_store().put_bytes("artifacts/bench/model.tar.gz", trained_artifact())
    handlers = handlers_for("inference")

    def deliver(event: Event) -> None:
        with transaction.atomic(using="inference"), org_scope(event.org_id):
            handlers[event.type](event)

    org_id = boot.org.pk
    deliver(
        Event(
            type="training.completed",
            source="/arbiter/training",
            subject="models/1/versions/1",
            org_id=org_id,
            data={
                "run_id": 1,
                "model_id": 1,
                "version": 1,
                "model_name": "bench",
                "artifact": "artifacts/bench/model.tar.gz",
            },
        )
    )
    with org_scope(org_id):
        deployment, _ = deployment_create(
            org_id=org_id, model=1, version=1, actor="bench", name="bench", log_requests=log_requests
        )
    requested = OutboxEvent.objects.using("inference").get(type="deployment.requested")
    deliver(Event.from_json(requested.payload))
    live = Deployment.objects.unscoped().get(pk=deployment.pk)
    if live.status != "live":
        raise SystemExit(f"the deployment did not go live: {live.reason}: {live.message}")
    model_cache().clear()  # the server process serves; this one only set up
    return {
        "key": boot.api_key,
        "runtime": live.runtime,
        "path": f"/api/v1/orgs/bench/deployments/{deployment.pk}/classify",
        "deployment_id": deployment.pk,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--database-url")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args()
    env, databases = serving_env(args.database_url, args.home)
    os.environ.clear()
    os.environ.update(env)
    answer = serving_setup(log_requests=args.log_requests)
    print(json.dumps({**answer, "env": env, "databases": databases}))


if __name__ == "__main__":
    main()
