"""The consumer runtime over a real nats-server, with roles whose work is scripted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.runtime import ACK, Outcome, Runtime, nak, term
from events import jetstream as defs
from events import subjects
from events.payloads import InvalidMessage


@dataclass
class Scripted:
    """A role whose handler does what each message's body says."""

    name: str = "submit"
    consumer: defs.Consumer = defs.SUBMIT
    seen: list[tuple[bytes, int]] = field(default_factory=list)
    settled: dict[str, list[bytes]] = field(default_factory=lambda: {
        "reject": [], "park": []})
    running: int = 0
    peak: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    unwritable: set[bytes] = field(default_factory=set)  # its dead letter fails once

    async def ready(self) -> None:
        return None

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return 0.05

    async def handle(self, msg: Msg) -> Outcome:
        self.seen.append((msg.data, msg.metadata.num_delivered))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            body = msg.data
            if body == b"slow":
                await asyncio.sleep(0.3)
            if body == b"block":
                await self.gate.wait()
            if body == b"bad":
                raise InvalidMessage("bad body")
            if body == b"auth":
                raise AuthError("expired", code=400, status="INVALID_ARGUMENT")
            if body == b"flaky" and msg.metadata.num_delivered < 3:
                raise RetryableError("try again")
            if body == b"never":
                raise RetryableError("never passes")
            if body == b"boom":
                raise PermanentError("no")
            if body == b"crash" and msg.metadata.num_delivered < 2:
                raise KeyError("bug")
            if body == b"later" and msg.metadata.num_delivered < 2:
                return nak(0.05)
            if body == b"drop":
                return term("dropped")
            if body.startswith(b"busy"):
                return nak(0.05, "busy")
            return ACK
        finally:
            self.running -= 1

    async def reject(self, msg: Msg, error: object) -> Outcome:
        if msg.data in self.unwritable:
            self.unwritable.discard(msg.data)
            raise RuntimeError("the dead letter could not be written")
        self.settled["reject"].append(msg.data)
        return term("rejected")

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        self.settled["park"].append(msg.data)
        return ACK


async def _publish(nc: NATS, *bodies: bytes) -> None:
    js = nc.jetstream()
    for body in bodies:
        await js.publish(subjects.SUBMIT, body)


async def _until(check: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def _pending(nc: NATS) -> tuple[int, int]:
    info = await nc.jetstream().consumer_info(defs.BATCH, "submit")
    return info.num_pending, info.num_ack_pending


async def _until_pending(nc: NATS, want: tuple[int, int], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while await _pending(nc) != want:
            await asyncio.sleep(0.05)


async def test_outcomes_map_to_ack_nak_term(nc: NATS) -> None:
    """Each outcome and error becomes the right ack, nak or term, and nothing is left."""
    role = Scripted()
    rt = Runtime(nc.jetstream(), [role], concurrency=4, drain_timeout=5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, b"ok", b"bad", b"auth", b"flaky", b"boom", b"crash", b"later", b"drop")
    await _until(lambda: sum(1 for d, _ in role.seen if d == b"flaky") == 3
                 and sum(1 for d, _ in role.seen if d == b"crash") == 2
                 and sum(1 for d, _ in role.seen if d == b"later") == 2)
    await asyncio.sleep(0.3)
    rt.stop.set()
    await task
    assert sorted(role.settled["reject"]) == [b"bad", b"boom"]
    assert role.settled["park"] == [b"auth"]
    await _until_pending(nc, (0, 0))
    delivered = [d for d, _ in role.seen]
    for once in (b"ok", b"bad", b"auth", b"boom", b"drop"):
        assert delivered.count(once) == 1


async def test_last_delivery_dead_letters_instead_of_stranding(nc: NATS) -> None:
    """A retryable error on the consumer's last delivery is rejected, not left to rot."""
    role = Scripted()
    rt = Runtime(nc.jetstream(), [role], concurrency=2, drain_timeout=5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, b"never")
    await _until(lambda: role.settled["reject"] == [b"never"], 30)
    rt.stop.set()
    await task
    assert [n for _, n in role.seen] == list(range(1, defs.SUBMIT_MAX_DELIVER + 1))
    await _until_pending(nc, (0, 0))


async def test_a_handler_nak_on_the_last_delivery_dead_letters(nc: NATS) -> None:
    """A nak the handler chose ("busy") on the last delivery is a dead letter too, and a
    dead letter that fails to write is tried again in place, not nak'ed into the void."""
    role = Scripted(unwritable={b"busy-2"})
    rt = Runtime(nc.jetstream(), [role], concurrency=2, drain_timeout=5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, b"busy-1", b"busy-2")
    await _until(lambda: sorted(role.settled["reject"]) == [b"busy-1", b"busy-2"], 30)
    rt.stop.set()
    await task
    for body in (b"busy-1", b"busy-2"):
        assert [n for d, n in role.seen if d == body] == list(
            range(1, defs.SUBMIT_MAX_DELIVER + 1))
    await _until_pending(nc, (0, 0))


async def test_concurrency_is_bounded(nc: NATS) -> None:
    """Never more than `concurrency` messages are worked on at once."""
    role = Scripted()
    rt = Runtime(nc.jetstream(), [role], concurrency=3, drain_timeout=5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, *[b"slow"] * 12)
    await _until(lambda: len(role.seen) == 12)
    rt.stop.set()
    await task
    assert role.peak == 3


async def test_shutdown_lets_work_finish_then_naks_the_rest(nc: NATS) -> None:
    """On stop, in-flight work may finish within the deadline; what does not is nak'ed."""
    role = Scripted()
    rt = Runtime(nc.jetstream(), [role], concurrency=2, drain_timeout=0.5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, b"slow", b"block")
    await _until(lambda: len(role.seen) == 2)
    rt.stop.set()
    await asyncio.wait_for(task, 10)
    assert role.seen[0][0] == b"slow" and role.running == 0
    role2 = Scripted()
    role2.gate.set()
    rt2 = Runtime(nc.jetstream(), [role2], concurrency=2, drain_timeout=5)
    task2 = asyncio.create_task(rt2.run())
    # handed back, not left to ack_wait (60 s): another runtime gets it within seconds
    await _until(lambda: [d for d, _ in role2.seen] == [b"block"], timeout=10)
    rt2.stop.set()
    await task2
    await _until_pending(nc, (0, 0))


async def test_long_step_is_kept_alive_by_heartbeats(nc: NATS) -> None:
    """A step longer than ack_wait is not redelivered while in_progress beats are sent."""
    js = nc.jetstream()
    short = defs.Consumer(defs.BATCH, defs.SUBMIT.config.evolve(ack_wait=1.2))
    await js.add_consumer(defs.BATCH, short.config)
    role = Scripted(consumer=short)
    rt = Runtime(js, [role], concurrency=2, drain_timeout=5)
    task = asyncio.create_task(rt.run())
    await _publish(nc, b"block")
    await _until(lambda: len(role.seen) == 1)
    await asyncio.sleep(3.5)  # three ack_waits
    role.gate.set()
    await _until(lambda: role.running == 0)
    rt.stop.set()
    await task
    assert role.seen == [(b"block", 1)]


def test_pods_run_on_uvloop_and_other_commands_on_asyncio() -> None:
    """Pods get uvloop's loop (`batchyard run`; the other commands keep asyncio's, whose
    subprocesses take `user=`: `test_demo_exits_zero_and_its_summary_agrees`)."""
    import uvloop

    from consumers.cli import _loop_factory

    assert _loop_factory() is uvloop.new_event_loop
