"""The controller's options: the original's flag names and meanings, with the defaults this pod uses."""

from __future__ import annotations

from typing import Any, Sequence

from controller.scaling import parse_scaling
from easyfaas.auth import SECURITY_OPTIONS
from easyfaas.config import Option, Settings, parse_bool, parse_duration, parse_options, parse_size

_MAX_TRANSITION_TIME = "90s"
DEFAULT_GATEWAY_PORT = 8080


def parse_port_or_off(value: Any) -> int:
    """A TCP port; empty means 0 (off)."""
    return int(value) if str(value).strip() else 0


OPTIONS = [
    Option("port", int, 8080, "TCP port of the controller API"),
    Option("bind-address", str, "127.0.0.1", "address to listen on", aliases=("host",)),
    *SECURITY_OPTIONS,  # --auth, --auth-dir, --tls-cert, ... (easyfaas/auth.py)
    Option("funclet-api-sock", str, "/var/run/faas/.funcletapi.sock", "unix socket of the funclet API"),
    Option("repository-endpoint", str, "http://127.0.0.1:8002", "function registry (stubs) base URL"),
    Option("repository-version", str, "v1", "URL prefix of the registry API"),
    Option("repository-auth-type", str, "noauth", "registry authentication; only noauth is supported"),
    Option("runtime-alive-timeout", parse_duration, "15s",
           "how long a cold start (funclet warmup) may take before the request fails; above a"
           " function's own init limit (10 s, Lambda's) so that its init error is the one reported"),
    Option("runtime-failure-wait", parse_duration, "5s",
           "how long a call whose runtime went away waits for the funclet to say why (OOM kill, signal)"
           " before it answers Runtime.ExitError without the reason"),
    Option("task-interval", parse_duration, "5s", "period of the background task (cooldown, reborn, sync)"),
    Option("max-runtime-idle", parse_duration, "60s", "idle time after which a warm sandbox is cooled down"),
    Option("max-transition-time", parse_duration, _MAX_TRANSITION_TIME,
           "a sandbox stuck in warmup, stopping or removing with nothing under way, or that the funclet "
           "reports unavailable, longer than this is reborn"),
    # The controller's old spelling (the funclet's --max-runner-defunct is about silent runners).
    Option("max-runner-defunct", parse_duration, None, "deprecated: use --max-transition-time"),
    Option("queue-length", int, 100, "requests of one function that may wait for a sandbox; more get 429"),
    Option("queue-timeout", parse_duration, "1s",
           "how long a request waits in its function's queue for a sandbox before it gets 429 (0: no "
           "queue, 429 at once, as the original; a request still waits for a sandbox being built for it)"),
    Option("min-free-sandboxes", int, 1,
           "while requests come in, keep this many cold sandboxes built ahead (if the funclet's "
           "--max-sandboxes allows)"),
    Option("max-sandbox-idle", parse_duration, "60s",
           "sandboxes beyond the funclet's --container-num that stay unused this long are removed"),
    Option("function-scaling", str, "",
           "YAML file of per-function knobs: {<name or BRN>: {min, max, zero, zero-duration, "
           "reserved-concurrency}} (OpenFaaS scaling labels; they override the function's own)"),
    Option("scale-min-ttl", parse_duration, "1h",
           "a function's scale.min keeps sandboxes warm only while it was invoked within this time"),
    Option("funclet-events", parse_bool, True,
           "follow the funclet's sandbox events (else notice changes at the next --task-interval)"),
    Option("drain-timeout", parse_duration, "30s",
           "on SIGTERM, how long in-flight and queued requests may take before the controller stops"),
    Option("concurrent-mode", parse_bool, True,
           "a warm sandbox serves up to the function's PodConcurrentQuota requests at once"),
    Option("enable-simple-auth", parse_bool, True,
           "require X-easyfaas-Account-Id to equal the function owner's Uid"),
    Option("max-body-size", parse_size, "6M", "largest invoke request body"),
    Option("function-cache-ttl", parse_duration, "600s", "cache lifetime of functions named by a numeric version"),
    Option("latest-cache-ttl", parse_duration, "0",
           "cache lifetime of $LATEST functions (0: ask the registry on every invocation)"),
    Option("runtime-config-cache-ttl", parse_duration, "600s", "cache lifetime of runtime configurations"),
    Option("registry-timeout", parse_duration, "30s", "timeout of a registry request"),
    Option("funclet-timeout", parse_duration, "10s", "timeout of funclet API calls other than warmup and resets"),
    Option("event-loop", str, "auto",
           "uvloop, asyncio, or auto (uvloop when it is installed): the loop the controller runs on"),
    Option("prefetch-code", parse_bool, True,
           "build new functions' code images as stubs announces them, before their first invocation"),
    Option("http-enhanced", parse_bool, False,
           "serve the HTTP trigger (routes and function URLs) in the controller; on --gateway-port, else 8080"),
    Option("gateway-port", parse_port_or_off, 0,
           "TCP port of the HTTP gateway served in the controller (routes, function URLs); 0 or empty: none"),
    Option("gateway-host", str, "127.0.0.1", "address the HTTP gateway listens on"),
    Option("state-dir", str, "/var/faas/controller", "the controller's own durable state (the event queue)"),
    Option("event-queue", str, "",
           "where asynchronous invocations wait: empty for SQLite in --state-dir, sqlite:///<dir>, or "
           "nats://host:4222 (NATS JetStream, shared by every pod pointed at it)"),
    Option("event-concurrency-share", float, 0.5,
           "share of a function's concurrency that asynchronous invocations may take (sync calls come first)"),
    Option("event-workers", int, 64, "asynchronous invocations run at once by this controller, over all functions"),
    Option("event-retry-base", parse_duration, "60s",
           "wait before the first retry of a failed asynchronous invocation; doubled for each next one"),
    Option("event-queue-length", int, 10000, "queued asynchronous invocations per function; more get 429"),
    Option("event-queue-total", int, 100000, "queued asynchronous invocations in total; more get 429"),
    Option("event-record-ttl", parse_duration, "24h", "how long records of finished invocations are kept"),
    Option("event-max-records", int, 100000, "records of finished invocations kept at most (oldest go first)"),
    Option("event-sources", parse_bool, True,
           "run the event sources (cron schedules, MQTT topics) of the triggers stubs serves"),
    Option("event-ack-wait", parse_duration, "30s",
           "NATS: a pod that holds an event this long without news is taken for dead and the event redelivered"),
    Option("metrics", parse_bool, True, "serve Prometheus metrics on GET /metrics and count invocations (on/off)"),
    Option("function-logs", parse_bool, True,
           "keep every invocation's output and START/END/REPORT lines per function (on/off)"),
    Option("function-log-dir", str, "", "where function logs are kept (default: <state-dir>/function-logs)"),
    Option("function-log-max-bytes", parse_size, "16M", "size cap of one function's kept logs (oldest rotated out)"),
]


