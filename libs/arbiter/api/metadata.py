"""What `OPTIONS` answers: the resource's name, description and media types.

DRF's default also lists each writable field by asking the view for its serializer, which views that validate
with several serializers (or none) do not have; the OpenAPI schema at `/api/schema/` is where fields are described.
"""

from __future__ import annotations

from typing import Any

from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request
from rest_framework.views import APIView


class ApiMetadata(SimpleMetadata):
    def determine_metadata(self, request: Request, view: APIView) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
            "schema": "/api/schema/",
        }
