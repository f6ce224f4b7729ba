"""`{% page "console-model" org=... model_id=... %}`: a link to any console page, from the route table.

A builtin (see TEMPLATES in settings): every template can link to any service's pages, whichever services
the process serving it runs.
"""

from __future__ import annotations

from typing import Any

from django import template

from arbiter.config.routes import page_path

register = template.Library()


@register.simple_tag
def page(name: str, **kwargs: Any) -> str:
    return page_path(name, **kwargs)
