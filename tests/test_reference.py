"""Tests of the pure-Python reference reader and counter (``adjobs._reference``).

Expected values come from ``shared/spec/post-data.md`` (sections 1-3, 5, 6c, 9),
``shared/spec/examples.json`` and ``docs/ingest-semantics.md`` ([R1]-[R6], [C1]-[C6]).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adjobs import _reference as ref
from adjobs.plan import KIND_CATEGORICAL, KIND_NUMERIC, KIND_TEXT, IngestPlan
from adjobs.timeformat import compile_time_format

EXAMPLES_PATH = Path("/work/shared/spec/examples.json")
DEFAULT_YEAR = 2026
MALFORMED = "The input JSON data is malformed."

# ---------------------------------------------------------------------------------------
# Helpers: job config -> plan, and a tiny job service that builds ES data counts
# ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Functions whose field_name is not a metric (spec 1.4 kinds: only metric fields are numeric).
_COUNT_FUNCTIONS = {
    "count",
    "low_count",
    "high_count",
    "non_zero_count",
    "low_non_zero_count",
    "high_non_zero_count",
    "distinct_count",
    "low_distinct_count",
    "high_distinct_count",
}


def duration_ms(text: str | None, default: str) -> int:
    """Milliseconds of an ES time value such as ``"15m"``."""
    match = _DURATION.fullmatch(text or default)
    assert match, text
    return int(match.group(1)) * _DURATION_MS[match.group(2)]


def plan_from_config(config: dict) -> IngestPlan:
    """Map a job config to an IngestPlan (input fields in spec 1.4 first-occurrence order)."""
    analysis = config["analysis_config"]
    data = config.get("data_description", {})
    time_field = data.get("time_field", "time")
    time_format = data.get("time_format", "epoch_ms")
    candidates: list[tuple[str | None, int]] = []
    for detector in analysis["detectors"]:
        is_metric = detector.get("function", "metric") not in _COUNT_FUNCTIONS
        candidates.append((detector.get("field_name"), KIND_NUMERIC if is_metric else KIND_TEXT))
        for key in ("by_field_name", "over_field_name", "partition_field_name"):
            candidates.append((detector.get(key), KIND_CATEGORICAL))
    candidates += [(name, KIND_CATEGORICAL) for name in analysis.get("influencers", [])]
    candidates.append((analysis.get("categorization_field_name"), KIND_TEXT))
    candidates.append((analysis.get("summary_count_field_name"), KIND_TEXT))
    fields: list[str] = []
    kinds: list[int] = []
    for name, kind in candidates:
        if not name or name == "mlcategory" or name == time_field or name in fields:
            continue
        fields.append(name)
        kinds.append(kind)
    fmt = data.get("format", "xcontent")
    extra = {}
    if "field_delimiter" in data:
        extra["field_delimiter"] = data["field_delimiter"]
    if "quote_character" in data:
        extra["quote_character"] = data["quote_character"]
    return IngestPlan(
        format="csv" if fmt in ("delimited", "delineated") else "json",
        input_fields=(time_field, *fields),
        field_kinds=tuple(kinds),
        time_format=time_format,
        time_program=compile_time_format(time_format).program,
        default_year=DEFAULT_YEAR,
        bucket_span_ms=duration_ms(analysis.get("bucket_span"), "5m"),
        latency_ms=duration_ms(analysis.get("latency"), "0s"),
        **extra,
    )


def make_plan(
    fields=("value",),
    kinds=None,
    *,
    fmt="json",
    time_format="epoch",
    span_ms=1000,
    latency_ms=0,
    time_field="time",
    **extra,
) -> IngestPlan:
    """A plan for targeted tests: time field plus ``fields`` (numeric by default)."""
    kinds = tuple(kinds) if kinds is not None else (KIND_NUMERIC,) * len(fields)
    return IngestPlan(
        format=fmt,
        input_fields=(time_field, *fields),
        field_kinds=kinds,
        time_format=time_format,
        time_program=compile_time_format(time_format).program,
        default_year=DEFAULT_YEAR,
        bucket_span_ms=span_ms,
        latency_ms=latency_ms,
        **extra,
    )


_COUNTERS = (
    "processed_record_count",
    "input_bytes",
    "input_field_count",
    "invalid_date_count",
    "missing_field_count",
    "out_of_order_timestamp_count",
    "empty_bucket_count",
    "sparse_bucket_count",
    "bucket_count",
)
_FIELD_ORDER = (
    "job_id",
    "processed_record_count",
    "processed_field_count",
    "input_bytes",
    "input_field_count",
    "invalid_date_count",
    "missing_field_count",
    "out_of_order_timestamp_count",
    "empty_bucket_count",
    "sparse_bucket_count",
    "bucket_count",
    "earliest_record_timestamp",
    "latest_record_timestamp",
    "latest_empty_bucket_timestamp",
    "latest_sparse_bucket_timestamp",
    "input_record_count",
)


class SimulatedJob:
    """The job-service side of spec 1.2/1.3/10 around :func:`_reference.run_upload`."""

    def __init__(self, plan: IngestPlan) -> None:
        self.plan = plan
        self.k = plan.analysed_fields_per_record
        self.state = ref.open_job_state(plan)
        self.totals = dict.fromkeys(_COUNTERS, 0)
        self.totals.update(latest_empty_bucket_timestamp=None, latest_sparse_bucket_timestamp=None)

    def _move_diagnostics(self, incremental: dict) -> None:
        # spec 10 move_pending_diag_counts: counts to both copies, latest values forward only.
        diagnostics = self.state.diagnostics
        for name, value in zip(
            ("bucket_count", "empty_bucket_count", "sparse_bucket_count"),
            diagnostics.take_counts(),
        ):
            incremental[name] += value
            self.totals[name] += value
        for name, value in (
            ("latest_empty_bucket_timestamp", diagnostics.latest_empty_bucket_ms),
            ("latest_sparse_bucket_timestamp", diagnostics.latest_sparse_bucket_ms),
        ):
            if value is not None:
                incremental[name] = value
                if self.totals[name] is None or value > self.totals[name]:
                    self.totals[name] = value

    def upload(self, body: bytes) -> tuple[dict, ref.UploadResult]:
        incremental = dict.fromkeys(_COUNTERS, 0)
        incremental.update(latest_empty_bucket_timestamp=None, latest_sparse_bucket_timestamp=None)
        self._move_diagnostics(incremental)
        result = ref.run_upload(self.plan, self.state, body)
        for name in _COUNTERS[:6]:
            incremental[name] += result.counts[name]
            self.totals[name] += result.counts[name]
        incremental["earliest_record_timestamp"] = result.counts["earliest_record_timestamp"]
        incremental["latest_record_timestamp"] = result.counts["latest_record_timestamp"]
        if result.failure is None:
            self.state.diagnostics.flush()
            self._move_diagnostics(incremental)
        return self._serialise(incremental), result

    def reopen(self) -> None:
        """Close and reopen: a new diagnostics window with the phantom seed (spec 2.3)."""
        self.state = ref.open_job_state(
            self.plan, self.state.latest_ms, self.state.earliest_ms, self.state.strings
        )

    def stats(self) -> dict:
        totals = dict(self.totals)
        totals["earliest_record_timestamp"] = self.state.earliest_ms
        totals["latest_record_timestamp"] = self.state.latest_ms
        return self._serialise(totals)

    def _serialise(self, counts: dict) -> dict:
        counts = dict(counts, job_id="case")
        counts["processed_field_count"] = max(
            0, counts["processed_record_count"] * self.k - counts["missing_field_count"]
        )
        counts["input_record_count"] = (
            counts["processed_record_count"]
            + counts["out_of_order_timestamp_count"]
            + counts["invalid_date_count"]
        )
        return {name: counts[name] for name in _FIELD_ORDER if counts.get(name) is not None}


def ndjson(*documents: str) -> bytes:
    return "".join(document + "\n" for document in documents).encode()


def read(body: bytes, fields=("value",)) -> tuple[list[ref.Record], ref.Failure | None]:
    return ref.read_json(body, make_plan(fields))


def first_problem(body: bytes, monkeypatch, fields=("value",)) -> ref.Failure:
    """The failure raised by the first malformed document (limit lowered to 1)."""
    monkeypatch.setattr(ref, "MAX_MALFORMED_DOCUMENTS", 1)
    _, failure = read(body, fields)
    assert failure is not None
    return failure


def shape(records: list[ref.Record]) -> list[tuple]:
    """(n_fields, values, missing, malformed, start, end) of each record."""
    return [(r.n_fields, r.values, r.missing, r.malformed, r.start, r.end) for r in records]


# ---------------------------------------------------------------------------------------
# examples.json: every POST response and the final job stats
# ---------------------------------------------------------------------------------------

_EXAMPLES = json.loads(EXAMPLES_PATH.read_text())["cases"]


@pytest.mark.parametrize("case", _EXAMPLES, ids=[case["name"] for case in _EXAMPLES])
def test_spec_examples(case):
    job = SimulatedJob(plan_from_config(case["config"]))
    expected = list(case["expected"])
    for step in case["steps"]:
        if step.get("reopen"):
            job.reopen()
            continue
        response, result = job.upload(step["upload"].encode("utf-8"))
        assert result.failure is None
        want = expected.pop(0)
        assert want["kind"] == "post_response"
        assert response == want["counts"]
        assert list(response) == list(want["counts"])  # serialised field order (spec 1.1)
    (want,) = expected
    assert want["kind"] == "job_stats_data_counts"
    assert job.stats() == want["counts"]


def test_spec_example1_output_arrays():
    plan = plan_from_config(_EXAMPLES[0]["config"])
    assert plan.input_fields == ("time", "responsetime", "airline")
    state = ref.open_job_state(plan)
    result = ref.run_upload(plan, state, _EXAMPLES[0]["steps"][0]["upload"].encode())
    assert result.time_ms == [1403481600000, 1403481700000]
    assert result.numeric == [[132.2046, 990.4628]]
    assert result.codes == [[0, 1]]
    assert state.strings.values == ["AAL", "JZA"]


def test_plan_from_config_follows_spec_1_4_order():
    plan = plan_from_config(
        {
            "analysis_config": {
                "detectors": [
                    {"function": "mean", "field_name": "metrics.cpu", "by_field_name": "host"},
                    {
                        "function": "count",
                        "by_field_name": "mlcategory",
                        "partition_field_name": "host",
                    },
                ],
                "influencers": ["dc", "host", ""],
                "categorization_field_name": "message",
            },
            "data_description": {"time_field": "ts"},
        }
    )
    assert plan.input_fields == ("ts", "metrics.cpu", "host", "dc", "message")
    assert plan.field_kinds == (KIND_NUMERIC, KIND_CATEGORICAL, KIND_CATEGORICAL, KIND_TEXT)
    assert plan.bucket_span_ms == 300_000 and plan.latency_ms == 0


# ---------------------------------------------------------------------------------------
# Unit-level expectations of spec section 9
# ---------------------------------------------------------------------------------------


def upload_times(times, *, span_ms=1000, latency_ms=0) -> dict:
    plan = make_plan(span_ms=span_ms, latency_ms=latency_ms)
    body = ndjson(*(f'{{"time":{t},"metric":"m","value":1}}' for t in times))
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    return result.counts


def test_unit_out_of_order_keeps_incremental_latest():
    counts = upload_times([3, 1, 2])
    assert counts["processed_record_count"] == 1
    assert counts["out_of_order_timestamp_count"] == 2
    assert counts["latest_record_timestamp"] == 3000
    assert counts["input_field_count"] == 6  # f = 2 for every record


def test_unit_within_one_bucket_any_order():
    counts = upload_times([4, 5, 3, 4, 2, 12, 2], span_ms=10_000)
    assert (counts["processed_record_count"], counts["out_of_order_timestamp_count"]) == (6, 1)


def test_unit_latency_accepts_recent_records():
    counts = upload_times([4, 5, 3, 4, 2], latency_ms=2000)
    assert (counts["processed_record_count"], counts["out_of_order_timestamp_count"]) == (4, 1)


def test_unit_array_counts_as_one_field():
    (record,), failure = read(b'{"time":"1","array":["foo","bar"],"value":"1.0"}')
    assert failure is None
    assert record.n_fields == 3  # f = 2


def test_unit_null_fields():
    records, _ = read(b'{"time":null,"value":1}\n{"time":1,"value":null}\n')
    assert [(r.n_fields, r.missing) for r in records] == [(1, 1), (1, 1)]


def test_earliest_is_first_processed_not_minimum_and_only_once():
    plan = make_plan(span_ms=60_000, latency_ms=120_000)
    state = ref.open_job_state(plan)
    first = ref.run_upload(plan, state, ndjson('{"time":600}', '{"time":480}'))
    assert first.counts["earliest_record_timestamp"] == 600_000
    second = ref.run_upload(plan, state, ndjson('{"time":700}'))
    assert second.counts["earliest_record_timestamp"] is None
    assert state.earliest_ms == 600_000 and state.latest_ms == 700_000


def test_negative_latest_uses_true_floor_and_truncating_seconds():
    # L = -1500 ms, span 1 s: floor bucket is -2000, q(-2000) = -2; q(-2500) = -2 (truncation).
    plan = make_plan(latency_ms=0)
    state = ref.open_job_state(plan, latest_ms=-1500)
    counts = ref.run_upload(plan, state, ndjson('{"time":-2.5}', '{"time":-3.5}')).counts
    assert counts["processed_record_count"] == 1  # -2.5 s -> -2000 ms (epoch truncates)
    assert counts["out_of_order_timestamp_count"] == 1  # -3000 ms: q = -3 < -2


# ---------------------------------------------------------------------------------------
# Bucket diagnostics: DataStreamDiagnosticsTests (spec 2.5)
# ---------------------------------------------------------------------------------------

SPAN = 60_000


def diagnostics_after(times, *, latency_ms=0, flush=True) -> ref.BucketDiagnostics:
    diagnostics = ref.BucketDiagnostics(SPAN, latency_ms)
    for t in times:
        diagnostics.add(t)
    if flush:
        diagnostics.flush()
    return diagnostics


def test_diagnostics_incremental_flushes():
    diagnostics = diagnostics_after([1000, 2000, 3000])
    assert diagnostics.take_counts() == (0, 0, 0)
    for t in (4000, 5000, 6000):
        diagnostics.add(t)
    diagnostics.flush()
    assert diagnostics.take_counts() == (0, 0, 0)
    for t in (61000, 62000, 63000):
        diagnostics.add(t)
    diagnostics.flush()
    assert diagnostics.take_counts() == (1, 0, 0)
    for t in (181000, 182000):
        diagnostics.add(t)
    diagnostics.flush()
    assert diagnostics.take_counts() == (2, 1, 0)  # 3 in total, bucket 120000 empty
    assert diagnostics.latest_empty_bucket_ms == 120_000


@pytest.mark.parametrize("reverse", [False, True])
def test_diagnostics_ten_buckets_either_order(reverse):
    times = [70000 + i * SPAN for i in range(10)]
    diagnostics = diagnostics_after(sorted(times, reverse=reverse))
    assert diagnostics.take_counts()[0] == 9


def test_diagnostics_empty_buckets():
    times = [10000, 70000, 190000, 250000, 310000, 370000, 490000, 550000]
    diagnostics = diagnostics_after(times)
    assert diagnostics.take_counts() == (9, 2, 0)
    assert diagnostics.latest_empty_bucket_ms == 420_000
    diagnostics = diagnostics_after([*times, 6490000])
    assert diagnostics.take_counts() == (108, 100, 0)
    assert diagnostics.latest_empty_bucket_ms == 6_420_000


def test_diagnostics_sparse_buckets():
    counts = [1000, 1200, 1, 1100, 1300, 1050, 1022, 10, 1333, 1400]
    times = [bucket * SPAN + 1 for bucket, count in enumerate(counts) for _ in range(count)]
    diagnostics = diagnostics_after(times)
    assert diagnostics.take_counts() == (9, 0, 2)
    assert diagnostics.latest_sparse_bucket_ms == 420_000


@pytest.mark.parametrize(
    ("latency_ms", "before", "after"), [(3 * SPAN, 10, 19), (13 * SPAN + 10_000, 6, 19)]
)
def test_diagnostics_latency(latency_ms, before, after):
    times = [bucket * SPAN + i for bucket in range(20) for i in range(100)]
    diagnostics = diagnostics_after(times, latency_ms=latency_ms, flush=False)
    assert diagnostics.take_counts()[0] == before
    diagnostics.flush()
    assert diagnostics.take_counts()[0] == after - before


def test_diagnostics_phantom_seed_and_never_reports_negative_buckets():
    diagnostics = ref.BucketDiagnostics(SPAN, 0)
    diagnostics.add(-SPAN * 3)
    diagnostics.add(0)
    diagnostics.flush()
    # Buckets -180000..-60000 are below the initial lastFlushed of -1 (spec 2.1/2.4).
    assert diagnostics.take_counts() == (0, 0, 0)
    assert diagnostics.latest_empty_bucket_ms is None


def test_diagnostics_latest_zero_bucket_not_reported_as_latest_empty():
    diagnostics = diagnostics_after([1000, 130000])  # bucket 60000 empty, bucket 0 not
    assert diagnostics.take_counts() == (2, 1, 0)
    assert diagnostics.latest_empty_bucket_ms == 60_000
    diagnostics = diagnostics_after([60000, 120000])
    diagnostics.add(1000)  # a late record in bucket 0 (not empty)
    assert diagnostics.latest_empty_bucket_ms is None


# ---------------------------------------------------------------------------------------
# Malformed JSON examples of spec 3.4
# ---------------------------------------------------------------------------------------


def test_spec_3_4_missing_comma():
    body = b'{"time":"1","value":"1.0"}{"time":"2" "value":"2.0"}{"time":"3","value":"3.0"}'
    plan = make_plan()
    records, failure = ref.read_json(body, plan)
    assert failure is None
    assert [(r.n_fields, r.missing, r.malformed) for r in records] == [
        (2, 0, False),
        (1, 1, True),
        (2, 0, False),
    ]
    counts = ref.run_upload(plan, ref.open_job_state(plan), body).counts
    assert counts["processed_record_count"] == 3
    assert counts["missing_field_count"] == 1
    assert counts["malformed_document_count"] == 1


def test_spec_3_4_error_in_nested_object(monkeypatch):
    body = b'{"b":21, "d" : {"ee": 1 "ff":0}, "a":11, "c":31}'
    (record,), failure = read(body, fields=("d.ee",))
    assert failure is None
    assert (record.n_fields, record.values, record.malformed, record.end) == (
        2,
        {"d.ee": "1"},
        True,
        len(body),
    )
    assert first_problem(body, monkeypatch).offset == body.index(b'"ff"')


def test_spec_3_4_missing_opening_brace_loses_nothing():
    body = b'"a":10, "b":20, "c":30}{"time":1,"value":2}{"time":2,"value":3}'
    records, failure = read(body)
    assert failure is None
    assert shape(records) == [
        (0, {}, 2, True, 3, 23),  # junk from the ":" after the string "a"
        (2, {"time": "1", "value": "2"}, 0, False, 23, 43),
        (2, {"time": "2", "value": "3"}, 0, False, 43, 63),
    ]


def test_spec_3_4_control_character_in_key():
    body = b'{"ti\x01me":1,"value":2}\n{"time":2,"value":3}\n'
    records, failure = read(body)
    assert failure is None
    assert [(r.n_fields, r.malformed) for r in records] == [(0, True), (2, False)]
    assert records[1].values == {"time": "2", "value": "3"}


def test_spec_3_4_truncated_final_document():
    body = b'{"time":1,"value":2}\n{"time'
    records, failure = read(body)
    assert len(records) == 1
    assert failure == ref.Failure("parse_exception", MALFORMED, 2, 21, len(body))


# ---------------------------------------------------------------------------------------
# [R1] bytes, BOM, lines
# ---------------------------------------------------------------------------------------


def test_r1_bom_skipped_and_counted():
    body = b'\xef\xbb\xbf{"time":1,"value":2}'
    plan = make_plan()
    records, failure = ref.read_json(body, plan)
    assert failure is None and shape(records) == [(2, {"time": "1", "value": "2"}, 0, False, 3, 23)]
    assert ref.run_upload(plan, ref.open_job_state(plan), body).counts["input_bytes"] == 23


def test_r1_bom_elsewhere_is_junk():
    body = b'{"time":1}\xef\xbb\xbf{"time":2}'
    records, _ = read(body)
    assert shape(records)[1] == (0, {}, 2, True, 10, 13)


def test_r1_lines_count_newlines(monkeypatch):
    body = b'{"time":1}\r\n\n  {"time":2 x}'
    failure = first_problem(body, monkeypatch)
    assert (failure.line, failure.offset) == (3, body.index(b"x"))


# ---------------------------------------------------------------------------------------
# [R2] between documents
# ---------------------------------------------------------------------------------------


def test_r2_skips_whitespace_comments_brackets_and_scalars():
    body = (
        b' \t\r\n[ {"time":1} , {"time":2} ] 12 -0.5e+3 "s\\u00e9" true false null'
        b' // comment {"x":1}\n /* block {"y":1} */ {"time":3}'
    )
    records, failure = read(body)
    assert failure is None
    assert [r.values for r in records] == [{"time": "1"}, {"time": "2"}, {"time": "3"}]
    assert not any(r.malformed for r in records)


def test_r2_unterminated_block_comment_runs_to_end():
    records, failure = read(b'{"time":1} /* {"time":2}\n{"time":3}')
    assert failure is None and len(records) == 1


@pytest.mark.parametrize(
    ("between", "junk_offset"),
    [
        (b" xyz ", 1),  # letters
        (b" } ", 1),  # a stray closing brace
        (b" : ", 1),
        (b" /x ", 1),  # "/" that starts no comment
        (b" tru ", 1),  # incomplete literal
        (b" 1. ", 1),  # incomplete number: junk from its first byte
        (b" - ", 1),
        (b" 1x ", 1),  # "1x" is one token, not a number: junk from its first byte
        (b' "a\x01b" ', 1),  # invalid string: junk from its opening quote
        (b' "a\xffb" ', 1),  # invalid UTF-8 in a string
        (b' "\\q" ', 1),  # invalid escape
    ],
)
def test_r2_junk_is_one_malformed_document_up_to_next_brace(between, junk_offset):
    body = b'{"time":1}' + between + b'{"time":2}'
    records, failure = read(body)
    assert failure is None
    start = 10 + junk_offset
    assert shape(records) == [
        (1, {"time": "1"}, 1, False, 0, 10),
        (0, {}, 2, True, start, 10 + len(between)),
        (1, {"time": "2"}, 1, False, 10 + len(between), len(body)),
    ]


def test_r2_a_token_runs_to_the_next_delimiter():
    # "01" is one token and not a JSON number: junk from its first byte up to the "{".
    records, failure = read(b'01 {"time":1}')
    assert failure is None
    assert shape(records) == [(0, {}, 2, True, 0, 3), (1, {"time": "1"}, 1, False, 3, 13)]


def test_r2_junk_to_end_of_body_is_counted_without_failure():
    body = b'{"time":1} oops'
    records, failure = read(body)
    assert failure is None
    assert shape(records)[1] == (0, {}, 2, True, 11, len(body))


def test_r2_junk_ends_at_a_brace_inside_a_string():
    body = b'x "{"'
    records, failure = read(body)
    # Junk "x " up to the {; then the document {" is truncated.
    assert shape(records) == [(0, {}, 2, True, 0, 3)]
    assert failure == ref.Failure("parse_exception", MALFORMED, 1, 0, len(body))


def test_r2_junk_counts_as_invalid_date_with_all_fields_missing():
    plan = make_plan()
    counts = ref.run_upload(plan, ref.open_job_state(plan), b"garbage").counts
    assert counts["invalid_date_count"] == 1
    assert counts["missing_field_count"] == 2
    assert counts["input_field_count"] == 0
    assert counts["malformed_document_count"] == 1


# ---------------------------------------------------------------------------------------
# [R3] strict grammar inside a document, plus comments
# ---------------------------------------------------------------------------------------


def test_r3_comments_wherever_whitespace_may_stand():
    body = b'{ /*a*/ "time" // b\n : /* c */ 1 , "value" : [ /* d */ 2 // e\n ] /**/ }'
    (record,), failure = read(body)
    assert failure is None
    assert (record.n_fields, record.values, record.malformed) == (
        2,
        {"time": "1", "value": "2"},
        False,
    )


def test_r3_escapes():
    body = rb'{"value":"q\"b\\s\/b\bf\fn\nr\rt\tu\u00e9\u20ac"}'
    (record,), _ = read(body)
    assert record.values["value"] == 'q"b\\s/b\bf\fn\nr\rt\tu\u00e9\u20ac'


@pytest.mark.parametrize(
    ("escapes", "text"),
    [
        (rb"\ud83d\ude00", "\U0001f600"),  # a pair
        (rb"\ud83dx", "\ufffdx"),  # lone high
        (rb"\ude00", "\ufffd"),  # lone low
        (rb"\ud83d\ud83d\ude00", "\ufffd\U0001f600"),
        (rb"\ude00\ud83d", "\ufffd\ufffd"),
    ],
)
def test_r3_lone_surrogates_become_replacement_character(escapes, text):
    (record,), _ = read(b'{"value":"' + escapes + b'"}')
    assert not record.malformed and record.values["value"] == text


def test_r3_valid_utf8_kept():
    (record,), _ = read('{"value":"é€😀"}'.encode())
    assert not record.malformed and record.values["value"] == "é€😀"


@pytest.mark.parametrize(
    ("document", "error_offset"),
    [
        (b'{"time":1,"value":"a\xffb"}', 20),  # never a UTF-8 byte
        (b'{"time":1,"value":"a\xc3("}', 20),  # continuation missing: at the lead byte
        (b'{"time":1,"value":"a\xe0\x80\x80"}', 20),  # overlong
        (b'{"time":1,"value":"a\xed\xa0\x80"}', 20),  # encoded surrogate
        (b'{"time":1,"value":"a\xf4\x90\x80\x80"}', 20),  # above U+10FFFF
        (b'{"time":1,"value":"a\x1fb"}', 20),  # raw control byte
        (b'{"time":1,"value":"a\\xb"}', 20),  # unknown escape: at its backslash
        (b'{"time":1,"value":"a\\u12g4"}', 20),  # bad \u escape: at its backslash
        (b'{"time":1,"value":+1}', 18),
        (b'{"time":1,"value":NaN}', 18),
        (b'{"time":1,"value":1.}', 18),  # a token that is not a number: at its first byte
        (b'{"time":1,"value":1e}', 18),
        (b'{"time":1,"value":tru}', 18),
        (b'{"time":1,"value":nul}', 18),
        (b"{'time':1}", 1),
        (b'{"time":1,}', 10),
        (b'{"time":1 "value":2}', 10),
        (b'{"time"=1}', 7),
        (b'{"time":1 /x }', 10),  # "/" that starts no comment
    ],
)
def test_r3_grammar_errors_make_the_document_malformed(document, error_offset, monkeypatch):
    body = document + b'\n{"time":9}'
    records, failure = read(body)
    assert failure is None
    record, following = records
    # Resynchronisation starts inside the string when the break was inside one [R5], so
    # the document's own "}" ends it.
    assert record.malformed and record.end == len(document)
    assert following.values == {"time": "9"} and not following.malformed
    assert record.values.get("time") == ("1" if document.startswith(b'{"time":1') else None)
    assert first_problem(body, monkeypatch).offset == error_offset


def test_r3_error_inside_a_string_of_the_last_line_keeps_the_record():
    body = b'{"time":1}\n{"time":2,"value":"a\xffb"}\n'
    records, failure = read(body)
    assert failure is None
    assert [(r.malformed, r.values.get("time")) for r in records] == [(False, "1"), (True, "2")]


def test_r3_leading_zero_breaks_at_the_token(monkeypatch):
    body = b'{"value":01,"time":2}'
    (record,), _ = read(body)
    # "01" is one token and not a JSON number: the grammar breaks at its first byte.
    assert (record.values, record.n_fields, record.malformed) == ({}, 0, True)
    assert first_problem(body, monkeypatch).offset == 9


def test_r3_invalid_utf8_in_a_comment_is_allowed():
    (record,), _ = read(b'{"time":1 /* \xff\xfe */}')
    assert not record.malformed


def test_r3_duplicate_keys_every_occurrence_counts_last_non_null_wins():
    (record,), _ = read(b'{"time":1,"value":"a","value":"b","value":null,"value":{"x":1}}')
    assert (record.n_fields, record.values) == (4, {"time": "1", "value": "b"})


# ---------------------------------------------------------------------------------------
# [R4] fields
# ---------------------------------------------------------------------------------------


def test_r4_flattening_nulls_arrays_and_values():
    body = (
        b'{"a":[1,[2,null,{"x":"y","z":[true]}],"s\\n"],"o":{"p":{"q":-1.5E3}},'
        b'"e":{},"n":null,"b":false,"t":"x","empty":[]}'
    )
    fields = ("a", "o.p.q", "e", "n", "b", "t", "empty")
    (record,), failure = read(body, fields)
    assert failure is None
    assert record.n_fields == 5  # a, o.p.q, b, t, empty
    assert record.values == {
        "a": "1,2,y,true,s\n",
        "o.p.q": "-1.5E3",
        "b": "false",
        "t": "x",
        "empty": "",
    }
    assert record.missing == 3  # time, e (an object), n (null)


def test_r4_dotted_keys_are_literal():
    records, _ = read(b'{"a.b":1}{"a":{"b":2}}', ("a.b",))
    assert [r.values for r in records] == [{"a.b": "1"}, {"a.b": "2"}]


def test_r4_object_valued_time_field_is_missing():
    (record,), _ = read(b'{"time":{"a":1}}')
    assert (record.n_fields, record.missing) == (1, 2)


def test_r4_partial_array_is_not_a_field():
    (record,), _ = read(b'{"time":1,"value":[1,2 3]}')
    assert (record.n_fields, record.values, record.malformed) == (1, {"time": "1"}, True)


# ---------------------------------------------------------------------------------------
# [R5] malformed documents: depth, size, line rule, resynchronisation
# ---------------------------------------------------------------------------------------


def test_r5b_depth_limit(monkeypatch):
    monkeypatch.setattr(ref, "MAX_DEPTH", 4)
    ok = b'{"a":{"b":{"c":{"d":1}}}}'
    (record,), _ = read(ok, ("a.b.c.d",))
    assert not record.malformed and record.values == {"a.b.c.d": "1"}
    too_deep = b'{"x":1,"a":{"b":{"c":{"d":{"e":1}}}},"y":2}'
    (record,), _ = read(too_deep, ("x", "y"))
    assert (record.n_fields, record.values, record.malformed, record.end) == (
        1,
        {"x": "1"},
        True,
        len(too_deep),
    )
    assert first_problem(too_deep, monkeypatch).offset == too_deep.index(b'{"e"')
    arrays = b'{"a":[[[1]]],"b":[[[[2]]]],"c":3}'
    (record,), _ = read(arrays, ("a", "b", "c"))
    assert (record.values, record.malformed, record.end) == ({"a": "1"}, True, len(arrays))
    assert first_problem(arrays, monkeypatch).offset == arrays.index(b"[[[[") + 3


def test_r5b_default_depth_256():
    ok = b'{"a":' + b"[" * 255 + b"1" + b"]" * 255 + b"}"
    (record,), _ = read(ok, ("a",))
    assert not record.malformed and record.values == {"a": "1"}
    too_deep = b'{"a":' + b"[" * 256 + b"1" + b"]" * 256 + b"}"
    (record,), _ = read(too_deep, ("a",))
    assert record.malformed and record.values == {}


def test_r5c_size_limit(monkeypatch):
    monkeypatch.setattr(ref, "MAX_DOCUMENT_BYTES", 10)
    # 11 bytes, 11 bytes, then exactly 10. The limit is passed at the "}" (offset 10);
    # resynchronisation from that "}" ends the document just after it.
    body = b'{"v":"123"}\n{"v":12345}\n{"v":"12"}\n'
    records, failure = read(body, ("v",))
    assert failure is None
    assert [(r.malformed, r.values, r.start, r.end) for r in records] == [
        (True, {"v": "123"}, 0, 11),  # the string was complete before the limit
        (True, {}, 12, 23),  # a number needs the byte after it, which is past the limit
        (False, {"v": "12"}, 24, 34),
    ]
    assert first_problem(body, monkeypatch, ("v",)).offset == 10


def test_r5c_size_limit_inside_a_string_resyncs_inside_it(monkeypatch):
    monkeypatch.setattr(ref, "MAX_DOCUMENT_BYTES", 10)
    # The limit falls inside the string; resynchronisation starts inside it at byte 10, so
    # the string ends at its closing quote and the document's own } ends the document.
    body = b'{"v":"1234567890"}\n{"time":1}'
    records, failure = read(body)
    assert failure is None
    assert [(r.malformed, r.start, r.end) for r in records] == [(True, 0, 18), (False, 19, 29)]
    assert first_problem(body, monkeypatch).offset == 10


def test_r5d_line_rule():
    body = b'{"time":1,"value":\n{"time":2,"value":3}\n'
    records, failure = read(body)
    assert failure is None
    assert shape(records) == [
        (1, {"time": "1"}, 1, True, 0, 19),
        (2, {"time": "2", "value": "3"}, 0, False, 19, 39),
    ]


def test_r5d_line_rule_error_position_is_the_brace(monkeypatch):
    body = b'{"time":1\n{"time":2}'
    failure = first_problem(body, monkeypatch)
    assert (failure.line, failure.offset, failure.consumed) == (2, 10, 10)


def test_r5d_only_the_first_newline_matters():
    # The second \n is followed by {, but that { is a valid array element.
    body = b'{"value":[\n1,\n{"b":1}]}'
    (record,), _ = read(body)
    assert (record.malformed, record.values) == (False, {"value": "1,1"})


def test_r5d_newline_inside_a_block_comment_counts():
    body = b'{"value":1 /*\n{"time":2} */}'
    records, failure = read(body)
    assert failure is None
    assert [(r.malformed, r.values, r.start, r.end) for r in records] == [
        (True, {"value": "1"}, 0, 14),
        (False, {"time": "2"}, 14, 24),
        (True, {}, 25, len(body)),  # junk "*/}"
    ]


def test_r5d_pretty_printed_json_is_unaffected():
    document = {"time": 1, "value": {"a": [1, {"b": 2}]}, "x": [{"y": None}]}
    body = (json.dumps(document, indent=2) + "\n" + json.dumps(document, indent=0)).encode()
    records, failure = read(body, ("value.a",))
    assert failure is None
    assert [(r.malformed, r.values) for r in records] == [
        (False, {"time": "1", "value.a": "1,2"})
    ] * 2


def test_r5_raw_newline_in_string_breaks_at_the_newline(monkeypatch):
    # The raw \n breaks the grammar before the line rule could look at the next byte.
    body = b'{"time":1,"value":"ab\n{"time":2}'
    records, _ = read(body)
    assert [(r.malformed, r.end) for r in records] == [(True, 22), (False, len(body))]
    assert first_problem(body, monkeypatch).offset == 21


def test_r5_resync_counts_object_depth_outside_strings():
    body = b'{"a" {"b":"}"}} {"time":2}'
    records, failure = read(body)
    assert failure is None
    assert [(r.malformed, r.start, r.end) for r in records] == [(True, 0, 15), (False, 16, 26)]


def test_r5_resync_skips_escaped_quotes():
    body = b'{"time":1 x "q\\"}" } {"time":3}'
    records, _ = read(body)
    assert [(r.malformed, r.values, r.end) for r in records] == [
        (True, {"time": "1"}, 20),
        (False, {"time": "3"}, len(body)),
    ]


def test_r5_resync_string_ends_at_newline_and_brace_at_line_start_ends_document():
    body = b'{"time":1 x "open\n{"time":2}'
    records, failure = read(body)
    assert failure is None
    assert [(r.malformed, r.start, r.end) for r in records] == [(True, 0, 18), (False, 18, 28)]


def test_r5_resync_brace_mid_line_is_depth_not_a_new_document():
    body = b'{"time":1 x {"time":2}} {"time":3}'
    records, _ = read(body)
    assert [(r.values, r.end) for r in records] == [({"time": "1"}, 23), ({"time": "3"}, 34)]


def test_r5_resync_ignores_comments_and_arrays():
    body = b'{"a":[1 2 ] /* } */ }\n{"time":2}'
    records, _ = read(body)
    # The } inside the comment closes the object: the rest of the line is junk.
    assert [(r.malformed, r.start, r.end) for r in records] == [
        (True, 0, 16),
        (True, 17, 22),
        (False, 22, len(body)),
    ]


def test_r5_malformed_documents_are_counted_like_any_record():
    plan = make_plan()
    body = ndjson('{"time":1,"value":2 x}', '{"value":5 x}', '{"time":0,"value":"a" "b"}')
    counts = ref.run_upload(plan, ref.open_job_state(plan, latest_ms=1000), body).counts
    assert counts["processed_record_count"] == 1
    assert counts["invalid_date_count"] == 1
    assert counts["out_of_order_timestamp_count"] == 1
    assert counts["missing_field_count"] == 1
    assert counts["input_field_count"] == 1 + 0 + 1
    assert counts["malformed_document_count"] == 3


# ---------------------------------------------------------------------------------------
# [R6] failures
# ---------------------------------------------------------------------------------------


def test_r6_truncated_document_not_counted_and_whole_body_consumed():
    plan = make_plan()
    body = b'{"time":1,"value":2}\n{"time":2,"va'
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    assert result.failure == ref.Failure("parse_exception", MALFORMED, 2, 21, len(body))
    assert result.counts["processed_record_count"] == 1
    assert result.counts["input_bytes"] == len(body)


def test_r6_truncated_reports_the_first_malformed_document():
    body = b'{"time":1 x}\n{"time":2 y}\n{"time":3'
    records, failure = read(body)
    assert len(records) == 2
    assert (failure.line, failure.offset, failure.consumed) == (1, 10, len(body))


def test_r6_truncated_while_resynchronising():
    body = b'{"time":1}\n{"time":2 x {'
    records, failure = read(body)
    assert len(records) == 1
    assert (failure.line, failure.offset, failure.consumed) == (2, 21, len(body))


def test_r6_hundredth_malformed_document_is_counted_then_fails():
    body = b"x{}" * 101 + b'{"time":1}'
    plan = make_plan()
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    # Junk and documents alternate: the 100th junk is the 199th record; it ends at a {.
    assert result.failure == ref.Failure("parse_exception", MALFORMED, 1, 0, 298)
    assert result.counts["malformed_document_count"] == 100
    assert result.counts["invalid_date_count"] == 199
    assert result.counts["input_bytes"] == 298


def test_r6_limit_counts_line_rule_and_resync_documents(monkeypatch):
    monkeypatch.setattr(ref, "MAX_MALFORMED_DOCUMENTS", 3)
    body = b'{"time":1\n{"time":2 x}\n{"time":3}\nz\n{"time":4}'
    records, failure = read(body)
    assert [r.malformed for r in records] == [True, True, False, True]
    assert failure == ref.Failure("parse_exception", MALFORMED, 2, 10, body.index(b'{"time":4'))


def test_empty_and_whitespace_bodies():
    for body in (b"", b" \n\t\r\n", b"\xef\xbb\xbf", b"[]"):
        assert read(body) == ([], None)


# ---------------------------------------------------------------------------------------
# [C1]-[C6] delimited format
# ---------------------------------------------------------------------------------------


def csv_plan(fields=("value",), **extra) -> IngestPlan:
    return make_plan(fields, fmt="csv", field_delimiter=extra.pop("field_delimiter", ","), **extra)


def read_csv(body: bytes, fields=("value",), **extra):
    return ref.read_csv(body, csv_plan(fields, **extra))


def test_c1_fields_per_record_come_from_the_header():
    body = b"time,value,extra\n1,2\n2,3,4,5,6\n"
    plan = csv_plan()
    records, failure = ref.read_csv(body, plan)
    assert failure is None
    assert shape(records) == [
        (3, {"time": "1", "value": "2"}, 0, False, 17, 21),
        (3, {"time": "2", "value": "3"}, 0, False, 21, len(body)),
    ]
    counts = ref.run_upload(plan, ref.open_job_state(plan), body).counts
    assert counts["input_field_count"] == 4  # f = 2 per row


def test_c2_crlf_bom_empty_rows_and_no_final_newline():
    body = b"\xef\xbb\xbf\r\ntime,value\r\n\r\n\n1,2\r\n2,\r\n3,4"
    records, failure = read_csv(body)
    assert failure is None
    assert [r.values for r in records] == [
        {"time": "1", "value": "2"},
        {"time": "2", "value": ""},
        {"time": "3", "value": "4"},
    ]
    assert [(r.start, r.end) for r in records] == [(20, 25), (25, 29), (29, 32)]


def test_c2_only_one_trailing_cr_is_stripped():
    records, _ = read_csv(b"time,value\n1,2\r\r\n")
    assert records[0].values == {"time": "1", "value": "2\r"}


def test_c3_quoting():
    body = (
        b"time,value,other\n"
        b'1,"a,b",x\n'
        b'2,"say ""hi""",x\n'
        b'3,"quoted"tail,x\n'
        b'4,un"quoted",x\n'
        b'5,"multi\nline\r\nvalue",x\n'
        b'6,"",x\n'
        b' 7," x",x\n'
    )
    records, failure = read_csv(body)
    assert failure is None
    assert [r.values["value"] for r in records] == [
        "a,b",
        'say "hi"',
        "quotedtail",
        'un"quoted"',
        "multi\nline\r\nvalue",
        "",
        " x",
    ]
    assert records[-1].values["time"] == " 7"


