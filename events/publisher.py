"""Publishing with a Nats-Msg-Id, retried with the same id until the stream acknowledges."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from events.payloads import encode

# NoStreamResponseError: no stream leader yet (an election in a cluster).
_TRANSIENT = (NatsTimeoutError, NoRespondersError, NoStreamResponseError,
              ServiceUnavailableError, OutboundBufferLimitError, TimeoutError, ConnectionError)


class PublishError(RuntimeError):
    """The stream did not acknowledge within the time allowed."""


async def publish(js: JetStreamContext, subject: str, payload: Any, msg_id: str, *,
                  headers: dict[str, str] | None = None, budget: float = 30.0,
                  timeout: float = 5.0) -> PubAck:
    """Publish `payload` (a Struct, or bytes) and wait for the PubAck.

    A lost ack (leader election, reconnect) is retried with the same id, so the stream's
    duplicate window drops the copy if the first one did land.
    """
    data = payload if isinstance(payload, bytes) else encode(payload)
    hdrs = {"Nats-Msg-Id": msg_id, **(headers or {})}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = 0.05
    while True:
        try:
            return await js.publish(subject, data, timeout=timeout, headers=hdrs)
        except _TRANSIENT as exc:
            last: Exception = exc
        except APIError as exc:
            if exc.code is not None and exc.code < 500 and exc.code != 503:
                raise
            last = exc
        except ConnectionClosedError:
            raise
        if loop.time() + delay > deadline:
            raise PublishError(f"no ack for {subject} ({msg_id}) within {budget:.0f}s: {last!r}")
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, 2.0)
