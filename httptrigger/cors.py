"""CORS as API Gateway HTTP APIs answer it: preflights answered by the gateway, and the
``Access-Control-*`` headers added to the function's answers.

Stdlib only.
"""

from __future__ import annotations

from httptrigger.config import Cors


def allowed_origin(cors: Cors, origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for ``origin``; None when it is not allowed."""
    if not origin:
        return None
    if "*" in cors.AllowOrigins:
        return "*"
    return origin if origin in cors.AllowOrigins else None


def preflight_headers(cors: Cors, origin: str | None, request_method: str,
                      request_headers: str | None) -> list[tuple[str, str]]:
    """Headers of the 204 a preflight gets; empty when the origin or method is not allowed."""
    allow = allowed_origin(cors, origin)
    if allow is None:
        return []
    methods = cors.AllowMethods
    if methods and "*" not in methods and request_method.upper() not in methods:
        return []
    out = [("Access-Control-Allow-Origin", allow)]
    if allow != "*":
        out.append(("Vary", "Origin"))
    out.append(("Access-Control-Allow-Methods", ",".join(methods) if methods else request_method.upper()))
    if request_headers:
        wanted = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        allowed = {h.lower() for h in cors.AllowHeaders}
        if "*" not in allowed and any(h not in allowed for h in wanted):
            return []
        out.append(("Access-Control-Allow-Headers", ",".join(cors.AllowHeaders) if "*" not in allowed
                    else ",".join(wanted)))
    if cors.MaxAge is not None:
        out.append(("Access-Control-Max-Age", str(cors.MaxAge)))
    if cors.AllowCredentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    return out


def response_headers(cors: Cors, origin: str | None) -> list[tuple[str, str]]:
    """Headers added to a function's answer to a cross-origin request."""
    allow = allowed_origin(cors, origin)
    if allow is None:
        return []
    out = [("Access-Control-Allow-Origin", allow)]
    if allow != "*":
        out.append(("Vary", "Origin"))
    if cors.ExposeHeaders:
        out.append(("Access-Control-Expose-Headers", ",".join(cors.ExposeHeaders)))
    if cors.AllowCredentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    return out