def test_c3_default_tab_delimiter_and_custom_quote():
    plan = make_plan(fmt="csv")
    records, _ = ref.read_csv(b'time\tvalue\n1\t"a\tb"\n', plan)
    assert records[0].values == {"time": "1", "value": "a\tb"}
    records, _ = read_csv(b"time,value\n1,'a,''b'\n", quote_character="'")
    assert records[0].values == {"time": "1", "value": "a,'b"}


def test_c3_quoted_value_line_limit(monkeypatch):
    monkeypatch.setattr(ref, "MAX_QUOTED_LINES", 3)
    ok = b'time,value\n1,"a\nb\nc"\n'
    records, failure = read_csv(ok)
    assert failure is None and records[0].values["value"] == "a\nb\nc"
    body = b'time,value\n1,2\n2,"a\nb\nc\nd"\n3,4\n'
    records, failure = read_csv(body)
    assert len(records) == 1
    assert failure == ref.Failure(
        "parse_exception",
        "max number of lines to read exceeded while reading quoted column beginning on line 3 "
        "and ending on line 6",
        3,
        17,
        15,
    )


def test_c4_input_field_not_in_header():
    body = b"time,metric\n1,2\n"
    records, failure = read_csv(body)
    assert records == []
    assert failure == ref.Failure(
        "illegal_argument_exception",
        "Field configured for analysis 'value' is not in the CSV header '[time, metric]'",
        1,
        0,
        0,
    )


