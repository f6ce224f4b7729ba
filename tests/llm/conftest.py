from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.annotation import fake_llm


@pytest.fixture
def fake_llm_server(override_arbiter_settings: Any) -> Iterator[fake_llm.FakeLlm]:
    override_arbiter_settings(
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_LLM_TIMEOUT_SECONDS="1",
        ARBITER_LLM_RETRY_MAX_SECONDS="0.2",
        ARBITER_LLM_MAX_ATTEMPTS="2",
    )
    yield from fake_llm.serve()
