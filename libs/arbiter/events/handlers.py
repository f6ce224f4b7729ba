"""Declaring what a service consumes: `@handles("<type>")` on functions in `services/<svc>/events.py`."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from arbiter.events.envelope import Event
from arbiter.events.registry import get_event_type

Handler = Callable[[Event], None]

_handlers: dict[str, dict[str, Handler]] = {}


class HandlerDeclarationError(RuntimeError):
    pass


def handles(type_name: str) -> Callable[[Handler], Handler]:
    event_type = get_event_type(type_name)

    def register(func: Handler) -> Handler:
        parts = func.__module__.split(".")
        service = parts[1] if len(parts) >= 2 and parts[0] == "services" else func.__module__
        if parts[0] == "services" and service not in event_type.consumers:
            raise HandlerDeclarationError(
                f"{func.__module__}.{func.__name__} handles {type_name!r}, but the registry does not list "
                f"{service!r} among its consumers"
            )
        _handlers.setdefault(service, {})[type_name] = func
        return func

    return register


def handlers_for(service: str) -> dict[str, Handler]:
    """The handlers a service declares (importing its `events.py`)."""
    import_module(f"services.{service}.events")
    return dict(_handlers.get(service, {}))