def test_c4_time_field_checked_first_and_dotted_names_are_plain():
    _, failure = read_csv(b"a.b\n1\n", fields=("a.b",))
    assert failure.reason == (
        "Field configured for analysis 'time' is not in the CSV header '[a.b]'"
    )
    records, failure = read_csv(b"time,a.b\n1,2\n", fields=("a.b",))
    assert failure is None and records[0].values == {"time": "1", "a.b": "2"}


def test_c5_missing_empty_and_extra_cells():
    plan = csv_plan(("value", "host"), kinds=(KIND_NUMERIC, KIND_CATEGORICAL))
    body = b"time,value,host\n1\n2,,\n3,5,h,extra\n"
    records, failure = ref.read_csv(body, plan)
    assert failure is None
    assert [(r.values, r.missing) for r in records] == [
        ({"time": "1"}, 2),
        ({"time": "2", "value": "", "host": ""}, 0),
        ({"time": "3", "value": "5", "host": "h"}, 0),
    ]
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    assert result.counts["missing_field_count"] == 2
    assert math.isnan(result.numeric[0][0]) and math.isnan(result.numeric[0][1])
    assert result.numeric[0][2] == 5.0
    assert result.codes == [[-1, 0, 1]]  # "" is a value; absent is -1


def test_c5_nul_only_line():
    # spec 6c: header metric,value,time; a \0 line -> 2 missing + 1 invalid date with f = 2.
    plan = csv_plan()
    body = b"metric,value,time\n\x00\n"
    counts = ref.run_upload(plan, ref.open_job_state(plan), body).counts
    assert counts["missing_field_count"] == 2
    assert counts["invalid_date_count"] == 1
    assert counts["input_field_count"] == 2


