"""Request parsers that refuse text the databases cannot store, naming where it is.

PostgreSQL keeps neither NUL characters (in `text` or `jsonb`) nor unpaired UTF-16 surrogates (JSON may carry
`"\\ud800"`; it is no UTF-8). DRF's CharField already refuses both; these parsers refuse them anywhere else in a
body (JSON cells, labels, mappings, form fields), so such input is a 400 naming the field, not a 500 on save.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.http import QueryDict
from rest_framework import parsers
from rest_framework.exceptions import ValidationError

UNSTORABLE = "Text may not contain NUL characters (\\u0000) or unpaired surrogates."


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable_text_at(value: Any, path: str = "") -> str | None:
    """The path (`rows[3].text`) of the first string, or object key, that cannot be stored; None if none."""
    if isinstance(value, str):
        return None if _storable(value) else path or "body"
    if isinstance(value, QueryDict):
        value = dict(value.lists())
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _storable(key):
                return path or "body"
            found = unstorable_text_at(item, name)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable_text_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def refuse_unstorable_text(value: Any, *, path: str = "") -> None:
    where = unstorable_text_at(value, path)
    if where is not None:
        raise ValidationError({where: [UNSTORABLE]})


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        refuse_unstorable_text(data)
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        refuse_unstorable_text(data)
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        refuse_unstorable_text(parsed.data)
        return parsed


API_PARSERS: list[type[parsers.BaseParser]] = [JSONParser, MultiPartParser, FormParser]
