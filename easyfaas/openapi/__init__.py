"""The OpenAPI 3.1 documents of the daemons' HTTP APIs, kept as data beside the code.

``controller.yaml``, ``stubs.yaml`` and ``httptrigger.yaml`` (the gateway, served by its own
server in httptrigger/gateway.py) hold each daemon's paths; ``components.yaml`` the pieces
they share (the Error object, FunctionConfiguration, the common parameters and responses), merged
into each document's ``components`` when it is loaded, so every document served is self-contained.
:func:`add_openapi_route` serves a document at ``GET /openapi.json``, loaded once when the
application is built (with, in test runs, the response check of easyfaas/openapi/check.py).
tests/test_openapi.py keeps the documents and the routes in step.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web

from easyfaas.auth import OPEN_PATHS
from easyfaas.openapi.check import CheckedInvoker, check_file, response_check_middleware

_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})
DOCUMENTS = ("controller", "stubs", "httptrigger")
PATH = "/openapi.json"

__all__ = ["DOCUMENTS", "PATH", "add_openapi_route", "checked_invoker", "document_json", "load_document"]


def _read(name: str) -> dict[str, Any]:
    import yaml  # with the first document built (see add_openapi_route)

    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's when built in
    if not isinstance(data, dict):
        raise ValueError(f"{name}.yaml: expected a mapping at the top")
    return data


def load_document(name: str) -> dict[str, Any]:
    """The document ``name`` (one of :data:`DOCUMENTS`) with the shared components merged in."""
    if name not in DOCUMENTS:
        raise ValueError(f"no OpenAPI document {name!r}; known: {', '.join(DOCUMENTS)}")
    document = _read(name)
    components = copy.deepcopy(_read("components"))
    for section, entries in (document.get("components") or {}).items():
        shared = components.setdefault(section, {})
        clash = sorted(set(shared) & set(entries))
        if clash:
            raise ValueError(f"{name}.yaml: components.{section}.{clash[0]} is also in components.yaml")
        shared.update(entries)
    document["components"] = components
    if name != "httptrigger":  # the gateway answers API Gateway's own 401 (its document says so)
        _add_key_answers(document)
    return document


def _add_key_answers(document: dict[str, Any]) -> None:
    """With keys required (easyfaas/auth.py) every operation but the open checks may answer 401 (no
    valid key) and 403 (a key of another account, or not an admin's on an admin-only route)."""
    document.setdefault("security", [{}, {"apiKey": []}])  # optional: keys may be off
    for path, item in document["paths"].items():
        if path in OPEN_PATHS or "$ref" in item:
            continue
        for method, operation in item.items():
            if method in _METHODS:
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
                responses.setdefault("403", {"$ref": "#/components/responses/KeyForbidden"})


def document_json(name: str) -> bytes:
    """The document ``name`` as the UTF-8 JSON body served at :data:`PATH`."""
    return json.dumps(load_document(name), ensure_ascii=False).encode()


def add_openapi_route(app: web.Application, name: str) -> None:
    """Serve the document ``name`` at ``GET /openapi.json`` on ``app``."""
    # Built on the first GET, not with the application: parsing the YAML and keeping the JSON costs
    # an idle daemon resident memory for a document few clients ever ask for.
    body = functools.cache(lambda: document_json(name))

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=body(), content_type="application/json")

    app.router.add_get(PATH, openapi)
    out_path = check_file()
    if out_path:
        # Outermost, so it sees the answers the other middlewares make (errors, request ids).
        app.middlewares.insert(0, response_check_middleware(json.loads(body()), name, out_path))


def checked_invoker(invoker: Any, name: str) -> Any:
    """``invoker``, or in test runs with the response check on, one whose replies are checked
    against the invoke operation of document ``name`` (the controller's front door answers
    invocations below aiohttp, out of the middleware's sight)."""
    out_path = check_file()
    return CheckedInvoker(invoker, load_document(name), out_path) if out_path else invoker
