"""Asynchronous invocation on the wire: Lambda's event-invoke configuration, the invocation record
the controller keeps per accepted event, and Lambda's destination invocation record.

One definition for both sides: stubs validates and stores :class:`EventInvokeConfig`, the controller
reads it back; the controller's records API answers :class:`InvocationRecord`; a destination
function receives :func:`destination_record`. Stdlib only (no aiohttp), like ``easyfaas/errors.py``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from easyfaas.brn import Brn, BrnError
from easyfaas.errors import FaasError, InvalidParameterValue

CALLBACK_URL = "X-easyfaas-Callback-Url"
CALLBACK_STATUS = "X-easyfaas-Invocation-Status"

MIN_RETRY_ATTEMPTS = 0
MAX_RETRY_ATTEMPTS = 2
DEFAULT_RETRY_ATTEMPTS = 2
MIN_EVENT_AGE = 60
MAX_EVENT_AGE = 21600
DEFAULT_EVENT_AGE = 21600
# Lambda's asynchronous payload limit (1 MB since October 2025).
MAX_EVENT_SIZE = 1 << 20


class InvocationStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self is not InvocationStatus.QUEUED and self is not InvocationStatus.RUNNING


class Condition(str, enum.Enum):
    """``requestContext.condition`` of a destination record."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"


class EventQueueFull(FaasError):
    """Over the bound of queued events (per function or in total): the enqueue is refused."""

    code = "TooManyRequestsException"
    status = 429
    default_message = "Too many queued asynchronous invocations"


class EventStoreUnavailable(FaasError):
    """The event could not be made durable (disk full, queue server down): nothing was accepted."""

    code = "EventStoreUnavailableException"
    status = 503
    default_message = "The asynchronous invocation queue cannot store the event"


