"""A property-based stream of malformed and hostile `batch.submit` messages (hypothesis).

Every message is built to be invalid under CONTRACT §3 by construction, except the
`valid` kind: well-formed batches with hostile content (any Unicode, NUL characters,
quotes and SQL, 128-character ids, unknown fields, a `models/` prefix, an input object
that does not exist) that batchyard must accept and account for.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from events.payloads import ID_PATTERN

ID_CHARS = string.ascii_letters + string.digits + "._:-"
_ID = re.compile(ID_PATTERN)
TASK_TYPES = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
              "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")


@dataclass(frozen=True)
class Hostile:
    kind: str  # what was wrong with it (or "valid")
    data: bytes
    # for kind "valid": the batch as it must be accounted for
    batch_id: str = ""
    model: str = ""
    items: tuple[str, ...] = ()
    items_object: bool = False


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


ids = st.text(ID_CHARS, min_size=1, max_size=24)
bad_ids = st.one_of(
    st.just(""),
    st.text(ID_CHARS, min_size=129, max_size=160),
    st.text(min_size=1, max_size=30).filter(lambda s: _ID.fullmatch(s) is None),
    st.sampled_from(["a b", "x\n", "../../etc/passwd", "'; DROP TABLE batchyard.batches; --",
                     "é", "a/b", "a\x00b", "$(reboot)", "{{batch}}", "%00"]),
)
texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80)
hostile_texts = st.one_of(
    texts,
    st.sampled_from(["\x00", "a\x00b", "'; DROP TABLE batchyard.embeddings; --", "\u202eevil",
                     "😀" * 50, "\ufeff", "\\u0000", "</script>", "\r\n\t", "NaN", "null"]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=8)
non_strings = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.lists(json_scalars, max_size=3), st.dictionaries(
                            st.text(max_size=4), json_scalars, max_size=2))


@st.composite
def _items(draw: st.DrawFn, n_max: int = 4) -> list[dict[str, Any]]:
    n = draw(st.integers(1, n_max))
    return [{"id": f"i{i}", "text": draw(texts)} for i in range(n)]


@st.composite
def _base(draw: st.DrawFn) -> dict[str, Any]:
    return {"batch_id": draw(ids), "items": draw(_items())}


def _broken(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Hostile]:
    @st.composite
    def build(draw: st.DrawFn) -> Hostile:
        msg = draw(_base())
        msg[field] = draw(values)
        return Hostile(f"bad_{field}", _dumps(msg))
    return build()


@st.composite
def _bad_items(draw: st.DrawFn) -> Hostile:
    msg = draw(_base())
    items = msg["items"]
    how = draw(st.sampled_from(["empty", "not_list", "bad_id", "empty_text", "dup_id",
                                "long_text", "no_text", "not_object", "text_type", "deep"]))
    if how == "empty":
        msg["items"] = []
    elif how == "not_list":
        msg["items"] = draw(st.one_of(json_scalars, st.dictionaries(st.text(max_size=4),
                                                                     json_scalars, max_size=2)))
    elif how == "bad_id":
        items[draw(st.integers(0, len(items) - 1))]["id"] = draw(bad_ids)
    elif how == "empty_text":
        items[-1]["text"] = ""
    elif how == "dup_id":
        items.append(dict(items[0]))
    elif how == "long_text":
        items[0]["text"] = "y" * draw(st.integers(32_769, 40_000))
    elif how == "no_text":
        del items[-1]["text"]
    elif how == "not_object":
        items[-1] = draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=2)))
    elif how == "text_type":
        items[0]["text"] = draw(non_strings.filter(lambda x: not isinstance(x, str)))
    else:
        depth = draw(st.integers(50, 20_000))
        data = _dumps(msg).replace(b'"items": [', b'"items": [' + b"[" * depth, 1)
        data = data.replace(b"]", b"]" * (depth + 1), 1)
        return Hostile("deep_nesting", data)
    return Hostile(f"items_{how}", _dumps(msg))


@st.composite
def _raw(draw: st.DrawFn) -> Hostile:
    how = draw(st.sampled_from(["garbage", "not_object", "truncated", "bad_utf8", "surrogate",
                                "no_batch_id", "both_inputs", "no_inputs", "empty"]))
    if how == "garbage":
        data = draw(st.binary(min_size=1, max_size=200).filter(lambda b: b"{" not in b))
    elif how == "not_object":
        data = _dumps(draw(json_values.filter(lambda x: not isinstance(x, dict))))
    elif how == "truncated":
        whole = _dumps(draw(_base()))
        data = whole[:draw(st.integers(0, len(whole) - 1))]
    elif how == "bad_utf8":
        data = _dumps(draw(_base())).replace(b'"text": "', b'"text": "\xff\xfe', 1)
    elif how == "surrogate":
        data = _dumps(draw(_base())).replace(b'"text": "', b'"text": "\\ud800', 1)
    elif how == "no_batch_id":
        msg = draw(_base())
        del msg["batch_id"]
        data = _dumps(msg)
    elif how == "both_inputs":
        msg = draw(_base())
        msg["items_object"] = "inputs.jsonl"
        data = _dumps(msg)
    elif how == "no_inputs":
        msg = draw(_base())
        del msg["items"]
        data = _dumps(msg)
    else:
        data = b""
    return Hostile(how, data)


@st.composite
def _valid(draw: st.DrawFn) -> Hostile:
    """A well-formed batch with hostile content; batch and item ids are made unique later."""
    n = draw(st.one_of(st.integers(1, 10), st.integers(11, 14)))
    items = [{"id": draw(ids), "text": draw(hostile_texts)} for _ in range(n)]
    model = draw(st.sampled_from(["gemini-embedding-001", "models/gemini-embedding-001",
                                  "gemini-embedding-2"]))
    msg: dict[str, Any] = {"batch_id": draw(ids), "items": items, "model": model,
                           "output_dimensionality": draw(st.integers(1, 16))}
    if draw(st.booleans()):
        msg["task_type"] = draw(st.sampled_from(TASK_TYPES))
    if draw(st.booleans()):
        msg[draw(st.text(max_size=12).filter(lambda k: k not in _FIELDS))] = draw(json_values)
    if draw(st.integers(0, 19)) == 0:
        del msg["items"]
        msg["items_object"] = "missing-" + draw(ids)
    return Hostile("valid", b"", model=model.removeprefix("models/"),
                   items_object="items_object" in msg, batch_id=_dumps(msg).decode("utf-8"))


_FIELDS = {"v", "batch_id", "items", "items_object", "model", "task_type",
           "output_dimensionality", "source", "attempt"}

message = st.one_of(
    _raw(), _bad_items(),
    _broken("batch_id", st.one_of(bad_ids, non_strings)),
    _broken("v", st.one_of(st.integers().filter(lambda v: v != 1), st.text(max_size=4),
                           st.floats(allow_nan=False).filter(lambda v: v != 1))),
    _broken("attempt", st.one_of(st.integers(max_value=-1), st.integers(min_value=1001),
                                 st.just(10**400), st.text(max_size=4), st.just(1.5))),
    _broken("output_dimensionality", st.one_of(st.integers(max_value=0),
                                               st.integers(min_value=3073), st.just(True))),
    _broken("task_type", st.text(max_size=20).filter(lambda t: t not in TASK_TYPES
                                                     and t != "TASK_TYPE_UNSPECIFIED")),
    _broken("model", st.one_of(st.sampled_from(["", "models/", "../x", "a b", "-x", "m" * 129]),
                               non_strings)),
    _broken("source", st.text(ID_CHARS, min_size=1025, max_size=1100)),
    _broken("items_object", st.one_of(bad_ids.filter(lambda s: "/" not in s and s != ""),
                                      st.just(""))),
)


def _finish(h: Hostile, n: int) -> Hostile:
    """Give a valid message its unique batch and item ids (prefixed by `n`)."""
    if h.kind != "valid":
        return h
    msg = json.loads(h.batch_id)
    msg["batch_id"] = f"hv{n}-{msg['batch_id']}"[:128]
    items: tuple[str, ...] = ()
    if "items" in msg:
        for i, item in enumerate(msg["items"]):
            item["id"] = f"hv{n}.{i}-{item['id']}"[:128]
        items = tuple(item["id"] for item in msg["items"])
    return Hostile("valid", _dumps(msg), batch_id=msg["batch_id"], model=h.model, items=items,
                   items_object=h.items_object)


def draw_stream(n: int, seed: int = 0) -> list[Hostile]:
    """At least `n` messages drawn by hypothesis, a few of them valid (see the module)."""
    out: list[Hostile] = []
    # about one message in twenty is a valid batch with hostile content
    chunk = st.lists(st.one_of(*[message] * 19, _valid()), min_size=40, max_size=80)

    @settings(max_examples=50, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(chunk)
    def collect(msgs: list[Hostile]) -> None:
        out.extend(msgs)

    rounds = 0
    while len(out) < n:
        hypothesis_seed(seed + rounds)(collect)()
        rounds += 1
    return [_finish(h, i) for i, h in enumerate(out)]
