"""The Python language runtime (mode ``python``), and the entry of the ``exec`` and ``provided`` modes.

Implements the runtime process contract (``runner/runtimes/README.md``): fd 3 is a listening unix
socket, fd 4 the init-status pipe; requests and responses are frames (``easyfaas/frames.py``).

* ``python``: ``EASYFAAS_HANDLER`` = ``module.function`` (module may be dotted or use ``/``), loaded
  from the task root and called on the main thread as ``handler(event, context)``, as Lambda's
  Python runtime does (``lambda_context``, ``marshalling``, ``errors``, ``lambda_logging``).
* ``exec``: ``exec_mode``; ``provided``: the Lambda Runtime API for the zip's ``bootstrap``
  (``runner/runtimes/provided``).

The sandbox init forks this module in-process (``main(env)``, the zygote imported it); it also runs
as a script (``python -I -S /var/runtime/bootstrap.py``), with the ``runner`` and ``easyfaas``
modules it imports copied next to it by ``runner prepare``. Stdlib only.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from typing import Any, Callable

if __name__ == "__main__":  # run as a script: -I left the script's directory out of sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from easyfaas.frames import InvokeRequest, InvokeResponse  # noqa: E402
from runner.runtimes.provided import runtime_api  # noqa: E402
from runner.runtimes.python import errors, lambda_logging, marshalling, transport  # noqa: E402
from runner.runtimes.python.errors import InitError, LambdaError, error_object, make_error  # noqa: E402
from runner.runtimes.python.exec_mode import ExecInvoker  # noqa: E402
from runner.runtimes.python.lambda_context import FunctionIdentity, LambdaContext  # noqa: E402
from runner.runtimes.python.output_capture import CapturingStream, RequestScope  # noqa: E402

LISTENER_FD = 3
STATUS_FD = 4
DEFAULT_TASK_ROOT = "/var/task"
TRACE_ID = "_X_AMZN_TRACE_ID"


def load_handler(handler: str) -> Callable[..., Any]:
    """Import ``module.function`` from sys.path (the task root first); raises InitError."""
    module_name, sep, function_name = handler.rpartition(".")
    if not sep or not module_name or not function_name:
        raise InitError(make_error(f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
                                   errors.MALFORMED_HANDLER))
    module_name = module_name.replace("/", ".").strip(".")
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise InitError(make_error(f"Cannot use built-in module {module_name} as a handler module",
                                   errors.BUILT_IN_MODULE_CONFLICT))
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise InitError(error_object(exc, errors.USER_CODE_SYNTAX_ERROR,
                                     f"Syntax error in module '{module_name}': {exc}")) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of user code at import
        raise InitError(error_object(exc, errors.IMPORT_MODULE_ERROR,
                                     f"Unable to import module '{module_name}': {exc}")) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise InitError(make_error(f"Handler '{function_name}' missing on module '{module_name}'",
                                   errors.HANDLER_NOT_FOUND))
    if not callable(function):
        raise InitError(make_error(f"Handler '{function_name}' on module '{module_name}' is not callable",
                                   errors.HANDLER_NOT_FOUND))
    return function


class PythonInvoker:
    """Calls the handler for one invocation (on the main thread) and builds its response."""

    def __init__(self, function: FunctionIdentity, handler: Callable[..., Any], scope: RequestScope) -> None:
        self.function = function
        self.handler = handler
        self.scope = scope
        self._loop: Any = None
        self._trace_id = ""
        os.environ.pop(TRACE_ID, None)  # none before the first invocation

    def __call__(self, request: InvokeRequest) -> InvokeResponse:
        tail = self.scope.enter(request.request_id)
        if request.trace_id != self._trace_id:  # Lambda's per-invocation X-Ray header
            self._trace_id = request.trace_id
            set_trace_id(request.trace_id)
        try:
            response = self._invoke(request)
        finally:
            self.scope.leave()
        if request.log:
            response.logs = tail.text()
        return response

    def _invoke(self, request: InvokeRequest) -> InvokeResponse:
        event = marshalling.unmarshal_event(request.event)
        try:
            context = LambdaContext(self.function, request.request_id, request.deadline_ms, request.function_arn,
                                    request.client_context, request.identity)
        except LambdaError as exc:
            return InvokeResponse(request.id, False, error=exc.error)
        try:
            result = self.handler(event, context)
            if _is_coroutine(result):
                result = self._run_coroutine(result)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code failed
            return InvokeResponse(request.id, False, error=error_object(exc))
        try:
            text, content_type = marshalling.marshal_result(result)
        except marshalling.MarshalError as exc:
            return InvokeResponse(request.id, False, error=make_error(str(exc), errors.MARSHAL_ERROR))
        return InvokeResponse(request.id, True, result=text, content_type=content_type)

    def _run_coroutine(self, coroutine: Any) -> Any:
        """An ``async def`` handler runs on one loop of the main thread, kept between invocations
        (``asyncio.run`` would close it and leave ``get_event_loop()`` failing afterwards)."""
        import asyncio  # only for the rare async handler: importing it costs ~30 ms

        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop.run_until_complete(coroutine)


def set_trace_id(trace_id: str) -> None:
    """``_X_AMZN_TRACE_ID`` in ``os.environ`` for this invocation, not in the C environment.

    ``os.environ[...] = ...`` calls setenv(3), and glibc never frees the string a setenv replaces
    (a pointer getenv returned may still be held): a new trace id per invocation grew a warm
    runtime ~140 bytes a call, until its memory limit killed it after about a million calls.
    Python code (the X-Ray SDK included) reads the mapping; a child started without ``env=``
    inherits the C environment, which has no trace id (runner/runtimes/README.md).
    """
    environ = os.environ
    key = environ.encodekey(TRACE_ID)
    if trace_id:
        environ._data[key] = environ.encodevalue(trace_id)  # type: ignore[attr-defined]
    else:
        environ._data.pop(key, None)  # type: ignore[attr-defined]


def _is_coroutine(value: Any) -> bool:
    return hasattr(value, "__await__") and hasattr(value, "send")


def fatal_invoker(error: dict[str, Any]) -> transport.Invoke:
    def invoke(request: InvokeRequest) -> InvokeResponse:
        return InvokeResponse(request.id, False, error=error, fatal=True, logs="" if request.log else None)

    return invoke


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
    environ = dict(os.environ)
    mode = environ.get("EASYFAAS_RUNTIME_MODE") or "python"
    handler_name = environ.get("EASYFAAS_HANDLER") or environ.get("_HANDLER") or "index.handler"
    task_root = environ.get("EASYFAAS_TASK_ROOT") or DEFAULT_TASK_ROOT
    try:
        os.chdir(task_root)
    except OSError:
        pass
    listener = socket.socket(fileno=LISTENER_FD)
    # The listener's open file description outlives runtimes: a Node.js runtime that used it
    # before us left it O_NONBLOCK, and this runtime's accept loop blocks.
    listener.setblocking(True)
    if mode == "provided":
        runtime_api.main(listener, STATUS_FD, environ, task_root)
        return
    sys.path[:] = [task_root, *_stdlib_path()]
    sys.dont_write_bytecode = True  # the task root is read-only
    importlib.invalidate_caches()
    scope = RequestScope()
    sys.stdout = CapturingStream(sys.__stdout__, scope)
    sys.stderr = CapturingStream(sys.__stderr__, scope)
    function = FunctionIdentity(environ)
    invoke: transport.Invoke
    on_main_thread = False
    try:
        if mode == "exec":
            invoke = ExecInvoker(function, task_root, handler_name)
        elif mode == "python":
            lambda_logging.install(scope, environ)
            invoke = PythonInvoker(function, load_handler(handler_name), scope)
            on_main_thread = True
        else:
            raise InitError(make_error(f"unknown EASYFAAS_RUNTIME_MODE {mode!r}", errors.INVALID_CONFIGURATION))
    except InitError as exc:
        write_status({"ok": False, "error": exc.error})
        invoke = fatal_invoker(exc.error)
        on_main_thread = False
    else:
        write_status({"ok": True})
    transport.serve(listener, invoke, on_main_thread)


if __name__ == "__main__":
    main()
