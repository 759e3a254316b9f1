"""The control plane's doors (docs/security.md): API keys on every route of every TCP daemon, the
key admin API, revocation seen at once by every daemon of the pod, keys stored hashed, secrets
never shown, and the refusal to listen beyond loopback without keys.

The daemons run as real processes on loopback (stubs, controller and the HTTP trigger each a
process of its own, sharing one auth directory, as a pod's do); the routes tried are read from the
applications' routers, so a route added later is covered without a change here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from easyfaas.auth import OPEN_PATHS, auth_required, authenticator_of
from easyfaas.config import parse_options
from easyfaas.keys import KeyStore, parse_token
from easyfaas.function_code import b64zip
from easyfaas.pod_names import free_port
from tests.fakes.stubs_app import write_runtimes

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin"
OWNER = "owneraccount"
OTHER = "otheraccount"
SECRET_VALUE = "s3cr3t-value-that-must-never-leak-9f1c"


class Daemons:
    """stubs, controller and httptrigger as processes sharing ``auth_dir``, with keys required."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.auth_dir = base / "auth"
        # httptrigger-metrics: the trigger's aiohttp application (/metrics, health), beside its gateway
        self.ports = {"stubs": free_port(), "controller": free_port(), "httptrigger": free_port(),
                      "httptrigger-metrics": free_port()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.keys: dict[str, str] = {}

    def args(self, name: str) -> list[str]:
        common = ["--port", str(self.ports[name]), "--auth", "required", "--auth-dir", str(self.auth_dir)]
        if name == "stubs":
            return ["-m", "stubs", *common, "--function-dir", str(self.base / "funcData"),
                    "--runtime-dir", str(self.base / "runtime")]
        if name == "controller":
            return ["-m", "controller", *common, "--repository-endpoint", f"http://127.0.0.1:{self.ports['stubs']}",
                    "--funclet-api-sock", str(self.base / "no-funclet.sock"), "--prefetch-code", "false",
                    "--state-dir", str(self.base / "controller")]
        return ["-m", "httptrigger", *common, "--controller-host", f"http://127.0.0.1:{self.ports['controller']}",
                "--repository-endpoint", f"http://127.0.0.1:{self.ports['stubs']}",
                "--metrics-port", str(self.ports["httptrigger-metrics"])]

    def start(self) -> None:
        write_runtimes(self.base / "runtime")
        for name in ("stubs", "controller", "httptrigger"):
            self.logs[name] = self.base / f"{name}.log"
            out = open(self.logs[name], "wb")
            self.procs[name] = subprocess.Popen([sys.executable, *self.args(name)], cwd=ROOT, stdout=out, stderr=out,
                                                stdin=subprocess.DEVNULL)
            out.close()
            deadline = time.monotonic() + 60
            while request(self.ports[name], "GET", "/healthz")[0] != 200:
                assert self.procs[name].poll() is None, self.logs[name].read_text()
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
        self.keys[ADMIN] = (self.auth_dir / "admin.key").read_text().strip()
        for account in (OWNER, OTHER):
            status, body, _ = self.call("stubs", "POST", "/v1/keys", {"Account": account, "Description": account})
            assert status == 201, body
            self.keys[account] = body["Key"]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.values())

    def call(self, daemon: str, method: str, path: str, body: Any = None, *, key: str | None = ADMIN,
             headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return request(self.ports[daemon], method, path, body, hdrs)


def request(port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
    except OSError:
        return 0, None, {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    daemons = Daemons(tmp_path_factory.mktemp("keys"))
    try:
        daemons.start()
        yield daemons
    finally:
        daemons.stop()


# ---- the routes, read from the applications ------------------------------------------------------

def _routes(tmp: Path) -> dict[str, list[tuple[str, str]]]:
    """(method, path) of every route of each daemon's application, as the daemon builds it."""
    import controller.app
    import controller.options
    import httptrigger.app
    import stubs.daemon

    auth = ["--auth", "required", "--auth-dir", str(tmp / "auth")]
    services = {
        "stubs": stubs.daemon.stubs_service(parse_options("stubs", stubs.daemon.OPTIONS, [
            *auth, "--function-dir", str(tmp / "fd"), "--runtime-dir", str(ROOT / "runner" / "runtimes")], {})),
        "controller": controller.app.controller_service(controller.options.check_controller_options(
            parse_options("controller", controller.options.OPTIONS, [*auth, "--state-dir", str(tmp / "ctl")], {}))),
        "httptrigger-metrics": httptrigger.app.httptrigger_service(parse_options("httptrigger", httptrigger.app.OPTIONS,
                                                                         auth, {})),
    }
    out: dict[str, list[tuple[str, str]]] = {}
    for name, service in services.items():
        routes = set()
        for route in service.app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter")
            if path is None or route.method == "HEAD":
                continue
            routes.add((route.method, path))
        out[name] = sorted(routes)
    return out


_PARAMS = {"ref": "securedfn", "id": "0123456789abcdef", "name": "python3", "account": "0" * 32,
           "file": "0" * 64 + ".zip", "secret": "TOKEN", "uid": OWNER, "function": "securedfn", "version": "1"}


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: _PARAMS.get(m.group(1), "x"), path)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    found = _routes(tmp_path_factory.mktemp("routes"))
    assert ("POST", "/v1/functions/{ref}/invocations") in found["controller"]
    assert ("PUT", "/v1/functions/{ref}/secrets") in found["stubs"]
    assert ("POST", "/v1/keys") in found["stubs"]
    return found


def _keyed(daemon: str, path: str) -> bool:
    if path in OPEN_PATHS:
        return False
    return not (daemon == "stubs" and path.startswith("/v1/code/"))  # content-addressed: stubs/keys.py


def test_every_route_refuses_a_request_without_a_valid_key(pod: Daemons, routes: dict[str, list[tuple[str, str]]]
                                                           ) -> None:
    tried = 0
    for daemon, found in routes.items():
        for method, template in found:
            if not _keyed(daemon, template):
                continue
            method = "POST" if method == "*" else method
            path = _concrete(template)
            for key in (None, "efk_0123456789abcdef." + "A" * 43, "not-even-a-key"):
                status, body, headers = pod.call(daemon, method, path, {}, key=key)
                assert status == 401, (daemon, method, path, key, status, body)
                assert body["Code"] == "UnauthenticatedException" and body["Type"] == "User", body
                assert headers.get("www-authenticate", "").startswith("Bearer"), headers
                tried += 1
    assert tried >= 3 * 20


def test_every_route_refuses_an_account_key_naming_another_account(pod: Daemons,
                                                                   routes: dict[str, list[tuple[str, str]]]) -> None:
    for daemon, found in routes.items():
        for method, template in found:
            if not _keyed(daemon, template):
                continue
            method = "POST" if method == "*" else method
            status, body, _ = pod.call(daemon, method, _concrete(template), {}, key=OTHER,
                                       headers={"X-easyfaas-Account-Id": OWNER})
            assert status == 403, (daemon, method, template, status, body)


def test_admin_routes_refuse_account_keys(pod: Daemons) -> None:
    for daemon, method, path in [("stubs", "GET", "/v1/keys"), ("stubs", "POST", "/v1/keys"),
                                 ("stubs", "DELETE", "/v1/keys/0123456789abcdef"),
                                 ("stubs", "GET", "/v1/code-changes"), ("controller", "GET", "/v1/resource"),
                                 ("controller", "GET", "/v1/runtimes"),
                                 ("controller", "POST", "/v1/runtimes/x/invalidate")]:
        status, body, _ = pod.call(daemon, method, path, {"Account": OWNER}, key=OWNER)
        assert status == 403 and body["Code"] == "ForbiddenException", (daemon, path, status, body)


@pytest.fixture(scope="module")
def function(pod: Daemons) -> str:
    """A function of OWNER, made with OWNER's key (the account comes from the key alone)."""
    body = {"Runtime": "python3", "Handler": "index.handler", "Timeout": 3, "MemorySize": 128,
            "Code": b64zip({"index.py": "def handler(event, context):\n    return 'hi'\n"})}
    status, created, _ = pod.call("stubs", "POST", "/v1/functions/securedfn", body, key=OWNER)
    assert status == 200, created
    assert created["Configuration"]["Uid"] == OWNER
    return "securedfn"


def test_other_accounts_cannot_read_write_or_invoke_a_function(pod: Daemons, function: str) -> None:
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=OWNER)[0] == 200
    # OTHER's key names its own account: the function simply is not there (no ownership leaks)...
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=OTHER)[0] == 404
    assert pod.call("stubs", "GET", "/v1/functions", key=OTHER)[1] == {"Functions": []}
    assert pod.call("stubs", "DELETE", f"/v1/functions/{function}", key=OTHER)[0] == 404
    assert pod.call("stubs", "PUT", f"/v1/functions/{function}/secrets", {"X": "y"}, key=OTHER)[0] == 404
    # ... and naming OWNER's function by its full BRN is refused outright.
    status, created, _ = pod.call("stubs", "GET", f"/v1/functions/{function}", key=OWNER)
    arn = created["Configuration"]["FunctionArn"]
    assert pod.call("stubs", "GET", f"/v1/functions/{arn}", key=OTHER)[0] == 403
    status, body, _ = pod.call("controller", "POST", f"/v1/functions/{arn}/invocations", {}, key=OTHER)
    assert status == 403, body
    status, body, _ = pod.call("httptrigger", "POST", f"/{OWNER}/{function}", {}, key=OTHER)
    assert status == 403, body
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=OWNER)[0] == 200  # still there


