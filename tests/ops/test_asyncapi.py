"""The event API as a document: docs/asyncapi.yaml and docs/schemas/ are `batchyard asyncapi`'s
output, the reference parser accepts the document, and every payload the suite publishes
validates against the schemas (and the malformed ones do not)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import nats
import pytest
import yaml

from events import asyncapi, subjects
from events.payloads import SubmitRequest, decode, encode
from tests.harness import Stack, batch, submit, wait_finished, wait_for
from tests.test_payloads import MALFORMED, _sub

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
SCHEMAS = ROOT / "docs" / "schemas"
PARSER_DIR = ROOT / "tests" / "asyncapi"
NODE = shutil.which("node")
# What a JSON Schema cannot say (the Struct checks it in code), or Python's regex reads
# differently from ECMA-262 (`$` before a final newline).
SCHEMA_CANNOT = ("duplicate id", "not valid UTF-8", "not valid JSON", "empty message",
                 "batch_id trailing newline")


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _channels() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(DOC.read_text())
    return {c["address"]: c for c in doc["channels"].values()}


def _msg_id_pattern(subject: str) -> str:
    doc = yaml.safe_load(DOC.read_text())
    (ref,) = _channels()[subject]["messages"].values()
    name = ref["$ref"].rsplit("/", 1)[1]
    return str(doc["components"]["messages"][name]["headers"]["properties"]["Nats-Msg-Id"]
               ["pattern"])


def test_docs_are_the_command_output(tmp_path: Path) -> None:
    """docs/asyncapi.yaml and docs/schemas/ are exactly what `batchyard asyncapi` writes:
    run `batchyard asyncapi --schemas docs/schemas > docs/asyncapi.yaml` after a change."""
    out = subprocess.run([sys.executable, "-m", "consumers", "asyncapi", "--schemas",
                          str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=60).stdout
    assert out == DOC.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in
                                                                SCHEMAS.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_text() == (SCHEMAS / path.name).read_text(), path.name
    # The YAML writer's output reads back as the document it was given.
    assert yaml.safe_load(out) == json.loads(json.dumps(asyncapi.document()))


@pytest.mark.skipif(NODE is None, reason="no `node` on PATH: `make deps` installs Node.js "
                    "(apt nodejs, npm); the AsyncAPI reference parser needs it")
def test_reference_parser_accepts_the_document() -> None:
    """@asyncapi/parser parses docs/asyncapi.yaml with no error."""
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.skip("@asyncapi/parser is not installed: `make deps` runs "
                    "`npm ci --prefix tests/asyncapi`")
    assert NODE
    run = subprocess.run([NODE, str(PARSER_DIR / "validate.mjs"), str(DOC)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    diagnostics = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d for d in diagnostics if d["severity"] <= 1] == []


def test_every_subject_and_stream_is_documented() -> None:
    """Each subject is a channel with its stream and the Nats-Msg-Id every publisher sets."""
    every = {v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str)}
    channels = _channels()
    assert set(channels) == every
    for subject, channel in channels.items():
        assert subject in channel["x-jetstream"]["subjects"]
    ids = {
        subjects.SUBMIT: [subjects.submit_id("repo-42.c9", 3), subjects.replay_id(17),
                          subjects.held_id(99)],
        subjects.POLL: [subjects.poll_id("b1", 0), subjects.poll_id("b1", 2, 3),
                        subjects.pack_poll_id("pk" + "0a" * 16), subjects.replay_id(5)],
        subjects.COMPLETED: [subjects.completed_id("b1", 1)],
        subjects.DEAD: [subjects.dead_id(12)],
        subjects.AUTH_FAILED: [subjects.parked_id(8)],
        subjects.KEY_VALID: ["key.valid:3f2a9c1b7d4e:4", "key.valid:3f2a9c1b7d4e:4:17"],
        subjects.KEY_INVALID: ["key.invalid:3f2a9c1b7d4e:5"],
    }
    for subject, examples in ids.items():
        for msg_id in examples:
            jsonschema.validate(msg_id, {"type": "string", "pattern": _msg_id_pattern(subject)})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("poll:b1:0", {"type": "string",
                                          "pattern": _msg_id_pattern(subjects.SUBMIT)})
    streams = {s["name"] for s in yaml.safe_load(DOC.read_text())["x-jetstream-streams"]}
    assert {"BATCH", "BATCH_PARKED", "KEY", "KV_KEY_HEALTH", "KV_QUOTA",
            "OBJ_BATCH_INPUTS"} <= streams


def test_examples_and_suite_payloads_validate() -> None:
    """Every channel's example, the harness's batches and test_payloads' valid messages
    validate against docs/schemas and decode with their Struct."""
    for c in asyncapi.CHANNELS:
        data = encode(c.example)
        _validator(c.struct.__name__).validate(json.loads(data))
        assert decode(data, c.struct) == c.example
    submit_schema = _validator("SubmitRequest")
    for req in (batch("b1", 1), batch("b2", 30, attempt=2, model="gemini-embedding-2"),
                batch("b3", 5, task_type="CODE_RETRIEVAL_QUERY", output_dimensionality=768,
                      source="indexer"),
                SubmitRequest(batch_id="b4", items_object="in/b4.jsonl")):
        submit_schema.validate(msgspec.to_builtins(req))
    for data in (_sub(extra={"x": 1}), _sub(v=1, items=..., items_object="in/b1.jsonl")):
        submit_schema.validate(json.loads(data))


@pytest.mark.parametrize(("case", "data", "reason"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_submits_fail_the_schema(case: str, data: bytes, reason: str) -> None:
    """What the Struct rejects the schema rejects too, where a schema can say it."""
    if case in SCHEMA_CANNOT or any(r in reason for r in SCHEMA_CANNOT):
        pytest.skip(f"checked in code only: {reason}")
    with pytest.raises(jsonschema.ValidationError):
        _validator("SubmitRequest").validate(json.loads(data))


async def _read(nc: nats.NATS, subject: str) -> list[tuple[bytes, str | None]]:
    """Every message on `subject`, with its Nats-Msg-Id."""
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return out
            out.append((msg.data, (msg.headers or {}).get("Nats-Msg-Id")))
    finally:
        await sub.unsubscribe()


async def test_every_message_a_run_publishes_validates(stack: Stack) -> None:
    """A run with a Batch API batch, an online batch, a dead letter and a key check: every
    message on every subject has a payload and a Nats-Msg-Id its channel documents."""
    await stack.pod("all")
    nc = await stack.nc()
    await submit(nc, batch("large", 30))
    await submit(nc, batch("small", 3))
    await nc.jetstream().publish(subjects.SUBMIT, b'{"batch_id": "bad", "items": []}',
                                 headers={"Nats-Msg-Id": subjects.submit_id("bad", 0)})
    await wait_finished(stack, 2)

    async def settled() -> bool:
        return len(await _read(nc, subjects.COMPLETED)) == 2 and \
            len(await _read(nc, subjects.DEAD)) == 1
    await wait_for(settled, 30, what="two completions and a dead letter")
    names = {c.subject: c.struct.__name__ for c in asyncapi.CHANNELS}
    seen: dict[str, int] = {}
    for subject in (subjects.SUBMIT, subjects.POLL, subjects.COMPLETED, subjects.DEAD,
                    subjects.KEY_VALID):
        schema, pattern = _validator(names[subject]), _msg_id_pattern(subject)
        for data, msg_id in await _read(nc, subject):
            body = json.loads(data)
            if body.get("batch_id") != "bad" or subject != subjects.SUBMIT:
                schema.validate(body)
            jsonschema.validate(msg_id, {"type": "string", "pattern": pattern})
            seen[subject] = seen.get(subject, 0) + 1
    await nc.close()
    assert seen == {subjects.SUBMIT: 3, subjects.POLL: 1, subjects.COMPLETED: 2,
                    subjects.DEAD: 1, subjects.KEY_VALID: 1}, seen
