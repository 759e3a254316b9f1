"""The Python language runtime (mode ``python``) and the executable runtime (mode ``exec``).

Implements the runtime process contract (``runner/runtimes/README.md``): fd 3 is a listening unix
socket, fd 4 the init-status pipe; requests and responses are frames (``easyfaas/frames.py``).

* ``python``: ``EASYFAAS_HANDLER`` = ``module.function`` (module may be dotted or use ``/``), loaded
  from the task root and called as ``handler(event, context)`` with a Lambda-compatible context.
* ``exec``: ``EASYFAAS_HANDLER`` = path of an executable in the task root, run once per request with
  the event on stdin; its stdout is the result and its stderr the log.

The sandbox init forks this module in-process (``main(env)``, the zygote imported it); it also runs
as a script (``python -I -S /var/runtime/bootstrap.py``), with ``easyfaas/frames.py`` copied next to
it by ``runner prepare``. Stdlib only.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

if __name__ == "__main__":  # run as a script: -I left the script's directory out of sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from easyfaas import frames  # noqa: E402

LISTENER_FD = 3
STATUS_FD = 4
DEFAULT_TASK_ROOT = "/var/task"
LOG_TAIL = 4096
MAX_EXEC_OUTPUT = 6 << 20
EXEC_EXIT_GRACE = 0.1
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class InitError(Exception):
    """The handler cannot be loaded; ``error`` is the Lambda-style error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("errorMessage", ""))
        self.error = error


class Settings:
    """The function's identity and handler, from the runtime environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.mode = env.get("EASYFAAS_RUNTIME_MODE") or "python"
        self.handler = env.get("EASYFAAS_HANDLER") or env.get("_HANDLER") or "index.handler"
        self.task_root = env.get("EASYFAAS_TASK_ROOT") or DEFAULT_TASK_ROOT
        self.function_name = env.get("EASYFAAS_FUNCTION_NAME") or env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("EASYFAAS_FUNCTION_VERSION") or env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.function_brn = env.get("EASYFAAS_FUNCTION_BRN", "")
        self.memory_mb = _int(env.get("EASYFAAS_MEMORY_SIZE") or env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), 128)
        self.timeout_s = _int(env.get("EASYFAAS_TIMEOUT"), 3)
        self.hostname = socket.gethostname()


# ---- per-request log capture ---------------------------------------------------------------------

class LogTail:
    """The last ``limit`` characters written to it."""

    def __init__(self, limit: int = LOG_TAIL) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:
            joined = "".join(self.parts)[-self.limit:]
            self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        return "".join(self.parts)[-self.limit:]


class CapturingStream(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: writes go to the current request's LogTail.

    The tail is thread-local, and each connection is served by its own thread, so concurrent
    requests never see each other's output. Writes outside a request go to the real stream.
    """

    def __init__(self, fallback: Any, local: threading.local) -> None:
        self._fallback = fallback
        self._local = local

    def write(self, text: str) -> int:
        tail = getattr(self._local, "tail", None)
        if tail is None:
            return self._fallback.write(text) if self._fallback is not None else len(text)
        tail.write(text)
        return len(text)

    def flush(self) -> None:
        if self._fallback is not None and getattr(self._local, "tail", None) is None:
            self._fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fallback is None:
            raise io.UnsupportedOperation("fileno")
        return self._fallback.fileno()

    @property
    def buffer(self) -> "_BinaryView":
        return _BinaryView(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "errors", "strict")


class _BinaryView(io.RawIOBase):
    """``sys.stdout.buffer`` of a CapturingStream: bytes are decoded and captured like text."""

    def __init__(self, stream: CapturingStream) -> None:
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._stream.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


# ---- the Lambda-compatible context ---------------------------------------------------------------