def _int_field(body: dict[str, Any], key: str, low: int, high: int, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParameterValue(f"{key}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidParameterValue(f"{key}: {value} is out of range {low}-{high}")
    return value


def _destination(body: Any, key: str) -> str:
    """The destination BRN of ``OnSuccess``/``OnFailure`` ("" when absent)."""
    where = f"DestinationConfig.{key}"
    if body is None:
        return ""
    if not isinstance(body, dict):
        raise InvalidParameterValue(f"{where}: expected an object")
    unknown = set(body) - {"Destination"}
    if unknown:
        raise InvalidParameterValue(f"{where}: unknown field {sorted(unknown)[0]!r}")
    dest = body.get("Destination")
    if dest is None or dest == "":
        return ""
    if not isinstance(dest, str):
        raise InvalidParameterValue(f"{where}.Destination: expected a string")
    try:
        brn = Brn.parse(dest)
    except BrnError as exc:
        raise InvalidParameterValue(f"{where}.Destination: not a function BRN: {exc}") from None
    return str(brn)


@dataclass(frozen=True)
class EventInvokeConfig:
    """A function's ``FunctionEventInvokeConfig`` (Lambda's names and bounds)."""

    MaximumRetryAttempts: int = DEFAULT_RETRY_ATTEMPTS
    MaximumEventAgeInSeconds: int = DEFAULT_EVENT_AGE
    OnSuccess: str = ""
    OnFailure: str = ""
    LastModified: float = 0.0
    FunctionArn: str = ""

    @classmethod
    def parse(cls, body: Any, *, function_arn: str = "") -> EventInvokeConfig:
        """A PUT body, checked field by field; InvalidParameterValue names the first bad field."""
        if not isinstance(body, dict):
            raise InvalidParameterValue("the event invoke config must be a JSON object")
        unknown = set(body) - {"MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig",
                               "FunctionName", "Qualifier"}
        if unknown:
            raise InvalidParameterValue(f"{sorted(unknown)[0]}: unknown field")
        retries = _int_field(body, "MaximumRetryAttempts", MIN_RETRY_ATTEMPTS, MAX_RETRY_ATTEMPTS,
                             DEFAULT_RETRY_ATTEMPTS)
        age = _int_field(body, "MaximumEventAgeInSeconds", MIN_EVENT_AGE, MAX_EVENT_AGE, DEFAULT_EVENT_AGE)
        dest = body.get("DestinationConfig")
        on_success = on_failure = ""
        if dest is not None:
            if not isinstance(dest, dict):
                raise InvalidParameterValue("DestinationConfig: expected an object")
            unknown = set(dest) - {"OnSuccess", "OnFailure"}
            if unknown:
                raise InvalidParameterValue(f"DestinationConfig: unknown field {sorted(unknown)[0]!r}")
            on_success = _destination(dest.get("OnSuccess"), "OnSuccess")
            on_failure = _destination(dest.get("OnFailure"), "OnFailure")
        return cls(retries, age, on_success, on_failure, time.time(), function_arn)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventInvokeConfig:
        """What :meth:`to_dict` wrote (stored by stubs, or sent to the controller)."""
        config = cls.parse({k: v for k, v in data.items()
                            if k in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig")})
        last = data.get("LastModified")
        arn = data.get("FunctionArn")
        return cls(config.MaximumRetryAttempts, config.MaximumEventAgeInSeconds, config.OnSuccess,
                   config.OnFailure, float(last) if isinstance(last, (int, float)) else 0.0,
                   arn if isinstance(arn, str) else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "FunctionArn": self.FunctionArn,
            "MaximumRetryAttempts": self.MaximumRetryAttempts,
            "MaximumEventAgeInSeconds": self.MaximumEventAgeInSeconds,
            "LastModified": self.LastModified,
            "DestinationConfig": {"OnSuccess": {"Destination": self.OnSuccess} if self.OnSuccess else {},
                                  "OnFailure": {"Destination": self.OnFailure} if self.OnFailure else {}},
        }


DEFAULT_EVENT_INVOKE_CONFIG = EventInvokeConfig()


@dataclass
class InvocationRecord:
    """What the controller knows of one accepted event (``GET /v1/invocations/<id>``)."""

    RequestId: str
    FunctionArn: str
    Account: str
    Status: InvocationStatus = InvocationStatus.QUEUED
    Attempts: int = 0
    EnqueuedAt: float = 0.0
    StartedAt: float | None = None
    FinishedAt: float | None = None
    Result: str | None = None
    Error: dict[str, Any] | None = None
    LogResult: str | None = None
    DeadLetter: bool = False
    Extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "RequestId": self.RequestId,
            "FunctionArn": self.FunctionArn,
            "Status": self.Status.value,
            "Attempts": self.Attempts,
            "EnqueuedAt": iso_time(self.EnqueuedAt),
            "StartedAt": iso_time(self.StartedAt),
            "FinishedAt": iso_time(self.FinishedAt),
            "Result": self.Result,
            "Error": self.Error,
            "LogResult": self.LogResult,
        }
        body.update(self.Extra)
        return body


def iso_time(epoch: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, as Lambda writes ``timestamp``."""
    if epoch is None:
        return None
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"


def destination_record(*, request_id: str, function_arn: str, condition: Condition, invoke_count: int,
                       request_payload: Any, status_code: int | None, executed_version: str | None,
                       function_error: str | None, response_payload: Any, now: float | None = None) -> dict[str, Any]:
    """Lambda's invocation record, as a destination receives it."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_time(time.time() if now is None else now),
        "requestContext": {"requestId": request_id, "functionArn": function_arn, "condition": condition.value,
                           "approximateInvokeCount": invoke_count},
        "requestPayload": request_payload,
    }
    if status_code is not None:
        response: dict[str, Any] = {"statusCode": status_code, "executedVersion": executed_version or "$LATEST"}
        if function_error:
            response["functionError"] = function_error
        record["responseContext"] = response
        record["responsePayload"] = response_payload
    return record
