"""Lambda's error object and the error types the Python runtime reports.

The shape is ``{"errorMessage", "errorType", "stackTrace"}`` (the frame's ``error``); the types and
message wordings are those of AWS's Python runtime interface client. Stdlib only.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

MALFORMED_HANDLER = "Runtime.MalformedHandlerName"
BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
MARSHAL_ERROR = "Runtime.MarshalError"
CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"
RESPONSE_TOO_LARGE = "Runtime.ResponseSizeTooLarge"
INTERNAL_ERROR = "Runtime.InternalError"
INVALID_CONFIGURATION = "Runtime.InvalidConfiguration"

# Frames of the runtime's own files are left out of a user's stack trace.
_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))


class LambdaError(Exception):
    """A failure the runtime reports as an error object (``error``)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("errorMessage", ""))
        self.error = error


class InitError(LambdaError):
    """The handler cannot be loaded."""


def make_error(message: str, error_type: str, stack: list[str] | None = None) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}


def user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(exc.__traceback__)
            if os.path.dirname(os.path.abspath(f.filename)) != _RUNTIME_DIR
            and not f.filename.startswith("<frozen importlib")]


def error_object(exc: BaseException, error_type: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The error object of an exception, with a stack trace of the user's frames only."""
    stack = traceback.format_list(user_frames(exc))
    if isinstance(exc, SyntaxError):
        stack += traceback.format_exception_only(type(exc), exc)
    return make_error(message if message is not None else str(exc), error_type or type(exc).__name__, stack)

