"""The ``exec`` runtime: runs the function's executable once per invocation.

``EASYFAAS_HANDLER`` is the path of an executable in the task root; each invocation runs it with
the event on stdin, its stdout is the result and its stderr the log. Invocations run concurrently,
each in its own process group, killed at the deadline. Stdlib only.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import Any

from easyfaas.frames import InvokeRequest, InvokeResponse
from runner.runtimes.python.errors import HANDLER_NOT_FOUND, InitError, make_error
from runner.runtimes.python.lambda_context import FunctionIdentity, LambdaContext
from runner.runtimes.python.marshalling import JSON, TEXT
from runner.runtimes.python.output_capture import LOG_TAIL

MAX_EXEC_OUTPUT = 6 << 20
EXEC_EXIT_GRACE = 0.1


def exec_handler_path(task_root: str, handler: str) -> str:
    """The executable an invocation runs; raises InitError if it is missing or not executable."""
    root = os.path.abspath(task_root)
    path = os.path.normpath(os.path.join(root, handler))
    if not (path + "/").startswith(root + "/") or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise InitError(make_error(f"Handler '{handler}' is not an executable file in {task_root}",
                                   HANDLER_NOT_FOUND))
    return path


class ExecInvoker:
    """Runs the function's executable once per invocation: event on stdin, result on stdout."""

    def __init__(self, function: FunctionIdentity, task_root: str, handler: str) -> None:
        self.function = function
        self.task_root = task_root
        self.handler = handler
        self.path = exec_handler_path(task_root, handler)

    def __call__(self, request: InvokeRequest) -> InvokeResponse:
        context = LambdaContext(self.function, request.request_id, request.deadline_ms)
        deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
        env = dict(os.environ)
        env.update({"EASYFAAS_REQUEST_ID": context.aws_request_id, "AWS_REQUEST_ID": context.aws_request_id,
                    "EASYFAAS_DEADLINE_MS": str(int(context._deadline_ms))})
        if request.trace_id:
            env["_X_AMZN_TRACE_ID"] = request.trace_id
        data = request.event.encode()
        logs = "" if request.log else None
        try:
            proc = subprocess.Popen([self.path], cwd=self.task_root, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return InvokeResponse(request.id, False, logs=logs, error=make_error(
                f"cannot run {self.handler}: {exc.strerror or exc}", "Runtime.ExecError"))
        writer = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
        writer.start()
        stdout, stderr, outcome = _collect(proc, deadline)
        _kill_group(proc.pid)
        code = proc.wait()
        writer.join(1)
        text_log = stderr.decode("utf-8", "replace")
        logs = text_log if request.log else None
        if outcome == "timeout":
            return InvokeResponse(request.id, False, logs=logs, error=make_error(
                f"Task timed out after {self.function.timeout_s:.2f} seconds", "Runtime.Timeout"))
        if outcome == "too_large":
            return InvokeResponse(request.id, False, logs=logs, error=make_error(
                f"response exceeds {MAX_EXEC_OUTPUT} bytes", "Runtime.ResponseSizeTooLarge"))
        if code != 0:
            last = next((line for line in reversed(text_log.splitlines()) if line.strip()), "")
            status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
            return InvokeResponse(request.id, False, logs=logs, error=make_error(
                f"{status}: {last}" if last else status, "Runtime.ExitError"))
        text = stdout.decode("utf-8", "replace")
        return InvokeResponse(request.id, True, result=text, content_type=_content_type(text), logs=logs)


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