class LambdaContext:
    """The ``context`` argument, compatible with AWS Lambda's Python context object."""

    def __init__(self, settings: Settings, frame: dict[str, Any]) -> None:
        self.aws_request_id = str(frame.get("id", ""))
        self.request_id = str(frame.get("request_id") or self.aws_request_id)
        self.function_name = settings.function_name
        self.function_version = settings.function_version
        self.invoked_function_arn = settings.function_brn
        self.memory_limit_in_mb = settings.memory_mb
        self.log_group_name = f"/easyfaas/{settings.function_name}"
        self.log_stream_name = settings.hostname
        self.identity = None
        self.client_context = None
        deadline = frame.get("deadline_ms")
        self._deadline_ms = float(deadline) if isinstance(deadline, (int, float)) and deadline > 0 \
            else time.time() * 1000 + settings.timeout_s * 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self) -> str:
        return (f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r}, "
                f"function_version={self.function_version!r})")


# ---- errors ---------------------------------------------------------------------------------------

def error_object(exc: BaseException, error_type: str | None = None, message: str | None = None) -> dict[str, Any]:
    """Lambda's error shape, with a stack trace of the user's frames only."""
    frames_ = [f for f in traceback.extract_tb(exc.__traceback__)
               if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
    stack = [line for line in traceback.format_list(frames_)]
    if isinstance(exc, SyntaxError):
        stack += traceback.format_exception_only(type(exc), exc)
    return {"errorMessage": message if message is not None else str(exc),
            "errorType": error_type or type(exc).__name__, "stackTrace": stack}


def _error(message: str, error_type: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": []}


# ---- python mode ----------------------------------------------------------------------------------

def load_handler(handler: str) -> Callable[..., Any]:
    """Import ``module.function`` from sys.path (the task root first); raises InitError."""
    module_name, sep, function_name = handler.rpartition(".")
    if not sep or not module_name or not function_name:
        raise InitError(_error(f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
                               "Runtime.MalformedHandlerName"))
    module_name = module_name.replace("/", ".").strip(".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise InitError(error_object(exc, "Runtime.UserCodeSyntaxError",
                                     f"Syntax error in module '{module_name}': {exc}")) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of user code at import
        raise InitError(error_object(exc, "Runtime.ImportModuleError",
                                     f"Unable to import module '{module_name}': {exc}")) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise InitError(_error(f"Handler '{function_name}' missing on module '{module_name}'",
                               "Runtime.HandlerNotFound"))
    if not callable(function):
        raise InitError(_error(f"Handler '{function_name}' on module '{module_name}' is not callable",
                               "Runtime.HandlerNotFound"))
    return function


def marshal_result(result: Any) -> tuple[str, str]:
    """(result text, content type); raises TypeError/ValueError when it cannot be JSON."""
    if isinstance(result, str):
        return result, TEXT
    return json.dumps(result), JSON


class PythonInvoker:
    def __init__(self, settings: Settings, handler: Callable[..., Any], local: threading.local) -> None:
        self.settings = settings
        self.handler = handler
        self.local = local

    def __call__(self, frame: dict[str, Any]) -> dict[str, Any]:
        tail = LogTail()
        self.local.tail = tail
        try:
            response = self._invoke(frame)
        finally:
            self.local.tail = None
        if frame.get("log"):
            response["logs"] = tail.text()
        return response

    def _invoke(self, frame: dict[str, Any]) -> dict[str, Any]:
        request_id = frame.get("id")
        raw = frame.get("event", "{}")
        try:
            event = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            event = raw
        context = LambdaContext(self.settings, frame)
        try:
            result = self.handler(event, context)
            if _is_coroutine(result):
                import asyncio  # only for the rare async handler: importing it costs ~30 ms

                result = asyncio.run(result)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code failed
            return {"id": request_id, "ok": False, "error": error_object(exc), "fatal": False}
        try:
            text, content_type = marshal_result(result)
        except (TypeError, ValueError) as exc:
            return {"id": request_id, "ok": False, "fatal": False,
                    "error": _error(f"Unable to marshal response: {exc}", "Runtime.MarshalError")}
        return {"id": request_id, "ok": True, "result": text, "content_type": content_type}


def _is_coroutine(value: Any) -> bool:
    return hasattr(value, "__await__") and hasattr(value, "send")


# ---- exec mode ------------------------------------------------------------------------------------

def exec_handler_path(settings: Settings) -> str:
    """The executable a request runs; raises InitError if it is missing or not executable."""
    root = os.path.abspath(settings.task_root)
    path = os.path.normpath(os.path.join(root, settings.handler))
    if not (path + "/").startswith(root + "/") or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise InitError(_error(f"Handler '{settings.handler}' is not an executable file in {settings.task_root}",
                               "Runtime.HandlerNotFound"))
    return path


class ExecInvoker:
    """Runs the function's executable once per request: event on stdin, result on stdout."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.settings = settings
        self.path = path

    def __call__(self, frame: dict[str, Any]) -> dict[str, Any]:
        request_id = frame.get("id")
        context = LambdaContext(self.settings, frame)
        deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
        env = dict(os.environ)
        env.update({"EASYFAAS_REQUEST_ID": context.aws_request_id, "AWS_REQUEST_ID": context.aws_request_id,
                    "EASYFAAS_DEADLINE_MS": str(int(context._deadline_ms))})
        event = frame.get("event", "{}")
        data = event.encode() if isinstance(event, str) else json.dumps(event).encode()
        try:
            proc = subprocess.Popen([self.path], cwd=self.settings.task_root, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return {"id": request_id, "ok": False, "fatal": False,
                    "error": _error(f"cannot run {self.settings.handler}: {exc.strerror or exc}", "Runtime.ExecError")}
        writer = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
        writer.start()
        stdout, stderr, outcome = _collect(proc, deadline)
        _kill_group(proc.pid)
        code = proc.wait()
        writer.join(1)
        logs = stderr.decode("utf-8", "replace")
        response: dict[str, Any]
        if outcome == "timeout":
            seconds = self.settings.timeout_s
            response = {"id": request_id, "ok": False, "fatal": False,
                        "error": _error(f"Task timed out after {seconds:.2f} seconds", "Runtime.Timeout")}
        elif outcome == "too_large":
            response = {"id": request_id, "ok": False, "fatal": False,
                        "error": _error(f"response exceeds {MAX_EXEC_OUTPUT} bytes", "Runtime.ResponseSizeTooLarge")}
        elif code != 0:
            last = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
            status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
            response = {"id": request_id, "ok": False, "fatal": False,
                        "error": _error(f"{status}: {last}" if last else status, "Runtime.ExitError")}
        else:
            text = stdout.decode("utf-8", "replace")
            response = {"id": request_id, "ok": True, "result": text, "content_type": _content_type(text)}
        if frame.get("log"):
            response["logs"] = logs
        return response


def _content_type(text: str) -> str:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            json.loads(stripped)
        except ValueError:
            return TEXT
        return JSON
    return TEXT


def _feed(pipe: Any, data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, str]:
    """Read stdout (capped) and the stderr tail until both close, the deadline, or the cap."""
    out = bytearray()
    err = bytearray()
    outcome = "done"
    exited_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                outcome = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > EXEC_EXIT_GRACE:
                break  # a background child of the script still holds its stdout: stop waiting
            wait = min(deadline - now, EXEC_EXIT_GRACE if exited_at is not None else 0.25)
            for key, _ in sel.select(wait):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err and len(err) > LOG_TAIL * 2:
                    del err[:-LOG_TAIL]
            if len(out) > MAX_EXEC_OUTPUT:
                outcome = "too_large"
                break
    proc.stdout.close()
    proc.stderr.close()
    return bytes(out), bytes(err[-LOG_TAIL:]), outcome


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---- serving --------------------------------------------------------------------------------------

def fatal_invoker(error: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def invoke(frame: dict[str, Any]) -> dict[str, Any]:
        response = {"id": frame.get("id"), "ok": False, "error": error, "fatal": True}
        if frame.get("log"):
            response["logs"] = ""
        return response

    return invoke


def serve_connection(conn: socket.socket, invoke: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """One request at a time on one connection, until the peer closes it."""
    with conn:
        while True:
            try:
                frame = frames.recv_frame(conn)
            except (frames.FrameError, OSError):
                return
            if frame is None:
                return
            try:
                response = invoke(frame)
            except Exception as exc:  # noqa: BLE001 - a bug of ours must not look like a dead runtime
                traceback.print_exc(file=sys.__stderr__)
                response = {"id": frame.get("id"), "ok": False, "fatal": False,
                            "error": error_object(exc, "Runtime.InternalError")}
            try:
                payload = frames.encode(response)
            except frames.FrameError as exc:
                payload = frames.encode({"id": frame.get("id"), "ok": False, "fatal": False,
                                         "error": _error(str(exc), "Runtime.ResponseSizeTooLarge")})
            except (TypeError, ValueError) as exc:
                payload = frames.encode({"id": frame.get("id"), "ok": False, "fatal": False,
                                         "error": _error(f"Unable to marshal response: {exc}", "Runtime.MarshalError")})
            try:
                conn.sendall(payload)
            except OSError:
                return


def serve(listener: socket.socket, invoke: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (23, 24, 105, 12):  # ENFILE, EMFILE, ENOBUFS, ENOMEM: back off, retry
                time.sleep(0.05)
                continue
            raise
        threading.Thread(target=serve_connection, args=(conn, invoke), daemon=True,
                         name="easyfaas-conn").start()


def write_status(status: dict[str, Any]) -> None:
    """The one init-status line on fd 4, then close the pipe.

    The pipe is closed by putting /dev/null on fd 4, so that the number is never reused by a
    client connection that a late status write could then reach.
    """
    try:
        os.write(STATUS_FD, (json.dumps(status) + "\n").encode())
    except OSError:
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        devnull = -1
    try:
        if devnull >= 0:
            os.dup2(devnull, STATUS_FD, inheritable=False)
        else:
            os.close(STATUS_FD)
    except OSError:
        pass
    finally:
        if devnull >= 0:
            os.close(devnull)


def _stdlib_path() -> list[str]:
    prefixes = tuple({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
    return [p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p
            and os.path.realpath(p).startswith(prefixes)]


def main(env: dict[str, str] | None = None) -> None:
    """Load the handler, report init status on fd 4, serve fd 3 until the process is killed."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    settings = Settings(dict(os.environ))
    try:
        os.chdir(settings.task_root)
    except OSError:
        pass
    sys.path[:] = [settings.task_root, *_stdlib_path()]
    sys.dont_write_bytecode = True  # the task root is read-only
    importlib.invalidate_caches()
    local = threading.local()
    sys.stdout = CapturingStream(sys.__stdout__, local)
    sys.stderr = CapturingStream(sys.__stderr__, local)
    listener = socket.socket(fileno=LISTENER_FD)
    # The listener's open file description outlives runtimes: a Node.js runtime that used it
    # before us left it O_NONBLOCK, and this runtime's accept loop blocks.
    listener.setblocking(True)
    invoke: Callable[[dict[str, Any]], dict[str, Any]]
    try:
        if settings.mode == "exec":
            invoke = ExecInvoker(settings, exec_handler_path(settings))
        elif settings.mode == "python":
            invoke = PythonInvoker(settings, load_handler(settings.handler), local)
        else:
            raise InitError(_error(f"unknown EASYFAAS_RUNTIME_MODE {settings.mode!r}", "Runtime.InvalidConfiguration"))
    except InitError as exc:
        write_status({"ok": False, "error": exc.error})
        invoke = fatal_invoker(exc.error)
    else:
        write_status({"ok": True})
    serve(listener, invoke)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


if __name__ == "__main__":
    main()
