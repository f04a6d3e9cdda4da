"""Error classification at the Gemini boundary, and the runtime's backoff (pure logic)."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
from google.genai import errors

from consumers.batch.results import check_vector
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.gemini.classify import classify
from consumers.runtime import BACKOFF, backoff

INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _err(code: int, status: str, message: str, details: list[dict] | None = None
         ) -> errors.APIError:
    body: dict = {"error": {"code": code, "status": status, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    cls = errors.ClientError if code < 500 else errors.ServerError
    return cls(code, body)


KEY_INVALID = [{"@type": INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]

CASES = [
    (_err(400, "INVALID_ARGUMENT", "API key expired. Please renew the API key.", KEY_INVALID), AuthError),
    (_err(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", KEY_INVALID), AuthError),
    (_err(403, "PERMISSION_DENIED", "Your API key was reported as leaked. Please use another API key."), AuthError),
    (_err(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity)."), AuthError),
    (_err(403, "PERMISSION_DENIED", "Requests to this API are blocked.", [{"@type": INFO, "reason": "API_KEY_SERVICE_BLOCKED"}]), AuthError),
    (_err(403, "PERMISSION_DENIED", "Permission denied: Consumer 'api_key:x' has been suspended.", [{"@type": INFO, "reason": "CONSUMER_SUSPENDED"}]), AuthError),
    (_err(403, "PERMISSION_DENIED", "You do not have permission to access the File abc or it may not exist."), PermanentError),
    (_err(400, "INVALID_ARGUMENT", "* GetFileRequest.name: File ID cannot be more than 40 characters."), PermanentError),
    (_err(404, "NOT_FOUND", "models/nope is not found"), PermanentError),
    (_err(429, "RESOURCE_EXHAUSTED", "quota"), RetryableError),
    (_err(500, "INTERNAL", "internal"), RetryableError),
    (_err(503, "UNAVAILABLE", "The model is overloaded."), RetryableError),
    (_err(408, "DEADLINE_EXCEEDED", "slow"), RetryableError),
    (TimeoutError(), RetryableError),
    (ConnectionResetError(), RetryableError),
    (aiohttp.ServerDisconnectedError(), RetryableError),
    (ValueError("odd"), PermanentError),
]


@pytest.mark.parametrize(("exc", "kind"), CASES, ids=[f"{i}-{c[1].__name__}" for i, c in enumerate(CASES)])
def test_classify(exc: BaseException, kind: type) -> None:
    """Each real error body lands in exactly the branch CONTRACT §7 says."""
    assert type(classify(exc)) is kind


def test_retry_info_delay_is_kept() -> None:
    """A 429's RetryInfo delay is carried to the retry."""
    err = classify(_err(429, "RESOURCE_EXHAUSTED", "quota", [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"}]))
    assert isinstance(err, RetryableError) and err.delay == 47.0 and err.quota
    assert classify(_err(429, "RESOURCE_EXHAUSTED", "quota")).delay is None  # type: ignore[attr-defined]


def test_auth_error_keeps_code_status_message() -> None:
    """An auth error carries the API's code, status and message for the parked record."""
    err = classify(_err(400, "INVALID_ARGUMENT", "API key expired. Please renew the API key.", KEY_INVALID))
    d = err.detail()
    assert (d.code, d.status, d.message) == (400, "INVALID_ARGUMENT", "API key expired. Please renew the API key.")


def test_backoff_follows_the_contract_and_server_wins() -> None:
    """Delays grow 1 2 4 … 60 s with jitter within ±25 %; a server delay wins."""
    for n, base in enumerate(BACKOFF, 1):
        for _ in range(20):
            assert base * 0.75 <= backoff(n) <= base * 1.25
    assert 45 <= backoff(50) <= 75
    assert backoff(1, 12.5) == 12.5


@pytest.mark.parametrize(("values", "dims", "ok"), [
    ([0.6, 0.8], 2, True),
    ([0.6, 0.8], 3, False),
    ([float("nan"), 1.0], 2, False),
    ([float("inf"), 1.0], 2, False),
    ([0.0, 0.0], 2, False),
    ([], None, False),
    ([1.0] * 7, None, True),
])
def test_check_vector(values: list[float], dims: int | None, ok: bool) -> None:
    """Only finite, non-zero vectors of the requested length are stored."""
    assert (check_vector(np.asarray(values, dtype=np.float32), dims) is None) is ok
