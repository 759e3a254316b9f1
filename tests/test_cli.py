"""The ``easyfaas`` command line without a pod: settings precedence, packaging, the stack file,
error lines and exit codes (against real loopback HTTP servers where an answer is needed). The
commands run in this process through the CLI's ``main``; the entry point runs as ``python -m cli``
in the tests of help and exit status."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from unittest import mock

import pytest

from cli.__main__ import main as cli_main
from cli.exits import BuildError, ExitCode, UsageError, exit_code_for_status
from cli.packaging import build_package, install_steps, is_ignored, package_files, zip_directory
from cli.settings import DEFAULT_REGISTRY_URL, DEFAULT_URL, resolve
from cli.stack import StackError, parse_stack
from easyfaas.errors import AccessDenied, ResourceConflict, ResourceNotFound
from easyfaas.pod import REPO_ROOT
from easyfaas.pod_names import free_port

# ---- settings --------------------------------------------------------------------------------------

PROFILES = """
default: edge
profiles:
  edge:
    url: http://edge:8001
    registry_url: http://edge:8002
    key: edge-key
    account: edgeacct
  lab:
    url: http://lab:8001
"""


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(PROFILES)
    return path


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    s = resolve({}, {}, config=tmp_path / "absent.yaml")
    assert (s.url, s.registry_url, s.key, s.account, s.profile) == (DEFAULT_URL, DEFAULT_REGISTRY_URL, "", "", "")


def test_flags_beat_environment_beat_profile(profile_file: Path) -> None:
    env = {"EASYFAAS_URL": "http://env:1", "EASYFAAS_KEY": "env-key"}
    s = resolve({"url": "http://flag:1"}, env, config=profile_file)
    assert s.url == "http://flag:1"            # flag over environment and profile
    assert s.key == "env-key"                  # environment over profile
    assert s.registry_url == "http://edge:8002" and s.account == "edgeacct"  # the file's default profile
    assert s.profile == "edge"


def test_profile_is_chosen_by_flag_then_environment_then_file(profile_file: Path) -> None:
    assert resolve({}, {"EASYFAAS_PROFILE": "lab"}, config=profile_file).url == "http://lab:8001"
    s = resolve({}, {"EASYFAAS_PROFILE": "lab"}, config=profile_file, profile="edge")
    assert s.url == "http://edge:8001"
    lab = resolve({}, {}, config=profile_file, profile="lab")
    assert lab.registry_url == DEFAULT_REGISTRY_URL and lab.key == ""  # unset keys fall back to defaults


def test_default_location_follows_xdg_config_home(tmp_path: Path) -> None:
    (tmp_path / "easyfaas").mkdir()
    (tmp_path / "easyfaas" / "config.yaml").write_text("profiles:\n  default:\n    account: fromfile\n")
    assert resolve({}, {"XDG_CONFIG_HOME": str(tmp_path)}).account == "fromfile"
    assert resolve({}, {"HOME": str(tmp_path / "nohome")}).account == ""


@pytest.mark.parametrize("text, fragment", [
    ("profiles:\n  a:\n    urll: http://x\n", "profiles.a.urll: unknown setting"),
    ("profiles: [1, 2]\n", "profiles: expected a mapping"),
    ("colours: red\n", "unknown key 'colours'"),
    ("profiles: {a: {url: [x]}}\n", "profiles.a.url: expected a string"),
    ("profiles:\n  a: {url: ftp://x}\ndefault: a\n", "url: expected an http:// or https:// URL"),
    ("{{{", "not valid YAML"),
])
def test_bad_profile_files_are_usage_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        resolve({}, {}, config=path)
    assert fragment in info.value.message and info.value.code == ExitCode.USAGE


def test_unknown_profile_names_the_known_ones(profile_file: Path) -> None:
    with pytest.raises(UsageError, match=r"profile 'prod' not found .*\(profiles: edge, lab\)"):
        resolve({}, {}, config=profile_file, profile="prod")


# ---- packaging -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, ignored", [
    (".git/HEAD", True), ("src/__pycache__/m.cpython-311.pyc", True), ("a/.DS_Store", True),
    ("old.pyc", True), (".venv/bin/python", True), ("node_modules/.cache/x/y", True),
    ("lib/node_modules/.cache", True), ("node_modules/is-number/index.js", False), ("main.py", False),
    (".gitignore", False), ("cache/.cachefile", False), ("pyc.txt", False),
])
def test_ignore_rules(path: str, ignored: bool) -> None:
    assert is_ignored(PurePosixPath(path)) is ignored


def make_tree(root: Path) -> None:
    for rel, content in {"main.py": "x = 1\n", "lib/helper.py": "y = 2\n", ".git/config": "[core]\n",
                         "__pycache__/main.cpython-311.pyc": "junk", ".DS_Store": "junk",
                         "node_modules/.cache/babel/x.json": "{}", "node_modules/dep/index.js": "//\n",
                         ".venv/pyvenv.cfg": "home=/\n", "lib/old.pyc": "junk"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)


def test_zip_keeps_sources_and_modes_and_drops_junk(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with zipfile.ZipFile(io.BytesIO(zip_directory(tmp_path))) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert set(names) == {"main.py", "lib/helper.py", "node_modules/dep/index.js", "run.sh"}
        assert zf.read("lib/helper.py") == b"y = 2\n"
        assert stat.S_IMODE(zf.getinfo("run.sh").external_attr >> 16) == 0o755
        assert stat.S_IMODE(zf.getinfo("main.py").external_attr >> 16) == 0o644


def test_zip_is_reproducible(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = zip_directory(tmp_path)
    os.utime(tmp_path / "main.py", (1, 1))
    assert zip_directory(tmp_path) == first  # same sources, same CodeSha256


def test_empty_directory_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    with pytest.raises(BuildError, match="nothing to package"):
        zip_directory(tmp_path)


def test_install_steps_follow_the_manifests(tmp_path: Path) -> None:
    assert install_steps(tmp_path, python="py") == []
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / "package.json").write_text("{}")
    pip, npm = install_steps(tmp_path, python="/opt/py", npm="npm")
    assert pip.argv[:6] == ["/opt/py", "-m", "pip", "install", "--target", "."] and "-r" in pip.argv
    assert npm.argv[:3] == ["npm", "install", "--omit=dev"]
    (tmp_path / "package-lock.json").write_text("{}")
    assert install_steps(tmp_path, python="py")[1].argv[:3] == ["npm", "ci", "--omit=dev"]


FAKE_PIP = """#!/bin/sh
# stands in for "python -m pip install --target . -r requirements.txt": installs one module into cwd
[ "$1 $2 $3 $4 $5" = "-m pip install --target ." ] || exit 9
echo "VENDORED = True" > vendored.py
mkdir -p __pycache__ && echo junk > __pycache__/vendored.cpython-311.pyc
"""


def test_dependencies_go_into_a_build_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text("import vendored\n")
    (src / "requirements.txt").write_text("vendored\n")
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PIP)
    fake.chmod(0o755)
    package = build_package(src, python=str(fake))
    assert package.installed == ["requirements.txt"]
    with zipfile.ZipFile(io.BytesIO(package.zip_bytes)) as zf:
        assert set(zf.namelist()) == {"main.py", "requirements.txt", "vendored.py"}
    assert sorted(p.name for p in src.iterdir()) == ["main.py", "requirements.txt"]  # the user's dir untouched
    no_install = build_package(src, python=str(fake), install=False)
    assert no_install.installed == []
    assert "vendored.py" not in zipfile.ZipFile(io.BytesIO(no_install.zip_bytes)).namelist()


def test_failed_install_is_a_build_error_with_the_tool_output(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("x\n")
    fake = tmp_path / "failpython"
    fake.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for x' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(BuildError) as info:
        build_package(tmp_path, python=str(fake))
    assert info.value.code == ExitCode.BUILD_FAILED
    assert "requirements.txt" in info.value.message and "No matching distribution found for x" in info.value.message
    with pytest.raises(BuildError, match="not found"):
        build_package(tmp_path, python=str(tmp_path / "nosuchpython"))


def test_package_files_follow_symlinks_and_skip_dangling_ones(tmp_path: Path) -> None:
    (tmp_path / "real.js").write_text("1")
    (tmp_path / "link.js").symlink_to(tmp_path / "real.js")
    (tmp_path / "dangling.js").symlink_to(tmp_path / "nowhere")
    assert [str(rel) for _, rel in package_files(tmp_path)] == ["link.js", "real.js"]


# ---- stack file ------------------------------------------------------------------------------------

def stack_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "main.py").write_text("def handler(e, c): return 1\n")
    return tmp_path / "stack.yaml"


GOOD_STACK = """
version: 1
provider: {url: "http://pod:8001"}
functions:
  hello:
    dir: hello
    runtime: python3
    handler: main.handler
    memory: 256
    environment: {GREETING: hi, N: 3}
    triggers:
      - type: http
        config: {Methods: [GET], Path: /hello}
