"""Warm a restarted web process: load the artifacts of live deployments in the background.

Requests never wait for this: a model not loaded yet is loaded by the first request that needs it. The
newest live deployments load first, until the memory budget is used.
"""

from __future__ import annotations

import logging
import os
import threading

from django.db import connections

from arbiter.config.management.commands.serve import WEB_SERVER_VARIABLE
from services.inference.conf import inference_settings

log = logging.getLogger(__name__)


def preload_wanted() -> bool:
    """`ARBITER_INFERENCE_PRELOAD`, or by default: whether this process serves HTTP (`arbiter serve`)."""
    setting = inference_settings().preload
    if setting is not None:
        return setting
    return bool(os.environ.get(WEB_SERVER_VARIABLE))


def live_deployments_preload() -> list[str]:
    """Load the artifacts of live deployments, newest first, within the budget; return the keys loaded."""
    from services.inference.models import Deployment, DeploymentStatus
    from services.inference.serving.cache import model_cache

    cache = model_cache()
    loaded: list[str] = []
    artifacts = (
        Deployment.objects.unscoped()
        .filter(status=DeploymentStatus.LIVE)
        .order_by("-live_at", "-id")
        .values_list("artifact", flat=True)
    )
    for artifact in dict.fromkeys(artifacts):
        if cache.used_bytes() >= cache.budget_bytes:
            break
        try:
            cache.get(artifact)
        except Exception:
            log.warning(
                "could not preload a live deployment's model", extra={"artifact": artifact}, exc_info=True
            )
            continue
        loaded.append(artifact)
    return loaded


def _preload_thread() -> None:
    try:
        loaded = live_deployments_preload()
        log.info("live deployments preloaded", extra={"models": len(loaded)})
    except Exception:
        # The database may not be migrated yet (first start); requests load what they need.
        log.warning("preloading live deployments failed", exc_info=True)
    finally:
        connections.close_all()


def preload_start() -> threading.Thread | None:
    if not preload_wanted():
        return None
    thread = threading.Thread(target=_preload_thread, name="inference-preload", daemon=True)
    thread.start()
    return thread
