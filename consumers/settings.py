"""Settings of CONTRACT §6, read from the environment and validated in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from msgspec import Struct, structs

from events.payloads import DEFAULT_MODEL


class SettingsError(ValueError):
    """One bad variable: the message names it and says what is wrong."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(raw: str) -> float:
    """`30s`, `1m`, `48h`, `250ms` or plain seconds, as seconds."""
    m = _DURATION.match(raw.strip())
    if not m:
        raise ValueError("expected a duration such as 30s, 1m or 48h")
    return float(m[1]) * _UNITS[m[2]]


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _positive_duration(raw: str) -> float:
    value = duration(raw)
    if value <= 0:
        raise ValueError("must be longer than zero")
    return value


def _text(raw: str) -> str:
    return raw.strip()


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for part in raw.split(","):
            if "://" not in part or part.strip().split("://", 1)[0] not in schemes:
                starts = ", ".join(f"{s}://" for s in schemes)
                raise ValueError(f"expected a URL starting with {starts}")
        return raw.strip()

    return parse


def _api_version(raw: str) -> str:
    if raw not in ("v1", "v1beta", "v1alpha"):
        raise ValueError("expected v1, v1beta or v1alpha")
    return raw


def _model(raw: str) -> str:
    if not re.fullmatch(r"(models/)?[A-Za-z0-9][A-Za-z0-9._-]*", raw):
        raise ValueError("expected a model name such as gemini-embedding-001")
    return raw.removeprefix("models/")


@dataclass(frozen=True)
class Var:
    env: str
    field: str
    default: str | None
    parse: Callable[[str], Any]
    help: str


VARS: tuple[Var, ...] = (
    Var("NATS_URL", "nats_url", "nats://127.0.0.1:4222", _url("nats", "tls", "ws", "wss"),
        "NATS server URL(s), comma-separated for a cluster"),
    Var("NATS_CREDS", "nats_creds", None, _text, "NATS credentials file"),
    Var("NATS_USER", "nats_user", None, _text, "NATS user (with NATS_PASSWORD)"),
    Var("NATS_PASSWORD", "nats_password", None, _text, "NATS password"),
    Var("NATS_PASSWORD_FILE", "nats_password_file", None, _text,
        "a file holding the NATS password (a mounted Secret; wins over NATS_PASSWORD)"),
    Var("NATS_TLS_CA", "nats_tls_ca", None, _text, "CA file for TLS to NATS"),
    Var("DATABASE_URL", "database_url", "postgresql://127.0.0.1:5432/batchyard",
        _url("postgresql", "postgres"), "PostgreSQL DSN"),
    Var("GEMINI_API_KEY", "gemini_api_key", None, _text,
        "the Gemini API key (never logged; prefer GEMINI_API_KEY_FILE)"),
    Var("GEMINI_API_KEY_FILE", "gemini_api_key_file", None, _text,
        "a file holding the key, re-read when it changes"),
    Var("GEMINI_BASE_URL", "gemini_base_url", None, _url("http", "https"),
        "Gemini API base URL (unset: the real API)"),
    Var("GEMINI_API_VERSION", "gemini_api_version", "v1beta", _api_version,
        "API version of the batch and file endpoints"),
    Var("BATCHYARD_MODEL", "model", DEFAULT_MODEL, _model,
        "model for messages naming none, and for the key check"),
    Var("BATCHYARD_POLL_INTERVAL", "poll_interval", "30s", _positive_duration,
        "delay between polls of a running job"),
    Var("BATCHYARD_KEY_CHECK_INTERVAL", "key_check_interval", "1m", _positive_duration,
        "period of the key health check"),
    Var("BATCHYARD_AUTH_RECOVERY_ENABLED", "auth_recovery_enabled", "true", boolean,
        "replay parked messages on key.valid"),
    Var("BATCHYARD_MAX_ITEM_ATTEMPTS", "max_item_attempts", "3", _int(1, 100),
        "attempts an item gets in all, the first included"),
    Var("BATCHYARD_CONCURRENCY", "concurrency", "8", _int(1, 1024),
        "messages in flight per consumer per pod"),
    Var("BATCHYARD_ONLINE_THRESHOLD", "online_threshold", "10", _int(0, 10_000),
        "batches with at most this many items are embedded online"),
    Var("BATCHYARD_FALLBACK_TO_ONLINE", "fallback_to_online", "true", boolean,
        "embed online when the Batch API fails a batch twice"),
    Var("BATCHYARD_MAX_WAIT", "max_wait", "48h", _positive_duration,
        "a job unfinished after this is cancelled and re-submitted"),
    Var("BATCHYARD_HTTP_PORT", "http_port", "8080", _int(0, 65535),
        "port of /healthz, /readyz and /metrics (0: none)"),
    Var("BATCHYARD_MAX_ACTIVE_JOBS", "max_active_jobs", "100", _int(1, 100_000),
        "Gemini batch jobs in flight at once across all pods"),
    Var("BATCHYARD_MAX_ENQUEUED_TOKENS", "max_enqueued_tokens", "0", _int(0, 10**12),
        "estimated input tokens of all unfinished jobs of a model (0: no limit)"),
    Var("BATCHYARD_MAX_JOB_TOKENS", "max_job_tokens", "1000000", _int(1, 10**12),
        "a batch estimated above this is split into shards"),
    Var("BATCHYARD_QUOTA_COOLDOWN", "quota_cooldown", "1m", _positive_duration,
        "wait after a 429 on batch creation with no RetryInfo"),
    Var("BATCHYARD_QUOTA_COOLDOWN_MAX", "quota_cooldown_max", "15m", _positive_duration,
        "the longest that wait doubles to"),
    Var("BATCHYARD_DRAIN_TIMEOUT", "drain_timeout", "20s", _positive_duration,
        "on SIGTERM, how long in-flight work may finish before it is nak'ed"),
    Var("BATCHYARD_GEMINI_TIMEOUT", "gemini_timeout", "60s", _positive_duration,
        "timeout of one Gemini API call"),
    Var("BATCHYARD_LOG_LEVEL", "log_level", "info", _text, "debug, info, warning or error"),
    Var("BATCHYARD_FILE_SWEEP_INTERVAL", "file_sweep_interval", "10m", _positive_duration,
        "period of the poll role's sweep for input files of finished jobs"),
    Var("BATCHYARD_NORMALIZE", "normalize", "true", boolean,
        "store unit-length vectors (the API's are unit length only at 3072 dims)"),
    Var("BATCHYARD_INLINE_MAX_ITEMS", "inline_max_items", "500", _int(1, 100_000),
        "a job goes inline only with at most this many requests (and at most 1 MiB)"),
    Var("BATCHYARD_REUSE_EMBEDDINGS", "reuse_embeddings", "true", boolean,
        "copy a stored vector for a text already embedded (same model, dims, task type)"
        " instead of paying for it again"),
    Var("BATCHYARD_PACK_WAIT", "pack_wait", "20s", duration,
        "small batches share one job, sealed this long after its first joined (0: off)"),
)


