"""structlog set up once: JSON lines off a TTY, console lines on one, keys redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_KEY_SHAPE = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
_secrets: set[str] = set()
_encoder = msgspec.json.Encoder()


def add_secret(value: str) -> None:
    """Redact this exact value from every log line from now on."""
    if len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _KEY_SHAPE.sub("[redacted]", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact(v)
        elif not isinstance(v, int | float | bool | type(None)):
            event[k] = redact(str(v))
    return event


def _dumps(obj: Any, default: Any = None) -> str:
    # structlog's JSONRenderer passes default=; msgspec wants enc_hook=.
    return _encoder.encode(obj).decode()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and route stdlib logging (nats, asyncpg, google) through it."""
    json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps) if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StdlibFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


class _StdlibFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        return _encoder.encode({"event": text, "logger": record.name,
                                "level": record.levelname.lower()}).decode()


get_logger = structlog.get_logger
