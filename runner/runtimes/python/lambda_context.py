"""The ``context`` argument of a Python handler: Lambda's ``LambdaContext``.

Fields and their sources follow AWS's Python runtime interface client: the request id, ARN,
deadline, client context and Cognito identity come with each invocation (the frame), the
function's name, version, memory size and log names from the environment. Stdlib only.
"""

from __future__ import annotations

import json

import sys
import time
from typing import Any, Mapping

from runner.runtimes.python.errors import CONTEXT_UNMARSHAL_ERROR, LambdaError, make_error


class CognitoIdentity:
    """``context.identity``: always present, both ids None when the caller sent none."""

    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id: str | None = None, pool_id: str | None = None) -> None:
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id

    def __repr__(self) -> str:
        return (f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
                f"cognito_identity_pool_id={self.cognito_identity_pool_id}])")


class Client:
    """``context.client_context.client``: the calling mobile app."""

    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, client: Mapping[str, Any]) -> None:
        self.installation_id = client.get("installation_id")
        self.app_title = client.get("app_title")
        self.app_version_name = client.get("app_version_name")
        self.app_version_code = client.get("app_version_code")
        self.app_package_name = client.get("app_package_name")


class ClientContext:
    """``context.client_context``: None, or the caller's ``client``, ``custom`` and ``env``."""

    __slots__ = ("custom", "env", "client")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.custom = data.get("custom")
        self.env = data.get("env")
        client = data.get("client")
        self.client = Client(client) if isinstance(client, Mapping) else None


class FunctionIdentity:
    """What every invocation's context shares: read once from the runtime's environment."""

    __slots__ = ("function_name", "function_version", "function_arn", "memory_limit_in_mb",
                 "log_group_name", "log_stream_name", "timeout_s")

    def __init__(self, env: Mapping[str, str]) -> None:
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("EASYFAAS_FUNCTION_NAME", "")
        self.function_version = (env.get("AWS_LAMBDA_FUNCTION_VERSION") or env.get("EASYFAAS_FUNCTION_VERSION")
                                 or "$LATEST")
        self.function_arn = env.get("EASYFAAS_FUNCTION_BRN", "")
        self.memory_limit_in_mb = _int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or env.get("EASYFAAS_MEMORY_SIZE"),
                                       128)
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME") or f"/aws/lambda/{self.function_name}"
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.timeout_s = _int(env.get("EASYFAAS_TIMEOUT"), 3)


class LambdaContext:
    """The ``context`` argument, as Lambda's Python runtime makes it.

    ``aws_request_id`` is the invocation's request id (what the caller got back in
    ``X-easyfaas-Request-Id``); ``request_id`` is the same, kept for handlers written for EasyFaaS.
    """

    __slots__ = ("aws_request_id", "request_id", "function_name", "function_version", "invoked_function_arn",
                 "memory_limit_in_mb", "log_group_name", "log_stream_name", "identity", "client_context",
                 "tenant_id", "_deadline_ms")

    def __init__(self, function: FunctionIdentity, request_id: str, deadline_ms: int, function_arn: str = "",
                 client_context: str = "", identity: str = "") -> None:
        self.aws_request_id = request_id
        self.request_id = request_id
        self.function_name = function.function_name
        self.function_version = function.function_version
        self.invoked_function_arn = function_arn or function.function_arn
        self.memory_limit_in_mb = function.memory_limit_in_mb
        self.log_group_name = function.log_group_name
        self.log_stream_name = function.log_stream_name
        self.identity = _identity(identity)
        self.client_context = _client_context(client_context)
        self.tenant_id = None
        self._deadline_ms = deadline_ms if deadline_ms > 0 else int(time.time() * 1000) + function.timeout_s * 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, message: Any) -> None:
        sys.stdout.write(str(message))

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},log_group_name={self.log_group_name},"
                f"log_stream_name={self.log_stream_name},function_name={self.function_name},"
                f"memory_limit_in_mb={self.memory_limit_in_mb},function_version={self.function_version},"
                f"invoked_function_arn={self.invoked_function_arn},client_context={self.client_context},"
                f"identity={self.identity}])")


def _identity(text: str) -> CognitoIdentity:
    if not text:
        return CognitoIdentity()
    data = _json_object(text, "Cognito Identity")
    return CognitoIdentity(data.get("cognitoIdentityId"), data.get("cognitoIdentityPoolId"))


def _client_context(text: str) -> ClientContext | None:
    return ClientContext(_json_object(text, "Client Context")) if text else None


def _json_object(text: str, what: str) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LambdaError(make_error(f"Unable to parse {what} JSON: {exc}", CONTEXT_UNMARSHAL_ERROR)) from None
    return data if isinstance(data, Mapping) else {}


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


