"""Pytest plugin loaded for the whole suite (`-p arbiter.testing.plugin` in pyproject).

It points Django at the machine's PostgreSQL before settings load, gives each run a private ARBITER_HOME,
and provides the `tenant` / `victim` fixtures and `override_arbiter_settings`, the one way tests change a setting.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Every `cross_tenant` test must request the URLs its marker names.
pytest_plugins = ["arbiter.testing.cross_tenant"]

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
os.environ.setdefault("ARBITER_ENV", "test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "ARBITER_HOME" not in os.environ:
    os.environ["ARBITER_HOME"] = tempfile.mkdtemp(prefix="arbiter-test-")

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def tenant(db: None) -> object:
    from arbiter.testing.tenants import make_tenant

    return make_tenant()


@pytest.fixture
def victim(db: None) -> object:
    """A second org whose data the `tenant` must never see."""
    from arbiter.testing.tenants import make_tenant

    return make_tenant()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("the public datasets in ../shared/data are not present beside this checkout")
    return SHARED_DATA


@pytest.fixture
def arbiter_home() -> Iterator[Path]:
    from arbiter.config.typed_settings import arbiter_settings

    yield arbiter_settings().core.home


SettingsOverride = Callable[..., Any]


@pytest.fixture(autouse=True)
def _forget_cached_api_keys() -> Iterator[None]:
    """Each test's keys die with its database rollback; the process's key cache must forget them too."""
    yield
    from arbiter.tenancy.authentication import api_key_cache_forget

    api_key_cache_forget()
    try:
        from services.inference.serving.fastpath import deployment_forget
    except ImportError:  # the inference service is not installed in this process
        return
    deployment_forget()


@pytest.fixture
def override_arbiter_settings(settings: Any) -> SettingsOverride:
    """`override_arbiter_settings(ARBITER_PLAYGROUND_FREE_QUERIES=3, ...)`: this test runs with these variables
    set, as if they were in the environment (validated the same way; a wrong value raises SettingsError). Calls
    add up; everything is restored after the test. Returns the new `ArbiterSettings`."""
    from arbiter.config.typed_settings import django_mirrors, load_settings

    variables: dict[str, Any] = {}

    def override(**changes: Any) -> Any:
        variables.update(changes)
        typed = load_settings(variables)
        settings.ARBITER = typed
        for name, value in django_mirrors(typed).items():
            setattr(settings, name, value)
        return typed

    return override


# The embedded Kafka broker (one per test session) and test-only event types, for any service's tests.
from arbiter.events.testing import event_types, kafka_bootstrap, kafka_broker  # noqa: E402

__all__ = ["event_types", "kafka_bootstrap", "kafka_broker"]