def test_c5_missing_time_column_is_an_invalid_date():
    plan = csv_plan()
    counts = ref.run_upload(plan, ref.open_job_state(plan), b"value,time\n5\n").counts
    assert (counts["missing_field_count"], counts["invalid_date_count"]) == (1, 1)


def test_c6_unterminated_quote_fails_after_counting_rows_before():
    plan = csv_plan()
    body = b'time,value\n1,2\n2,"open\n3,4\n'
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    assert result.counts["processed_record_count"] == 1
    assert result.failure == ref.Failure(
        "parse_exception",
        "unexpected end of file while reading quoted column beginning on line 3 and ending "
        "on line 5",
        3,
        17,
        15,
    )
    assert result.counts["input_bytes"] == 15


def test_c6_row_longer_than_size_limit(monkeypatch):
    monkeypatch.setattr(ref, "MAX_DOCUMENT_BYTES", 8)
    records, failure = read_csv(b"time,value\n1,2\n")
    assert failure is not None and failure.offset == 8 and failure.consumed == 0
    records, failure = read_csv(b"time,v\n1,234567\n1,2345678\n", fields=("v",))
    assert len(records) == 1
    assert (failure.type, failure.line, failure.offset, failure.consumed) == (
        "parse_exception",
        3,
        24,
        16,
    )