_SECRET = frozenset({"GEMINI_API_KEY", "NATS_PASSWORD"})


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything batchyard reads from its environment."""

    nats_url: str
    nats_creds: str | None
    nats_user: str | None
    nats_password: str | None
    nats_password_file: str | None
    nats_tls_ca: str | None
    database_url: str
    gemini_api_key: str | None
    gemini_api_key_file: str | None
    gemini_base_url: str | None
    gemini_api_version: str
    model: str
    poll_interval: float
    key_check_interval: float
    auth_recovery_enabled: bool
    max_item_attempts: int
    concurrency: int
    online_threshold: int
    fallback_to_online: bool
    max_wait: float
    http_port: int
    max_active_jobs: int
    max_enqueued_tokens: int
    max_job_tokens: int
    quota_cooldown: float
    quota_cooldown_max: float
    drain_timeout: float
    gemini_timeout: float
    log_level: str
    file_sweep_interval: float
    normalize: bool
    inline_max_items: int
    reuse_embeddings: bool
    pack_wait: float

    def __repr__(self) -> str:
        hidden = {"gemini_api_key", "nats_password"}
        shown = ", ".join(
            f"{k}={'***' if k in hidden and v else v!r}" for k, v in structs.asdict(self).items()
        )
        return f"Settings({shown})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable of `VARS`; the first bad one raises SettingsError."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var in VARS:
            raw = env.get(var.env)
            if raw is None or raw == "":
                values[var.field] = None if var.default is None else var.parse(var.default)
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as exc:
                shown = "" if var.env in _SECRET else f"={raw!r}"
                raise SettingsError(f"{var.env}{shown}: {exc}") from None
        if values["log_level"] not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"BATCHYARD_LOG_LEVEL={values['log_level']!r}: "
                                "expected debug, info, warning or error")
        if values["quota_cooldown_max"] < values["quota_cooldown"]:
            raise SettingsError("BATCHYARD_QUOTA_COOLDOWN_MAX: must not be shorter than "
                                "BATCHYARD_QUOTA_COOLDOWN")
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return structs.replace(self, **changes)


def describe() -> str:
    """Every variable with its default and meaning, for `batchyard --help`."""
    width = max(len(v.env) for v in VARS)
    lines = ["environment:"]
    for v in VARS:
        default = "" if v.default is None else f" (default {v.default})"
        lines.append(f"  {v.env:<{width}}  {v.help}{default}")
    return "\n".join(lines)
