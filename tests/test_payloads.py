"""Payload validation: every malformed input gets a reason naming what was wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.batch.letters import original
from events import (
    Completed,
    InvalidMessage,
    Item,
    PollRequest,
    SubmitRequest,
    decode,
    decode_items_jsonl,
    decode_key_rotated,
    encode,
    encode_items_jsonl,
)
from events.payloads import MAX_TEXT_CHARS


def _sub(**fields: object) -> bytes:
    body = {"batch_id": "b1", "items": [{"id": "i1", "text": "hello"}]}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"hello", "not valid JSON"),
    ("truncated json", b'{"batch_id": "b1", ', "not valid JSON"),
    ("empty", b"", "empty message"),
    ("whitespace only", b"   ", "empty message"),
    ("array", b"[1, 2]", "message: expected `object`, got `array`"),
    ("string", b'"b1"', "message: expected `object`, got `str`"),
    ("null", b"null", "message: expected `object`, got `null`"),
    ("number", b"42", "message: expected `object`, got `int`"),
    ("invalid utf-8", b'{"batch_id": "b\xff1", "items": []}', "not valid UTF-8"),
    ("invalid utf-8 in text", _sub()[:-4] + b'\xc3"}]}', "not valid UTF-8"),
    ("missing batch_id", b'{"items": [{"id": "a", "text": "t"}]}', "message: object missing required field `batch_id`"),
    ("batch_id wrong type", _sub(batch_id=7), "batch_id: expected `str`, got `int`"),
    ("batch_id empty", _sub(batch_id=""), "batch_id: expected `str` of length >= 1"),
    ("batch_id too long", _sub(batch_id="a" * 129), "batch_id: expected `str` of length <= 128"),
    ("batch_id space", _sub(batch_id="a b"), "batch_id: expected `str` matching regex"),
    ("batch_id slash", _sub(batch_id="a/b"), "batch_id: expected `str` matching regex"),
    ("batch_id hash", _sub(batch_id="a#1"), "batch_id: expected `str` matching regex"),
    ("batch_id trailing newline", _sub(batch_id="b1\n"), "batch_id: expected `str` matching regex"),
    ("batch_id unicode", _sub(batch_id="bätch"), "batch_id: expected `str` matching regex"),
    ("items not a list", _sub(items={"id": "a"}), "items: expected `array | null`, got `object`"),
    ("items empty", _sub(items=[]), "items: must not be empty"),
    ("item not object", _sub(items=["x"]), "items[0]: expected `object`, got `str`"),
    ("item id missing", _sub(items=[{"text": "t"}]), "items[0]: object missing required field `id`"),
    ("item id bad", _sub(items=[{"id": "a b", "text": "t"}]), "items[0].id: expected `str` matching"),
    ("item id too long", _sub(items=[{"id": "i" * 129, "text": "t"}]), "items[0].id: expected `str` of length <= 128"),
    ("duplicate ids", _sub(items=[{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]), "items: duplicate id 'a'"),
    ("empty text", _sub(items=[{"id": "a", "text": ""}]), "items[0].text: expected `str` of length >= 1"),
    ("oversized text", _sub(items=[{"id": "a", "text": "x" * (MAX_TEXT_CHARS + 1)}]), f"items[0].text: expected `str` of length <= {MAX_TEXT_CHARS}"),
    ("text wrong type", _sub(items=[{"id": "a", "text": 3}]), "items[0].text: expected `str`, got `int`"),
    ("both items and object", _sub(items_object="obj"), "exactly one of items or items_object"),
    ("neither items nor object", _sub(items=...), "exactly one of items or items_object"),
    ("bad object name", _sub(items=..., items_object="a b"), "items_object: expected `str` matching"),
    ("unknown version", _sub(v=2), "v: unsupported version 2"),
    ("version as string", _sub(v="1"), "v: expected `int`, got `str`"),
    ("dimensionality zero", _sub(output_dimensionality=0), "output_dimensionality: expected `int` >= 1"),
    ("dimensionality too big", _sub(output_dimensionality=3073), "output_dimensionality: expected `int` <= 3072"),
    ("dimensionality float", _sub(output_dimensionality=7.5), "output_dimensionality: expected `int | null`, got `float`"),
    ("dimensionality bool", _sub(output_dimensionality=True), "output_dimensionality: expected `int | null`, got `bool`"),
    ("bad task type", _sub(task_type="SUMMARISE"), "task_type: invalid enum value 'SUMMARISE'"),
    ("model with path", _sub(model="../../files/x"), "model: expected `str` matching regex"),
    ("model with query", _sub(model="m?key=1"), "model: expected `str` matching regex"),
    ("negative attempt", _sub(attempt=-1), "attempt: expected `int` >= 0"),
    ("attempt too big", _sub(attempt=10**6), "attempt: expected `int` <= 1000"),
    ("source too long", _sub(source="s" * 1025), "source: expected `str` of length <= 1024"),
]


@pytest.mark.parametrize(("case", "data", "reason"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_submit_is_rejected_with_reason(case: str, data: bytes, reason: str) -> None:
    """Each malformed batch.submit raises InvalidMessage whose reason names the problem."""
    with pytest.raises(InvalidMessage) as info:
        decode(data, SubmitRequest)
    assert reason in info.value.reason, info.value.reason


def test_valid_submit_with_defaults_and_unknown_fields() -> None:
    """A minimal message decodes with the contract's defaults; unknown fields are ignored."""
    msg = decode(_sub(extra={"x": 1}), SubmitRequest)
    assert msg.v == 1 and msg.model == "gemini-embedding-001" and msg.attempt == 0
    assert msg.items == [Item("i1", "hello")] and msg.items_object is None
    assert decode(_sub(v=1, items=..., items_object="in/b1.jsonl"), SubmitRequest).items is None


