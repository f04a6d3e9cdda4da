"""The error catalogue: the bodies the real Gemini API answers with, verbatim."""

from __future__ import annotations

from typing import Any

_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_LOCALIZED = "type.googleapis.com/google.rpc.LocalizedMessage"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_HELP = "type.googleapis.com/google.rpc.Help"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_SERVICE = "generativelanguage.googleapis.com"
_RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"

KEY_EXPIRED = "API key expired. Please renew the API key."
KEY_INVALID = "API key not valid. Please pass a valid API key."
KEY_LEAKED = "Your API key was reported as leaked. Please use another API key."
MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API."
)
QUOTA_EXHAUSTED = "Resource has been exhausted (e.g. check quota)."
QUOTA_EXCEEDED = (
    "You exceeded your current quota, please check your plan and billing details. For more"
    " information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    " To monitor your current usage, head to: https://ai.dev/rate-limit. "
)
OVERLOADED = "The model is overloaded. Please try again later."
INTERNAL = (
    "An internal error has occurred. Please retry or report in"
    " https://developers.generativeai.google/guide/troubleshooting"
)
DEADLINE = "Deadline expired before operation could complete."
NOT_FOUND = "Requested entity was not found."
METHOD_NOT_FOUND = "Method not found."


class ApiError(Exception):
    """An error answer: HTTP status, google.rpc status name, message, details."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body, `{"error": {code, message, status, details?}}`."""
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def invalid_argument(message: str) -> ApiError:
    """400 INVALID_ARGUMENT with `message`."""
    return ApiError(400, "INVALID_ARGUMENT", message)


def not_found(message: str = NOT_FOUND) -> ApiError:
    """404 NOT_FOUND."""
    return ApiError(404, "NOT_FOUND", message)


def method_not_found() -> ApiError:
    """404 for a path or verb the API does not serve."""
    return not_found(METHOD_NOT_FOUND)


def _bad_key(message: str) -> ApiError:
    return ApiError(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            {
                "@type": _ERROR_INFO,
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": _SERVICE},
            },
            {"@type": _LOCALIZED, "locale": "en-US", "message": message},
        ],
    )


def for_key_state(state: str) -> ApiError | None:
    """The error every call with a key in `state` gets, or None for a valid key."""
    if state == "valid":
        return None
    if state == "expired":
        return _bad_key(KEY_EXPIRED)
    if state == "revoked":
        return ApiError(403, "PERMISSION_DENIED", KEY_LEAKED)
    return _bad_key(KEY_INVALID)


def missing_key() -> ApiError:
    """403 for a call that carries no API key."""
    return ApiError(403, "PERMISSION_DENIED", MISSING_KEY)


def file_not_found(file_id: str) -> ApiError:
    """403 for a file that does not exist (the API does not say which)."""
    return ApiError(
        403,
        "PERMISSION_DENIED",
        f"You do not have permission to access the File {file_id} or it may not exist.",
    )


def file_id_too_long(request_type: str) -> ApiError:
    """400 for get/delete of a file id over 40 characters (`GetFileRequest`, ...)."""
    return invalid_argument(
        f"* {request_type}.name: File ID (name excluding 'files/') cannot be more than"
        " 40 characters.\n"
    )


def model_not_found(model: str, version: str, method: str) -> ApiError:
    """404 for a model the API does not know or that does not serve `method`."""
    return not_found(
        f"{model} is not found for API version {version}, or is not supported for {method}."
        " Call ListModels to see the list of available models and their supported methods."
    )


def _duration(seconds: float) -> str:
    # protobuf Duration JSON: whole seconds, or 3/6/9 fractional digits.
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


def rate_limited(retry_delay_s: float, model: str) -> ApiError:
    """429 for a per-minute quota, with QuotaFailure, Help and RetryInfo."""
    bare_model = model.removeprefix("models/")
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        QUOTA_EXCEEDED
        + f"\n* Quota exceeded for metric: {_SERVICE}/embed_content_requests, limit: 3000,"
        f" model: {bare_model}\nPlease retry in {retry_delay_s:g}s.",
        [
            {
                "@type": _QUOTA_FAILURE,
                "violations": [
                    {
                        "quotaMetric": f"{_SERVICE}/embed_content_requests",
                        "quotaId": "EmbedContentRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": bare_model},
                        "quotaValue": "3000",
                    }
                ],
            },
            {
                "@type": _HELP,
                "links": [
                    {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMITS_URL}
                ],
            },
            {"@type": _RETRY_INFO, "retryDelay": _duration(retry_delay_s)},
        ],
    )


def quota_exhausted() -> ApiError:
    """429 on batch creation past a project limit: no details, no RetryInfo."""
    return ApiError(429, "RESOURCE_EXHAUSTED", QUOTA_EXHAUSTED)


def enqueued_tokens_exhausted(model: str, limit: int) -> ApiError:
    """429 on batch creation past the enqueued-tokens limit: no RetryInfo."""
    bare_model = model.removeprefix("models/")
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        QUOTA_EXCEEDED
        + f"\n* Quota exceeded for metric: {_SERVICE}/batch_enqueued_tokens, limit: {limit},"
        f" model: {bare_model}",
        [
            {
                "@type": _QUOTA_FAILURE,
                "violations": [
                    {
                        "quotaMetric": f"{_SERVICE}/batch_enqueued_tokens",
                        "quotaId": "BatchEnqueuedTokensPerModelPerProject",
                        "quotaDimensions": {"model": bare_model},
                        "quotaValue": str(limit),
                    }
                ],
            },
            {
                "@type": _HELP,
                "links": [
                    {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMITS_URL}
                ],
            },
        ],
    )


SERVER_ERRORS: dict[int, tuple[str, str]] = {
    500: ("INTERNAL", INTERNAL),
    503: ("UNAVAILABLE", OVERLOADED),
    504: ("DEADLINE_EXCEEDED", DEADLINE),
}


def server_error(code: int) -> ApiError:
    """A 5xx from SERVER_ERRORS."""
    status, message = SERVER_ERRORS[code]
    return ApiError(code, status, message)


def payload_too_large(limit: int) -> ApiError:
    """400 for a request body over the limit."""
    return invalid_argument(f"Request payload size exceeds the limit: {limit} bytes.")
