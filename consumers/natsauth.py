"""Who a pod is on NATS, and a clear refusal when the server will not have it.

nats-py retries a refused CONNECT forever when reconnects are unlimited, logging a stack
trace each time; a wrong password is a mistake no retry mends, so before the first
connection succeeds it ends the start-up with one line instead.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS

from consumers.settings import Settings
from events.permissions import inbox_prefix

log = structlog.get_logger("batchyard")

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_REFUSED = ("authorization violation", "authentication", "user authentication expired")


class StartupError(Exception):
    """A server refused this pod's credentials or certificate: fix the setting named."""


def password(settings: Settings) -> str:
    """NATS_PASSWORD, or the first line of NATS_PASSWORD_FILE (a mounted Secret)."""
    if settings.nats_password_file:
        try:
            return Path(settings.nats_password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise StartupError(f"NATS_PASSWORD_FILE={settings.nats_password_file!r}: "
                               f"cannot read a password ({exc.__class__.__name__})") from None
    return settings.nats_password or ""


def auth_options(settings: Settings) -> dict[str, Any]:
    """Credentials, reply inbox and TLS for nats.connect."""
    kwargs: dict[str, Any] = {}
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = password(settings)
        # The authorization config lets each user subscribe only to its own inbox.
        if _TOKEN.fullmatch(settings.nats_user):
            kwargs["inbox_prefix"] = inbox_prefix(settings.nats_user)
    if settings.nats_tls_ca:
        try:
            kwargs["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)
        except OSError as exc:
            raise StartupError(f"NATS_TLS_CA={settings.nats_tls_ca!r}: {exc}") from None
    return kwargs


def _refused(exc: BaseException) -> bool:
    return any(s in str(exc).lower() for s in _REFUSED)


async def connect(kwargs: dict[str, Any]) -> NATS:
    """nats.connect, except that a refusal before the first connection raises
    StartupError, and later refusals (a password rotated on the server) log one line."""
    refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    user = kwargs.get("user") or ("credentials file" if "user_credentials" in kwargs else None)

    async def on_error(exc: Exception) -> None:
        if _refused(exc) or isinstance(exc, ssl.SSLError):
            if not refused.done():
                refused.set_result(exc)
            log.error("nats.refused", user=user, error=str(exc))
        else:
            log.warning("nats.error", error=repr(exc))

    kwargs.setdefault("error_cb", on_error)
    task = asyncio.ensure_future(nats.connect(**kwargs))
    waiters: set[asyncio.Future[Any]] = {task, refused}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is None:
        await task.result().close()
    exc = refused.result()
    who = f" as {user}" if user else ""
    if isinstance(exc, ssl.SSLError):
        raise StartupError(f"NATS TLS{who} failed: {exc} (check NATS_TLS_CA)")
    raise StartupError(f"NATS refused the connection{who}: {str(exc).removeprefix('nats: ')} "
                       "(check NATS_USER and NATS_PASSWORD / NATS_PASSWORD_FILE)")
