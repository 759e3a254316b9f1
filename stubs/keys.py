"""The key admin API of stubs (admin keys only; the auth middleware enforces that):

* ``POST /v1/keys`` ``{"Account": <uid> | null, "Admin": bool, "Description": str}`` → 201 with the
  key's record and ``Key``, the token, shown this once;
* ``GET /v1/keys`` → ``{"Keys": [...]}``, records without secrets;
* ``DELETE /v1/keys/<id>`` → 204; the key stops working at once, in every daemon of the pod.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from easyfaas.brn import valid_account_id
from easyfaas.errors import InvalidParameterValue, ResourceNotFound
from easyfaas.http import read_json
from easyfaas.keys import KeyStore

__all__ = ["KEYS", "add_key_routes"]

KEYS = web.AppKey("keys", KeyStore)
_MAX_BODY = 64 * 1024


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, max_size=_MAX_BODY)
    if not isinstance(body, dict):
        raise InvalidParameterValue("the body must be a JSON object")
    account = body.get("Account")
    admin = body.get("Admin", False)
    description = body.get("Description", "")
    if account is not None and (not isinstance(account, str) or not valid_account_id(account)):
        raise InvalidParameterValue("Account must be an account id (1-64 characters [A-Za-z0-9_-]) or null")
    if not isinstance(admin, bool):
        raise InvalidParameterValue("Admin must be true or false")
    if not isinstance(description, str) or len(description) > 256:
        raise InvalidParameterValue("Description must be a string of at most 256 characters")
    if account is None and not admin:
        raise InvalidParameterValue("a key that is not an admin key must belong to an Account")
    key, token = await asyncio.to_thread(request.app[KEYS].create, account, admin, description)
    return web.json_response({**key.public(), "Key": token}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    return web.json_response({"Keys": [k.public() for k in request.app[KEYS].keys()]})


async def delete_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    if not await asyncio.to_thread(request.app[KEYS].revoke, key_id):
        raise ResourceNotFound(f"no API key {key_id}")
    return web.Response(status=204)


def add_key_routes(app: web.Application, store: KeyStore) -> None:
    app[KEYS] = store
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_delete("/v1/keys/{id}", delete_key)


def admin_only(method: str, path: str) -> bool:
    """Stubs' routes that only admin keys may use: the keys, the pod's code and trigger feeds, the
    metrics (every account's), and the original's internal registry path."""
    return path == "/metrics" or path.startswith(("/v1/keys", "/v1/code-changes", "/v1/trigger-changes",
                                                  "/inside-v1/"))


def needs_key(request: web.Request) -> bool:
    """Every route but the content-addressed code downloads (``--public-url``'s code locations, which
    the funclet fetches without a key): their URL names the SHA-256 of the code, so only who knows
    the code, or was given the location by the registry, can name it."""
    return not request.path.startswith("/v1/code/")
