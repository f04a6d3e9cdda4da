"""Streams, consumers, KV buckets and the object store of CONTRACT §4, as data.

Each definition is complete: the server replaces a stream's whole config on update
and `pull_subscribe` ignores the config of an existing durable, so provisioning
sends these as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from events import subjects

DAY = 24 * 60 * 60.0

BATCH = "BATCH"
BATCH_PARKED = "BATCH_PARKED"
KEY = "KEY"
KEY_HEALTH = "KEY_HEALTH"
QUOTA = "QUOTA"
BATCH_INPUTS = "BATCH_INPUTS"
BATCH_KEPT = "BATCH_KEPT"  # inputs of parked batches, kept while parked (consumers/batch/kept.py)

KEY_HEALTH_CURRENT = "current"
QUOTA_BATCH_CREATE = "batch-create"

SUBMIT_MAX_DELIVER = 8
ACK_WAIT = 60.0


@dataclass(frozen=True)
class Consumer:
    stream: str
    config: ConsumerConfig

    @property
    def name(self) -> str:
        assert self.config.durable_name
        return self.config.durable_name


def streams(replicas: int = 1) -> list[StreamConfig]:
    """Every stream, the KV buckets' and object store's included."""
    return [
        StreamConfig(
            name=BATCH,
            subjects=[subjects.SUBMIT, subjects.POLL, subjects.COMPLETED, subjects.DEAD],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=7 * DAY,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=BATCH_PARKED,
            subjects=[subjects.AUTH_FAILED],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=0,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=KEY,
            subjects=[subjects.KEY_ROTATED, subjects.KEY_VALID, subjects.KEY_INVALID],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_msgs_per_subject=100,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
        ),
        _kv(KEY_HEALTH, replicas),
        _kv(QUOTA, replicas),
        _object_store(BATCH_INPUTS, 7 * DAY, replicas),
        _object_store(BATCH_KEPT, 0, replicas),
    ]


def _kv(bucket: str, replicas: int) -> StreamConfig:
    # The shape nats-py's create_key_value gives a bucket, so `js.key_value()` binds it.
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=5,
        max_msgs=-1,
        max_consumers=-1,
        max_msg_size=-1,
        max_age=0,
        duplicate_window=120.0,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        num_replicas=replicas,
    )


def _object_store(bucket: str, max_age: float, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=f"OBJ_{bucket}",
        subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=-1,
        max_consumers=-1,
        duplicate_window=120.0,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        num_replicas=replicas,
    )


def _durable(
    name: str, filter_subject: str, *, max_deliver: int = -1, ack_wait: float = ACK_WAIT
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        name=name,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=1000,
        max_waiting=512,
    )


SUBMIT = Consumer(BATCH, _durable("submit", subjects.SUBMIT, max_deliver=SUBMIT_MAX_DELIVER))
POLL = Consumer(BATCH, _durable("poll", subjects.POLL))
KEY_ROTATED = Consumer(KEY, _durable("key-rotated", subjects.KEY_ROTATED))
RECOVERY = Consumer(KEY, _durable("recovery", subjects.KEY_VALID))
REPLAY = Consumer(BATCH_PARKED, _durable("replay", subjects.AUTH_FAILED))

CONSUMERS = [SUBMIT, POLL, KEY_ROTATED, RECOVERY, REPLAY]
