"""End to end: the ``easyfaas`` command line, run as a subprocess, against a real pod.

Deploys a Python directory with a requirements.txt dependency and a Node.js directory with a
package.json dependency (both installed from the package registries at test time), invokes them,
lists, describes, publishes a second version and removes them — the way a user's shell would.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from easyfaas.pod import REPO_ROOT
from easyfaas.function_code import ACCOUNT
from tests.pod_harness import OTHER_ACCOUNT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PY_HANDLER = (
    "import six\n"
    "def handler(event, context):\n"
    "    print('handling', event)\n"
    "    return {'six': six.__version__, 'text': six.ensure_text(b'hi'), 'event': event, 'v': VERSION}\n"
)
NODE_HANDLER = (
    "const isNumber = require('is-number');\n"
    "exports.handler = async (event) => ({ five: isNumber(5), abc: isNumber('abc'), event });\n"
)


def unique(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


def easyfaas(pod, *args: str, stdin: str | None = None, timeout: float = 600,  # noqa: ANN001
             account: str = ACCOUNT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EASYFAAS_URL": pod.config.controller_url, "EASYFAAS_REGISTRY_URL": pod.config.stubs_url,
           "EASYFAAS_ACCOUNT": account, "EASYFAAS_CONFIG": "/nonexistent/easyfaas.yaml"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def deployed(proc: subprocess.CompletedProcess[str], manifest: str) -> dict:
    if proc.returncode == 6 and manifest in proc.stderr:
        pytest.skip(f"installing the {manifest} dependency failed (registry unreachable?): {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def python_dir(root: Path, version: int) -> Path:
    src = root / "pyfn"
    src.mkdir(exist_ok=True)
    (src / "requirements.txt").write_text("six\n")
    (src / "main.py").write_text(f"VERSION = {version}\n" + PY_HANDLER)
    (src / "__pycache__").mkdir(exist_ok=True)
    (src / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    return src


def test_python_function_with_requirements(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clipy")
    src = python_dir(tmp_path, 1)
    result = deployed(easyfaas(pod, "-o", "json", "deploy", str(src), "--name", name, "--runtime", "python3",
                               "--handler", "main.handler", "--memory", "128", "--timeout", "5",
                               "--env", "GREETING=hi", "--description", "cli test"), "requirements.txt")
    assert result["Created"] is True and result["Version"] == "1", result
    assert result["Ready"] is True and result["DependenciesInstalled"] == ["requirements.txt"], result
    assert result["How"] == "code image built", result
    assert not (src / "six.py").exists(), "dependencies must go into a build copy, not the user's directory"

    proc = easyfaas(pod, "-o", "json", "invoke", name, "--data", '{"x": 1}')
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["FunctionError"] is None and answer["RequestId"], answer
    assert answer["Payload"]["text"] == "hi" and answer["Payload"]["event"] == {"x": 1}, answer
    assert answer["Payload"]["six"].count(".") >= 1 and answer["Payload"]["v"] == 1

    proc = easyfaas(pod, "invoke", name, "--tail", "--data", "-", stdin='{"from": "stdin"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["event"] == {"from": "stdin"}
    assert "handling {'from': 'stdin'}" in proc.stderr, proc.stderr

    python_dir(tmp_path, 2)
    result = deployed(easyfaas(pod, "-o", "json", "deploy", str(src), "--name", name), "requirements.txt")
    assert result["Created"] is False and result["Version"] == "2" and result["Ready"] is True, result

    proc = easyfaas(pod, "-o", "json", "ls")
    assert proc.returncode == 0, proc.stderr
    assert name in [f["FunctionName"] for f in json.loads(proc.stdout)["Functions"]]
    proc = easyfaas(pod, "ls")
    assert proc.returncode == 0 and name in proc.stdout, proc.stderr

    proc = easyfaas(pod, "-o", "json", "describe", name)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)["Configuration"]
    assert (cfg["Runtime"], cfg["Handler"], cfg["Description"]) == ("python3", "main.handler", "cli test")
    assert cfg["Environment"]["Variables"] == {"GREETING": "hi"}
    proc = easyfaas(pod, "describe", name, "--qualifier", "1")
    assert proc.returncode == 0 and "main.handler" in proc.stdout, proc.stderr

    proc = easyfaas(pod, "-o", "json", "versions", name)
    assert proc.returncode == 0, proc.stderr
    assert [v["Version"] for v in json.loads(proc.stdout)["Versions"]] == ["$LATEST", "1", "2"]

    for qualifier, version in (("1", 1), ("2", 2), ("$LATEST", 2)):
        proc = easyfaas(pod, "invoke", name, "--qualifier", qualifier)
        assert proc.returncode == 0 and json.loads(proc.stdout)["v"] == version, (qualifier, proc.stderr)

    proc = easyfaas(pod, "rm", name, "--version", "1")
    assert proc.returncode == 0, proc.stderr
    proc = easyfaas(pod, "-o", "json", "versions", name)
    assert [v["Version"] for v in json.loads(proc.stdout)["Versions"]] == ["$LATEST", "2"]
    proc = easyfaas(pod, "rm", name)
    assert proc.returncode == 0, proc.stderr
    proc = easyfaas(pod, "describe", name)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: ") and "ResourceNotFoundException" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_nodejs_function_with_package_json(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clinode")
    src = tmp_path / "nodefn"
    src.mkdir()
    (src / "package.json").write_text(json.dumps({"name": "clinode", "version": "1.0.0",
                                                  "dependencies": {"is-number": "7.0.0"}}))
    (src / "index.js").write_text(NODE_HANDLER)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    result = deployed(easyfaas(pod, "-o", "json", "deploy", str(src), "--name", name, "--runtime", "nodejs",
                               "--handler", "index.handler", "--concurrency", "4"), "package.json")
    assert result["Created"] is True and result["Ready"] is True, result
    assert result["DependenciesInstalled"] == ["package.json"]
    assert not (src / "node_modules").exists()

    proc = easyfaas(pod, "-o", "json", "invoke", name, "--data", '{"n": 5}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Payload"] == {"five": True, "abc": False, "event": {"n": 5}}

    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    proc = easyfaas(pod, "invoke", name, "--data", f"@{event}")
    assert proc.returncode == 0 and json.loads(proc.stdout)["event"] == {"from": "file"}, proc.stderr

    proc = easyfaas(pod, "-o", "json", "describe", name)
    cfg = json.loads(proc.stdout)["Configuration"]
    assert cfg["PodConcurrentQuota"] == 4 and cfg["Runtime"] == "nodejs"
    assert easyfaas(pod, "rm", name).returncode == 0


def test_exit_codes_against_the_pod(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clifail")
    src = tmp_path / "failing"
    src.mkdir()
    (src / "main.py").write_text("def handler(event, context):\n    raise ValueError('no good')\n")
    proc = easyfaas(pod, "deploy", str(src), "--name", name, "--runtime", "python3", "--handler", "main.handler")
    assert proc.returncode == 0, proc.stderr
    assert f"{name}: created, version 1" in proc.stdout

    proc = easyfaas(pod, "invoke", name)
    assert proc.returncode == 1, proc.stderr
    assert "no good" in json.loads(proc.stdout)["errorMessage"]
    assert proc.stderr.strip() == f"error: function {name} failed (Unhandled): ValueError: no good", proc.stderr

    assert easyfaas(pod, "invoke", unique("missing")).returncode == 3
    proc = easyfaas(pod, "deploy", str(src), "--name", unique("badrt"), "--runtime", "cobol", "--handler", "m.h")
    assert proc.returncode == 4 and "cobol" in proc.stderr, proc.stderr
    proc = easyfaas(pod, "invoke", name, "--data", "{not json")
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr, proc.stderr

    proc = easyfaas(pod, "logs", name)
    if proc.returncode == 3:
        assert "no log API" in proc.stderr or "ResourceNotFound" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    assert easyfaas(pod, "rm", name).returncode == 0


def test_up_deploys_a_stack(pod, tmp_path: Path) -> None:  # noqa: ANN001
    first, second = unique("stacka"), unique("stackb")
    for sub, code in (("a", "def handler(event, context):\n    return 'A'\n"),
                      ("b", "exports.handler = async () => 'B';\n")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / ("main.py" if sub == "a" else "index.js")).write_text(code)
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        "version: 1\n"
        "functions:\n"
        f"  {first}:\n    dir: a\n    runtime: python3\n    handler: main.handler\n    memory: 128\n"
        "    environment: {MODE: stack}\n"
        f"  {second}:\n    dir: ./b\n    runtime: nodejs\n    handler: index.handler\n    timeout: 3\n"
    )
    proc = easyfaas(pod, "-o", "json", "up", "-f", str(stack))
    assert proc.returncode == 0, proc.stderr
    results = {r["FunctionName"]: r for r in json.loads(proc.stdout)["Functions"]}
    assert set(results) == {first, second} and all(r["Ready"] for r in results.values()), results
    assert easyfaas(pod, "invoke", first).stdout.strip() == "A"
    assert easyfaas(pod, "invoke", second).stdout.strip() == "B"
    cfg = json.loads(easyfaas(pod, "-o", "json", "describe", second).stdout)["Configuration"]
    assert cfg["Timeout"] == 3
    proc = easyfaas(pod, "-o", "json", "up", "-f", str(stack), "--only", first)
    assert proc.returncode == 0, proc.stderr
    assert [r["Version"] for r in json.loads(proc.stdout)["Functions"]] == ["2"]
    for fn in (first, second):
        assert easyfaas(pod, "rm", fn).returncode == 0


def test_invoke_async_prints_the_request_id(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("cliasync")
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("exports.handler = async (e) => e;\n")
    assert easyfaas(pod, "deploy", str(src), "-n", name, "-r", "nodejs", "-H", "index.handler").returncode == 0
    proc = easyfaas(pod, "-o", "json", "invoke", name, "--async")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["StatusCode"] == 202 and doc["RequestId"], doc
    assert easyfaas(pod, "rm", name).returncode == 0


def test_log_tail_is_decoded(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clitail")
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("exports.handler = async (e) => { console.log('tail-marker'); return 1; };\n")
    assert easyfaas(pod, "deploy", str(src), "-n", name, "-r", "nodejs", "-H", "index.handler").returncode == 0
    again = json.loads(easyfaas(pod, "-o", "json", "deploy", str(src), "-n", name).stdout)
    assert again["Version"] == "2" and again["How"].startswith("code image already built"), again
    proc = easyfaas(pod, "-o", "json", "invoke", name, "--tail")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "tail-marker" in doc["LogResult"] and "tail-marker" in proc.stderr
    assert base64.b64encode(doc["LogResult"].encode())  # text, not base64 any more
    assert easyfaas(pod, "rm", name).returncode == 0


def test_the_account_setting_selects_whose_functions(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("cliother")
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("exports.handler = async () => 'other';\n")
    proc = easyfaas(pod, "deploy", str(src), "-n", name, "-r", "nodejs", "-H", "index.handler", account=OTHER_ACCOUNT)
    assert proc.returncode == 0, proc.stderr
    mine = json.loads(easyfaas(pod, "-o", "json", "ls").stdout)["Functions"]
    theirs = json.loads(easyfaas(pod, "-o", "json", "ls", account=OTHER_ACCOUNT).stdout)["Functions"]
    assert name not in [f["FunctionName"] for f in mine]
    assert name in [f["FunctionName"] for f in theirs]
    assert easyfaas(pod, "invoke", name, account=OTHER_ACCOUNT).stdout.strip() == "other"
    assert easyfaas(pod, "rm", name, account=OTHER_ACCOUNT).returncode == 0


def skip_without_api(proc: subprocess.CompletedProcess[str], api: str) -> None:
    if proc.returncode == 3 and "has no such API" in proc.stderr:
        pytest.skip(f"this pod has no {api} API yet: {proc.stderr.strip()}")


def test_triggers_add_ls_rm(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clitrig")
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("exports.handler = async () => ({statusCode: 200, body: 'routed'});\n")
    assert easyfaas(pod, "deploy", str(src), "-n", name, "-r", "nodejs", "-H", "index.handler").returncode == 0
    try:
        proc = easyfaas(pod, "triggers", "ls", name)
        skip_without_api(proc, "trigger")
        assert proc.returncode == 0 and "has no triggers" in proc.stderr, proc.stderr
        path = f"/{name}/items/{{id}}"
        proc = easyfaas(pod, "triggers", "add", name, "--method", "get", "--path", path)
        assert proc.returncode == 0, proc.stderr
        trigger_id = proc.stdout.strip()
        listed = json.loads(easyfaas(pod, "-o", "json", "triggers", "ls", name).stdout)["Triggers"]
        assert [(t["TriggerId"], t["Type"], t["Qualifier"]) for t in listed] == [(trigger_id, "http", "$LATEST")]
        assert listed[0]["Config"]["Path"] == path and listed[0]["Config"]["Methods"] == ["GET"]
        proc = easyfaas(pod, "triggers", "add", name, "--method", "GET", "--path", path)
        assert proc.returncode == 4, proc.stderr  # the same route twice: a conflict
        proc = easyfaas(pod, "triggers", "add", name, "--path", "no-slash")
        assert proc.returncode == 4 and "Path" in proc.stderr, proc.stderr
        assert easyfaas(pod, "triggers", "rm", name, trigger_id).returncode == 0
        assert json.loads(easyfaas(pod, "-o", "json", "triggers", "ls", name).stdout)["Triggers"] == []
        assert easyfaas(pod, "triggers", "rm", name, trigger_id).returncode == 3
    finally:
        easyfaas(pod, "rm", name)


def test_up_adds_stack_triggers_once(pod, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("clistack")
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "index.js").write_text("exports.handler = async () => 'ok';\n")
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"functions:\n  {name}:\n    dir: fn\n    runtime: nodejs\n    handler: index.handler\n"
                     f"    triggers:\n      - {{type: http, config: {{Methods: [get], Path: /{name}/hello}}}}\n")
    try:
        proc = easyfaas(pod, "-o", "json", "up", "-f", str(stack))
        if proc.returncode == 2 and "no trigger API" in proc.stderr:
            pytest.skip(f"this pod has no trigger API yet: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        (first,) = json.loads(proc.stdout)["Functions"][0]["Triggers"]
        proc = easyfaas(pod, "-o", "json", "up", "-f", str(stack))
        assert proc.returncode == 0, proc.stderr  # the same route again is kept, not a conflict
        assert [t["TriggerId"] for t in json.loads(proc.stdout)["Functions"][0]["Triggers"]] == [first["TriggerId"]]
        listed = json.loads(easyfaas(pod, "-o", "json", "triggers", "ls", name).stdout)["Triggers"]
        assert [t["TriggerId"] for t in listed] == [first["TriggerId"]]
    finally:
        easyfaas(pod, "rm", name)


def test_invocations_get_and_ls(pod, tmp_path: Path) -> None:  # noqa: ANN001
    import time

    name = unique("cliinv")
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("exports.handler = async (e) => ({got: e});\n")
    assert easyfaas(pod, "deploy", str(src), "-n", name, "-r", "nodejs", "-H", "index.handler").returncode == 0
    try:
        proc = easyfaas(pod, "invocations", "ls", "--function", name)
        skip_without_api(proc, "invocation records")
        assert proc.returncode == 0, proc.stderr
        proc = easyfaas(pod, "-o", "json", "invoke", name, "--async", "--data", '{"n": 7}')
        assert proc.returncode == 0, proc.stderr
        accepted = json.loads(proc.stdout)
        request_id = accepted["RequestId"]
        assert accepted["Location"] == f"/v1/invocations/{request_id}", accepted
        deadline = time.monotonic() + 120  # a bound on the wait, not a measurement
        record: dict = {}
        while time.monotonic() < deadline:
            proc = easyfaas(pod, "-o", "json", "invocations", "get", request_id)
            assert proc.returncode == 0, proc.stderr
            record = json.loads(proc.stdout)
            if record["Status"] in ("succeeded", "failed", "expired"):
                break
            time.sleep(0.2)
        assert record["Status"] == "succeeded" and json.loads(record["Result"]) == {"got": {"n": 7}}, record
        proc = easyfaas(pod, "invocations", "get", request_id, "--check")
        assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stderr
        proc = easyfaas(pod, "-o", "json", "invocations", "ls", "--function", name, "--status", "succeeded")
        assert request_id in [r["RequestId"] for r in json.loads(proc.stdout)["Invocations"]]
        assert easyfaas(pod, "invocations", "get", "no-such-request").returncode == 3
        proc = easyfaas(pod, "-o", "json", "dead-letters", "ls", "--function", name)
        assert proc.returncode == 0 and json.loads(proc.stdout)["DeadLetters"] == [], proc.stderr
    finally:
        easyfaas(pod, "rm", name)


def test_up_sets_the_async_invocation_config(pod, tmp_path: Path) -> None:  # noqa: ANN001
    import urllib.request

    worker, audit = unique("cliworker"), unique("cliaudit")
    for sub in ("w", "a"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "index.js").write_text("exports.handler = async (e) => e;\n")
    stack = tmp_path / "stack.yaml"
    stack.write_text(  # the destination is defined after the function that names it
        f"functions:\n  {worker}:\n    dir: w\n    runtime: nodejs\n    handler: index.handler\n"
        f"    async: {{max_retry_attempts: 0, max_event_age: 120, on_failure: {audit}}}\n"
        f"  {audit}:\n    dir: a\n    runtime: nodejs\n    handler: index.handler\n")
    try:
        proc = easyfaas(pod, "-o", "json", "up", "-f", str(stack))
        if proc.returncode == 2 and "no event-invoke-config API" in proc.stderr:
            pytest.skip(f"this pod has no event-invoke-config API yet: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        req = urllib.request.Request(f"{pod.config.stubs_url}/v1/functions/{worker}/event-invoke-config",
                                     headers={"X-easyfaas-Account-Id": ACCOUNT})
        with urllib.request.urlopen(req, timeout=30) as resp:
            stored = json.loads(resp.read())
        assert (stored["MaximumRetryAttempts"], stored["MaximumEventAgeInSeconds"]) == (0, 120), stored
        destination = stored["DestinationConfig"]["OnFailure"]["Destination"]
        assert destination.endswith(f":function:{audit}:$LATEST"), stored
        results = {r["FunctionName"]: r for r in json.loads(proc.stdout)["Functions"]}
        assert results[worker]["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
        assert "EventInvokeConfig" not in results[audit]
    finally:
        for name in (worker, audit):
            easyfaas(pod, "rm", name)
