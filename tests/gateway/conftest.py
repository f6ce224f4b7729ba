from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from arbiter.testing.plugin import SettingsOverride
from tests.gateway.receiver import Receiver, running_receiver


@pytest.fixture
def webhook_settings(override_arbiter_settings: SettingsOverride) -> Any:
    """Deliveries to loopback allowed, and a retry schedule of fractions of a second."""
    return override_arbiter_settings(
        ARBITER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_WEBHOOK_RETRY_SCHEDULE="0,0.2,0.2,0.2",
        ARBITER_WEBHOOK_TIMEOUT_SECONDS="2",
        ARBITER_WEBHOOK_POLL_SECONDS="0.05",
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running
