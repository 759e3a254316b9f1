"""The controller's HTTP handlers: thin adapters from routes to the pool and the invoke pipeline."""

from __future__ import annotations

from aiohttp import web

from easyfaas.errors import ResourceNotFound

from controller.code_prefetch import CodePrefetcher
from controller.invoke import Invoker
from controller.pool import Pool

POOL = web.AppKey("pool", Pool)
INVOKER = web.AppKey("invoker", Invoker)
PREFETCHER = web.AppKey("prefetcher", CodePrefetcher)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="hello controller")


async def invoke(request: web.Request) -> web.StreamResponse:
    return await request.app[INVOKER].handle(request)


async def list_runtimes(request: web.Request) -> web.Response:
    return web.json_response(request.app[POOL].runtimes())


async def resource(request: web.Request) -> web.Response:
    resource = request.app[POOL].resource()
    prefetcher = request.app.get(PREFETCHER)
    if prefetcher is not None:
        resource["CodePrefetch"] = prefetcher.stats()
    return web.json_response(resource)


async def invalidate(request: web.Request) -> web.Response:
    runtime_id = request.match_info["id"]
    if not request.app[POOL].invalidate(runtime_id):
        raise ResourceNotFound(f"can not find runtime {runtime_id}")
    return web.Response(status=200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/functions/{ref}/invocations", invoke)
    app.router.add_get("/v1/runtimes", list_runtimes)
    app.router.add_get("/v1/resource", resource)
    app.router.add_post("/v1/runtimes/{id}/invalidate", invalidate)
