"""Parity: the native core and the pure-Python reference count every upload the same way,
including hostile ones and any chunking (docs/ingest-semantics.md)."""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adjobs import _core, _reference
from adjobs.plan import KIND_CATEGORICAL, KIND_NUMERIC, IngestPlan
from adjobs.timeformat import compile_time_format


def make_plan(fmt: str = "json", latency_ms: int = 0, span_ms: int = 60_000) -> IngestPlan:
    return IngestPlan(
        format=fmt,
        input_fields=("time", "value", "host", "a.b"),
        field_kinds=(KIND_NUMERIC, KIND_CATEGORICAL, KIND_CATEGORICAL),
        time_format="epoch",
        time_program=compile_time_format("epoch").program,
        default_year=2026,
        bucket_span_ms=span_ms,
        latency_ms=latency_ms,
        field_delimiter=",",
        quote_character='"',
    )


def run_core(plan, body: bytes, cuts: list[int]):
    state = _core.JobIngestState(plan.bucket_span_ms, plan.latency_ms)
    upload = _core.Upload(plan, state)
    times, numeric, codes = [], [], []

    def drain():
        batch_times, batch_numeric, batch_codes = upload.take_batch()
        times.extend(batch_times.tolist())
        numeric.extend(repr(v) for v in batch_numeric[:, 0].tolist())
        codes.extend(tuple(row) for row in batch_codes.tolist())

    bounds = [0, *sorted(cuts), len(body)]
    for start, end in itertools.pairwise(bounds):
        upload.feed(body[start:end])
        drain()
    upload.finish()
    drain()
    return {
        "processed_record_count": upload.processed_record_count,
        "input_field_count": upload.input_field_count,
        "invalid_date_count": upload.invalid_date_count,
        "missing_field_count": upload.missing_field_count,
        "out_of_order_timestamp_count": upload.out_of_order_timestamp_count,
        "input_bytes": upload.consumed_at_failure if upload.failure else upload.input_bytes,
        "latest_record_timestamp": upload.latest_record_timestamp,
        "failed": bool(upload.failure),
        "times": times,
        "numeric": numeric,
        "codes": codes,
        "strings": state.strings.values(),
    }


def run_reference(plan, body: bytes):
    state = _reference.open_job_state(plan)
    result = _reference.run_upload(plan, state, body)
    counts = result.counts
    return {
        "processed_record_count": counts["processed_record_count"],
        "input_field_count": counts["input_field_count"],
        "invalid_date_count": counts["invalid_date_count"],
        "missing_field_count": counts["missing_field_count"],
        "out_of_order_timestamp_count": counts["out_of_order_timestamp_count"],
        "input_bytes": counts["input_bytes"],
        "latest_record_timestamp": counts["latest_record_timestamp"],
        "failed": result.failure is not None,
        "times": list(result.time_ms),
        "numeric": [repr(v) for v in result.numeric[0]],
        "codes": list(zip(*result.codes)),
        "strings": list(state.strings.values),
    }


# Fragments of hostile NDJSON: good records, broken ones, comments, junk, nesting.
FRAGMENTS = [
    b'{"time":%d,"value":1.5,"host":"h1"}',
    b'{"time":"%d","value":"2","a":{"b":"x"}}',
    b'{"time":%d,"value":null,"host":["a",null,{"k":1}]}',
    b'{"time":%d "value":1}',
    b'{"time":%d,"value":1,"value":2,"host":"dup","host":null}',
    b'{"time":%d,"a.b":"dotted","nested":{"deep":{"deeper":[1,[2,3]]}}}',
    b'{"time":%d,"value":"\\u00e9\\ud83d\\ude00","k\\"ey":true}',
    b'{"time":%d,"value":1,',
    b'// comment {"time":1}',
    b'/* block {"time":2} */',
    b"junk",
    b'[{"time":%d},{"time":%d,"value":3}]',
    b'{"time":"not a date","value":4}',
    b'{"time":%d,"value":"\xff\xfe"}',
    b"\x00",
    b'{"time":%d,"value":tru}',
    b'{"time":%d,"value":01}',
    b'{"time":%d,"host":"a\\qb"}',
    b'{"time":%d,"x":{"y":{"z":1}}',
    b"{}",
    b'"scalar" 12 true null',
    b"}",
    b'{"time":-5}',
]
SEPARATORS = [b"\n", b"\r\n", b" ", b"", b"\n\n", b",", b"\n{", b"\t"]


@st.composite
def hostile_json(draw):
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        fragment = draw(st.sampled_from(FRAGMENTS))
        holes = fragment.count(b"%d")
        times = tuple(draw(st.integers(min_value=-100, max_value=4000)) for _ in range(holes))
        parts.append(fragment % times if holes else fragment)
        parts.append(draw(st.sampled_from(SEPARATORS)))
    body = b"".join(parts)
    if draw(st.booleans()) and body:
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=6))
    return body, cuts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_json(), st.sampled_from([0, 120_000]))
def test_json_core_matches_reference(sample, latency_ms):
    body, cuts = sample
    plan = make_plan(latency_ms=latency_ms)
    assert run_core(plan, body, cuts) == run_reference(plan, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_json_arbitrary_bytes(body, cuts):
    plan = make_plan()
    cuts = [c for c in cuts if c <= len(body)]
    assert run_core(plan, body, cuts) == run_reference(plan, body)


CSV_ROWS = [
    b"%d,1.5,h1,x",
    b'%d,"2",  "quoted, host",y',
    b'%d,3,"multi\nline ""q""",z',
    b"%d",
    b"%d,,,",
    b"notadate,1,h,x",
    b"\x00",
    b"",
    b'%d,4,h"mid,x',
]


@st.composite
def csv_body(draw):
    rows = [b"time,value,host,a.b"]
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        row = draw(st.sampled_from(CSV_ROWS))
        rows.append(row % draw(st.integers(min_value=0, max_value=4000)) if b"%d" in row else row)
    body = draw(st.sampled_from([b"\n", b"\r\n"])).join(rows)
    if draw(st.booleans()):
        body += b"\n"
    if draw(st.booleans()) and body:
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=5))
    return body, cuts


@settings(max_examples=300, deadline=None)
@given(csv_body())
def test_csv_core_matches_reference(sample):
    body, cuts = sample
    plan = make_plan("csv")
    assert run_core(plan, body, cuts) == run_reference(plan, body)


def test_numeric_fields_parse_alike():
    for text in ["1", "-1.5", " 2e3 ", "+.5", "5.", "1e400", "nan", "0x10", "", "1,0", "١"]:
        core = _core.parse_number(text.encode())
        reference = _reference.parse_decimal(text)
        assert (math.isnan(core) and math.isnan(reference)) or core == reference, text
