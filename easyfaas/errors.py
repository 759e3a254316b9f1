"""Platform errors and their JSON body, shared by every public HTTP service.

Body, key order as in the Go original: ``{"Code","Cause","Message","Status","Type"}``; ``Cause`` is
left out when empty, ``Type`` is ``User`` for 4xx and ``Server`` for 5xx. Function errors and
function timeouts are not FaasErrors: they are results of the function, built by the controller.
No aiohttp here, so clients and stdlib-only code can use it too.
"""

from __future__ import annotations

from typing import Any


class FaasError(Exception):
    """Base of all platform errors; subclasses fix ``code``, ``status`` and the default message."""

    code: str = "ServiceException"
    status: int = 500
    default_message: str = "Service encountered an internal error"

    def __init__(self, cause: str = "", *, message: str | None = None) -> None:
        self.cause = cause or ""
        self.message = message if message is not None else self.default_message
        super().__init__(f"{self.code}: {self.cause}" if self.cause else f"{self.code}: {self.message}")

    @property
    def type(self) -> str:
        return "User" if 400 <= self.status < 500 else "Server"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"Code": self.code}
        if self.cause:
            body["Cause"] = self.cause
        body["Message"] = self.message
        body["Status"] = self.status
        body["Type"] = self.type
        return body


class InvalidParameterValue(FaasError):
    code = "InvalidParameterValueException"
    status = 400
    default_message = "One of the parameters in the request is invalid"


class InvalidRequestContent(FaasError):
    code = "InvalidRequestContentException"
    status = 400
    default_message = "The request body could not be parsed as JSON"


class ValidationError(FaasError):
    code = "ValidationException"
    status = 400
    default_message = "The request failed to satisfy a constraint"


class RequestTooLarge(FaasError):
    code = "RequestTooLargeException"
    status = 413
    default_message = "Request must be smaller than 6291456 bytes for the InvokeFunction operation"


class InvalidInvokeCaller(FaasError):
    code = "InvalidInvokeCallerException"
    status = 403
    default_message = "Invalid caller id"


class AccessDenied(FaasError):
    code = "UnrecognizedClientException"
    status = 403
    default_message = "Access Denied"


class ResourceNotFound(FaasError):
    code = "ResourceNotFoundException"
    status = 404
    default_message = "The resource specified in the request does not exist"


class MethodNotAllowed(FaasError):
    code = "MethodNotAllowedException"
    status = 405
    default_message = "The method is not allowed for the requested resource"


class ResourceConflict(FaasError):
    code = "ResourceConflictException"
    status = 409
    default_message = "The resource already exists, or another operation is in progress"


class TooManyRequests(FaasError):
    code = "TooManyRequestsException"
    status = 429
    default_message = "Too many requests"


class ServiceError(FaasError):
    code = "ServiceException"
    status = 500
    default_message = "Service encountered an internal error"


class InvalidRuntime(FaasError):
    code = "InvalidRuntimeException"
    status = 502
    default_message = "The runtime or runtime version specified is not supported"


_BY_CODE: dict[str, type[FaasError]] = {
    cls.code: cls
    for cls in (
        InvalidParameterValue,
        InvalidRequestContent,
        ValidationError,
        RequestTooLarge,
        InvalidInvokeCaller,
        AccessDenied,
        ResourceNotFound,
        MethodNotAllowed,
        ResourceConflict,
        TooManyRequests,
        ServiceError,
        InvalidRuntime,
    )
}


def error_from_dict(body: Any, status: int | None = None) -> FaasError:
    """Rebuild the error another service sent (for clients of stubs, funclet, controller).

    A known Code gives its class; an unknown one keeps its Code, Status and Message on a FaasError.
    A body that is not an error object gives a ServiceError carrying ``status``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("Code"), str):
        return ServiceError(f"unexpected error response (HTTP {status})" if status else "unexpected error response")
    cause = body.get("Cause") if isinstance(body.get("Cause"), str) else ""
    message = body.get("Message") if isinstance(body.get("Message"), str) else None
    cls = _BY_CODE.get(body["Code"])
    if cls is not None:
        return cls(cause, message=message)
    err = FaasError(cause, message=message)
    err.code = body["Code"]
    body_status = body.get("Status")
    if isinstance(body_status, int) and not isinstance(body_status, bool) and 400 <= body_status <= 599:
        err.status = body_status
    elif status is not None:
        err.status = status
    return err