def test_csv_empty_body_and_header_only():
    assert read_csv(b"") == ([], None)
    assert read_csv(b"time,value\n") == ([], None)
    assert read_csv(b"\n\r\n") == ([], None)


# ---------------------------------------------------------------------------------------
# Records -> counts details
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" -1.5e3 ", -1500.0),
        ("+2", 2.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("1E+2", 100.0),
        ("\t3\n", 3.0),
        ("", None),
        ("abc", None),
        ("NaN", None),
        ("inf", None),
        ("1,2", None),
        ("0x10", None),
        ("1_000", None),
        ("1e", None),
        ("--1", None),
        ("\u00a01", None),
        ("١", None),
        ("true", None),
    ],
)
def test_parse_decimal(text, expected):
    value = ref.parse_decimal(text)
    assert math.isnan(value) if expected is None else value == expected


def test_string_table_limit(monkeypatch):
    monkeypatch.setattr(ref, "MAX_DISTINCT_VALUES", 2)
    table = ref.StringTable()
    assert [table.intern(v) for v in ("a", "b", "a", "c", "c", "b")] == [0, 1, 0, -1, -1, 1]
    assert table.series_limit_hits == 2 and table.values == ["a", "b"]


def test_output_arrays_only_for_processed_records():
    plan = make_plan(("value", "host"), (KIND_NUMERIC, KIND_CATEGORICAL), span_ms=60_000)
    body = ndjson(
        '{"time":100,"value":"1.5","host":"a"}',
        '{"time":"x","value":2,"host":"b"}',
        '{"time":1,"value":3,"host":"c"}',
        '{"time":101,"value":[1],"host":["a"]}',
        '{"time":102,"value":true}',
    )
    state = ref.open_job_state(plan)
    result = ref.run_upload(plan, state, body)
    assert result.time_ms == [100_000, 101_000, 102_000]
    assert result.numeric[0][:2] == [1.5, 1.0] and math.isnan(result.numeric[0][2])
    assert result.codes == [[0, 0, -1]]
    assert state.diagnostics.take_counts() == (0, 0, 0)  # run_upload does not flush


