"""The consumer runtime every role runs on.

It owns the pull loop, the number of messages in flight, `in_progress` heartbeats,
the one mapping from outcome to ack / nak(delay) / term, and graceful shutdown.
A role only says what a message means.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext

from consumers import metrics
from consumers.errors import AuthError, BatchyardError, PermanentError, RetryableError
from events.jetstream import Consumer
from events.payloads import InvalidMessage
from events.publisher import PublishError

log = structlog.get_logger("batchyard.runtime")

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)


class Action(enum.Enum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    delay: float = 0.0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.action.value


ACK = Outcome(Action.ACK)


def nak(delay: float, label: str = "") -> Outcome:
    return Outcome(Action.NAK, delay, label)


def term(label: str = "") -> Outcome:
    return Outcome(Action.TERM, 0.0, label)


_HANDBACK = Outcome(Action.NAK, 0.0, "shutdown")
# On a last delivery, the pauses between tries to write its dead letter (about 2 min).
LAST_WORD_PAUSES = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)


def backoff(deliveries: int, server_delay: float | None = None) -> float:
    """1 2 4 8 16 30 60 s by delivery, with jitter; a server's RetryInfo delay wins."""
    if server_delay is not None:
        return server_delay
    base = BACKOFF[min(max(deliveries, 1), len(BACKOFF)) - 1]
    return base * (0.75 + random.random() / 2)


class Role(Protocol):
    """What a consumer role tells the runtime."""

    name: str
    consumer: Consumer

    async def ready(self) -> int | None:
        """Return when the role may fetch (a closed gate or a bad key holds it): how many
        messages it wants in flight at most now, or None for the runtime's concurrency."""

    async def handle(self, msg: Msg) -> Outcome:
        """Do the work; raise BatchyardError / InvalidMessage for the runtime to map."""

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        """Dead-letter the message; returns the outcome (normally term)."""

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        """Park the message for replay once the key is valid again."""

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        """Seconds until the next delivery of a message that hit a retryable error."""


class Runtime:
    """Runs roles until `stop` is set, then drains within `drain_timeout`."""

    def __init__(self, js: JetStreamContext, roles: list[Role], *, concurrency: int,
                 drain_timeout: float, fetch_timeout: float = 1.0):
        self.js = js
        self.roles = roles
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self.fetch_timeout = fetch_timeout
        self.stop = asyncio.Event()
        self.bound: set[str] = set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for role in self.roles:
                tg.create_task(_Loop(self, role).run(), name=f"consume-{role.name}")


# Status codes that end a pull request in the ordinary way: nothing there now, expired.
_QUIET = frozenset({"", "404", "408", "timeout"})


class _Pull:
    """Pull requests for one durable consumer, answered on a private inbox.

    nats-py's `fetch()` awaits every message of a batch under its own timeout (a task
    per message, the bulk of a fast handler's cost). Here one subscription callback takes
    messages as they arrive and hands each to `take`; a request is over when its batch is
    full or a status message ends it (404 nothing there, 408 expired, 409 and 503 trouble).
    Every request has its own reply subject, so a late status of an earlier request is
    ignored; a late message is taken all the same (it was delivered and must be settled).
    """

    def __init__(self, js: JetStreamContext, consumer: Consumer, take: Callable[[Msg], None]):
        self._nc = js._nc
        self._subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.name}"
        self._take = take
        self._inbox = ""
        self._reply = ""
        self._seq = 0
        self._want = 0
        self._done: asyncio.Future[str] | None = None
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def pull(self, batch: int, expires: float) -> str:
        """Ask for up to `batch` messages for `expires` seconds; how the request ended:
        "" (batch full), the status code, or "timeout" (no answer: a reconnect lost it)."""
        self._seq += 1
        self._reply = f"{self._inbox}.{self._seq}"
        self._want = batch
        done = self._done = asyncio.get_running_loop().create_future()
        request = {"batch": batch, "expires": int(expires * 1e9)}
        try:
            await self._nc.publish(self._subject, json.dumps(request).encode(),
                                   reply=self._reply)
            return await asyncio.wait_for(done, expires + 1.0)
        except TimeoutError:
            return "timeout"
        finally:
            self._done = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            self._take(msg)
            self._want -= 1
            if self._want > 0:
                return
            status = ""
        elif msg.subject != self._reply or status == "100":  # an earlier request's; heartbeat
            return
        if self._done is not None and not self._done.done():
            self._done.set_result(status)


