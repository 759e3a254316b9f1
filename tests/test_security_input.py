"""Hostile input against the real daemons: property-based tests (hypothesis) and fuzzing of the
stubs and controller HTTP APIs and of the funclet's unix-socket API.

Every answer to a client mistake must be a clean error in the documented shape
(``{"Code","Cause","Message","Status","Type"}``, status 4xx, ``Type`` ``User``), within a bounded
time, without a traceback; a refused create or update must leave nothing (or the old function) in
the store. The daemons are the session pod's (tests/conftest.py); code archives are checked against
``easyfaas.codezip`` as the oracle: what it refuses, stubs must refuse, and vice versa.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from easyfaas import codezip
from easyfaas.brn import account_hash
from easyfaas.pod import Pod
from easyfaas.function_code import ACCOUNT, b64zip, brn
from tests.pod_harness import OTHER_ACCOUNT, PodClient, UnixHTTPConnection, http_call, unique

pytestmark = pytest.mark.e2e

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ERROR_KEYS = {"Code", "Cause", "Message", "Status", "Type"}
PY_ECHO = "def handler(event, context):\n    return event\n"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
FIELDS = ["Version", "Runtime", "Timeout", "MemorySize", "Handler", "PodConcurrentQuota", "Code", "Description",
          "Environment", "ReservedConcurrentExecutions"]
function_bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values


def assert_clean_error(status: int, headers: dict[str, str], body: bytes, *, statuses: range = range(400, 500)) -> dict:
    """The documented error shape, for a client mistake."""
    assert status in statuses, (status, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    assert headers.get("Content-Type", "").startswith("application/json"), (headers, body[:300])
    error = json.loads(body)
    assert isinstance(error, dict) and {"Code", "Message", "Status", "Type"} <= set(error) <= ERROR_KEYS, error
    assert error["Status"] == status and error["Type"] == ("User" if status < 500 else "Server"), error
    assert isinstance(error["Code"], str) and error["Code"].endswith("Exception"), error
    return error


class Api:
    """Raw access to the pod's three APIs; every call has a timeout, so a hang fails the test."""

    def __init__(self, pod: Pod) -> None:
        self.client = PodClient(pod)
        self.config = pod.config

    def stubs(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
              account: str | None = ACCOUNT) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.config.host, self.config.stubs_port, timeout=30)
        hdrs = {"X-easyfaas-Account-Id": account} if account is not None else {}
        return http_call(conn, method, path, body, {**hdrs, **(headers or {})})

    def controller(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                   account: str | None = ACCOUNT) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.config.host, self.config.controller_port, timeout=30)
        hdrs = {"X-easyfaas-Account-Id": account} if account is not None else {}
        return http_call(conn, method, path, body, {**hdrs, **(headers or {})})

    def funclet(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        return http_call(UnixHTTPConnection(str(self.config.funclet_sock), timeout=30), method, path, body,
                         {"Content-Type": "application/json"})

    def store_dir(self, name: str, account: str = ACCOUNT) -> Path:
        return self.config.function_dir / account_hash(account) / name

    def assert_absent(self, name: str) -> None:
        status, headers, body = self.stubs("GET", f"/v1/functions/{name}")
        assert_clean_error(status, headers, body, statuses=range(404, 405))
        leftovers = [p for p in self.store_dir(name).glob("versions/*/meta.json")] if self.store_dir(name).exists() \
            else []
        assert leftovers == [], f"a refused function left {leftovers} in the store"

    def healthy(self) -> None:
        for call in (self.stubs, self.controller):
            status, _, _ = call("GET", "/healthz")
            assert status == 200
        assert self.funclet("GET", "/healthz")[0] == 200
        assert all(proc.poll() is None for proc in self.client.pod.procs.values())


@pytest.fixture(scope="module")
def api(pod: Pod) -> Api:
    return Api(pod)


@pytest.fixture(scope="module")
def echo(api: Api) -> str:
    name = unique("echo")
    api.client.deploy(name, "python3", {"index.py": PY_ECHO})
    return name


# ---- stubs: bodies, names, versions ----------------------------------------------------------------

@FUZZ
@given(body=function_bodies)
@example(body={"Runtime": "python3", "Handler": "../../etc/passwd.handler"})
@example(body={"Runtime": "exec", "Handler": "/bin/sh"})
@example(body={"Runtime": "exec", "Handler": "bin/../../../bin/sh"})
@example(body={"Runtime": "python3", "Handler": "index.handler\x00"})
@example(body={"Runtime": "python3", "Environment": {"Variables": {"A": "\ud800"}}})
@example(body={"Runtime": "python3", "Description": "\ud800\udfff"})
@example(body={"Runtime": "python3", "Timeout": 10 ** 30})
@example(body={"Runtime": "python3", "MemorySize": True})
@example(body={"Code": ""})
@example(body={"Code": "not base64!"})
def test_stubs_create_with_any_body(api: Api, body: Any) -> None:
    name = unique("fz")
    status, headers, raw = api.stubs("POST", f"/v1/functions/{name}", json.dumps(body).encode())
    if status == 200:
        record = json.loads(raw)
        assert record["Configuration"]["FunctionName"] == name
        handler = record["Configuration"]["Handler"]
        assert not handler.startswith("/") and ".." not in handler.split("/")
        assert api.stubs("DELETE", f"/v1/functions/{name}")[0] == 204
    else:
        assert_clean_error(status, headers, raw)
        api.assert_absent(name)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(raw=b"[" * 5000)
@example(raw=b'{"Runtime": "python3", "Timeout": 1e400}')
@example(raw=b'{"Timeout": NaN}')
@example(raw=b"\xff\xfe{\x00}\x00")
@example(raw=b'{"Runtime": "python3", "Timeout": ' + b"9" * 5000 + b"}")
def test_stubs_create_with_any_bytes(api: Api, raw: bytes) -> None:
    name = unique("fb")
    status, headers, body = api.stubs("POST", f"/v1/functions/{name}", raw)
    if status == 200:
        assert api.stubs("DELETE", f"/v1/functions/{name}")[0] == 204
    else:
        assert_clean_error(status, headers, body)
        api.assert_absent(name)


names = st.text(min_size=1, max_size=80) | st.sampled_from(
    ["..", ".", "a/../b", "%2e%2e", "$LATEST", "name:1", "name:$LATEST", "name:alias", "a" * 65, "брн", "a\x00b",
     f"{account_hash(ACCOUNT)}:name", f"{account_hash(OTHER_ACCOUNT)}:name", "brn:cloud:faas:bj:x:function:y",
     " ", "name:", ":1", "name:1:2"])


@FUZZ
@given(ref=names, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       qualifier=st.none() | st.text(max_size=20))
def test_stubs_refs_and_qualifiers(api: Api, ref: str, method: str, qualifier: str | None) -> None:
    path = f"/v1/functions/{quote(ref, safe='')}"
    if qualifier is not None:
        path += f"?Qualifier={quote(qualifier, safe='')}"
    body = json.dumps({"Runtime": "python3", "Handler": "index.handler", "Code": b64zip({"index.py": PY_ECHO})})
    status, headers, raw = api.stubs(method, path, body.encode() if method in ("POST", "PUT") else b"")
    if status in (200, 204):
        # A valid reference: clean up what a POST made.
        if method == "POST":
            created = json.loads(raw)["Configuration"]["FunctionName"]
            assert api.stubs("DELETE", f"/v1/functions/{created}")[0] == 204
        return
    assert_clean_error(status, headers, raw)


@FUZZ
@given(account=st.text(max_size=80).filter(lambda s: s.isprintable() and s.isascii() and s.strip() == s))
@example(account="")
@example(account="a" * 65)
@example(account="../../etc")
def test_account_header(api: Api, account: str, echo: str) -> None:
    for call, method, path in ((api.stubs, "GET", f"/v1/functions/{echo}"),
                               (api.controller, "POST", f"/v1/functions/{echo}/invocations")):
        status, headers, raw = call(method, path, account=account)
        if status == 200:
            assert account in ("", ACCOUNT)  # an empty header means the default account
            continue
        assert_clean_error(status, headers, raw)


# ---- code archives ---------------------------------------------------------------------------------

def _zip_bytes(entries: list[tuple[bytes, bytes, int, int]]) -> bytes:
    """A zip of hand-picked entries: (raw name bytes, content, unix mode, general purpose flags).

    zipfile cannot write arbitrary raw names or flags, so entries are written as p0, p1, ... and
    their names and flags patched into the local and central headers afterwards.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for index, (_name, content, mode, _flags) in enumerate(entries):
            info = zipfile.ZipInfo(f"p{index}")
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return _rename_entries(buf.getvalue(), [e[0] for e in entries], [e[3] for e in entries])


def _rename_entries(data: bytes, raw_names: list[bytes], flags: list[int]) -> bytes:
    out = bytearray()
    pos = 0
    index = 0
    central: list[bytes] = []
    offsets: list[int] = []
    while data[pos:pos + 4] == b"PK\x03\x04":
        header = bytearray(data[pos:pos + 30])
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        comp_size = struct.unpack_from("<I", header, 18)[0]
        body = data[pos + 30 + name_len + extra_len:pos + 30 + name_len + extra_len + comp_size]
        name = raw_names[index]
        struct.pack_into("<H", header, 6, struct.unpack_from("<H", header, 6)[0] | flags[index])
        struct.pack_into("<HH", header, 26, len(name), 0)
        offsets.append(len(out))
        out += header + name + body
        pos += 30 + name_len + extra_len + comp_size
        index += 1
    index = 0
    while data[pos:pos + 4] == b"PK\x01\x02":
        header = bytearray(data[pos:pos + 46])
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", header, 28)
        name = raw_names[index]
        struct.pack_into("<H", header, 8, struct.unpack_from("<H", header, 8)[0] | flags[index])
        struct.pack_into("<HHH", header, 28, len(name), 0, 0)
        struct.pack_into("<I", header, 42, offsets[index])
        central.append(bytes(header) + name)
        pos += 46 + name_len + extra_len + comment_len
        index += 1
    cd_offset = len(out)
    cd = b"".join(central)
    out += cd
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(cd), cd_offset, 0)
    return bytes(out)


entry_names = st.sampled_from([
    b"index.py", b"lib/util.py", b"../escape.py", b"a/../../escape.py", b"/etc/passwd", b"a\\..\\b.py",
    b"dir/", b"dir", b"\xff\xfe.py", b"caf\xc3\xa9.py", b"a\x00b.py", b"./index.py", b"", b".DS_Store",
    b"__MACOSX/x", b"x" * 300, b"deep/" * 50 + b"f.py",
]) | st.text(min_size=1, max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass"))
entry_modes = st.sampled_from([0o100644, 0o100755, 0o120777, 0o040755, 0o020666, 0o010644, 0])
entries = st.lists(st.tuples(entry_names, st.binary(max_size=64), entry_modes, st.sampled_from([0, 0x800, 0x1])),
                   max_size=6)


@FUZZ
@given(files=entries)
@example(files=[])
@example(files=[(b"index.py", b"x", 0o100644, 0), (b"index.py", b"y", 0o100644, 0)])
@example(files=[(b"link", b"/etc/passwd", 0o120777, 0)])
@example(files=[(b"a", b"x", 0o100644, 0), (b"a/b", b"y", 0o100644, 0)])
def test_hostile_archives_are_refused_like_codezip_refuses_them(api: Api, files: list) -> None:
    data = _zip_bytes(files)
    try:
        codezip.inspect_zip(data)
        acceptable = True
    except codezip.CodeArchiveError:
        acceptable = False
    name = unique("zp")
    body = json.dumps({"Runtime": "exec", "Handler": "run", "Code": base64.b64encode(data).decode()}).encode()
    status, headers, raw = api.stubs("POST", f"/v1/functions/{name}", body)
    if acceptable:
        assert status == 200, raw
        status, _, code = api.stubs("GET", f"/v1/functions/{name}/code")
        assert (status, code) == (200, data)
        assert api.stubs("DELETE", f"/v1/functions/{name}")[0] == 204
    else:
        error = assert_clean_error(status, headers, raw)
        assert error["Cause"].startswith("Code:"), error
        api.assert_absent(name)


def _bomb(declared: int, actual: int) -> bytes:
    """One deflated entry of ``actual`` zero bytes whose headers claim ``declared``."""
    payload = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = payload.compress(b"\0" * actual) + payload.flush()
    crc = zlib.crc32(b"\0" * actual)
    name = b"bomb.bin"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(compressed), declared, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, 0, 8, 0, 0, crc, len(compressed), declared,
                          len(name), 0, 0, 0, 0, 0o100644 << 16, 0)
    cd = central + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), len(local) + len(name) + len(compressed), 0)
    return local + name + compressed + cd + end


@pytest.mark.parametrize("data,why", [
    (_bomb(1024, 64 << 20), "corrupt"),  # zipfile stops at the declared size: the CRC does not match
    (_bomb(300 << 20, 300 << 20), "limit"),
    (b"PK\x05\x06" + b"\0" * 18, "no files"),
    (b"", "not a valid zip"),
    (b"PK\x03\x04" + b"\xff" * 100, "not a valid zip"),
])
def test_zip_bombs_and_broken_zips_are_refused_quickly(api: Api, data: bytes, why: str) -> None:
    name = unique("zb")
    body = json.dumps({"Runtime": "exec", "Handler": "run", "Code": base64.b64encode(data).decode()}).encode()
    status, headers, raw = api.stubs("POST", f"/v1/functions/{name}", body)
    error = assert_clean_error(status, headers, raw)
    assert error["Cause"].startswith("Code:") and why in error["Cause"], error
    api.assert_absent(name)


def test_a_refused_update_leaves_the_old_function(api: Api) -> None:
    name = unique("upd")
    api.client.deploy(name, "python3", {"index.py": PY_ECHO})
    _, _, before = api.stubs("GET", f"/v1/functions/{name}")
    for body in ({"Code": base64.b64encode(_bomb(10, 1 << 20)).decode()}, {"Handler": "../x.handler"},
                 {"Timeout": "10"}, {"Code": b64zip({"../x.py": "x"})}):
        status, headers, raw = api.stubs("PUT", f"/v1/functions/{name}", json.dumps(body).encode())
        assert_clean_error(status, headers, raw)
    status, _, after = api.stubs("GET", f"/v1/functions/{name}")
    assert status == 200 and json.loads(after) == json.loads(before)
    status, _, versions = api.stubs("GET", f"/v1/functions/{name}/versions")
    assert [v["Version"] for v in json.loads(versions)["Versions"]] == ["$LATEST"]


# ---- controller: references, qualifiers, events ---------------------------------------------------

@st.composite
def mutated(draw: Any, base: str) -> str:
    """``base`` with a few characters dropped, inserted, replaced, or the tail cut off."""
    text = list(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "insert", "replace", "cut"]))
        at = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "drop" and text:
            del text[at]
        elif op == "insert":
            text.insert(at, draw(st.sampled_from([*":/.$%?#\\ \x00é", "::", ".."])))
        elif op == "replace" and text:
            text[at] = draw(st.characters())
        elif op == "cut":
            text = text[:at]
    return "".join(text)


@FUZZ
@given(data=st.data(), qualifier=st.none() | st.text(max_size=20) | st.sampled_from(["$LATEST", "1", "0", "-1",
                                                                                        "alias", "$latest"]))
def test_controller_refs_and_qualifiers(api: Api, echo: str, data: st.DataObject, qualifier: str | None) -> None:
    ref = data.draw(mutated(brn(echo, "$LATEST")) | mutated(echo) | names)
    path = f"/v1/functions/{quote(ref, safe='')}/invocations"
    if qualifier is not None:
        path += f"?Qualifier={quote(qualifier, safe='')}"
    status, headers, raw = api.controller("POST", path, b'{"x": 1}')
    if status == 200:
        assert json.loads(raw) == {"x": 1}  # a mutation that still names the echo function
        return
    assert_clean_error(status, headers, raw)


@FUZZ
@given(event=st.binary(max_size=200))
@example(event=b"[" * 5000 + b"]" * 5000)
@example(event=b"\xff")
@example(event=b'"\\ud800"')
@example(event=b"1e400")
def test_controller_events(api: Api, echo: str, event: bytes) -> None:
    status, headers, raw = api.controller("POST", f"/v1/functions/{echo}/invocations", event)
    if status == 200:
        expected = json.loads(event) if event.strip() else {}
        assert json.loads(raw) == expected or raw.decode() == expected
        return
    assert_clean_error(status, headers, raw)


def test_oversized_bodies_are_refused_before_they_are_read(api: Api, echo: str) -> None:
    for port, path in ((api.config.controller_port, f"/v1/functions/{echo}/invocations"),
                       (api.config.stubs_port, f"/v1/functions/{unique('big')}")):
        with socket.create_connection((api.config.host, port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-easyfaas-Account-Id: {ACCOUNT}\r\n"
                         f"Content-Length: {1 << 40}\r\n\r\n".encode() + b"{" * 1024)
            reply = _read_reply(sock)
        status = int(reply.split(b" ", 2)[1])
        assert status == 413, reply[:200]
        assert b'"RequestTooLargeException"' in reply


def _read_reply(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # a TLS hello on the plain port
    b"GARBAGE\r\n\r\n",
    b"POST /v1/functions/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/functions/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_http_is_refused_and_the_daemons_live_on(api: Api, request_bytes: bytes) -> None:
    for port in (api.config.stubs_port, api.config.controller_port):
        with socket.create_connection((api.config.host, port), timeout=10) as sock:
            try:
                sock.sendall(request_bytes)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = _read_reply(sock)
        # The HTTP parser refuses these before any handler runs; even so the answer is a 4xx in the
        # platform's JSON error shape, and the connection is closed.
        assert reply.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), reply[:200]
        assert b"Traceback" not in reply
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"application/json" in head.lower(), reply[:300]
        err = json.loads(body)
        assert err["Code"] == "InvalidRequestException" and err["Type"] == "User", err
        assert err["Status"] == int(head.split()[1])
    api.healthy()


# ---- the funclet's API -----------------------------------------------------------------------------

@FUZZ
@given(route=st.sampled_from(["/v1/funclet/warmup", "/v1/funclet/cooldown", "/v1/funclet/reborn"]),
       body=json_values | st.fixed_dictionaries({"ContainerID": st.text(max_size=30)}, optional={
           "Configuration": json_values, "Code": json_values, "RuntimeConfiguration": json_values}))
def test_funclet_api_with_any_body(api: Api, route: str, body: Any) -> None:
    # Only ever containers that do not exist: this must not disturb the pod's own sandboxes.
    if isinstance(body, dict) and isinstance(body.get("ContainerID"), str):
        assume(not body["ContainerID"].startswith(api.client.names.pod_name))
    status, headers, raw = api.funclet("POST", route, json.dumps(body).encode())
    assert_clean_error(status, headers, raw)


@FUZZ
@given(container=st.text(min_size=1, max_size=40))
def test_funclet_container_lookup(api: Api, container: str) -> None:
    assume(not container.startswith(api.client.names.pod_name))
    status, headers, raw = api.funclet("GET", f"/v1/funclet/container/{quote(container, safe='')}")
    assert_clean_error(status, headers, raw)


def test_the_pod_survived_the_fuzzing(api: Api, echo: str) -> None:
    api.healthy()
    status, _, raw = api.controller("POST", f"/v1/functions/{echo}/invocations", b'{"still": "here"}')
    assert (status, json.loads(raw)) == (200, {"still": "here"})
