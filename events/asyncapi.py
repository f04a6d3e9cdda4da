"""The event API as an AsyncAPI 3.0 document, and its payloads as JSON Schema.

Everything comes from the code that is the contract: subjects (events/subjects.py), the
msgspec Structs (events/payloads.py, through `msgspec.json.schema_components`) and the
streams and durable consumers (events/jetstream.py). `batchyard asyncapi` prints it;
docs/asyncapi.yaml and docs/schemas/ are its output, kept equal by a test.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import msgspec

from events import jetstream as defs
from events import subjects
from events.payloads import (
    MAX_ITEMS,
    AuthFailed,
    Completed,
    Dead,
    DeadItem,
    ErrorDetail,
    Item,
    KeyHealth,
    KeyInvalid,
    KeyRotated,
    KeyValid,
    PollRequest,
    QuotaGate,
    SubmitRequest,
    encode,
)

_AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
_ID = r"[A-Za-z0-9._:-]{1,128}"
_SEQ = r"[0-9]+"
_FP = r"[0-9a-f]{12}"


@dataclass(frozen=True)
class Channel:
    key: str
    subject: str
    struct: type
    published_by: str
    received_by: str
    msg_ids: list[tuple[str, str]]  # (pattern, when)
    example: Any
    summary: str


SUBMIT_EXAMPLE = SubmitRequest(
    batch_id="repo-42.commit-9f3c", items=[Item("src.main.go:1", "package main"),
                                           Item("src.main.go:2", "func main() {}")],
    task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768, source="indexer run 1187")
POLL_EXAMPLE = PollRequest(batch_id="repo-42.commit-9f3c", job_name="batches/abc123", attempt=0)
ERROR_EXAMPLE = ErrorDetail(code=400, status="INVALID_ARGUMENT",
                            message="API key expired. Please renew the API key.")

CHANNELS = [
    Channel("batchSubmit", subjects.SUBMIT, SubmitRequest, "upstream indexers, recovery",
            "submit pods (durable `submit`)",
            [(f"submit:{_ID}:{_SEQ}", "`submit:<batch_id>:<attempt>`, from producers and "
              "every next attempt"),
             (f"replay:{_SEQ}", "`replay:<BATCH_PARKED seq>`, a parked message replayed"),
             (f"held:{_SEQ}", "`held:<BATCH seq>`, put back while the Batch API has no room"),
             (f"unpacked:pk[0-9a-f]{{32}}:{_ID}",
              "`unpacked:<pack_id>:<batch_id>`, a member of a pack the API refused, again")],
            SUBMIT_EXAMPLE, "Texts to embed: one batch, one attempt."),
    Channel("batchPoll", subjects.POLL, PollRequest, "submit pods, recovery",
            "poll pods (durable `poll`)",
            [(f"poll:{_ID}:{_SEQ}(#[1-9][0-9]*)?",
              "`poll:<batch_id>:<attempt>`, `#<k>` for shard k"),
             ("poll:pack:pk[0-9a-f]{32}", "`poll:pack:<pack_id>`, a pack's one job"),
             (f"replay:{_SEQ}", "`replay:<BATCH_PARKED seq>`, a parked poll replayed")],
            POLL_EXAMPLE, "A Gemini batch job to poll until it is terminal."),
    Channel("batchCompleted", subjects.COMPLETED, Completed, "poll and submit pods",
            "downstream consumers",
            [(f"completed:{_ID}:{_SEQ}", "`completed:<batch_id>:<attempt>`")],
            Completed(batch_id="repo-42.commit-9f3c", attempt=0, job_name="batches/abc123",
                      status="succeeded", items_total=2, items_embedded=2, items_failed=0,
                      items_reused=1, completed_at=_AT),
            "A batch finished: every item embedded (succeeded) or some dead (partial)."),
    Channel("batchDead", subjects.DEAD, Dead, "any pod", "operators (`batchyard dead list`)",
            [(f"dead:{_SEQ}", "`dead:<BATCH seq>` of the message that died"),
             (f"dead:{_SEQ}:{_ID}", "`dead:<BATCH seq>:<batch_id>`, a pack member's")],
            Dead(batch_id="repo-42.commit-9f3c", stage="submit", reason="invalid_message",
                 error=ErrorDetail(message="items[0].text: expected `str` of length >= 1"),
                 subject=subjects.SUBMIT, payload={"batch_id": "repo-42.commit-9f3c"},
                 attempts=1, dead_at=_AT,
                 items=[DeadItem(id="src.main.go:1", error=ERROR_EXAMPLE)]),
            "A message or items that will not succeed, with the reason."),
    Channel("batchAuthFailed", subjects.AUTH_FAILED, AuthFailed, "submit and poll pods",
            "recovery pods (durable `replay`, pulled after key.valid)",
            [(f"parked:{_SEQ}", "`parked:<BATCH seq>` of the message parked")],
            AuthFailed(batch_id="repo-42.commit-9f3c", stage="submit", subject="batch.submit",
                       payload=msgspec.to_builtins(SUBMIT_EXAMPLE),
                       key_fingerprint="3f2a9c1b7d4e", error=ERROR_EXAMPLE, failed_at=_AT),
            "A message parked because the key was refused; replayed once a key is valid."),
    Channel("keyRotated", subjects.KEY_ROTATED, KeyRotated,
            "operators, secret managers (`nats pub key.rotated ''`)",
            "key-health pods (durable `key-rotated`)",
            [(".*", "any, or none: an empty body is a valid key.rotated")],
            KeyRotated(fingerprint="3f2a9c1b7d4e", source="vault"),
            "The key changed: check it now. An empty body is valid."),
    Channel("keyValid", subjects.KEY_VALID, KeyValid, "key-health pods",
            "recovery pods (durable `recovery`)",
            [(f"key\\.valid:{_FP}:{_SEQ}(:{_SEQ})?",
              "`key.valid:<fingerprint>:<KEY_HEALTH revision>`, one per transition" +
              " (`:<replay ack floor>` added when announced again while messages are parked)")],
            KeyValid(fingerprint="3f2a9c1b7d4e", model="gemini-embedding-001", checked_at=_AT),
            "The key works: parked messages are replayed."),
    Channel("keyInvalid", subjects.KEY_INVALID, KeyInvalid, "key-health pods", "operators",
            [(f"key\\.invalid:{_FP}:{_SEQ}(:{_SEQ})?",
              "`key.invalid:<fingerprint>:<KEY_HEALTH revision>`, one per transition")],
            KeyInvalid(fingerprint="3f2a9c1b7d4e", reason="API_KEY_INVALID", checked_at=_AT),
            "The key is refused: every pod parks instead of calling Gemini."),
]
# Values of KV buckets, not messages on a subject.
KV_VALUES: dict[type, tuple[str, str]] = {
    KeyHealth: (defs.KEY_HEALTH, defs.KEY_HEALTH_CURRENT),
    QuotaGate: (defs.QUOTA, defs.QUOTA_BATCH_CREATE),
}


def _portable(schema: Any) -> Any:
    """Patterns any JSON Schema validator reads: the Structs anchor with Python's `\\Z`,
    which ECMA-262 (and Go's RE2) lack; their `$` without multiline is the same end."""
    if isinstance(schema, dict):
        out = {k: _portable(v) for k, v in schema.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = re.sub(r"\\Z$", "$", out["pattern"])
        return out
    if isinstance(schema, list):
        return [_portable(v) for v in schema]
    return schema


def _refine(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """What a Struct checks in code and its annotations cannot say."""
    if name == "SubmitRequest":
        schema["oneOf"] = [
            {"required": ["items"], "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS}}},
            {"required": ["items_object"], "properties": {"items_object": {"type": "string"}}},
        ]
        schema["description"] = ("Exactly one of `items` (ids unique within the batch) or "
                                 "`items_object` (JSONL of the same items in object store "
                                 f"{defs.BATCH_INPUTS}).")
    return schema


def components(ref_template: str) -> dict[str, Any]:
    """Every payload's schema by Struct name, references written with `ref_template`."""
    structs = [c.struct for c in CHANNELS] + list(KV_VALUES)
    _, found = msgspec.json.schema_components(structs, ref_template=ref_template)
    return {name: _refine(name, _portable(s)) for name, s in sorted(found.items())}


def schema_files() -> dict[str, dict[str, Any]]:
    """docs/schemas/: one self-contained JSON Schema per payload, by file name."""
    found = components("#/$defs/{name}")
    out = {}
    for struct in [c.struct for c in CHANNELS] + list(KV_VALUES):
        name = struct.__name__
        out[f"{name}.json"] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://batchyard.dev/schemas/{name}.json",
            "$ref": f"#/$defs/{name}",
            "$defs": found,
        }
    return out


def _headers(channel: Channel) -> dict[str, Any]:
    pattern = "|".join(p for p, _ in channel.msg_ids)
    when = "; ".join(w for _, w in channel.msg_ids)
    return {
        "type": "object",
        "properties": {"Nats-Msg-Id": {
            "type": "string", "pattern": f"^({pattern})$",
            "description": (
                f"{when}. Deterministic, so the stream's duplicate window drops a retried "
                "publish; a publish is retried with the same id until acknowledged."),
        }},
        **({} if channel.subject == subjects.KEY_ROTATED else {"required": ["Nats-Msg-Id"]}),
    }


def _stream_of(subject: str) -> dict[str, Any]:
    for s in defs.streams():
        if subject in (s.subjects or []):
            return {k: v for k, v in {
                "stream": s.name, "subjects": s.subjects,
                "retention": s.retention.value if s.retention else None,
                "storage": s.storage.value if s.storage else None,
                "max_age_s": s.max_age or 0, "duplicate_window_s": s.duplicate_window,
            }.items() if v is not None}
    raise LookupError(subject)


def _streams() -> list[dict[str, Any]]:
    """Every stream, the KV buckets' and object stores' included, as `streams apply` makes."""
    return [{k: v for k, v in {
        "name": s.name, "subjects": s.subjects,
        "retention": s.retention.value if s.retention else None,
        "storage": s.storage.value if s.storage else None,
        "max_age_s": s.max_age or 0, "duplicate_window_s": s.duplicate_window,
        "max_msgs_per_subject": s.max_msgs_per_subject
        if s.max_msgs_per_subject and s.max_msgs_per_subject > 0 else None,
    }.items() if v is not None} for s in defs.streams()]


def _consumers_of(subject: str) -> list[dict[str, Any]]:
    return [{"durable": c.name, "stream": c.stream, "ack": "explicit",
             "ack_wait_s": c.config.ack_wait, "max_deliver": c.config.max_deliver}
            for c in defs.CONSUMERS if c.config.filter_subject == subject]


def _version() -> str:
    try:
        return version("batchyard")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for c in CHANNELS:
        name = c.struct.__name__
        messages[name] = {
            "name": name, "title": f"{c.subject} payload", "summary": c.summary,
            "contentType": "application/json",
            "headers": _headers(c),
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "examples": [{"name": "example",
                          "payload": json.loads(encode(c.example))}],
        }
        channels[c.key] = {
            "address": c.subject, "title": c.subject, "summary": c.summary,
            "description": f"Published by {c.published_by}; received by {c.received_by}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-jetstream": {**_stream_of(c.subject), "consumers": _consumers_of(c.subject)},
        }
        ref = {"$ref": f"#/channels/{c.key}"}
        msg = [{"$ref": f"#/channels/{c.key}/messages/{name}"}]
        operations[f"publish{c.key[0].upper()}{c.key[1:]}"] = {
            "action": "send", "channel": ref, "messages": msg,
            "summary": f"{c.published_by} publish on {c.subject}"}
        operations[f"receive{c.key[0].upper()}{c.key[1:]}"] = {
            "action": "receive", "channel": ref, "messages": msg,
            "summary": f"{c.received_by} take {c.subject}"}
    schemas = components("#/components/schemas/{name}")
    for struct, (bucket, key) in KV_VALUES.items():
        schemas[struct.__name__]["description"] = (
            f"The value of key `{key}` in KV bucket `{bucket}` (stream KV_{bucket}).")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "batchyard",
            "version": _version(),
            "description": (
                "Gemini Batch API embedding jobs from a NATS JetStream event stream. Every "
                "payload is JSON with `\"v\": 1` (omitted reads as 1; any other value is "
                "refused). Unknown fields are ignored; wrong types, missing required fields, "
                "bad ids or over-limit sizes send the message to batch.dead with a reason."),
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {
            "host": "127.0.0.1:4222", "protocol": "nats",
            "description": "NATS with JetStream; set NATS_URL to the real servers."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
        "x-jetstream-streams": _streams(),
    }


def write(schemas: Path | None = None) -> int:
    """`batchyard asyncapi`: the document on stdout, the schemas into `schemas`."""
    print(render(), end="")
    if schemas is not None:
        schemas.mkdir(parents=True, exist_ok=True)
        for name, schema in schema_files().items():
            (schemas / name).write_text(json.dumps(schema, indent=2) + "\n")
    return 0


def render() -> str:
    """docs/asyncapi.yaml's text."""
    return ("# The event API of batchyard, generated by `batchyard asyncapi` from events/:\n"
            "# edit the code, then `batchyard asyncapi > docs/asyncapi.yaml`.\n"
            + to_yaml(document()) + "\n")


def to_yaml(data: Any, indent: int = 0) -> str:
    """Block YAML of JSON data, every string quoted as JSON (which YAML reads alike), so
    no value can turn into a number, a boolean or null."""
    pad = "  " * indent
    if isinstance(data, dict) and data:
        lines = []
        for k, v in data.items():
            key = k if re.fullmatch(r"[A-Za-z_$][\w.$-]*", k) and k not in _YAML_WORDS \
                else json.dumps(k)
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{key}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(data, list) and data:
        lines = []
        for v in data:
            if isinstance(v, dict | list) and v:
                inner = to_yaml(v, indent + 1)
                lines.append(f"{pad}- {inner.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(v)}")
        return "\n".join(lines)
    return pad + _scalar(data)


_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)
