"""Every error a Gemini call meets, classified once.

auth (CONTRACT §7) → AuthError; 429, 408, 5xx, timeouts, connection resets →
RetryableError (with the server's RetryInfo delay when given); everything else →
PermanentError. No other module looks at an error's text.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pydantic
from google.genai import errors as genai_errors

from consumers import logs
from consumers.errors import AuthError, BatchyardError, PermanentError, RetryableError

try:
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - the SDK's transport ships with it
    import httpx as _httpx  # type: ignore[no-redef]

_KEY_REASONS = {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "CONSUMER_SUSPENDED",
                "SERVICE_DISABLED", "API_KEY_HTTP_REFERRER_BLOCKED", "API_KEY_IP_ADDRESS_BLOCKED"}
# 403s without an ErrorInfo that are about the key rather than one resource.
_KEY_403 = re.compile(r"API key|unregistered callers|Consumer .* has been suspended", re.I)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")
_TRANSIENT = (TimeoutError, ConnectionError, aiohttp.ClientError, _httpx.TransportError)


def _details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details if isinstance(exc.details, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    found = err.get("details") if isinstance(err, dict) else None
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for d in details:
        if str(d.get("@type", "")).endswith("RetryInfo"):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return float(m[1])
    return None


def classify(exc: BaseException) -> BatchyardError:
    """Map any exception raised by a Gemini call to one of the three branches."""
    if isinstance(exc, BatchyardError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code, status = int(exc.code or 0), exc.status
        message = logs.redact(str(exc.message or status or code))
        details = _details(exc)
        reasons = {str(d.get("reason")) for d in details
                   if str(d.get("@type", "")).endswith("ErrorInfo")}
        if code == 401 or (code == 400 and "API_KEY_INVALID" in reasons):
            return AuthError(message, code=code, status=status)
        if code == 403 and (reasons & _KEY_REASONS or (not reasons and _KEY_403.search(message))):
            return AuthError(message, code=code, status=status)
        if code == 429:
            return RetryableError(message, delay=_retry_delay(details), quota=True,
                                  code=code, status=status)
        if code == 408 or code >= 500:
            return RetryableError(message, delay=_retry_delay(details), code=code, status=status)
        return PermanentError(message, code=code, status=status)
    if isinstance(exc, _TRANSIENT):
        return RetryableError(f"{type(exc).__name__}: {logs.redact(str(exc))}")
    if isinstance(exc, pydantic.ValidationError):
        return PermanentError(f"unexpected response shape: {exc.error_count()} errors")
    return PermanentError(f"{type(exc).__name__}: {logs.redact(str(exc))}")


def outcome(err: BatchyardError) -> str:
    return {AuthError: "auth", RetryableError: "retryable"}.get(type(err), "permanent")