def test_an_account_key_gets_past_the_door_of_the_controller_and_the_trigger(pod: Daemons, function: str) -> None:
    # No funclet runs here: getting as far as the pool (a 5xx, not 401/403) is what is checked.
    status, body, _ = pod.call("controller", "POST", f"/v1/functions/{function}/invocations", {}, key=OWNER)
    assert status not in (401, 403), body
    status, body, _ = pod.call("httptrigger", "POST", f"/{OWNER}/{function}", {}, key=OWNER)
    assert status not in (401, 403), body


def test_invocations_handed_to_aiohttp_on_a_reused_connection_need_a_key_too(pod: Daemons) -> None:
    """The front door hands a connection to aiohttp at its first other request; invocations after
    that are answered by the aiohttp route, behind the auth middleware."""
    with socket.create_connection(("127.0.0.1", pod.ports["controller"]), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(b"POST /v1/functions/securedfn/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        second = _read_response(s)
        assert second.startswith(b"HTTP/1.1 401"), second
        assert b"UnauthenticatedException" in second


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_revoked_key_stops_working_at_once_in_every_daemon(pod: Daemons, function: str) -> None:
    status, made, _ = pod.call("stubs", "POST", "/v1/keys", {"Account": OWNER, "Description": "short-lived"})
    assert status == 201 and made["Account"] == OWNER and made["Admin"] is False
    token = made["Key"]
    listed = pod.call("stubs", "GET", "/v1/keys")[1]["Keys"]
    assert made["Id"] in {k["Id"] for k in listed}
    assert all("Key" not in k and "Hash" not in k for k in listed)
    # verified once by each daemon (so each has it cached) ...
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=token)[0] == 200
    assert pod.call("controller", "POST", f"/v1/functions/{function}/invocations", {}, key=token)[0] not in (401, 403)
    assert pod.call("httptrigger", "POST", f"/{OWNER}/{function}", {}, key=token)[0] not in (401, 403)
    assert pod.call("stubs", "DELETE", f"/v1/keys/{made['Id']}")[0] == 204
    # ... and refused by each at the very next request.
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=token)[0] == 401
    assert pod.call("controller", "POST", f"/v1/functions/{function}/invocations", {}, key=token)[0] == 401
    assert pod.call("httptrigger", "POST", f"/{OWNER}/{function}", {}, key=token)[0] == 401
    assert pod.call("stubs", "DELETE", f"/v1/keys/{made['Id']}")[0] == 404


