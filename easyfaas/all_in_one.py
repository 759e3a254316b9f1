"""The all-in-one control plane: the controller, stubs and the HTTP trigger as services of one process.

``python -m easyfaas.all_in_one`` (``easyfaas-all-in-one``) runs, beside the privileged funclet
(always a process of its own), the unprivileged daemons in one Python process on one event loop,
with one signal and drain path (:mod:`easyfaas.daemon`): one interpreter's memory instead of one per
daemon, which is what keeps a small pod's control plane within its memory budget. Each service
behaves exactly as its separate daemon does, and they still talk to each other over their HTTP
APIs. ``make run`` uses this form; compose and Kubernetes keep one daemon per container.

Options are the union of the services' own, each under its service's prefix (``--controller-port``,
``--stubs-function-dir``, ``--httptrigger-max-body-size``, ...; in the environment
``EASYFAAS_CONTROLLER_PORT``, ``EASYFAAS_STUBS_FUNCTION_DIR``, ...; in the ``--config`` file the
prefixed names), and shared ones: logging, ``--event-loop`` (the one loop of the process) and
``--services`` (which of them run here). Defaults are the separate daemons', except the ports of
a pod (controller 8001, stubs 8002), and that the controller finds stubs and the HTTP trigger the
controller in this process unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

if __name__ == "__main__":  # run as a program (not imported by tests or the CLI)
    from easyfaas.daemon_imports import keep_terminal_libraries_out

    keep_terminal_libraries_out()

import structlog  # noqa: E402

import httptrigger.app
import stubs.daemon
from controller.app import controller_service
from controller.options import OPTIONS as CONTROLLER_OPTIONS
from controller.options import check_controller_options
from easyfaas.auth import SECURITY_OPTIONS
from easyfaas.config import COMMON_OPTIONS, Option, Settings, parse_options
from easyfaas.daemon import Service, event_loop_name, loop_factory, run_daemon
from easyfaas.logging import setup_logging

log = structlog.get_logger(__name__)

__all__ = ["PARTS", "SHARED_OPTIONS", "Part", "main", "parse_all_in_one_options", "services"]

PROG = "all-in-one"


@dataclass(frozen=True)
class Part:
    """One daemon as a service of this process: its options (given here under ``<name>-``) and how
    its checked options become its service."""

    name: str
    options: Sequence[Option]
    service: Callable[[Settings], Service]
    check: Callable[[Settings], Settings] = lambda opts: opts
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # of this form, by option name


SHARED_OPTIONS = [
    Option("services", str, "controller,stubs",
           "which services run in this process, comma-separated: controller, stubs, httptrigger"),
    Option("event-loop", str, "auto",
           "uvloop, asyncio, or auto (uvloop when it is installed): the loop of the process"),
    *SECURITY_OPTIONS,  # one key store, certificate and outbound guard for the services of the process
]
_SHARED = {o.name for o in [*SHARED_OPTIONS, *COMMON_OPTIONS]}

PARTS = [
    # In start order: stubs first (the controller follows its code feed), the trigger last.
    Part("stubs", stubs.daemon.OPTIONS, stubs.daemon.stubs_service, defaults={"port": 8002}),
    Part("controller", CONTROLLER_OPTIONS, controller_service, check_controller_options,
         defaults={"port": 8001, "repository-endpoint": ""}),
    Part("httptrigger", httptrigger.app.OPTIONS, httptrigger.app.httptrigger_service,
         defaults={"controller-host": "", "repository-endpoint": ""}),
]
_DERIVED_HELP = {
    ("controller", "repository-endpoint"): "function registry (stubs) base URL (default: the stubs service of this "
                                           "process, else http://127.0.0.1:8002)",
    ("httptrigger", "controller-host"): "controller base URL (default: the controller service of this process, "
                                        "else http://127.0.0.1:8001)",
    ("httptrigger", "repository-endpoint"): "stubs base URL, whose trigger feed gives the routes (default: the "
                                            "stubs service of this process, else http://127.0.0.1:8002)",
}


def _prefixed(part: Part) -> list[Option]:
    out = []
    for opt in part.options:
        if opt.name in _SHARED:
            continue
        default = part.defaults.get(opt.name, opt.default)
        help_text = _DERIVED_HELP.get((part.name, opt.name), opt.help)
        out.append(dataclasses.replace(opt, name=f"{part.name}-{opt.name}", default=default,
                                       help=f"{part.name}: {help_text}",
                                       aliases=tuple(f"{part.name}-{a}" for a in opt.aliases)))
    return out


def all_options() -> list[Option]:
    return [*SHARED_OPTIONS, *(o for part in PARTS for o in _prefixed(part))]


def parse_all_in_one_options(argv: Sequence[str] | None = None,
                             environ: dict[str, str] | None = None) -> Settings:
    opts = parse_options(PROG, all_options(), argv, environ, description=__doc__)
    names = [n.strip() for n in opts.services.split(",") if n.strip()]
    known = [p.name for p in PARTS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"easyfaas-all-in-one: --services must name some of {', '.join(known)}, not "
                         f"{opts.services!r}")
    opts.services = [n for n in known if n in names]  # start order, whatever order they were given in
    return opts


def part_options(opts: Settings, part: Part) -> Settings:
    """The options of one service, named as its separate daemon names them, checked as it checks them."""
    values = opts.as_dict()
    own = {o.attr: values[o.attr] for o in [*COMMON_OPTIONS, *SHARED_OPTIONS]}
    prefix = part.name.replace("-", "_") + "_"
    own.update({o.attr: values[prefix + o.attr] for o in part.options if o.name not in _SHARED})
    settings = Settings(own)
    if part.name == "controller" and not settings.repository_endpoint:
        settings.repository_endpoint = (_url(opts.stubs_host, opts.stubs_port, bool(opts.tls_cert))
                                        if "stubs" in opts.services
                                        else "http://127.0.0.1:8002")
    if part.name == "httptrigger" and not settings.repository_endpoint:
        settings.repository_endpoint = (_url(opts.stubs_host, opts.stubs_port) if "stubs" in opts.services
                                        else "http://127.0.0.1:8002")
    if part.name == "stubs" and not settings.controller_url and "controller" in opts.services:
        settings.controller_url = _url(opts.controller_bind_address, opts.controller_port)
    if part.name == "httptrigger" and not settings.controller_host:
        settings.controller_host = (_url(opts.controller_bind_address, opts.controller_port, bool(opts.tls_cert))
                                    if "controller" in opts.services else "http://127.0.0.1:8001")
    return part.check(settings)


def _url(host: str, port: int, tls: bool = False) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening everywhere: reachable on loopback
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def services(opts: Settings) -> list[Service]:
    """The services ``--services`` names, in start order."""
    return [part.service(part_options(opts, part)) for part in PARTS if part.name in opts.services]


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_all_in_one_options(argv)
    setup_logging(opts, daemon=PROG)
    running = services(opts)
    log.info("all_in_one_starting", services=opts.services, event_loop=event_loop_name(loop_factory(opts.event_loop)))
    run_daemon(running, event_loop=opts.event_loop)


if __name__ == "__main__":
    main()
