"""The HTTP gateway (the `gateway` extra: Starlette and uvicorn): every method of the services a
`reflection.Catalog` describes, over HTTP with the proto3 JSON mapping, server-sent events, NDJSON and
WebSockets, an OpenAPI 3.1 document and a page to try them. Built on `reflection` (the catalog, the JSON
mapping, `DynamicClient`); it may import every lower package, and nothing imports it but the command
line.
"""

from .app import Gateway, GatewayOptions, create_app
from .openapi import openapi_document

__all__ = ["Gateway", "GatewayOptions", "create_app", "openapi_document"]
