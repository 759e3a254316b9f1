"""A whole pod with keys required (``EASYFAAS_AUTH=1 make run``'s form): the README's quick start with
an account key, and a function's secrets delivered into its sandbox as files on a read-only tmpfs
of its own uid (and as environment variables when it asks), never in the pod's logs."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import json
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from easyfaas.brn import account_hash
from easyfaas.function_code import b64zip
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port

UID = "df391b08c64c426a81645468c75163a5"  # the README's
SECRET = "pod-secret-value-0b9e77d1"
NODE_HELLO = "exports.handler = (event, context, callback) => callback(null, 'Hello world!');\n"
PY_SECRETS = (
    "import hashlib, os, stat\n"
    "def handler(event, context):\n"
    "    path = '/var/secrets/TOKEN'\n"
    "    st = os.stat(path)\n"
    "    data = open(path, 'rb').read()\n"
    "    try:\n"
    "        open('/var/secrets/NEW', 'w')\n"
    "        writable = True\n"
    "    except OSError:\n"
    "        writable = False\n"
    "    env = os.environ.get('TOKEN')\n"
    "    return {'sha': hashlib.sha256(data).hexdigest(), 'mode': oct(stat.S_IMODE(st.st_mode)),\n"
    "            'mine': st.st_uid == os.getuid(), 'dir': oct(stat.S_IMODE(os.stat('/var/secrets').st_mode)),\n"
    "            'writable': writable, 'names': sorted(os.listdir('/var/secrets')),\n"
    "            'env_sha': hashlib.sha256(env.encode()).hexdigest() if env is not None else None}\n"
)


@pytest.fixture(scope="module")
def keyed_pod(root_required: None) -> Iterator[Pod]:
    names = PodNames.new()
    base = Path(tempfile.mkdtemp(prefix=f"efkey-{names.tag}-"))
    config = PodConfig(state_dir=base / "state", run_dir=base / "run", controller_port=free_port(),
                       stubs_port=free_port(), container_num=2, pod_name=names.pod_name, bridge_name=names.bridge,
                       bridge_ip=names.bridge_ip, veth_prefix=names.veth_prefix, log_dir=base / "logs",
                       all_in_one=True, auth=True, funclet_args=["--standby-sandboxes", "0"],
                       all_in_one_args=["--controller-gateway-port", str(free_port())])
    pod = Pod(config)
    pod.start()
    try:
        yield pod
    finally:
        codes = pod.stop()
        leaks = kernel_leaks(config.state_dir, names)
        if not leaks:
            shutil.rmtree(base, ignore_errors=True)
        assert not leaks, f"the pod left kernel objects behind: {leaks}"
        assert all(code == 0 for code in codes.values()), codes


@pytest.fixture
async def http(keyed_pod: Pod) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def admin_key(pod: Pod) -> str:
    return (pod.config.auth_dir / "admin.key").read_text().strip()


async def account_key(http: aiohttp.ClientSession, pod: Pod) -> str:
    async with http.post(f"{pod.config.stubs_url}/v1/keys", json={"Account": UID, "Description": "readme"},
                         headers={"Authorization": f"Bearer {admin_key(pod)}"}) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["Key"]


async def test_readme_quick_start_with_keys(http: aiohttp.ClientSession, keyed_pod: Pod) -> None:
    pod = keyed_pod
    key = await account_key(http, pod)
    auth = {"Authorization": f"Bearer {key}", "X-easyfaas-Account-Id": UID}
    body = {"Version": "1", "Runtime": "nodejs10", "Timeout": 5, "MemorySize": 128, "Handler": "index.handler",
            "PodConcurrentQuota": 10, "Code": b64zip({"index.js": NODE_HELLO})}
    url = f"{pod.config.stubs_url}/v1/functions/testHelloWorld"
    async with http.post(url, data=json.dumps(body)) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(url, data=json.dumps(body), headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    acct = account_hash(UID)
    for ref in (f"brn:cloud:faas:bj:{acct}:function:testHelloWorld:1/invocations",
                "testHelloWorld/invocations?Qualifier=$LATEST"):
        async with http.post(f"{pod.config.controller_url}/v1/functions/{ref}", data=b"{}") as resp:
            assert resp.status == 401
        async with http.post(f"{pod.config.controller_url}/v1/functions/{ref}", data=b"{}", headers=auth) as resp:
            assert (resp.status, await resp.text()) == (200, "Hello world!")


async def test_secrets_reach_the_sandbox_as_files_and_environment(http: aiohttp.ClientSession, keyed_pod: Pod
                                                                  ) -> None:
    pod = keyed_pod
    auth = {"Authorization": f"Bearer {await account_key(http, pod)}"}
    want = hashlib.sha256(SECRET.encode()).hexdigest()
    for name, as_env in (("secretsEnv", True), ("secretsFiles", False)):
        body = {"Runtime": "python3", "Handler": "index.handler", "Timeout": 5, "MemorySize": 128,
                "SecretsAsEnvironment": as_env, "Code": b64zip({"index.py": PY_SECRETS})}
        async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", json=body, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        async with http.put(f"{pod.config.stubs_url}/v1/functions/{name}/secrets", json={"TOKEN": SECRET},
                            headers=auth) as resp:
            assert (resp.status, await resp.json()) == (200, {"Names": ["TOKEN"]})
        async with http.post(f"{pod.config.controller_url}/v1/functions/{name}/invocations", data=b"{}",
                             headers=auth) as resp:
            text = await resp.text()
            assert resp.status == 200, text
        seen = json.loads(text)
        assert seen["sha"] == want and seen["names"] == ["TOKEN"]
        assert seen["mode"] == "0o400" and seen["dir"] == "0o500" and seen["mine"] is True
        assert seen["writable"] is False
        assert seen["env_sha"] == (want if as_env else None)
    log = "".join((pod.config.log_dir / f"{n}.log").read_text(errors="replace")  # type: ignore[operator]
                  for n in pod.config.daemons)
    assert SECRET not in log
    for path in pod.config.state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and "slots" not in path.parts:
            assert SECRET.encode() not in path.read_bytes(), path


def _readme_blocks() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_readme_shell_quick_start_with_keys(keyed_pod: Pod, tmp_path: Path) -> None:
    """The README's own commands, run by bash against this pod: the keys block's key, then the quick
    start's curl commands each with that key (as the README says), then the keys block's invocation."""
    pod = keyed_pod
    quick = next(b for b in _readme_blocks() if "testHelloWorld" in b and "/v1/keys" not in b)
    keys = next(b for b in _readme_blocks() if "/v1/keys" in b)
    # In the README's order the quick start's uid= is set when the keys block runs: set it first.
    keyed = quick.replace("curl ", 'curl -s -H "Authorization: Bearer $key" ')
    script = quick.split("\n", 1)[0] + "\n" + keys.split("# then")[0] + keyed + "\n" + \
        keys.split("# then")[1].split("\n", 1)[1]
    script = (script.replace("127.0.0.1:8002", f"127.0.0.1:{pod.config.stubs_port}")
              .replace("127.0.0.1:8001", f"127.0.0.1:{pod.config.controller_port}")
              .replace("/var/faas/auth/admin.key", str(pod.config.auth_dir / "admin.key"))
              .replace("sudo cat", "cat").replace("/tmp/hello", str(tmp_path / "hello"))
              .replace("testHelloWorld", "readmeHello"))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.count("Hello world!") == 3, proc.stdout
    assert "UnauthenticatedException" not in proc.stdout
    # Without the key the same commands are refused.
    bare = script.replace('-H "Authorization: Bearer $key" ', "").replace("readmeHello", "readmeHelloBare")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", bare], capture_output=True, text=True, timeout=120)
    assert "Hello world!" not in proc.stdout and "UnauthenticatedException" in proc.stdout, proc.stdout


PY_HEADERS = ("def handler(event, context):\n"
              "    return {'statusCode': 200, 'body': ','.join(sorted(event['headers']))}\n")


async def test_a_key_route_of_the_gateway_checks_the_key_and_hides_it_from_the_function(
        http: aiohttp.ClientSession, keyed_pod: Pod) -> None:
    pod = keyed_pod
    key = await account_key(http, pod)
    auth = {"Authorization": f"Bearer {key}"}
    gateway = "http://127.0.0.1:" + pod.config.all_in_one_args[-1]
    body = {"Runtime": "python3", "Handler": "index.handler", "Code": b64zip({"index.py": PY_HEADERS})}
    async with http.post(f"{pod.config.stubs_url}/v1/functions/headers", json=body, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    trigger = {"Type": "http", "Config": {"Methods": ["GET"], "Path": "/whoami", "AuthType": "KEY"}}
    async with http.post(f"{pod.config.stubs_url}/v1/functions/headers/triggers", json=trigger, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    for _ in range(300):
        async with http.get(f"{gateway}/whoami") as resp:
            status, answer = resp.status, await resp.read()
        if status != 404:
            break
        await asyncio.sleep(0.1)
    assert (status, json.loads(answer)) == (401, {"message": "Unauthorized"})
    async with http.get(f"{gateway}/whoami", headers={**auth, "X-Probe": "1"}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    assert "x-probe" in text.split(",") and "authorization" not in text.split(","), text
    async with http.get(f"{gateway}/{UID}/headers", headers=auth) as resp:  # the function URL: KEY too
        assert resp.status == 200, await resp.text()
    async with http.get(f"{gateway}/{UID}/headers") as resp:
        assert resp.status == 401


def test_the_state_directory_keeps_code_keys_and_events_root_only(keyed_pod: Pod) -> None:
    state = keyed_pod.config.state_dir
    for path in (state / "funcData", state / "auth", state / "images", keyed_pod.config.run_dir / "slots"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    dbs = list((state / "controller").rglob("*.sqlite3"))
    assert dbs, "no event queue database"
    for db in dbs:
        assert stat.S_IMODE(db.stat().st_mode) == 0o600, db