def test_key_admin_api_checks_its_input(pod: Daemons) -> None:
    for body in ({"Account": None, "Admin": False}, {"Account": "bad account!"}, {"Admin": "yes", "Account": OWNER},
                 [1, 2]):
        status, answer, _ = pod.call("stubs", "POST", "/v1/keys", body)
        assert status == 400 and answer["Code"] == "InvalidParameterValueException", (body, answer)


def test_keys_are_stored_hashed_and_private(pod: Daemons) -> None:
    keys = json.loads((pod.auth_dir / "keys.json").read_text())["Keys"]
    assert all(k["Hash"].startswith("$argon2id$") for k in keys)
    made = [pod.keys[OWNER], pod.keys[OTHER]]
    for path in pod.base.rglob("*"):
        if path.is_file() and path.name not in ("admin.key", "pod.key"):
            data = path.read_bytes()
            for token in made:
                assert parse_token(token)[1].encode() not in data, path  # type: ignore[index]
    assert stat.S_IMODE(pod.auth_dir.stat().st_mode) == 0o700
    for name in ("keys.json", "admin.key", "pod.key"):
        assert stat.S_IMODE((pod.auth_dir / name).stat().st_mode) == 0o600, name


def test_secrets_are_never_shown(pod: Daemons, function: str) -> None:
    answers = []
    answers.append(pod.call("stubs", "PUT", f"/v1/functions/{function}/secrets",
                            {"TOKEN": SECRET_VALUE, "OTHER_ONE": SECRET_VALUE + "2"}, key=OWNER))
    assert answers[-1][:2] == (200, {"Names": ["OTHER_ONE", "TOKEN"]})
    answers.append(pod.call("stubs", "GET", f"/v1/functions/{function}/secrets", key=OWNER))
    assert answers[-1][1] == {"Names": ["OTHER_ONE", "TOKEN"]}
    answers.append(pod.call("stubs", "GET", f"/v1/functions/{function}", key=OWNER))
    answers.append(pod.call("stubs", "GET", "/v1/functions", key=OWNER))
    answers.append(pod.call("stubs", "PUT", f"/v1/functions/{function}/secrets", {"bad name": SECRET_VALUE},
                            key=OWNER))
    assert answers[-1][0] == 400
    answers.append(pod.call("stubs", "PUT", f"/v1/functions/{function}/secrets", {"X": [SECRET_VALUE]}, key=OWNER))
    assert answers[-1][0] == 400
    answers.append(pod.call("controller", "POST", f"/v1/functions/{function}/invocations", {}, key=OWNER))
    answers.append(pod.call("stubs", "DELETE", f"/v1/functions/{function}/secrets/OTHER_ONE", key=OWNER))
    assert answers[-1][0] == 204
    answers.append(pod.call("stubs", "DELETE", f"/v1/functions/{function}/secrets/OTHER_ONE", key=OWNER))
    assert answers[-1][0] == 404
    assert pod.call("stubs", "GET", f"/v1/functions/{function}/secrets", key=OWNER)[1] == {"Names": ["TOKEN"]}
    for status, body, headers in answers:
        assert SECRET_VALUE not in json.dumps(body) + json.dumps(headers)
    time.sleep(0.2)  # let the daemons' log lines reach their files
    assert SECRET_VALUE not in pod.log_text()
    sealed = list((pod.auth_dir / "secrets").rglob("*.sealed"))
    assert sealed, "no secrets file"
    for path in pod.base.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in sealed)
    assert stat.S_IMODE((pod.auth_dir / "secrets.key").stat().st_mode) == 0o600


