"""The invoke API's vocabulary over HTTP, defined once for callers and the controller: the original's
header names, their values (``INVOKE_TYPE_EVENT``, ``LOG_TYPE_TAIL``, ``FUNCTION_ERROR_UNHANDLED``),
the query parameters, and the platform's JSON content type. Stdlib only, so that clients (the CLI)
import it without aiohttp; easyfaas/http.py re-exports it for the services."""

from __future__ import annotations


REQUEST_ID = "X-easyfaas-Request-Id"
ACCOUNT_ID = "X-easyfaas-Account-Id"
FUNCTION_ERROR = "X-easyfaas-Function-Error"
EXEC_TIME = "X-easyfaas-Function-Exectime"
LOG_RESULT = "X-Bce-Log-Result"
#: request header (or ``?logType=``): LOG_TYPE_TAIL asks for the log tail in LOG_RESULT
LOG_TYPE = "Log-Type"
#: request header (or ``?logToBody=true``): answer a JSON envelope with the log text and payload
LOG_TO_BODY = "Log-To-Body"
INVOKE_TYPE = "X-easyfaas-Invoke-Type"

#: INVOKE_TYPE of an asynchronous invocation (answered 202 at once); compared case-insensitively
INVOKE_TYPE_EVENT = "event"
#: INVOKE_TYPE of a synchronous invocation, the default
INVOKE_TYPE_REQUEST_RESPONSE = "RequestResponse"
#: LOG_TYPE asking for the log tail; compared case-insensitively
LOG_TYPE_TAIL = "Tail"
#: FUNCTION_ERROR's value when the function failed (its error object is the body)
FUNCTION_ERROR_UNHANDLED = "Unhandled"

#: query parameters of the invoke route (and, for QUERY_QUALIFIER, of stubs' function routes)
QUERY_QUALIFIER = "Qualifier"
QUERY_LOG_TYPE = "logType"        # same as the LOG_TYPE header
QUERY_LOG_TO_BODY = "logToBody"   # same as the LOG_TO_BODY header

CONTENT_TYPE = "Content-Type"
#: content type of every JSON body the platform writes itself (errors, envelopes)
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
