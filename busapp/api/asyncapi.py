"""The AsyncAPI 3.0 document of the topics the caller may see (JSON and YAML), and the page that renders it."""

from __future__ import annotations

from typing import Any

import yaml
from csp.constants import NONE, SELF
from csp.decorators import csp
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views.decorators.clickjacking import xframe_options_sameorigin
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.api.authentication import topics_for
from busapp.api.errors import refusals
from busapp.asyncapi import asyncapi_document

# The renderer's frame: the AsyncAPI React component's bundle compiles JSON Schemas with
# ``new Function`` when it loads (its parser's Ajv and Spectral), which needs 'unsafe-eval'.
# That is allowed only here, in a document that is sandboxed (an opaque origin: no cookies,
# no same-origin requests, no access to the page around it), may load nothing but our own
# scripts and styles, may connect nowhere, and may be framed only by our own page.
RENDERER_FRAME_POLICY = {
    "default-src": [NONE],
    "script-src": [SELF, "'unsafe-eval'"],
    "style-src": [SELF],
    "img-src": [SELF, "data:"],
    "connect-src": [NONE],
    "form-action": [NONE],
    "base-uri": [NONE],
    "frame-ancestors": [SELF],
    "sandbox": ["allow-scripts"],
}


class _YamlDumper(yaml.SafeDumper):
    """Writes a value that appears twice in full both times, never as a YAML alias."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never use aliases."""
        return True


def asyncapi_yaml(document: dict[str, Any]) -> str:
    """The document as YAML, keys in the document's order."""
    return yaml.dump(document, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, width=120)


class AsyncApiJsonView(APIView):
    """GET /api/asyncapi.json: the AsyncAPI 3.0 document of the topics the caller may see."""

    @extend_schema(operation_id="asyncapi_document", responses={200: OpenApiTypes.OBJECT, **refusals(401)})
    def get(self, request: Request) -> Response:
        """The document, generated from the database."""
        return Response(asyncapi_document(topics=topics_for(request)))


class AsyncApiYamlView(APIView):
    """GET /api/asyncapi.yaml: the same document as YAML."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        """The document, as YAML."""
        text = asyncapi_yaml(asyncapi_document(topics=topics_for(request)))
        return HttpResponse(text, content_type="application/yaml; charset=utf-8")


class AsyncApiDocsView(APIView):
    """GET /api/asyncapi/: the document rendered by the AsyncAPI React component, from our own static files."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> TemplateResponse:
        """The page; its script fetches the document and hands it to the renderer's sandboxed frame."""
        return TemplateResponse(request, "api/asyncapi.html")


@method_decorator(xframe_options_sameorigin, name="dispatch")
@method_decorator(csp(RENDERER_FRAME_POLICY), name="dispatch")
class AsyncApiFrameView(APIView):
    """GET /api/asyncapi/frame/: the sandboxed document in which the React component renders what it is sent."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> TemplateResponse:
        """The renderer's empty page: it holds no data until the page around it posts the document."""
        return TemplateResponse(request, "api/asyncapi_frame.html")