def test_the_function_store_is_root_only(pod: Daemons, function: str) -> None:
    root = pod.base / "funcData"
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


# ---- secure by default ----------------------------------------------------------------------------

def test_auto_requires_keys_beyond_loopback(tmp_path: Path) -> None:
    assert not auth_required("auto", ["127.0.0.1", "::1", "localhost"])
    assert auth_required("auto", ["0.0.0.0"]) and auth_required("auto", ["192.0.2.1"])
    assert auth_required("1", ["127.0.0.1"]) and not auth_required("off", ["127.0.0.1"])
    opts = parse_options("x", __import__("easyfaas.auth", fromlist=["AUTH_OPTIONS"]).AUTH_OPTIONS,
                         ["--auth-dir", str(tmp_path / "auth")], {})
    assert authenticator_of(opts, ["0.0.0.0"], daemon="stubs") is not None  # auto: required
    assert (tmp_path / "auth" / "admin.key").is_file()
    assert KeyStore(tmp_path / "auth").verify((tmp_path / "auth" / "admin.key").read_text().strip()).Admin


def test_a_daemon_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path) -> None:
    for module in ("stubs", "controller", "httptrigger"):
        proc = subprocess.run([sys.executable, "-m", module, "--host", "0.0.0.0", "--port", str(free_port()),
                               "--auth", "off", "--auth-dir", str(tmp_path / "auth")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0, (module, proc.stderr)
        assert "refusing to listen on 0.0.0.0 without API keys" in proc.stderr, (module, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_environment_turns_keys_on(tmp_path: Path) -> None:
    """EASYFAAS_AUTH=1 (what `EASYFAAS_AUTH=1 make run` sets) requires keys on loopback too."""
    port = free_port()
    env = {**os.environ, "EASYFAAS_AUTH": "1", "EASYFAAS_AUTH_DIR": str(tmp_path / "auth")}
    proc = subprocess.Popen([sys.executable, "-m", "stubs", "--port", str(port), "--function-dir",
                             str(tmp_path / "fd"), "--runtime-dir", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while request(port, "GET", "/healthz")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert request(port, "GET", "/v1/functions")[0] == 401
        admin = (tmp_path / "auth" / "admin.key").read_text().strip()
        assert request(port, "GET", "/v1/functions", headers={"Authorization": f"Bearer {admin}"})[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert "admin_key_written" in err and str(tmp_path / "auth" / "admin.key") in err


# ---- callbacks: the outbound guard is on whenever keys are required ------------------------------

def test_callback_urls_aimed_at_the_pod_or_the_host_are_refused(pod: Daemons, function: str) -> None:
    for url in (f"http://127.0.0.1:{pod.ports['stubs']}/v1/keys", f"http://localhost:{pod.ports['controller']}/",
                "http://[::1]/hook", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0:8002/"):
        status, body, _ = pod.call("controller", "POST", f"/v1/functions/{function}/invocations", {}, key=OWNER,
                                   headers={"X-easyfaas-Invoke-Type": "Event", "X-easyfaas-Callback-Url": url})
        assert status == 403 and body["Code"] == "OutboundRefusedException", (url, status, body)


async def test_a_callback_sender_with_the_guard_never_connects_to_loopback() -> None:
    from aiohttp import web

    from controller.event_queue.callbacks import CallbackSender
    from easyfaas.outbound import OutboundGuard

    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    notes: list[dict[str, Any]] = []

    async def record(_: str, outcome: dict[str, Any]) -> None:
        notes.append(outcome)

    try:
        for allow, delivered in (("", False), (f"127.0.0.1:{port}", True)):
            sender = CallbackSender(record, attempts=2, base_delay=0.01,
                                    guard=OutboundGuard.of(True, allow))
            await sender.start()
            sender.send(f"http://127.0.0.1:{port}/hook", "req-1", "Success", b"{}", "application/json", False)
            await sender.close()
            assert notes[-1]["Delivered"] is delivered, notes
        assert hits == ["/hook"]  # only the allowed one reached the server
        assert "loopback" in notes[0]["Error"] and notes[0]["Attempts"] == 1
    finally:
        await runner.cleanup()


# ---- the gateway: AuthType KEY routes, function URLs ----------------------------------------------

def _wait_for_route(pod: Daemons, path: str) -> None:
    deadline = time.monotonic() + 30
    while request(pod.ports["httptrigger"], "GET", path)[0] == 404:
        assert time.monotonic() < deadline, f"the gateway never served {path}"
        time.sleep(0.1)


def test_gateway_routes_of_auth_type_key_need_a_key_of_their_account(pod: Daemons, function: str) -> None:
    # One segment: no function URL has that form, so the gateway answers 404 until it has the routes.
    for path, auth in (("/keyed", "KEY"), ("/open", "NONE")):
        status, body, _ = pod.call("stubs", "POST", f"/v1/functions/{function}/triggers",
                                   {"Type": "http", "Config": {"Methods": ["GET"], "Path": path, "AuthType": auth}},
                                   key=OWNER)
        assert status in (200, 201), body
    status, body, _ = pod.call("stubs", "POST", f"/v1/functions/{function}/triggers",
                               {"Type": "http", "Config": {"Methods": ["GET"], "Path": "/x", "AuthType": "IAM"}},
                               key=OWNER)
    assert status == 400, body
    _wait_for_route(pod, "/keyed")
    _wait_for_route(pod, "/open")
    port = pod.ports["httptrigger"]
    status, body, headers = request(port, "GET", "/keyed")
    assert (status, body) == (401, {"message": "Unauthorized"}) and headers["www-authenticate"].startswith("Bearer")
    assert request(port, "GET", "/keyed", headers={"Authorization": "Bearer efk_nope.x"})[0] == 401
    assert request(port, "GET", "/keyed", headers={"Authorization": f"Bearer {pod.keys[OTHER]}"})[0] == 403
    # The owner's key and an admin key get through to the invocation (no funclet here: not 401/403).
    for key in (OWNER, ADMIN):
        status, _, _ = request(port, "GET", "/keyed", headers={"Authorization": f"Bearer {pod.keys[key]}"})
        assert status not in (401, 403, 404), (key, status)
    assert request(port, "GET", "/open")[0] not in (401, 403, 404)  # AuthType NONE: anyone


def test_function_urls_need_a_key_when_keys_are_required(pod: Daemons, function: str) -> None:
    port = pod.ports["httptrigger"]
    assert request(port, "POST", f"/{OWNER}/{function}", {})[0] == 401
    assert request(port, "POST", f"/{OWNER}/{function}", {}, {"Authorization": f"Bearer {pod.keys[OTHER]}"})[0] == 403
    status, _, _ = request(port, "POST", f"/{OWNER}/{function}", {}, {"Authorization": f"Bearer {pod.keys[OWNER]}"})
    assert status not in (401, 403, 404)


def test_the_command_line_makes_lists_and_revokes_keys(pod: Daemons, function: str) -> None:
    def easyfaas(*args: str, key: str = ADMIN) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EASYFAAS_REGISTRY_URL": f"http://127.0.0.1:{pod.ports['stubs']}",
               "EASYFAAS_URL": f"http://127.0.0.1:{pod.ports['controller']}", "EASYFAAS_KEY": pod.keys.get(key, key),
               "EASYFAAS_CONFIG": "/nonexistent/easyfaas.yaml"}
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    made = easyfaas("keys", "create", "--for", OWNER, "--description", "from the cli")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert parse_token(token) is not None
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=token)[0] == 200
    listed = easyfaas("--output", "json", "keys", "ls")
    assert listed.returncode == 0, listed.stderr
    mine = [k for k in json.loads(listed.stdout)["Keys"] if k["Description"] == "from the cli"]
    assert len(mine) == 1 and mine[0]["Account"] == OWNER and token not in listed.stdout
    refused = easyfaas("keys", "ls", key=OWNER)  # an account key may not
    assert refused.returncode != 0 and "needs an admin key" in refused.stderr, refused.stderr
    revoked = easyfaas("keys", "rm", mine[0]["Id"])
    assert revoked.returncode == 0, revoked.stderr
    assert pod.call("stubs", "GET", f"/v1/functions/{function}", key=token)[0] == 401
