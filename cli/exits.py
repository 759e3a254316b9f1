"""The exit codes a CI pipeline can rely on, and the error that carries one to the process exit."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    FUNCTION_ERROR = 1   # the function ran and failed (error, timeout, crash), or an async record failed
    USAGE = 2            # bad command line, settings, profile or stack file; nothing was sent
    NOT_FOUND = 3        # the pod answered 404: no such function, version, trigger, record or route
    REFUSED = 4          # the pod refused the request: invalid parameters, unauthorized, forbidden, conflict, throttled
    UNAVAILABLE = 5      # the pod is unreachable, timed out, or answered a server error (5xx)
    BUILD_FAILED = 6     # packaging failed locally: unreadable directory, dependency installation failed


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 the function failed; 2 usage error (bad arguments, settings or stack file); "
    "3 not found; 4 refused by the pod (invalid, unauthorized, conflict, throttled); "
    "5 pod unreachable or server error; 6 local packaging or dependency installation failed."
)


def exit_code_for_status(status: int) -> ExitCode:
    """The exit code of a pod's HTTP error status."""
    if status == 404:
        return ExitCode.NOT_FOUND
    if 400 <= status < 500:
        return ExitCode.REFUSED
    return ExitCode.UNAVAILABLE


class CliError(Exception):
    """A failure shown as one line (``message``) and turned into ``code`` at exit.

    ``detail`` is what ``--output json`` prints instead of the line (e.g. the pod's error object).
    """

    def __init__(self, message: str, code: ExitCode, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail or {}


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


class BuildError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BUILD_FAILED)
