"""The environment variables Lambda gives a function's runtime, derived from its configuration.

One place for the names and values Lambda defines (reserved: ``AWS_LAMBDA_FUNCTION_*``,
``AWS_LAMBDA_LOG_*_NAME``, ``_HANDLER``, ``LAMBDA_TASK_ROOT``, ``LAMBDA_RUNTIME_DIR``,
``AWS_REGION``, ``AWS_DEFAULT_REGION``; the unreserved ``TZ``; the log format and level only as the function chose them).
``AWS_EXECUTION_ENV`` comes with the runtime configuration (``runner prepare`` knows the
interpreter's version) and is absent for custom runtimes, as in Lambda. The funclet calls
:func:`lambda_variables` where it builds a function's environment. Stdlib only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

TASK_ROOT = "/var/task"
RUNTIME_DIR = "/var/runtime"
LOG_GROUP_PREFIX = "/aws/lambda/"
# Lambda's advanced logging controls: set by the platform, but a function may choose them.
LOG_FORMAT = "AWS_LAMBDA_LOG_FORMAT"
LOG_LEVEL = "AWS_LAMBDA_LOG_LEVEL"


def region_of(function_brn: str) -> str:
    """The region part of a BRN (``brn:<partition>:faas:<region>:...``); ``""`` when there is none."""
    parts = function_brn.split(":")
    return parts[3] if len(parts) > 3 else ""


def log_stream_name(function_version: str, when: float | None = None, instance: str | None = None) -> str:
    """Lambda's stream name: ``YYYY/MM/DD/[<version>]<32 hex>``, one per runtime instance."""
    # secrets (with hmac, hashlib and OpenSSL) is imported here, not at the top: the zygote imports
    # this module through the runner, and only the funclet names streams.
    import secrets

    day = time.strftime("%Y/%m/%d", time.gmtime(time.time() if when is None else when))
    return f"{day}/[{function_version}]{instance or secrets.token_hex(16)}"


def lambda_variables(*, function_name: str, function_version: str, memory_size_mb: int, handler: str,
                     function_brn: str = "", user_variables: Mapping[str, str] = {}) -> dict[str, str]:
    """Lambda's variables for one runtime instance, to be laid over the function's own variables.

    Reserved names always take Lambda's value; the unreserved ones (``TZ``, the log format) only
    when the function did not set them itself.
    """
    variables = {
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": function_version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_size_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": LOG_GROUP_PREFIX + function_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(function_version),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "LAMBDA_RUNTIME_DIR": RUNTIME_DIR,
    }
    region = region_of(function_brn)
    if region:
        variables["AWS_REGION"] = variables["AWS_DEFAULT_REGION"] = region
    variables["TZ"] = user_variables.get("TZ") or ":UTC"
    for name in (LOG_FORMAT, LOG_LEVEL):
        if user_variables.get(name):
            variables[name] = user_variables[name]
    return variables
