"""The baseline: a bare aiohttp JSON echo handler, run in a subprocess with the same Python.

``POST /echo`` reads the JSON body and answers it with ``json_response`` — the least an aiohttp
front door does per request. The controller's figures are quoted as ratios to this one, measured
with the same wrk settings in the same run, so machine drift cancels out.

Run as ``python -m bench.echo_server PORT [--uvloop]``; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    return web.json_response(await request.json())


def main(argv: list[str]) -> None:
    port = int(argv[0])
    if "--uvloop" in argv[1:]:
        import uvloop

        uvloop.install()
    app = web.Application()
    app.router.add_post("/echo", echo)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda *_: print("ready", flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