def test_failed_upload_keeps_counts_and_state():
    plan = make_plan()
    state = ref.open_job_state(plan)
    result = ref.run_upload(plan, state, b'{"time":5,"value":1}\n{"time":6,')
    assert result.counts["processed_record_count"] == 1
    assert state.latest_ms == 5000 and state.earliest_ms == 5000


# ---------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------

_keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=4)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(st.tuples(_keys, children), max_size=3),  # objects as pair lists (dup keys)
    ),
    max_leaves=12,
)
_documents = st.lists(st.tuples(_keys, _json_values), max_size=5)


def _dump(value, indent) -> str:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ",".join(json.dumps(k) + ":" + _dump(v, indent) for k, v in value) + "}"
    if isinstance(value, list):
        if indent:
            # Indented like json.dumps(indent=...): no line starts with "{" (see [R5 d]).
            return "[\n " + ",\n ".join(_dump(v, indent) for v in value) + "\n]"
        return "[" + ",".join(_dump(v, indent) for v in value) + "]"
    return json.dumps(value, ensure_ascii=indent)


def _flatten(pairs, prefix, out: list) -> None:
    """Independent model of [R4]: (name, text) of every field, in order."""
    for key, value in pairs:
        name = prefix + key
        if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
            _flatten(value, name + ".", out)
        elif isinstance(value, list):
            leaves: list[str] = []
            _leaves(value, leaves)
            out.append((name, ",".join(leaves)))
        elif value is not None:
            out.append((name, _dump(value, False) if not isinstance(value, str) else value))


