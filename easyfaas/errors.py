"""Platform errors and their JSON body, shared by every public HTTP service.

Body, key order as in the Go original: ``{"Code","Cause","Message","Status","Type"}``; ``Cause`` is
left out when empty, ``Type`` is ``User`` for 4xx and ``Server`` for 5xx. :meth:`FaasError.to_dict`
is the only builder of that body and :func:`error_from_dict` the only reader of one: every code the
pod emits or may receive has its class here, and a code it has no class for (a peer's, or an HTTP
status aiohttp raised) is an :class:`UnknownCodeError` made by :meth:`FaasError.of`.

Function errors and function timeouts are not FaasErrors: they are results of the function
(``easyfaas.frames.FunctionError``). No aiohttp here, so clients and stdlib-only code can use it too.
"""

from __future__ import annotations

import json
from typing import Any


class FaasError(Exception):
    """Base of all platform errors; subclasses fix ``code``, ``status`` and the default message.

    ``status`` may be given for the few codes answered with more than one status (an unparsable
    request is a 400 or a 431, say); otherwise it is the class's.
    """

    code: str = "ServiceException"
    status: int = 500
    default_message: str = "Service encountered an internal error"

    def __init__(self, cause: str = "", *, message: str | None = None, status: int | None = None) -> None:
        self.cause = cause or ""
        self.message = message if message is not None else self.default_message
        if status is not None:
            self.status = status
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

    def to_json(self) -> bytes:
        """:meth:`to_dict` as the UTF-8 JSON of a response body."""
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()

    @staticmethod
    def of(code: str, status: int | None = None, message: str | None = None, cause: str = "") -> FaasError:
        """The error named by ``code``: an instance of its class when there is one, else an
        UnknownCodeError keeping ``code``. ``status`` None means the class's (500 for an unknown code)."""
        cls = _BY_CODE.get(code)
        if cls is not None:
            return cls(cause, message=message, status=status)
        return UnknownCodeError(code, 500 if status is None else status, cause, message=message)


class UnknownCodeError(FaasError):
    """An error whose code has no class here: a peer's (a newer service's), or an HTTP error that
    aiohttp raised (``BadRequestException`` for a 400, say). Code and status are the instance's."""

    def __init__(self, code: str, status: int, cause: str = "", *, message: str | None = None) -> None:
        self.code = code
        super().__init__(cause, message=message, status=status if 400 <= status <= 599 else 500)


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


class Unauthenticated(FaasError):
    """No API key, or one that is unknown, malformed or revoked (answered with ``WWW-Authenticate: Bearer``)."""

    code = "UnauthenticatedException"
    status = 401
    default_message = "A valid API key is required: Authorization: Bearer <key>"


class Forbidden(FaasError):
    """A valid key that may not do this: another account's resource, or an admin-only route."""

    code = "ForbiddenException"
    status = 403
    default_message = "The API key may not do this"


class OutboundRefused(FaasError):
    """A destination the pod would reach on a caller's behalf is loopback, link-local or its own."""

    code = "OutboundRefusedException"
    status = 403
    default_message = "The destination may not be reached from the pod"


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


class InvalidRequest(FaasError):
    """An HTTP request the server cannot parse (bad framing, huge headers, upgrades on the invoke
    route); answered before any handler runs, with the parser's status."""

    code = "InvalidRequestException"
    status = 400
    default_message = "The request could not be parsed"


class AccountProblem(FaasError):
    code = "AccountProblemException"
    status = 403
    default_message = "There is a problem with your account"


class NotImplementedFeature(FaasError):
    code = "NotImplementedException"
    status = 500
    default_message = "this method is not implemented"


class BadGateway(FaasError):
    """A daemon in front of another (the HTTP trigger before the controller) could not reach it."""

    code = "BadGatewayException"
    status = 502
    default_message = "Bad Gateway"


class ServiceUnavailable(FaasError):
    code = "ServiceUnavailableException"
    status = 503
    default_message = "The service is unavailable"


class RequestTimeout(FaasError):
    """A service did not answer in time (the original's funclet timeout filter)."""

    code = "RequestTimeoutException"
    status = 504
    default_message = "The request timed out"


_BY_CODE: dict[str, type[FaasError]] = {
    cls.code: cls
    for cls in (
        InvalidParameterValue,
        InvalidRequestContent,
        ValidationError,
        RequestTooLarge,
        InvalidInvokeCaller,
        AccessDenied,
        Unauthenticated,
        Forbidden,
        OutboundRefused,
        ResourceNotFound,
        MethodNotAllowed,
        ResourceConflict,
        TooManyRequests,
        ServiceError,
        InvalidRuntime,
        InvalidRequest,
        AccountProblem,
        NotImplementedFeature,
        BadGateway,
        ServiceUnavailable,
        RequestTimeout,
    )
}


def is_error_body(body: Any) -> bool:
    """True when ``body`` (parsed JSON) is a FaasError object: a dict with a string ``Code``."""
    return isinstance(body, dict) and isinstance(body.get("Code"), str)


def error_from_dict(body: Any, status: int | None = None) -> FaasError:
    """Rebuild the error another service sent (for clients of stubs, funclet, controller).

    A known Code gives its class; an unknown one keeps its Code, Status (else ``status``) and
    Message (:meth:`FaasError.of`). A body that is not an error object gives a ServiceError carrying
    ``status`` and the start of the body.
    """
    if not is_error_body(body):
        where = f" (HTTP {status})" if status else ""
        text = body if isinstance(body, str) else ("" if body is None else json.dumps(body, ensure_ascii=False))
        return ServiceError(f"unexpected error response{where}" + (f": {text[:200]}" if text else ""))
    cause = body.get("Cause") if isinstance(body.get("Cause"), str) else ""
    message = body.get("Message") if isinstance(body.get("Message"), str) else None
    body_status = body.get("Status")
    if isinstance(body_status, int) and not isinstance(body_status, bool) and 400 <= body_status <= 599:
        return FaasError.of(body["Code"], body_status, message, cause)
    cls = _BY_CODE.get(body["Code"])
    # No usable Status in the body: a known code has its own; an unknown one takes the HTTP status.
    return FaasError.of(body["Code"], None if cls is not None else status, message, cause)
