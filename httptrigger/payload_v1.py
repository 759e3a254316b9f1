"""The payload format 1.0 event: the REST API proxy shape, as HTTP APIs send it with version 1.0.

``headers`` and ``queryStringParameters`` hold the last value of each name, ``multiValueHeaders``
and ``multiValueQueryStringParameters`` every value; header names lower-cased (HTTP API); empty
maps and an absent body are ``null``; binary bodies base64.

Stdlib only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from httptrigger.payload_v2 import DEFAULT_STAGE, encode_body
from httptrigger.request import HttpRequest, clf_time

VERSION = "1.0"


def build_event(request: HttpRequest, *, account_id: str, resource: str, route_key: str,
                raw_path: str | None = None, path_parameters: dict[str, str] | None = None,
                api_id: str | None = None, stage: str = DEFAULT_STAGE) -> dict[str, Any]:
    """The event for ``request`` matched to the route template ``resource``."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for lower, value in request.forwarded:
        headers[lower] = value
        multi_headers.setdefault(lower, []).append(value)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for key, value in parse_qsl(request.raw_query, keep_blank_values=True):
        query[key] = value
        multi_query.setdefault(key, []).append(value)
    path = request.raw_path if raw_path is None else raw_path
    domain = request.host()
    prefix = domain.split(".", 1)[0]
    body, is_b64 = encode_body(request)
    user_agent = headers.get("user-agent", "")
    return {
        "version": VERSION,
        "resource": resource,
        "path": path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "requestContext": {
            "accountId": account_id,
            "apiId": api_id or prefix,
            "authorizer": {"claims": None, "scopes": None},
            "domainName": domain,
            "domainPrefix": prefix,
            "extendedRequestId": request.request_id,
            "httpMethod": request.method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": request.source_ip,
                "user": None,
                "userAgent": user_agent,
                "userArn": None,
                "clientCert": None,
            },
            "path": path,
            "protocol": request.protocol,
            "requestId": request.request_id,
            "requestTime": clf_time(request.time_epoch_ms),
            "requestTimeEpoch": request.time_epoch_ms,
            "resourceId": route_key,
            "resourcePath": resource,
            "stage": stage,
        },
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": is_b64,
    }
