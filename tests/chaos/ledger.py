"""What a scenario published: the accepted batches the invariant accounts for, and the rest."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from events import subjects
from events.payloads import Item, SubmitRequest, encode
from events.publisher import PublishError, publish

MODELS = ("gemini-embedding-001", "gemini-embedding-2")


@dataclass
class Accepted:
    """A batch the stream acknowledged: what must be embedded, or dead-lettered."""

    batch_id: str
    model: str
    items: list[str]
    whole_batch_dead: bool = False  # only a batch-level dead letter can account for it


@dataclass
class Ledger:
    accepted: dict[str, Accepted] = field(default_factory=dict)
    invalid: dict[int, bytes] = field(default_factory=dict)  # BATCH seq -> message
    published: int = 0  # good publishes that were stored (duplicates included)
    deduplicated: int = 0  # publishes the stream's duplicate window dropped
    first_publish: float | None = None

    @property
    def items(self) -> int:
        return sum(len(a.items) for a in self.accepted.values())

    def accept(self, req: SubmitRequest) -> None:
        model = req.model.removeprefix("models/")
        ids = [i.id for i in req.items or []]
        self.accepted[req.batch_id] = Accepted(req.batch_id, model, ids,
                                               whole_batch_dead=req.items is None)


def good_batch(batch_id: str, rng: random.Random, max_items: int, *,
               model: str | None = None, text_chars: int = 0, n: int = 0) -> SubmitRequest:
    """A valid batch: a few online-sized ones, most for the Batch API, small vectors."""
    if not n:
        n = rng.randint(3, 10) if rng.random() < 0.15 else rng.randint(11, max_items)
    filler = "x" * text_chars
    items = [Item(f"{batch_id}-{i}", f"chunk {i} of {batch_id}: def f{i}(): pass {filler}")
             for i in range(n)]
    return SubmitRequest(batch_id=batch_id, items=items, model=model or rng.choice(MODELS),
                         output_dimensionality=8, source="chaos")


async def publish_sure(js: JetStreamContext, subject: str, data: bytes, msg_id: str,
                       budget: float = 120.0) -> PubAck:
    """Publish until the stream acknowledges, through restarts and leader elections."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while True:
        try:
            return await publish(js, subject, data, msg_id, budget=10)
        except (PublishError, NatsError, TimeoutError):
            # no stream leader yet (nats-py's NoStreamResponseError), or no ack in time
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def publish_good(js: JetStreamContext, ledger: Ledger, req: SubmitRequest,
                       msg_id: str | None = None) -> bool:
    """Publish a batch.submit (its contract id unless told); True when the stream stored it."""
    loop = asyncio.get_running_loop()
    if ledger.first_publish is None:
        ledger.first_publish = loop.time()
    ack = await publish_sure(js, subjects.SUBMIT, encode(req),
                             msg_id or subjects.submit_id(req.batch_id, req.attempt))
    if ack.duplicate:
        ledger.deduplicated += 1
        return False
    ledger.accept(req)
    ledger.published += 1
    return True


async def publish_all(js: JetStreamContext, ledger: Ledger, reqs: list[SubmitRequest],
                      *, at_once: int = 32) -> None:
    """Publish `reqs` a few at a time (each retried until acknowledged)."""
    for start in range(0, len(reqs), at_once):
        await asyncio.gather(*(publish_good(js, ledger, r) for r in reqs[start:start + at_once]))