def test_encode_decode_round_trip() -> None:
    """What batchyard encodes it decodes back unchanged."""
    poll = PollRequest(batch_id="b", job_name="batches/abc", attempt=2, shard=3)
    assert decode(encode(poll), PollRequest) == poll
    assert json.loads(encode(poll))["v"] == 1


def test_poll_request_job_name_is_checked() -> None:
    """A job name that is not batches/<id> is rejected."""
    with pytest.raises(InvalidMessage, match="job_name"):
        decode(b'{"batch_id": "b", "job_name": "files/x"}', PollRequest)


def test_key_rotated_empty_body_is_valid() -> None:
    """`nats pub key.rotated ''` is a valid rotation notice."""
    assert decode_key_rotated(b"").fingerprint is None
    assert decode_key_rotated(b'{"fingerprint": "abc"}').fingerprint == "abc"


def test_items_jsonl_round_trip_and_errors() -> None:
    """Object-store inputs decode like inline items, with the line of any error."""
    items = [Item(f"i{n}", f"text {n}") for n in range(5)]
    assert decode_items_jsonl(encode_items_jsonl(items)) == items
    with pytest.raises(InvalidMessage, match="line 2: not valid JSON"):
        decode_items_jsonl(b'{"id": "a", "text": "t"}\n{oops\n')
    with pytest.raises(InvalidMessage, match="line 2: not valid UTF-8"):
        decode_items_jsonl(b'{"id": "a", "text": "t"}\n{"id": "b", "text": "\xc3"}\n')
    with pytest.raises(InvalidMessage, match="duplicate id"):
        decode_items_jsonl(b'{"id": "a", "text": "t"}\n{"id": "a", "text": "t"}\n')
    with pytest.raises(InvalidMessage, match="must not be empty"):
        decode_items_jsonl(b"\n")


def test_completed_requires_known_status() -> None:
    """batch.completed only carries succeeded or partial."""
    with pytest.raises(InvalidMessage, match="status"):
        decode(
            b'{"batch_id":"b","job_name":null,"status":"failed","items_total":1,'
            b'"items_embedded":0,"items_failed":1,"completed_at":"2026-01-01T00:00:00Z"}',
            Completed,
        )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    """Whatever the bytes, decoding either succeeds or raises InvalidMessage."""
    try:
        decode(data, SubmitRequest)
    except InvalidMessage as exc:
        assert exc.reason


@pytest.mark.parametrize("data", [
    b'{"extra": ' + b"[" * 100_000 + b"]" * 100_000 + b', "batch_id": "b", "items": []}',
    b'{"batch_id": "b", "items": [{"id": "a", "text": ' + b"[" * 100_000 + b"}]}",
    b"[" * 100_000,
])
def test_deep_nesting_is_an_invalid_message(data: bytes) -> None:
    """A hostile, deeply nested message is rejected like any bad one, never a crash."""
    with pytest.raises(InvalidMessage):
        decode(data, SubmitRequest)
    assert isinstance(original(data), str | list | dict)