def _leaves(value, out: list) -> None:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        for _, v in value:
            _leaves(v, out)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, out)
    elif value is not None:
        out.append(value if isinstance(value, str) else _dump(value, False))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(documents=st.lists(_documents, max_size=4), indent=st.booleans())
def test_property_well_formed_documents_match_the_model(documents, indent):
    texts = [
        "{" + ",".join(json.dumps(k) + ":" + _dump(v, indent) for k, v in d) + "}"
        for d in documents
    ]
    body = "\n".join(texts).encode()
    fields = []
    expected = []
    for document in documents:
        flat: list[tuple[str, str]] = []
        _flatten(document, "", flat)
        fields += [name for name, _ in flat]
        expected.append(flat)
    fields = tuple(dict.fromkeys(f for f in fields if f != "time"))
    records, failure = ref.read_json(body, make_plan(fields, (KIND_TEXT,) * len(fields)))
    assert failure is None
    assert len(records) == len(documents)
    for record, flat in zip(records, expected):
        assert not record.malformed
        assert record.n_fields == len(flat)
        assert record.values == dict(flat)
        assert record.missing == len(fields) + 1 - len(dict(flat))


_garbage_lines = st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"/" not in b)
_good_lines = st.dictionaries(
    st.sampled_from(["time", "value", "x"]), st.integers(0, 99), max_size=3
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.tuples(_garbage_lines, _good_lines), max_size=8))
def test_property_garbage_lines_never_swallow_a_well_formed_line(lines):
    """D2: a well-formed NDJSON line after any garbage line (without "/") is read intact."""
    body = b""
    spans = []
    for garbage, good in lines:
        body += garbage + b"\n"
        text = json.dumps(good, separators=(",", ":")).encode()
        spans.append((len(body), len(body) + len(text), good))
        body += text + b"\n"
    records, failure = ref.read_json(body, make_plan(("value", "x")))
    assert failure is None
    by_start = {r.start: r for r in records}
    for start, end, good in spans:
        record = by_start[start]
        assert (record.end, record.malformed) == (end, False)
        assert record.values == {k: str(v) for k, v in good.items()}


@settings(max_examples=300)
@given(body=st.binary(max_size=60))
def test_property_arbitrary_bytes_records_are_ordered_and_counted(body):
    plan = make_plan()
    records, failure = ref.read_json(body, plan)
    position = 0
    for record in records:
        assert position <= record.start < record.end <= len(body)
        position = record.end
    result = ref.run_upload(plan, ref.open_job_state(plan), body)
    counts = result.counts
    assert (
        counts["processed_record_count"]
        + counts["invalid_date_count"]
        + counts["out_of_order_timestamp_count"]
    ) == len(records)
    assert counts["input_bytes"] == (len(body) if failure is None else failure.consumed)


_cells = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=5)


@settings(max_examples=300)
@given(rows=st.lists(st.lists(_cells, min_size=2, max_size=4), min_size=1, max_size=5))
def test_property_csv_round_trip(rows):
    def quote(cell: str) -> str:
        return '"' + cell.replace('"', '""') + '"'

    body = "time,value\n" + "".join(",".join(quote(c) for c in row) + "\n" for row in rows)
    records, failure = read_csv(body.encode())
    assert failure is None
    assert [r.values for r in records] == [{"time": row[0], "value": row[1]} for row in rows]
