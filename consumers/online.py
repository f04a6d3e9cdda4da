"""Online embeddings (batchEmbedContents): small batches, and the Batch API's fallback.

Calls go 100 texts at a time, a few at once, each text its own request (so its own
vector, on gemini-embedding-2 too); an answer with a different count fails that call's
items for this attempt. A retryable error retries that call in place with backoff (the
server's RetryInfo delay wins) within a small budget, then gives up to the message's own
redelivery.
"""

from __future__ import annotations

import asyncio

import structlog

from consumers import metrics
from consumers._runtime import backoff
from consumers.app import App
from consumers.errors import RetryableError
from consumers.inputs import Input

log = structlog.get_logger("batchyard.online")
CHUNK = 100  # batchEmbedContents' per-call limit
PARALLEL = 4
TRIES = 4
MAX_IN_PLACE_DELAY = 30.0


async def embed_online(app: App, inp: Input) -> list[list[float] | None]:
    """One vector (or None) per item of `inp`, in order."""
    texts = [item.text for item in inp.items]
    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]
    out: list[list[list[float] | None]] = [[] for _ in chunks]
    gate = asyncio.Semaphore(PARALLEL)
    config = inp.embed_config()

    async def one(n: int) -> None:
        async with gate:
            for attempt in range(1, TRIES + 1):
                try:
                    got = await app.gemini.embed(inp.model, chunks[n], config)
                    break
                except RetryableError as exc:
                    delay = backoff(attempt, exc.delay)
                    if attempt == TRIES or delay > MAX_IN_PLACE_DELAY:
                        raise
                    metrics.RETRIES.labels("online", "quota" if exc.quota else "transient").inc()
                    log.info("online.retry", error=exc.message, delay=round(delay, 2))
                    await asyncio.sleep(delay)
            if len(got) != len(chunks[n]):
                # Which answer is whose cannot be told: none is stored, and every item
                # of the call fails this attempt and goes round (CONTRACT §8).
                log.warning("online.count_mismatch", texts=len(chunks[n]), vectors=len(got))
                got = [None] * len(chunks[n])
            out[n] = list(got)

    try:
        async with asyncio.TaskGroup() as tg:
            for n in range(len(chunks)):
                tg.create_task(one(n))
    except ExceptionGroup as group:
        # One classified error (auth, retryable, permanent) is what the runtime maps;
        # the siblings cancelled with it say nothing more.
        raise group.exceptions[0] from None
    return [v for chunk in out for v in chunk]
