"""One root error, three branches; the runtime maps each to park, nak(delay) or term."""

from __future__ import annotations

from events.payloads import ErrorDetail


class BatchyardError(Exception):
    """Root of every error batchyard raises on purpose."""

    def __init__(self, message: str, *, code: int | None = None, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def detail(self) -> ErrorDetail:
        return ErrorDetail(code=self.code, status=self.status, message=self.message)


class AuthError(BatchyardError):
    """The API key is unusable for every call (expired, invalid, revoked, missing): park."""


class RetryableError(BatchyardError):
    """May pass later: back off (at least `delay` seconds when the server said so)."""

    def __init__(self, message: str, *, delay: float | None = None, quota: bool = False,
                 code: int | None = None, status: str | None = None):
        super().__init__(message, code=code, status=status)
        self.delay = delay
        self.quota = quota


class PermanentError(BatchyardError):
    """Will never pass as it is: dead-letter."""