def parse_controller_options(argv: Sequence[str] | None = None) -> Settings:
    return check_controller_options(parse_options("controller", OPTIONS, argv))


def check_controller_options(opts: Settings) -> Settings:
    """The checks beyond each option's type, and the --function-scaling file loaded; exits on a bad one."""
    if opts.repository_auth_type != "noauth":
        raise SystemExit(
            f"easyfaas-controller: --repository-auth-type {opts.repository_auth_type!r} is not supported;"
            " only 'noauth' is (the registry must be reachable without request signing)"
        )
    if not 0 < opts.port < 65536:
        raise SystemExit(f"easyfaas-controller: --port {opts.port} is not a TCP port")
    if opts.max_body_size <= 0:
        raise SystemExit("easyfaas-controller: --max-body-size must be positive")
    if opts.queue_length < 0 or opts.min_free_sandboxes < 0:
        raise SystemExit("easyfaas-controller: --queue-length and --min-free-sandboxes must not be negative")
    if not 0 < opts.event_concurrency_share <= 1:
        raise SystemExit("easyfaas-controller: --event-concurrency-share must be in (0, 1]")
    if opts.event_workers < 1 or opts.event_queue_length < 1 or opts.event_queue_total < 1:
        raise SystemExit("easyfaas-controller: --event-workers, --event-queue-length and --event-queue-total "
                         "must be positive")
    if opts.event_queue and not opts.event_queue.startswith(("nats://", "tls://", "sqlite://")):
        raise SystemExit(f"easyfaas-controller: --event-queue {opts.event_queue!r}: expected nats://host:port "
                         "or sqlite:///<dir>")
    if opts.max_runner_defunct is not None and opts.max_transition_time == parse_duration(_MAX_TRANSITION_TIME):
        opts.max_transition_time = opts.max_runner_defunct
    if opts.http_enhanced and not opts.gateway_port:
        opts.gateway_port = DEFAULT_GATEWAY_PORT
    if not 0 <= opts.gateway_port < 65536 or (opts.gateway_port and opts.gateway_port == opts.port):
        raise SystemExit(f"easyfaas-controller: --gateway-port {opts.gateway_port} is not a free TCP port")
    opts.scaling = load_function_scaling(opts.function_scaling)
    return opts


def deprecated_options(opts: Settings) -> list[tuple[str, str]]:
    """(old spelling, its replacement) for each deprecated option ``opts`` was given."""
    if getattr(opts, "max_runner_defunct", None) is None:
        return []
    return [("max-runner-defunct", "max-transition-time")]


def load_function_scaling(path: str) -> dict[str, dict[str, Any]]:
    """The --function-scaling file, checked; exits with a message naming the bad entry."""
    if not path:
        return {}
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise SystemExit(f"easyfaas-controller: cannot read --function-scaling {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"easyfaas-controller: --function-scaling {path} is not valid YAML: {exc}") from None
    try:
        return parse_scaling(data)
    except ValueError as exc:
        raise SystemExit(f"easyfaas-controller: --function-scaling {path}: {exc}") from None
