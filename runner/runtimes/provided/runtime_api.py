"""The ``provided`` runtime: Lambda's Runtime API inside the sandbox, for the zip's ``bootstrap``.

The runtime process speaks frames to the controller on fd 3 like every runtime
(``easyfaas/frames.py``) and serves the Runtime API (``/2018-06-01/runtime/...``) on the sandbox's
loopback, at ``AWS_LAMBDA_RUNTIME_API`` (``127.0.0.1:9001``). It starts ``<task root>/bootstrap``
(as the runtime process's own user, with the function's environment) and turns each frame into the
answer of the bootstrap's ``GET .../invocation/next``, and the bootstrap's ``POST
.../invocation/<id>/response`` or ``/error`` into the response frame. Invocations are handed out
one at a time, as in Lambda.

Init succeeds when the bootstrap first asks for an invocation (fd 4 then says ok), and fails on
``POST /runtime/init/error``, an exit, or no ``next`` within :data:`INIT_TIMEOUT`. A bootstrap that
exits, overruns the deadline, answers for another request id or sends an oversized response fails
the invocation with Lambda's error type and ``fatal`` (the controller recycles the sandbox).
Requests that break the protocol get the Runtime API's 4xx answers. One thread, one selector.
Stdlib only.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

from easyfaas.frames import InvokeRequest, InvokeResponse
from runner.runtimes.provided import http_wire
from runner.runtimes.provided.connections import MAX_RESPONSE, ApiConn, Connection, FrameConn
from runner.runtimes.provided.http_wire import Request
from runner.runtimes.python.memory_peak import peak_kb

API_PREFIX = "/2018-06-01/runtime"
DEFAULT_ADDRESS = "127.0.0.1:9001"
ADDRESS_VARIABLE = "EASYFAAS_RUNTIME_API_ADDRESS"  # where to listen; tests outside a sandbox use port 0
INIT_TIMEOUT = 10.0  # Lambda's init phase limit
DEADLINE_GRACE = 0.5  # the controller cuts the call at the deadline; this is our own backstop
OUTPUT_TAIL = 4096
BOOTSTRAP = "bootstrap"
READ_SIZE = 262144

INVALID_REQUEST_ID = "InvalidRequestID"
INVALID_STATE = "InvalidStateTransition"
TOO_LARGE = "RequestEntityTooLarge"


def _error(message: str, error_type: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": []}


class Invocation:
    """The invocation the bootstrap is working on."""

    __slots__ = ("request", "conn", "deadline_ms", "logs")

    def __init__(self, request: InvokeRequest, conn: FrameConn, deadline_ms: int) -> None:
        self.request = request
        self.conn = conn
        self.deadline_ms = deadline_ms
        self.logs = bytearray()


class RuntimeApiServer:
    """The state machine between the controller's frames and the bootstrap's Runtime API calls."""

    def __init__(self, listener: socket.socket, api: socket.socket, write_status: Callable[[dict[str, Any]], None],
                 environ: dict[str, str], task_root: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = listener
        self.api = api
        self.write_status = write_status
        self.environ = environ
        self.task_root = task_root
        self.function_arn = environ.get("EASYFAAS_FUNCTION_BRN", "")
        try:
            self.timeout_s = int(environ.get("EASYFAAS_TIMEOUT") or 3)
        except ValueError:
            self.timeout_s = 3
        self.initialized = False  # the init status is reported
        # The bootstrap exited between invocations: the next invocation starts it afresh (a
        # re-init, as Lambda gives the next invoke a new environment); `reinit` while it runs.
        self.bootstrap_gone = False
        self.reinit = False
        self.fatal: dict[str, Any] | None = None  # once set, every invocation fails with it
        self.exit_when_flushed = False
        self.queue: collections.deque[tuple[InvokeRequest, FrameConn]] = collections.deque()
        self.current: Invocation | None = None
        self.waiting: ApiConn | None = None  # the bootstrap's parked GET /next
        self.frame_conns: set[FrameConn] = set()
        self.init_deadline = time.monotonic() + INIT_TIMEOUT
        self.process: subprocess.Popen | None = None
        self.output_fd = -1
        self.pidfd = -1
        self.output_tail = bytearray()
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every connection's reads
        for sock in (listener, api):
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, sock)

    # -- the bootstrap process --

    def start_bootstrap(self) -> None:
        if self.fatal is not None:
            return  # init already failed (the Runtime API could not be served)
        path = os.path.join(self.task_root, BOOTSTRAP)
        if not os.path.isfile(path):
            self.init_failed(_error(f"Couldn't find valid bootstrap(s): [{path}]", "Runtime.InvalidEntrypoint"))
            return
        if not os.access(path, os.X_OK):
            self.init_failed(_error(f"fork/exec {path}: permission denied (the bootstrap is not executable)",
                                    "Runtime.InvalidEntrypoint"))
            return
        env = {k: v for k, v in self.environ.items() if k != "EASYFAAS_STANDBY_FD"}
        host, port = self.api.getsockname()[:2]
        env["AWS_LAMBDA_RUNTIME_API"] = f"{host}:{port}"
        output_r, output_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.process = subprocess.Popen([path], cwd=self.task_root, env=env, stdin=subprocess.DEVNULL,
                                            stdout=output_w, stderr=output_w, close_fds=True)
        except OSError as exc:
            os.close(output_r)
            self.init_failed(_error(f"fork/exec {path}: {exc.strerror or exc}", "Runtime.InvalidEntrypoint"))
            return
        finally:
            os.close(output_w)
        self.close_output()  # a child of the previous bootstrap may still hold that pipe
        self.output_fd = output_r
        os.set_blocking(output_r, False)
        self.selector.register(output_r, selectors.EVENT_READ, "output")
        self.pidfd = os.pidfd_open(self.process.pid)
        self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")

    def read_output(self) -> None:
        while self.output_fd >= 0:
            try:
                chunk = os.read(self.output_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close_output()
                return
            if self.current is not None:
                self.current.logs += chunk
                if len(self.current.logs) > 2 * OUTPUT_TAIL:
                    del self.current.logs[:-OUTPUT_TAIL]
            else:
                self.output_tail += chunk
                del self.output_tail[:-OUTPUT_TAIL]
                try:
                    os.write(2, chunk)  # the runner keeps this tail for failed starts and exits
                except OSError:
                    pass

    def close_output(self) -> None:
        if self.output_fd >= 0:
            self.selector.unregister(self.output_fd)
            os.close(self.output_fd)
            self.output_fd = -1

    def bootstrap_exited(self) -> None:
        assert self.process is not None
        self.read_output()
        code = self.process.wait()
        self.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        if code == 0:
            reason = "Runtime exited without providing a reason"
        elif code > 0:
            reason = f"Runtime exited with error: exit status {code}"
        else:
            reason = f"Runtime exited with error: signal: {_signal_name(-code)}"
        if self.fatal is not None:
            return  # init failed, or the invocation already broke down: nothing more to tell
        if not self.initialized:
            tail = self.output_tail.decode("utf-8", "replace").strip()
            self.init_failed(_error(f"RequestId:  Error: {reason}" + (f"; last output: {tail[-1024:]}" if tail else ""),
                                    "Runtime.ExitError"))
            return
        if self.current is None and not self.reinit:
            self.bootstrap_gone = True  # between invocations: the next one gets a fresh bootstrap
            if self.queue:
                self.restart_bootstrap()
            return
        self.break_down(lambda rid: _error(f"RequestId: {rid} Error: {reason}", "Runtime.ExitError"))

    def kill_bootstrap(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    # -- init --

    def init_ok(self) -> None:
        self.initialized = True
        self.write_status({"ok": True})

    def init_failed(self, error: dict[str, Any]) -> None:
        if self.initialized:  # a re-init failed: the calls waiting for it fail, fatally
            self.break_down(lambda rid: error)
            return
        self.initialized = True
        self.fatal = error
        self.write_status({"ok": False, "error": error})
        self.kill_bootstrap()
        self.fail_queued()

    # -- invocations --

    def enqueue(self, request: InvokeRequest, conn: FrameConn) -> None:
        if self.fatal is not None:
            conn.answer(InvokeResponse(request.id, False, error=self.fatal, fatal=True,
                                       logs="" if request.log else None))
            return
        self.queue.append((request, conn))
        if self.bootstrap_gone:
            self.restart_bootstrap()
        self.dispatch()

    def restart_bootstrap(self) -> None:
        self.bootstrap_gone, self.reinit = False, True
        self.init_deadline = time.monotonic() + INIT_TIMEOUT
        self.start_bootstrap()

    def dispatch(self) -> None:
        """Hand the next invocation to the bootstrap's parked ``next``, if there is one."""
        while self.current is None and self.waiting is not None and self.queue:
            request, conn = self.queue.popleft()
            if conn.closed:
                continue  # the controller gave up on it
            deadline_ms = request.deadline_ms or int(time.time() * 1000) + self.timeout_s * 1000
            self.current = Invocation(request, conn, deadline_ms)
            headers = {"Lambda-Runtime-Aws-Request-Id": request.request_id,
                       "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                       "Lambda-Runtime-Invoked-Function-Arn": request.function_arn or self.function_arn}
            for name, value in (("Lambda-Runtime-Trace-Id", request.trace_id),
                                ("Lambda-Runtime-Client-Context", request.client_context),
                                ("Lambda-Runtime-Cognito-Identity", request.identity)):
                if value:
                    headers[name] = value
            waiting, self.waiting = self.waiting, None
            waiting.send(http_wire.render(200, request.event.encode(), headers))

    def finish(self, response: InvokeResponse) -> None:
        invocation, self.current = self.current, None
        assert invocation is not None
        if invocation.request.log:
            self.read_output()  # what the bootstrap wrote before it answered belongs to this call
            response.logs = invocation.logs[-OUTPUT_TAIL:].decode("utf-8", "replace")
        # This server's peak plus the bootstrap's (while it runs; an ended one is a waited-for child).
        process = self.process
        response.memory_peak_kb = peak_kb(process.pid if process is not None and process.returncode is None else 0)
        invocation.conn.answer(response)

    def fail_queued(self) -> None:
        assert self.fatal is not None
        while self.queue:
            request, conn = self.queue.popleft()
            conn.answer(InvokeResponse(request.id, False, error=self.fatal, fatal=True,
                                       logs="" if request.log else None))

    def break_down(self, error_for: Callable[[str], dict[str, Any]]) -> None:
        """The bootstrap cannot go on: fail the current call and the queued ones, then exit."""
        if self.current is not None:
            request = self.current.request
            self.finish(InvokeResponse(request.id, False, error=error_for(request.request_id), fatal=True))
        self.fatal = error_for("")
        self.fail_queued()
        self.kill_bootstrap()
        # Exiting tells the funclet at once: the controller recycles the sandbox, and the next
        # call gets a fresh init, as in Lambda.
        self.exit_when_flushed = True

    def check_deadlines(self) -> None:
        if (not self.initialized or self.reinit) and time.monotonic() >= self.init_deadline:
            self.init_failed(_error(
                f"RequestId:  Error: the bootstrap did not ask for an invocation (GET {API_PREFIX}/invocation/next)"
                f" within {INIT_TIMEOUT:g} seconds of starting", "Runtime.InitTimeout"))
        current = self.current
        if current is not None and time.time() * 1000 >= current.deadline_ms + DEADLINE_GRACE * 1000:
            self.break_down(lambda rid: _error(f"RequestId: {rid} Error: Task timed out after "
                                               f"{self.timeout_s:.2f} seconds", "Sandbox.Timedout"))

    def next_timeout(self) -> float | None:
        timeouts = []
        if not self.initialized or self.reinit:
            timeouts.append(self.init_deadline - time.monotonic())
        if self.current is not None:
            timeouts.append((self.current.deadline_ms + DEADLINE_GRACE * 1000) / 1000 - time.time())
        return max(0.0, min(timeouts)) if timeouts else None

    # -- the Runtime API --

    def route(self, conn: ApiConn, request: Request) -> None:
        path = request.path
        if path == "/ping" or path == "/2018-06-01/ping":
            conn.send(http_wire.render(200, b"pong", content_type="text/plain"), close=not request.keep_alive)
            return
        if not path.startswith(API_PREFIX + "/"):
            conn.refuse(404, "InvalidRoute", f"no route {request.method} {path}", request)
            return
        parts = path[len(API_PREFIX) + 1:].split("/")
        if parts == ["invocation", "next"]:
            if self._method(conn, request, "GET"):
                self.next(conn, request)
        elif parts == ["init", "error"]:
            if self._method(conn, request, "POST"):
                self.init_error(conn, request)
        elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            if self._method(conn, request, "POST"):
                self.invocation_result(conn, request, parts[1], parts[2])
        else:
            conn.refuse(404, "InvalidRoute", f"no route {request.method} {path}", request)

    @staticmethod
    def _method(conn: ApiConn, request: Request, method: str) -> bool:
        if request.method == method:
            return True
        conn.refuse(405, "MethodNotAllowed", f"{request.method} is not allowed on {request.path}", request)
        return False

    def next(self, conn: ApiConn, request: Request) -> None:
        if self.fatal is not None:
            conn.refuse(500, "InternalServerError", "the runtime cannot take invocations any more; exit", request)
            return
        if self.current is not None:
            conn.refuse(403, INVALID_STATE, "State transition from Invoking to Ready failed for runtime. Error: "
                        f"invocation {self.current.request.request_id} has no response or error yet", request)
            return
        if self.waiting is not None and not self.waiting.closed:
            conn.refuse(403, INVALID_STATE, "State transition from Ready to Ready failed for runtime. Error: "
                        "another request already waits for the next invocation", request)
            return
        if not self.initialized:
            self.init_ok()
        self.reinit = False
        self.waiting = conn
        self.dispatch()

    def init_error(self, conn: ApiConn, request: Request) -> None:
        if self.reinit:
            conn.reply(202, {"status": "OK"}, request)
            self.init_failed(_posted_error(request, "Runtime.Unknown"))
            return
        if self.initialized:
            conn.refuse(403, INVALID_STATE, "State transition from Ready to InitError failed for runtime. "
                        "Error: the runtime is already initialized", request)
            return
        error = _posted_error(request, "Runtime.Unknown")
        conn.reply(202, {"status": "OK"}, request)
        self.init_failed(error)

    def invocation_result(self, conn: ApiConn, request: Request, request_id: str, kind: str) -> None:
        if not self.initialized:
            conn.refuse(403, INVALID_STATE, f"State transition from Initializing to Invocation{kind.capitalize()} "
                        "failed for runtime. Error: no invocation was handed out yet", request)
            return
        current = self.current
        if current is None or not request_id or request_id != current.request.request_id:
            conn.refuse(400, INVALID_REQUEST_ID, "Invalid request ID", request)
            if current is not None:
                self.break_down(lambda rid: _error(
                    f"RequestId: {rid} Error: the runtime answered for request id {request_id!r}",
                    "Runtime.InvalidRequestID"))
            return
        if kind == "response":
            mode = request.headers.get("lambda-runtime-function-response-mode")
            if mode is not None and mode.lower() != "streaming":
                conn.refuse(400, "InvalidFunctionResponseMode", f"Unsupported response mode {mode!r}", request)
                self.finish(InvokeResponse(current.request.id, False, error=_error(
                    f"Unsupported response mode {mode!r}", "Runtime.InvalidResponseModeHeader")))
                return
            content_type = request.headers.get("content-type") or "application/json"
            if content_type == "application/x-www-form-urlencoded":
                # What `curl -d` sends unless told otherwise, as in AWS's shell-script bootstrap:
                # the body is the function's result, not a form.
                content_type = "application/json"
            # The caller's answer first: it is the latency that counts.
            self.finish(InvokeResponse(current.request.id, True, result=request.body.decode("utf-8", "replace"),
                                       content_type=content_type))
        else:
            self.finish(InvokeResponse(current.request.id, False, error=_posted_error(request, "Unhandled")))
        conn.accepted(request)

    def response_too_large(self, conn: ApiConn, head: Request | None, size: int) -> None:
        conn.send(http_wire.render_error(413, TOO_LARGE, f"Exceeded maximum allowed payload size ({MAX_RESPONSE} "
                                         "bytes).", close=True), close=True)
        is_response = head is not None and head.path.endswith("/response")
        if self.current is not None and is_response:
            self.break_down(lambda rid: _error(f"Response payload size ({size} bytes) exceeded maximum allowed "
                                               f"payload size ({MAX_RESPONSE} bytes).", "Function.ResponseSizeTooLarge"))

    def api_closed(self, conn: ApiConn) -> None:
        if self.waiting is conn:
            self.waiting = None

    # -- the loop --

    def serve(self) -> None:
        self.start_bootstrap()
        while True:
            for key, events in self.selector.select(self.next_timeout()):
                target = key.data
                if target is self.listener:
                    self._accept(self.listener, FrameConn)
                elif target is self.api:
                    self._accept(self.api, ApiConn)
                elif target == "output":
                    self.read_output()
                elif target == "exit":
                    self.bootstrap_exited()
                else:
                    if events & selectors.EVENT_WRITE:
                        target.on_writable()
                    if events & selectors.EVENT_READ and not target.closed:
                        target.on_readable()
            self.check_deadlines()
            if self.exit_when_flushed:
                for conn in self.frame_conns:
                    conn.flush_blocking()
                os._exit(1)

    def _accept(self, listener: socket.socket, kind: type[Connection]) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: the next readiness tries again
            if kind is ApiConn:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = kind(self, sock)
            if isinstance(conn, FrameConn):
                self.frame_conns.add(conn)


def _posted_error(request: Request, default_type: str) -> dict[str, Any]:
    """The error object a bootstrap posted (``trace`` as NodeRIC names it becomes ``stackTrace``)."""
    header_type = request.headers.get("lambda-runtime-function-error-type", "")
    try:
        body = json.loads(request.body) if request.body else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(request.body.decode("utf-8", "replace"), header_type or default_type)
    error = dict(body)
    error["errorMessage"] = str(body.get("errorMessage", ""))
    error["errorType"] = str(body.get("errorType") or header_type or default_type)
    stack = body.get("stackTrace", body.get("trace", []))
    error["stackTrace"] = stack if isinstance(stack, list) else [str(stack)]
    error.pop("trace", None)
    return error


def _signal_name(number: int) -> str:
    try:
        return {signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault",
                signal.SIGTERM: "terminated", signal.SIGABRT: "aborted"}.get(signal.Signals(number),
                                                                              signal.Signals(number).name)
    except ValueError:
        return str(number)


def bind_api(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", int(port or 9001)))
    sock.listen(16)
    return sock


def main(listener: socket.socket, status_fd: int, environ: dict[str, str], task_root: str) -> None:
    """Serve the Runtime API and fd 3 until the process is killed (or the bootstrap breaks down)."""
    def write_status(status: dict[str, Any]) -> None:
        try:
            os.write(status_fd, (json.dumps(status) + "\n").encode())
        except OSError:
            pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(devnull, status_fd, inheritable=False)  # the number is never reused by a socket
            os.close(devnull)
        except OSError:
            pass

    try:
        api = bind_api(environ.get(ADDRESS_VARIABLE) or DEFAULT_ADDRESS)
    except (OSError, ValueError) as exc:
        api = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # never bound: never readable
        server = RuntimeApiServer(listener, api, write_status, environ, task_root)
        server.init_failed(_error(f"cannot serve the Runtime API: {exc}", "Runtime.InvalidConfiguration"))
    else:
        server = RuntimeApiServer(listener, api, write_status, environ, task_root)
    try:
        server.serve()
    finally:
        sys.stderr.flush()
