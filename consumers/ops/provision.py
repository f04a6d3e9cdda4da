"""`batchyard streams apply|export`: create or update JetStream to match events.jetstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from events import jetstream as defs

# Fields the server fills in or reports that we do not set.
_STREAM_IGNORED = {"sealed", "placement", "mirror", "sources", "metadata", "consumer_limits",
                   "compression", "first_seq", "template_owner", "subject_delete_marker_ttl"}
_STREAM_NAME_IN_USE = 10058


def _wanted(config: StreamConfig | ConsumerConfig) -> dict[str, Any]:
    return {k: v for k, v in config.as_dict().items() if v is not None}


def _differs(want: dict[str, Any], have: dict[str, Any], ignored: set[str]) -> list[str]:
    return sorted(k for k, v in want.items() if k not in ignored and have.get(k) != v)


async def apply(js: JetStreamContext, replicas: int = 1) -> list[str]:
    """Create what is missing and update what differs; returns what changed."""
    changed: list[str] = []
    for config in defs.streams(replicas):
        assert config.name
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                changed.append(f"stream {config.name}: created")
                continue
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(config.name)  # another process won the race
        diff = _differs(_wanted(config), _wanted(info.config), _STREAM_IGNORED)
        if diff:
            await js.update_stream(config)
            changed.append(f"stream {config.name}: updated {', '.join(diff)}")
    for consumer in defs.CONSUMERS:
        try:
            cinfo = await js.consumer_info(consumer.stream, consumer.name)
            diff = _differs(_wanted(consumer.config), _wanted(cinfo.config), set())
        except NotFoundError:
            diff = ["created"]
        if diff:
            # Without an "action" the server creates or updates in place.
            await js.add_consumer(consumer.stream, consumer.config)
            what = "created" if diff == ["created"] else f"updated {', '.join(diff)}"
            changed.append(f"consumer {consumer.stream}/{consumer.name}: {what}")
    return changed


def export(directory: Path, replicas: int = 1) -> list[Path]:
    """Write the definitions as `nats stream add --config` / `nats consumer add --config` JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for config in defs.streams(replicas):
        written.append(_write(directory / f"stream.{config.name}.json", _wanted(config)))
    for consumer in defs.CONSUMERS:
        path = directory / f"consumer.{consumer.stream}.{consumer.name}.json"
        written.append(_write(path, _wanted(consumer.config)))
    return written


def _write(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path
