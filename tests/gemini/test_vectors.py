"""Reading embeddings off the wire: every malformed value is one item's clear error,
never a crash and never a wrong vector; a malformed answer is one PermanentError."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from consumers import vectors
from consumers.errors import PermanentError
from consumers.gemini.jobs import _raw_job


@pytest.mark.parametrize(("raw", "expected"), [
    (b"[0,1.5,-2e-3]", [0.0, 1.5, -0.002]),
    (b" [1.25, 2] ", [1.25, 2.0]),
    (b"[]", []),
    (b"[18446744073709551615]", [1.8446744e19]),
])
def test_numbers_read_as_float32(raw: bytes, expected: list[float]) -> None:
    got = vectors.from_json(msgspec.Raw(raw))
    assert got.dtype == np.float32
    assert got.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("raw", [
    b'[1.5,"x"]', b"[1e400]", b"[[1]]", b"[1,[2]]", b"[1.5,null]", b"5", b"{}", b"null",
    b'["NaN"]', b"[true]", b'"[1]"',
])
def test_anything_else_is_not_a_vector(raw: bytes) -> None:
    with pytest.raises(vectors.NotAVector):
        vectors.from_json(raw)
    assert vectors.from_json(b"[1]").tolist() == [1.0]  # the parser is still usable


def test_beyond_float32_is_inf_for_check_vector_to_reject() -> None:
    with np.errstate(over="ignore"):
        got = vectors.from_json(b"[3e38, 1e39]")
    assert got[0] == np.float32(3e38) and np.isinf(got[1])


def _operation(*rows: object) -> bytes:
    return json.dumps({"name": "batches/x", "metadata": {
        "state": "BATCH_STATE_SUCCEEDED", "displayName": "b:0",
        "output": {"inlinedEmbedContentResponses": {"inlinedResponses": list(rows)}}}},
        allow_nan=True).encode()


def _embedding(values: object) -> dict[str, object]:
    return {"response": {"embedding": {"values": values}}}


def test_each_inlined_result_is_read_on_its_own() -> None:
    job = _raw_job(_operation(
        _embedding([1, 2.5]), {"error": {"code": 500, "message": "boom"}}, {"error": {"code": 13}},
        _embedding([[1, 2], [3]]), _embedding("x"), _embedding(["NaN", 1]), _embedding(None),
        {"response": {}}, _embedding(float("nan")), _embedding([float("inf")])), "n")
    assert (job.name, job.display_name, job.state) == ("batches/x", "b:0", "succeeded")
    assert job.inline is not None
    got = [(r.values.tolist() if r.values is not None else None, r.error, r.status)
           for r in job.inline]
    invalid = "INVALID_EMBEDDING"
    assert got == [
        ([1.0, 2.5], None, None),
        (None, "boom", None),
        (None, "error 13", None),
        (None, "embedding values are not a flat list of numbers", invalid),
        (None, "embedding values are not a list", invalid),
        (None, "embedding values are not all numbers", invalid),
        (None, None, None),
        (None, None, None),
        # A bare NaN literal: only stdlib json reads it, and it becomes null.
        (None, None, None),
        (None, "embedding values are not all numbers", invalid),
    ]


def test_keyed_results_read_together_as_one_by_one() -> None:
    """Keyed responses of the usual shape share one matrix; any other is read on its own."""
    rows = [_embedding([1, 2.5]), _embedding([3, 4]), _embedding([1, 2, 3]),
            _embedding([[1, 2], [3]]), {"error": {"code": 13}}, _embedding([5, 6])]
    job = _raw_job(_operation(*[{**row, "metadata": {"key": f"k{n}"}}
                                for n, row in enumerate(rows)]), "n")
    assert job.inline is not None
    got = [(r.values.tolist() if r.values is not None else None, r.error, r.status, r.key)
           for r in job.inline]
    assert got == [
        ([1.0, 2.5], None, None, "k0"),
        ([3.0, 4.0], None, None, "k1"),
        ([1.0, 2.0, 3.0], None, None, "k2"),
        (None, "embedding values are not a flat list of numbers", "INVALID_EMBEDDING", "k3"),
        (None, "error 13", None, "k4"),
        ([5.0, 6.0], None, None, "k5"),
    ]


def test_vectors_checked_together_each_get_their_own_verdict() -> None:
    from consumers.batch.results import check_vector, check_vectors

    good = np.asarray([0.6, 0.8], dtype=np.float32)
    vectors = [good, np.asarray([np.nan, 1], dtype=np.float32), None, np.zeros(2, np.float32),
               np.asarray([1, 2, 3], dtype=np.float32), np.asarray([], dtype=np.float32),
               np.asarray([1e-40, 0], dtype=np.float32), np.asarray([3e38, 3e38], np.float32),
               np.asarray([1e200, 1.0]), good]
    for dims in (2, 3, None):
        assert check_vectors(vectors, dims) == [
            None if v is None else check_vector(v, dims) for v in vectors]


@pytest.mark.parametrize("body", [
    b"[1]", b'{"metadata": 5}', b'{"name": 7}',
    b'{"metadata":{"output":{"inlinedResponses":{"inlinedResponses":[5]}}}}',
    b'{"metadata":{"output":{"inlinedResponses":{"inlinedResponses":{"a":1}}}}}',
])
def test_a_malformed_answer_is_permanent(body: bytes) -> None:
    with pytest.raises(PermanentError, match="unexpected response shape"):
        _raw_job(body, "n")
    assert _raw_job(_operation(_embedding([1])), "n").state == "succeeded"


def test_empty_and_running_answers() -> None:
    assert _raw_job(b"", "batches/n").name == "batches/n"
    job = _raw_job(b'{"name":"batches/y","metadata":{"state":"BATCH_STATE_RUNNING"}}', "n")
    assert (job.name, job.state, job.inline, job.output_file) == ("batches/y", "running",
                                                                   None, None)
    done = _raw_job(b'{"metadata":{"state":"BATCH_STATE_SUCCEEDED",'
                    b'"output":{"responsesFile":"files/out"}}}', "batches/z")
    assert (done.name, done.state, done.output_file) == ("batches/z", "succeeded", "files/out")


def test_unit_rows_scales_each_row_to_unit_length() -> None:
    rng = np.random.default_rng(1)
    matrix = (rng.standard_normal((5, 768)) * 0.3).astype(np.float32)
    unit = vectors.unit_rows(matrix)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert np.allclose(unit * np.linalg.norm(matrix.astype(np.float64), axis=1)[:, None],
                       matrix, rtol=1e-6)  # only the length changes
    assert np.allclose(vectors.unit_rows(matrix[0]), unit[0])  # one vector alike
    # Squares of these under- and overflow float32; in float64 they do not.
    for extreme in (np.float32(1e-40), np.float32(3e38)):
        assert np.allclose(np.linalg.norm(vectors.unit_rows(np.full(8, extreme))), 1.0)


def test_rows_are_encoded_at_unit_length_when_asked() -> None:
    from consumers.store.pgcopy import HEADER, encode_rows

    rows = [("a", np.asarray([3.0, 4.0], dtype=np.float32)),
            ("b", np.asarray([0.0, 0.5], dtype=np.float32))]
    mixed = [*rows, ("c", np.asarray([2.0], dtype=np.float32))]
    assert encode_rows("m", "b", rows, normalize=True) == encode_rows(
        "m", "b", [("a", np.asarray([0.6, 0.8])), ("b", np.asarray([0.0, 1.0]))])
    assert encode_rows("m", "b", mixed, normalize=True).endswith(
        encode_rows("m", "b", [("c", np.asarray([1.0]))])[len(HEADER):])  # sizes differ
    assert encode_rows("m", "b", rows) != encode_rows("m", "b", rows, normalize=True)
