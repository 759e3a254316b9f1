"""The funclet daemon: its HTTP API on a unix socket and the lifetime of the sandbox pool.

Routes: the original's (node, list, container, warmup, cooldown, reborn, healthz) plus
``GET /v1/funclet/events`` (long poll of sandbox events), ``POST /v1/funclet/grow`` and
``POST /v1/funclet/shrink`` (the elastic pool).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import AsyncIterator

import structlog
from aiohttp import web

from easyfaas.config import Settings, parse_size
from easyfaas.daemon import Service, TCPEndpoint, UnixEndpoint, run_daemon
from easyfaas.metrics import METRICS_REGISTRY, add_observability_routes, new_registry
from easyfaas.http import error_middleware, feed_query, read_json, request_id_middleware
from easyfaas.logging import setup_logging
from easyfaas.models import CodePrepareRequest, GrowRequest, ModelError, ResetRequest, ShrinkRequest, WarmupRequest
from easyfaas.errors import InvalidParameterValue, ValidationError
from funclet.metrics import FUNCLET_METRICS, FuncletMetrics, funclet_ready, metrics_app
from funclet.options import parse_funclet_options
from funclet.preflight import check_host
from funclet.runner_link import Zygote
from funclet.sandbox.cgroup import detect_driver
from funclet.sandbox.codeimage import CodeImageStore
from funclet.sandbox.network import BridgeNetwork
from funclet.pool import PoolSettings, SandboxPool
from easyfaas.outbound import OutboundGuard
from runner.prepare import host_binds

log = structlog.get_logger(__name__)

POOL = web.AppKey("pool", SandboxPool)
REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_API_BODY = 64 * 1024 * 1024
MAX_EVENTS_WAIT = 60.0
MAX_GROW = 64


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def hello(_: web.Request) -> web.Response:
    return _json("hello funclet")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def node(request: web.Request) -> web.Response:
    return _json({"Resource": request.app[POOL].node().to_dict()})


async def list_containers(request: web.Request) -> web.Response:
    ids = [i for i in request.query.get("ContainerIDs", "").split(",") if i]
    return _json([c.to_dict() for c in request.app[POOL].list(ids)])


async def container(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    sb = pool.get(request.match_info["id"])
    return _json(pool.info(sb, stats=True).to_dict())


def _model(cls, data: object):  # type: ignore[no-untyped-def]
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    try:
        return cls.from_dict(data)
    except ModelError as exc:
        raise ValidationError(str(exc)) from None


async def warmup(request: web.Request) -> web.Response:
    req = _model(WarmupRequest, await read_json(request, max_size=MAX_API_BODY))
    resp = await request.app[POOL].warmup(req)
    return _json(resp.to_dict())


async def prepare_code(request: web.Request) -> web.Response:
    req = _model(CodePrepareRequest, await read_json(request, max_size=MAX_API_BODY))
    return _json((await request.app[POOL].prepare_code(req)).to_dict())


async def cooldown(request: web.Request) -> web.Response:
    req = _model(ResetRequest, await read_json(request, max_size=MAX_API_BODY))
    request.app[FUNCLET_METRICS].released(req.ContainerID)
    info = await request.app[POOL].cooldown(req.ContainerID)
    return _json({"Container": info.to_dict(), "ScaleDownResult": None})


async def reborn(request: web.Request) -> web.Response:
    req = _model(ResetRequest, await read_json(request, max_size=MAX_API_BODY))
    request.app[FUNCLET_METRICS].released(req.ContainerID)
    info = await request.app[POOL].reborn(req.ContainerID)
    return _json({"Container": info.to_dict(), "ScaleDownResult": None})


async def events(request: web.Request) -> web.Response:
    batch = await request.app[POOL].events.wait(*feed_query(request, MAX_EVENTS_WAIT))
    return _json(batch.to_dict())


async def grow(request: web.Request) -> web.Response:
    req = _model(GrowRequest, await read_json(request, max_size=MAX_API_BODY))
    if not 1 <= req.Count <= MAX_GROW:
        raise InvalidParameterValue(f"Count must be between 1 and {MAX_GROW}")
    return _json((await request.app[POOL].grow(req.Count)).to_dict())


async def shrink(request: web.Request) -> web.Response:
    req = _model(ShrinkRequest, await read_json(request, max_size=MAX_API_BODY))
    return _json((await request.app[POOL].shrink(req.ContainerIDs)).to_dict())


def make_app(pool: SandboxPool) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, error_middleware], client_max_size=MAX_API_BODY)
    app[POOL] = pool
    app.router.add_get("/v1/hello", hello)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/funclet/node", node)
    app.router.add_get("/v1/funclet/list", list_containers)
    app.router.add_get("/v1/funclet/container/{id}", container)
    app.router.add_post("/v1/funclet/warmup", warmup)
    app.router.add_post("/v1/funclet/cooldown", cooldown)
    app.router.add_post("/v1/funclet/reborn", reborn)
    app.router.add_get("/v1/funclet/events", events)
    app.router.add_post("/v1/funclet/grow", grow)
    app.router.add_post("/v1/funclet/shrink", shrink)
    app.router.add_post("/v1/funclet/code", prepare_code)
    metrics = app[FUNCLET_METRICS] = FuncletMetrics(pool)
    registry = new_registry()
    registry.register(metrics)
    add_observability_routes(app, registry, ready=funclet_ready)
    return app


def _physical_memory() -> int:
    """The host's RAM in bytes (``MemTotal`` of /proc/meminfo)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_pool(opts: Settings) -> SandboxPool:
    pod = os.environ.get("MY_POD_NAME") or opts.pod_name
    cgroups = detect_driver(opts.cgroup_root_path, parent=opts.cgroup_parent or None)
    cap_mem, cap_cpu = cgroups.capacity()
    if cap_mem is None:
        cap_mem = parse_size(opts.total_memory) if opts.total_memory else _physical_memory()
    if cap_cpu is None:
        cap_cpu = int((opts.total_cpu or os.cpu_count() or 1) * 1000)
    state_dir = Path(opts.state_dir)
    if opts.max_sandboxes and opts.max_sandboxes < opts.container_num:
        raise SystemExit(f"--max-sandboxes ({opts.max_sandboxes}) must be 0 or at least --container-num "
                         f"({opts.container_num})")
    max_sandboxes = max(opts.max_sandboxes, opts.container_num)
    if opts.network == "bridge":
        # One address of the bridge subnet per sandbox (the gateway and broadcast excluded).
        addresses = ipaddress.ip_interface(opts.bridge_ip).network.num_addresses - 3
        if max_sandboxes > addresses:
            raise SystemExit(f"--max-sandboxes {max_sandboxes} does not fit the {addresses} sandbox addresses "
                             f"of --bridge-ip {opts.bridge_ip}")
    settings = PoolSettings(
        pod_name=pod, container_num=opts.container_num, state_dir=state_dir, run_dir=Path(opts.run_dir),
        runtime_path=Path(opts.runtime_path), rootfs_path=Path(opts.rootfs_path),
        runner_memory=opts.runner_memory, runner_millicpus=int(opts.runner_cpu_limits * 1000),
        runner_pids=opts.runner_pids, tmp_size=opts.tmp_size, uid_base=opts.sandbox_uid_base,
        warmup_timeout=opts.warmup_timeout, runner_timeout=opts.runner_timeout,
        max_code_size=opts.max_code_size, capacity_memory=cap_mem, capacity_millicpus=cap_cpu,
        reserved_memory=opts.reserved_memory, reserved_millicpus=int(opts.reserved_cpu * 1000),
        max_sandboxes=max_sandboxes, ping_interval=opts.runner_ping_interval,
        max_runner_defunct=opts.max_runner_defunct, max_code_images=opts.max_code_images,
        standby_runtimes=tuple(n.strip() for n in opts.standby_runtimes.split(",") if n.strip()),
        standby_sandboxes=max(0, opts.standby_sandboxes),
        outbound_guard=OutboundGuard.of(opts.outbound_guard, opts.outbound_allow))
    network = None
    if opts.network == "bridge":
        network = BridgeNetwork(bridge=opts.bridge_name, cidr=opts.bridge_ip, veth_prefix=opts.veth_prefix)
    elif opts.network != "none":
        raise SystemExit(f"--network must be bridge or none, not {opts.network!r}")
    binds, symlinks = host_binds()
    binds = [*binds, {"src": str(Path(opts.rootfs_path) / "etc"), "dst": "/etc"}]
    return SandboxPool(settings, cgroups=cgroups, images=CodeImageStore(settings.images_dir,
                       max_uncompressed=opts.max_code_size, max_images=opts.max_code_images),
                       network=network, zygote=Zygote(opts.python or sys.executable, REPO_ROOT, pod_name=pod),
                       host_binds=(binds, symlinks))


