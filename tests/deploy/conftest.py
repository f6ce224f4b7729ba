from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils


@pytest.fixture(scope="session")
def validate_kubernetes() -> Iterator[Callable[[dict[str, Any], str], str]]:
    """kubernetes_validate.validate, reading each schema file once instead of once per object (seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utils, "schema_contents", functools.lru_cache(maxsize=None)(utils.schema_contents))
        yield kubernetes_validate.validate