class _Loop:
    """One role's pull loop: a fetcher, `concurrency` workers and a heartbeat."""

    def __init__(self, runtime: Runtime, role: Role):
        self.rt = runtime
        self.role = role
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        # keyed by id(): nats-py's Msg is an unhashable dataclass
        self.inflight: dict[int, tuple[Msg, float]] = {}
        self.freed = asyncio.Event()
        max_deliver = role.consumer.config.max_deliver or -1
        self.max_deliver = max_deliver if max_deliver > 0 else 0

    async def run(self) -> None:
        rt, role = self.rt, self.role
        pull = _Pull(rt.js, role.consumer, self._take)
        await pull.open()
        rt.bound.add(role.name)
        try:
            async with asyncio.TaskGroup() as tg:
                workers = [tg.create_task(self._work()) for _ in range(rt.concurrency)]
                beat = tg.create_task(self._heartbeat())
                await self._fetch(pull)
                await self._close(pull)
                await self._drain(workers)
                beat.cancel()
        finally:
            rt.bound.discard(role.name)
            await self._close(pull)

    @staticmethod
    async def _close(pull: _Pull) -> None:
        try:
            await pull.close()
        except Exception:  # the connection may already be closed
            pass

    def _take(self, msg: Msg) -> None:
        self.inflight[id(msg)] = (msg, time.monotonic())
        self.queue.put_nowait(msg)

    async def _wait(self, aw: Awaitable[object]) -> bool:
        """Await `aw` unless stop comes first; False when stopping."""
        stopping = asyncio.ensure_future(self.rt.stop.wait())
        task = asyncio.ensure_future(aw)
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
        return not self.rt.stop.is_set()

    async def _fetch(self, pull: _Pull) -> None:
        while not self.rt.stop.is_set():
            room = self.rt.concurrency - len(self.inflight)
            if room <= 0:
                self.freed.clear()
                await self._wait(self.freed.wait())
                continue
            ready = asyncio.ensure_future(self.role.ready())
            if not await self._wait(ready):
                break
            # A ready() that failed (NATS away) does not hold the fetch: the pull fails too.
            if not ready.cancelled() and ready.exception() is None \
                    and (most := ready.result()) is not None:
                room = min(room, most - len(self.inflight))
                if room <= 0:  # as many in flight as the role wants now
                    self.freed.clear()
                    await self._wait(self.freed.wait())
                    continue
            try:
                ended = await pull.pull(room, self.rt.fetch_timeout)
            except ConnectionClosedError:
                break
            except Exception as exc:  # a reconnect in progress: wait, then fetch again
                log.warning("fetch.failed", role=self.role.name, error=repr(exc))
                await self._wait(asyncio.sleep(0.5))
                continue
            if ended not in _QUIET:  # 409 (e.g. leader change), 503 (no JetStream yet)
                log.warning("fetch.failed", role=self.role.name, status=ended)
                await self._wait(asyncio.sleep(0.5))

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + self.rt.drain_timeout
        while self.inflight and time.monotonic() < deadline:
            self.freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.freed.wait(), deadline - time.monotonic())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self.inflight:
            log.warning("drain.naked", role=self.role.name, messages=len(self.inflight))
            for msg, _ in list(self.inflight.values()):
                await _settle(msg, _HANDBACK)
            self.inflight.clear()

    async def _work(self) -> None:
        # Each worker is its own task, so this binds the context of its messages once.
        structlog.contextvars.bind_contextvars(
            stage=self.role.name, subject=self.role.consumer.config.filter_subject)
        counters: dict[str, Any] = {}
        while True:
            msg = await self.queue.get()
            try:
                outcome = await self._outcome(msg)
            except asyncio.CancelledError:
                await asyncio.shield(_settle(msg, _HANDBACK))
                self.inflight.pop(id(msg), None)
                raise
            await _settle(msg, outcome)
            self.inflight.pop(id(msg), None)
            self.freed.set()
            counter = counters.get(outcome.name)
            if counter is None:
                counter = counters[outcome.name] = metrics.MESSAGES.labels(
                    self.role.name, outcome.name)
            counter.inc()

    async def _outcome(self, msg: Msg) -> Outcome:
        """Run the handler; map whatever it raises to exactly one outcome.

        A nak on the last delivery would strand the message (the server delivers it no
        more), whichever path chose it: the message is dead-lettered instead.
        """
        outcome = await self._handled(msg)
        if outcome.action is Action.NAK and self._last(msg):
            return await self._last_word(msg, RetryableError(
                f"deliveries exhausted ({outcome.name})"))
        return outcome

    def _last(self, msg: Msg) -> bool:
        return bool(self.max_deliver) and msg.metadata.num_delivered >= self.max_deliver

    async def _last_word(self, msg: Msg, exc: RetryableError) -> Outcome:
        """Dead-letter a message on its last delivery, trying again in place while the
        dead letter cannot be written (the heartbeat keeps the message ours)."""
        for pause in (*LAST_WORD_PAUSES, None):
            try:
                return await self.role.reject(msg, exc)
            except Exception as err:
                log.warning("last_delivery.settle_failed", error=repr(err))
            if pause is None:
                break
            await asyncio.sleep(pause)
        log.error("message.stranded", error=exc.message)
        return nak(0.0, "stranded")

    async def _handled(self, msg: Msg) -> Outcome:
        role = self.role
        try:
            return await role.handle(msg)
        except InvalidMessage as exc:
            return await self._guard(msg, role.reject(msg, exc))
        except AuthError as exc:
            return await self._guard(msg, role.park(msg, exc))
        except PermanentError as exc:
            return await self._guard(msg, role.reject(msg, exc))
        except RetryableError as exc:
            return await self._retry(msg, exc)
        except PublishError as exc:
            return await self._retry(msg, RetryableError(str(exc)))
        except Exception as exc:
            log.exception("handler.crashed", error=repr(exc))
            return await self._retry(msg, RetryableError(repr(exc)))

    async def _retry(self, msg: Msg, exc: RetryableError) -> Outcome:
        delivered = msg.metadata.num_delivered
        if self._last(msg):
            return await self._last_word(msg, exc)
        delay = self.role.retry_delay(msg, exc)
        metrics.RETRIES.labels(self.role.name, "quota" if exc.quota else "transient").inc()
        log.info("retry.scheduled", error=exc.message, delay=round(delay, 2), delivery=delivered)
        return nak(delay, "retry")

    async def _guard(self, msg: Msg, step: Awaitable[Outcome]) -> Outcome:
        """Parking and dead-lettering publish; if that fails, try again later."""
        try:
            return await step
        except (PublishError, BatchyardError) as exc:
            log.warning("settle.failed", error=str(exc))
        except Exception as exc:  # a bug must not take the pod down with it
            log.exception("settle.crashed", error=repr(exc))
        return nak(backoff(msg.metadata.num_delivered), "retry")

    async def _heartbeat(self) -> None:
        every = (self.role.consumer.config.ack_wait or 30.0) / 6
        while True:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - every
            for msg, started in list(self.inflight.values()):
                if started <= cutoff:
                    with contextlib.suppress(Exception):  # reconnecting: next beat retries
                        await msg.in_progress()


async def _settle(msg: Msg, outcome: Outcome) -> None:
    try:
        if outcome.action is Action.ACK:
            await msg.ack()
        elif outcome.action is Action.NAK:
            await msg.nak(delay=outcome.delay if outcome.delay > 0 else None)
        else:
            await msg.term()
    except Exception as exc:  # unacked: the server redelivers after ack_wait
        log.warning("settle.lost", action=outcome.action.value, error=repr(exc))