async def _pool(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL]
    try:
        await pool.start()
        yield
    finally:
        await pool.close()


async def _end_event_polls(app: web.Application) -> None:
    app[POOL].events.close()  # ends the controller's long polls now, not at the shutdown timeout


def funclet_service(opts: Settings) -> Service:
    """The funclet as a service of a daemon process: its API on a unix socket, the pool its part."""
    app = make_app(build_pool(opts))
    app.cleanup_ctx.append(_pool)
    app.on_shutdown.append(_end_event_polls)
    return Service("funclet", app, [UnixEndpoint(Path(opts.api_sock), 0o660)], shutdown_timeout=5,
                   listening={"sandboxes": opts.container_num})


def funclet_services(opts: Settings) -> list[Service]:
    """The funclet, and with ``--metrics-port`` its metrics on loopback TCP (a service of its own)."""
    service = funclet_service(opts)
    if not opts.metrics_port:
        return [service]
    app = service.app
    scrape = Service("funclet_metrics", metrics_app(app[METRICS_REGISTRY], app[FUNCLET_METRICS]),
                     [TCPEndpoint("127.0.0.1", opts.metrics_port)], shutdown_timeout=1, freeze_heap=False)
    return [service, scrape]


def main(argv: list[str] | None = None) -> None:
    opts = parse_funclet_options(argv)
    setup_logging(opts, daemon="funclet")
    problems = check_host(runtime_path=opts.runtime_path, rootfs_path=opts.rootfs_path,
                          cgroup_root=opts.cgroup_root_path, need_network=opts.network == "bridge")
    if problems:
        print("funclet cannot start on this host:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        raise SystemExit(2)
    if opts.preflight_only:
        print("host check passed", file=sys.stderr)
        return
    # asyncio's own loop: uvloop's library would add about 1 MiB to the funclet's resident memory,
    # and its API has one client (the controller).
    run_daemon(funclet_services(opts), event_loop="asyncio")