"""


def test_a_valid_stack(tmp_path: Path) -> None:
    path = stack_dir(tmp_path)
    stack = parse_stack(path, GOOD_STACK)
    assert stack.url == "http://pod:8001" and stack.registry_url == ""
    (fn,) = stack.functions
    assert (fn.spec.name, fn.spec.runtime, fn.spec.memory, fn.install) == ("hello", "python3", 256, True)
    assert fn.spec.directory == (tmp_path / "hello").resolve()
    assert fn.spec.environment == {"GREETING": "hi", "N": "3"}
    assert fn.triggers[0].body() == {"Type": "http", "Qualifier": "$LATEST",
                                     "Config": {"Methods": ["GET"], "Path": "/hello"}}
    assert fn.spec.body()["Environment"] == {"Variables": {"GREETING": "hi", "N": "3"}}


def test_stack_async_config(tmp_path: Path) -> None:
    path = stack_dir(tmp_path)
    settings = ("    async: {max_retry_attempts: 0, max_event_age: 60, on_failure: audit,\n"
                "            on_success: 'brn:cloud:faas:bj:abc:function:done:$LATEST'}\n")
    text = GOOD_STACK.replace("    triggers:", settings + "    triggers:")
    (fn,) = parse_stack(path, text).functions
    assert fn.async_config is not None
    assert fn.async_config.body({"audit": "brn:cloud:faas:bj:abc:function:audit:$LATEST"}) == {
        "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60,
        "DestinationConfig": {"OnSuccess": {"Destination": "brn:cloud:faas:bj:abc:function:done:$LATEST"},
                              "OnFailure": {"Destination": "brn:cloud:faas:bj:abc:function:audit:$LATEST"}}}
    assert parse_stack(path, GOOD_STACK).functions[0].async_config is None


@pytest.mark.parametrize("change, field, problem", [
    (("memory: 256", "memory: lots"), "functions.hello.memory", "expected an integer"),
    (("memory: 256", "memory: 20"), "functions.hello.memory", "between 64 and 10240"),
    (("    runtime: python3\n", ""), "functions.hello.runtime", "required field missing"),
    (("dir: hello", "dir: nowhere"), "functions.hello.dir", "is not a directory"),
    (("memory: 256", "memroy: 256"), "functions.hello.memroy", "unknown field"),
    (("{GREETING: hi, N: 3}", "{1BAD: x}"), "functions.hello.environment.1BAD", "invalid name"),
    (("- type: http", "- kind: http"), "functions.hello.triggers[0].kind", "unknown field"),
    (("config: {Methods: [GET], Path: /hello}", "config: [1]"), "functions.hello.triggers[0].config",
     "expected a mapping"),
    (("version: 1", "version: 2"), "version", "unsupported version"),
    (('provider: {url: "http://pod:8001"}', "provider: {url: pod}"), "provider.url", "http:// or https://"),
    (("  hello:", "  'bad name':"), "functions.bad name", "invalid function name"),
    (("    triggers:", "    async: {max_retry_attempts: 3}\n    triggers:"), "functions.hello.async.max_retry_attempts",
     "between 0 and 2"),
    (("    triggers:", "    async: {max_event_age: 10}\n    triggers:"), "functions.hello.async.max_event_age",
     "between 60 and 21600"),
    (("    triggers:", "    async: {retries: 1}\n    triggers:"), "functions.hello.async.retries", "unknown field"),
    (("    triggers:", "    async: {on_failure: ''}\n    triggers:"), "functions.hello.async.on_failure",
     "non-empty string"),
])
def test_stack_errors_name_the_field(tmp_path: Path, change: tuple[str, str], field: str, problem: str) -> None:
    path = stack_dir(tmp_path)
    text = GOOD_STACK.replace(*change)
    assert text != GOOD_STACK
    with pytest.raises(StackError) as info:
        parse_stack(path, text)
    assert info.value.where == field, info.value.message
    assert problem in info.value.message and str(path) in info.value.message
    assert info.value.code == ExitCode.USAGE


@pytest.mark.parametrize("text, problem", [("", "expected a mapping"), ("functions: {}\n", "functions:"),
                                           ("functions: [\n", "not valid YAML")])
def test_stack_without_functions(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(StackError, match=problem):
        parse_stack(stack_dir(tmp_path), text)


# ---- exit codes and error lines --------------------------------------------------------------------

@pytest.mark.parametrize("status, code", [(404, ExitCode.NOT_FOUND), (400, ExitCode.REFUSED),
                                          (401, ExitCode.REFUSED), (403, ExitCode.REFUSED),
                                          (409, ExitCode.REFUSED), (429, ExitCode.REFUSED),
                                          (500, ExitCode.UNAVAILABLE), (503, ExitCode.UNAVAILABLE)])
def test_exit_code_of_a_status(status: int, code: ExitCode) -> None:
    assert exit_code_for_status(status) == code


@dataclass
class CliRun:
    """What one CLI run left: its exit code and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def cli_environment(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without EASYFAAS_* settings (and no profile file), plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EASYFAAS_")}
    base["EASYFAAS_CONFIG"] = "/nonexistent/easyfaas.yaml"
    return {**base, **(env or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> CliRun:
    """The CLI's ``main`` in this process, with its own environment and standard streams.

    In-process so the inner loop does not pay an interpreter start per call; the entry point as a
    real process is :func:`run_cli_process`.
    """
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stdin_stream = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
    with mock.patch.dict(os.environ, cli_environment(env), clear=True), \
            mock.patch.multiple(sys, stdout=out, stderr=err, stdin=stdin_stream):
        code = cli_main(list(args))
    out.flush()
    err.flush()
    return CliRun(code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode())  # type: ignore[attr-defined]


def run_cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m cli`` as a process of its own: the real entry point and exit status."""
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env=cli_environment(env),
                          capture_output=True, text=True, timeout=60)


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with the server's canned (status, body) and records what it got."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        server: RecordingServer = self.server  # type: ignore[assignment]
        server.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
        status, body = server.routes.get((self.command, self.path.split("?")[0]), server.answer)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    """A loopback server answering ``routes[(method, path)]`` (else ``answer``), keeping what it got."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answer: tuple[int, Any] = (200, {})
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer()
    # A short poll so that shutdown() at teardown does not wait out the default half second.
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def server_env(srv: RecordingServer) -> dict[str, str]:
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    return {"EASYFAAS_URL": url, "EASYFAAS_REGISTRY_URL": url}


def test_account_and_key_are_sent(server: RecordingServer) -> None:
    server.answer = (200, {"Functions": []})
    proc = run_cli("ls", env={**server_env(server), "EASYFAAS_KEY": "k1", "EASYFAAS_ACCOUNT": "acct1"})
    assert proc.returncode == 0, proc.stderr
    method, path, headers, _ = server.seen[0]
    headers = {k.lower(): v for k, v in headers.items()}
    assert (method, path) == ("GET", "/v1/functions")
    assert headers["authorization"] == "Bearer k1" and headers["x-easyfaas-account-id"] == "acct1"
    assert "no functions" in proc.stderr


@pytest.mark.parametrize("error, code", [(AccessDenied("function f does not belong to account a"), 4),
                                         (ResourceConflict("being updated"), 4)])
def test_pod_errors_are_one_line_and_their_exit_code(server: RecordingServer, error: Exception,
                                                     code: int) -> None:
    server.answer = (error.status, error.to_dict())
    proc = run_cli("describe", "f", env=server_env(server))
    assert proc.returncode == code
    assert proc.stderr == f"error: describing function f: {error.code} (HTTP {error.status}): {error.cause}\n"
    proc = run_cli("-o", "json", "describe", "f", env=server_env(server))
    assert proc.returncode == code and proc.stdout == ""
    assert json.loads(proc.stderr)["Error"] == error.to_dict()


def test_server_error_without_a_platform_body(server: RecordingServer) -> None:
    server.answer = (502, ["not", "an", "error"])
    proc = run_cli("versions", "f", env=server_env(server))
    assert proc.returncode == 5 and "unexpected HTTP 502" in proc.stderr and proc.stderr.count("\n") == 1


def test_logs_without_a_log_api_says_so(server: RecordingServer) -> None:
    server.answer = (404, {"Code": "ResourceNotFoundException",
                           "Cause": "no route for GET /v1/functions/f/logs", "Message": "x", "Status": 404,
                           "Type": "User"})
    proc = run_cli("logs", "f", "--limit", "5", env=server_env(server))
    assert proc.returncode == 3 and "has no log API" in proc.stderr, proc.stderr
    assert server.seen[0][1] == "/v1/functions/f/logs?limit=5"


def test_a_new_function_needs_runtime_and_handler(server: RecordingServer, tmp_path: Path) -> None:
    server.answer = (404, ResourceNotFound("function not found: f").to_dict())
    (tmp_path / "index.js").write_text("exports.handler = async () => 1;\n")
    proc = run_cli("deploy", str(tmp_path), "--name", "f", "--handler", "index.handler", env=server_env(server))
    assert proc.returncode == 2 and "give its runtime and handler" in proc.stderr, proc.stderr
    assert [m for m, *_ in server.seen] == ["GET"]  # nothing was uploaded


def test_names_are_quoted_into_the_path(server: RecordingServer) -> None:
    server.answer = (200, {"Versions": []})
    assert run_cli("versions", "a b/../c", env=server_env(server)).returncode == 0
    assert server.seen[0][1] == "/v1/functions/a%20b/../c/versions"


def test_unreachable_pod_is_exit_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_cli_process("--url", url, "--registry-url", url, "ls")
    assert proc.returncode == 5 and proc.stderr.startswith(f"error: pod unreachable at {url}"), proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (("invoke", "f", "--data", "{nope"), "not valid JSON"),
    (("invoke", "f", "--data", "@/nonexistent/event.json"), "cannot read"),
    (("deploy", ".", "--name", "f", "--env", "NOEQUALS"), "expected KEY=VALUE"),
    (("--profile", "prod", "ls"), "profile 'prod' not found"),
    (("--output", "yaml", "ls"), "--output"),
    (("--url", "pod:8001", "ls"), "http:// or https://"),
    (("--registry-url", "http://127.0.0.1:notaport", "ls"), "invalid URL"),
    (("deploy",), "Usage"),
    (("nosuchcommand",), "No such command"),
    (("up", "-f", "/nonexistent/stack.yaml"), "cannot read"),
])
def test_usage_errors_exit_2_before_sending_anything(args: tuple[str, ...], fragment: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would be exit 5
    proc = run_cli(*args, env={"EASYFAAS_URL": url, "EASYFAAS_REGISTRY_URL": url})
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert fragment in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_help_is_complete() -> None:
    proc = run_cli_process("--help")
    assert proc.returncode == 0
    for word in ("deploy", "up", "invoke", "logs", "ls", "describe", "versions", "rm", "triggers", "invocations",
                 "dead-letters", "Exit codes", "EASYFAAS_URL", "EASYFAAS_REGISTRY_URL", "EASYFAAS_KEY",
                 "EASYFAAS_ACCOUNT"):
        assert word in proc.stdout, word


def test_every_option_of_every_command_is_described() -> None:
    import click
    import typer

    from cli.app import app

    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    missing = []
    for path, cmd in walk(typer.main.get_command(app), "easyfaas"):
        if not (cmd.help or "").strip():
            missing.append(f"{path}: no help")
        for param in cmd.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.name}")
    assert not missing, missing


def test_triggers_commands_speak_the_trigger_api(server: RecordingServer) -> None:
    trigger = {"TriggerId": "t-1", "Type": "http", "Qualifier": "2", "Config": {"Methods": ["GET"], "Path": "/u/{id}"},
               "CreatedAt": "2026-12-01T00:00:00Z"}
    server.routes = {("POST", "/v1/functions/f/triggers"): (201, trigger),
                     ("GET", "/v1/functions/f/triggers"): (200, {"Triggers": [trigger]}),
                     ("DELETE", "/v1/functions/f/triggers/t-1"): (204, b"")}
    env = server_env(server)
    proc = run_cli("triggers", "add", "f", "--qualifier", "2", "--method", "get", "--path", "/u/{id}",
                   "--config", '{"PayloadFormatVersion": "2.0"}', env=env)
    assert (proc.returncode, proc.stdout) == (0, "t-1\n"), proc.stderr
    method, path, _, body = server.seen[0]
    assert (method, path) == ("POST", "/v1/functions/f/triggers")
    assert json.loads(body) == {"Type": "http", "Qualifier": "2", "Config": {
        "PayloadFormatVersion": "2.0", "Methods": ["GET"], "Path": "/u/{id}"}}
    proc = run_cli("triggers", "ls", "f", env=env)
    assert proc.returncode == 0 and "t-1" in proc.stdout and "/u/{id}" in proc.stdout, proc.stderr
    proc = run_cli("-o", "json", "triggers", "ls", "f", env=env)
    assert json.loads(proc.stdout) == {"Triggers": [trigger]}
    proc = run_cli("triggers", "rm", "f", "t-1", env=env)
    assert proc.returncode == 0 and server.seen[-1][:2] == ("DELETE", "/v1/functions/f/triggers/t-1")
    assert run_cli("triggers", "add", "f", "--config", "[1]", env=env).returncode == 2


def test_invocation_and_dead_letter_commands(server: RecordingServer) -> None:
    record = {"RequestId": "r-1", "FunctionArn": "brn:x:f:$LATEST", "Status": "failed", "Attempts": 3,
              "EnqueuedAt": "t0", "StartedAt": "t1", "FinishedAt": "t2", "Result": None,
              "Error": {"errorMessage": "boom"}, "LogResult": base64.b64encode(b"START r-1\nboom\n").decode()}
    server.routes = {("GET", "/v1/invocations/r-1"): (200, record),
                     ("GET", "/v1/invocations"): (200, {"Invocations": [record]}),
                     ("GET", "/v1/dead-letters"): (200, {"DeadLetters": [{"RequestId": "d-1", "FunctionArn": "f",
                                                                           "Attempts": 3, "Status": "failed"}]}),
                     ("POST", "/v1/dead-letters/d-1/redrive"): (202, {"RequestId": "d-1", "Status": "queued"}),
                     ("DELETE", "/v1/dead-letters/d-1"): (204, b"")}
    env = server_env(server)
    proc = run_cli("invocations", "get", "r-1", env=env)
    assert proc.returncode == 0 and "Status:" in proc.stdout and "failed" in proc.stdout, proc.stderr
    assert run_cli("invocations", "get", "r-1", "--check", env=env).returncode == 1
    assert run_cli("invocations", "get", "r-1", "--tail", env=env).stderr == "START r-1\nboom\n"
    proc = run_cli("-o", "json", "invocations", "ls", "--function", "f", "--status", "failed", "--limit", "5",
                   env=env)
    assert json.loads(proc.stdout)["Invocations"][0]["RequestId"] == "r-1"
    assert server.seen[-1][1] == "/v1/invocations?FunctionName=f&Status=failed&Limit=5"
    proc = run_cli("dead-letters", "ls", "-f", "f", env=env)
    assert proc.returncode == 0 and "d-1" in proc.stdout
    assert server.seen[-1][1] == "/v1/dead-letters?FunctionName=f"
    proc = run_cli("-o", "json", "dead-letters", "redrive", "d-1", env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["Status"] == "queued"
    assert run_cli("dead-letters", "redrive", "d-1", env=env).stdout == "d-1: enqueued again (queued)\n"
    proc = run_cli("dead-letters", "rm", "d-1", env=env)
    assert proc.returncode == 0 and server.seen[-1][:2] == ("DELETE", "/v1/dead-letters/d-1")


def test_logs_prints_json_lines(server: RecordingServer) -> None:
    lines = [{"Timestamp": "2026-12-01T00:00:00Z", "RequestId": "r-1", "Message": "hello\n"}, "not json",
             {"other": 1}]
    body = b"".join((json.dumps(x) if isinstance(x, dict) else x).encode() + b"\n" for x in lines)
    server.routes = {("GET", "/v1/functions/f/logs"): (200, body)}
    proc = run_cli("logs", "f", "--request-id", "r-1", env=server_env(server))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["2026-12-01T00:00:00Z r-1 hello", "not json", '{"other": 1}']
    assert server.seen[0][1] == "/v1/functions/f/logs?request_id=r-1"
    proc = run_cli("-o", "json", "logs", "f", env=server_env(server))
    assert json.loads(proc.stdout.splitlines()[0])["RequestId"] == "r-1"


@pytest.mark.parametrize("wanted, existing, same", [
    ({"Methods": ["get", "POST"], "Path": "/a"}, {"Methods": ["POST", "GET"], "Path": "/a", "AuthType": "NONE"}, True),
    ({"Methods": ["GET"], "Path": "/a"}, {"Methods": ["GET", "POST"], "Path": "/a"}, False),
    ({"Path": "/a"}, {"Path": "/b"}, False),
    ({"Cors": {"MaxAge": 5}}, {"Cors": {"MaxAge": 5, "AllowOrigins": ["*"]}}, True),
    ({"Cors": {"MaxAge": 5}}, {}, False),
])
def test_stack_triggers_match_the_normalised_config(wanted: dict, existing: dict, same: bool) -> None:
    from cli.commands.deploy import config_matches

    assert config_matches(wanted, existing) is same


def test_up_creates_missing_triggers_only(server: RecordingServer, tmp_path: Path) -> None:
    path = stack_dir(tmp_path)
    path.write_text(GOOD_STACK.replace('provider: {url: "http://pod:8001"}\n', "") + (
        "      - {type: http, qualifier: '1', config: {Methods: [POST], Path: /new}}\n"))
    kept = {"TriggerId": "t-old", "Type": "http", "Qualifier": "$LATEST",  # as the pod normalised it
            "Config": {"Methods": ["GET"], "Path": "/hello", "PayloadFormatVersion": "2.0", "AuthType": "NONE"}}
    stale = {"TriggerId": "t-stale", "Type": "http", "Qualifier": "$LATEST", "Config": {"Path": "/gone"}}
    record = {"Configuration": {"FunctionName": "hello", "Version": "1", "FunctionArn": "brn:hello:1"}}
    missing = ResourceNotFound("function not found").to_dict()
    server.routes = {("GET", "/v1/functions/hello"): (404, missing),
                     ("POST", "/v1/functions/hello"): (200, record),
                     ("GET", "/v1/functions/hello/triggers"): (200, {"Triggers": [kept, stale]}),
                     ("DELETE", "/v1/functions/hello/triggers/t-stale"): (204, b""),
                     ("POST", "/v1/functions/hello/triggers"): (201, {"TriggerId": "t-new"})}
    proc = run_cli("-o", "json", "up", "-f", str(path), "--no-wait", env=server_env(server))
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["Functions"]
    assert [t["TriggerId"] for t in result["Triggers"]] == ["t-old", "t-new"]
    posts = [json.loads(body) for method, p, _, body in server.seen
             if (method, p) == ("POST", "/v1/functions/hello/triggers")]
    assert posts == [{"Type": "http", "Qualifier": "1", "Config": {"Methods": ["POST"], "Path": "/new"}}]
    create = next(json.loads(b) for m, p, _, b in server.seen if (m, p) == ("POST", "/v1/functions/hello"))
    assert (create["Runtime"], create["MemorySize"], create["Version"]) == ("python3", 256, "1")
    assert zipfile.ZipFile(io.BytesIO(base64.b64decode(create["Code"]))).namelist() == ["main.py"]
    assert not [p for m, p, *_ in server.seen if m == "DELETE"]  # kept without --prune-triggers

    proc = run_cli("up", "-f", str(path), "--no-wait", "--prune-triggers", env=server_env(server))
    assert proc.returncode == 0, proc.stderr
    assert [p for m, p, *_ in server.seen if m == "DELETE"] == ["/v1/functions/hello/triggers/t-stale"]

    server.routes[("GET", "/v1/functions/hello/triggers")] = (
        404, ResourceNotFound("no route for GET /v1/functions/hello/triggers").to_dict())
    proc = run_cli("up", "-f", str(path), "--no-wait", env=server_env(server))
    assert proc.returncode == 2 and "has no trigger API" in proc.stderr, proc.stderr


def test_text_output_keeps_brns_and_long_values_whole(server: RecordingServer) -> None:
    arn = "brn:cloud:faas:bj:8f6e5a28c663957ea04522547a66d08f:function:averyveryverylongfunctionname:$LATEST"
    server.answer = (200, {"Configuration": {"FunctionName": "f", "FunctionArn": arn,
                                             "Description": "d" * 200}})
    proc = run_cli("describe", "f", env=server_env(server))
    assert proc.returncode == 0 and arn in proc.stdout and "d" * 200 in proc.stdout, proc.stdout
    server.answer = (200, {"Versions": [{"Version": "1", "CodeSha256": "x" * 44, "Description": "e" * 150}]})
    proc = run_cli("versions", "f", env=server_env(server))
    assert "x" * 44 in proc.stdout and "e" * 150 in proc.stdout, proc.stdout
