"""The upload reader through post_data: JSON forms, malformed input (D2, [R2]-[R6]),
hostile input, CSV ([C1]-[C6]) and streaming in chunks."""

from __future__ import annotations

import io
import itertools
import math
import os
import pathlib
import signal
import time

import numpy as np
import pytest
from conftest import open_job, strip_clock
from hypothesis import given, settings
from hypothesis import strategies as st

import adjobs
from adjobs import _core
from adjobs.errors import ApiError


def value_job(span: str = "1s", **data_description) -> dict:
    return {
        "analysis_config": {
            "bucket_span": span,
            "detectors": [{"function": "mean", "field_name": "value"}],
        },
        "data_description": {"time_format": "epoch", **data_description},
    }


def post(body, config=None, chunks=None):
    service = adjobs.JobService()
    job_id = open_job(service, config or value_job())
    data = body if chunks is None else [body[i:j] for i, j in itertools.pairwise(chunks)]
    return service, job_id, strip_clock(service.post_data(job_id, data))


# --------------------------------------------------------------------------- JSON forms


def test_top_level_array_as_sent_by_elasticsearch_py():
    body = b'[{"time":1000,"value":1},{"time":2000,"value":2},{"time":3000,"value":3}]'
    *_, counts = post(body, value_job(time_format="epoch_ms"))
    assert counts["processed_record_count"] == 3
    assert counts["input_field_count"] == 3
    assert counts["input_bytes"] == len(body) == 73


def test_bom_crlf_blank_lines_and_no_final_newline():
    body = b'\xef\xbb\xbf{"time":1,"value":1}\r\n\r\n\n{"time":2,"value":2}\r\n{"time":3,"value":3}'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 3
    assert counts["input_bytes"] == len(body)


def test_comments_are_whitespace():
    body = b'// first\n{"time":1, /* inline */ "value":1}\n/* between */ {"time":2,"value":2}'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 2
    assert counts["missing_field_count"] == 0
    assert counts["input_field_count"] == 2


def test_scalars_and_brackets_between_documents_are_skipped():
    body = b'[1, "x", true, null, {"time":1,"value":1}], [{"time":2,"value":2}] 7'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 2
    assert counts["invalid_date_count"] == 0


def test_duplicate_keys_count_each_time_and_last_non_null_wins():
    # D3: "value" counts twice, null neither counts nor overrides
    service, job_id, counts = post(b'{"time":1,"value":1,"value":5,"value":null}')
    assert counts["input_field_count"] == 2  # 3 fields - 1
    seen = []
    service.add_record_listener(job_id, lambda t, numeric, codes: seen.append(numeric[:, 0]))
    service.post_data(job_id, b'{"time":2,"value":1,"value":5,"value":null}')
    assert seen[0].tolist() == [5.0]


def test_arrays_are_one_field_and_time_in_an_array():
    *_, counts = post(b'{"time":[1],"value":"1.0","array":["foo","bar"]}\n{"time":[1,2],"value":1}')
    assert counts["processed_record_count"] == 1
    assert counts["invalid_date_count"] == 1  # "1,2" is not a date
    assert counts["input_field_count"] == 2 + 1


# --------------------------------------------------------------------------- malformed (D2)


def test_missing_comma_keeps_fields_before_the_error():
    body = b'{"time":"1","value":"1.0"}{"time":"2" "value":"2.0"}{"time":"3","value":"3.0"}'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 3
    assert counts["missing_field_count"] == 1
    assert counts["input_field_count"] == 1 + 0 + 1


def test_error_inside_a_nested_object_keeps_earlier_fields():
    body = b'{"b":21, "d" : {"ee": 1 "ff":0}, "a":11, "c":31}\n{"time":5,"value":1}'
    *_, counts = post(body)
    # the broken record has b and d.ee (f = 1) and no time: an invalid date
    assert counts["invalid_date_count"] == 1
    assert counts["processed_record_count"] == 1
    assert counts["input_field_count"] == 1 + 1


def test_a_truncated_line_never_swallows_the_next_one():
    body = b'{"time":1,"value":1\n{"time":2,"value":2}\n{"time":3,"value":3}\n'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 3
    assert counts["missing_field_count"] == 0


def test_junk_between_documents_is_one_broken_record():
    body = b'{"time":1,"value":1} garbage here {"time":2,"value":2}'
    *_, counts = post(body)
    assert counts["processed_record_count"] == 2
    assert counts["invalid_date_count"] == 1
    assert counts["missing_field_count"] == 2  # time and value


def test_truncated_final_document_fails_and_keeps_what_came_before(service):
    job_id = open_job(service, value_job())
    body = b'{"time":1,"value":1}\n{"time":2,"value":2}\n{"time'
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, body)
    error = raised.value
    assert (error.status, error.type, error.reason) == (
        400,
        "parse_exception",
        "The input JSON data is malformed.",
    )
    assert error.extra == {"line": 3, "offset": 42}
    totals = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    assert totals["processed_record_count"] == 2
    assert totals["input_bytes"] == len(body)
    assert "last_data_time" not in totals


def test_the_hundredth_malformed_document_fails_the_upload(service):
    job_id = open_job(service, value_job())
    bad = b'{"time":1 "value":1}\n'
    body = bad * 99 + b'{"time":2,"value":2}\n'
    assert service.post_data(job_id, body)["input_record_count"] == 100
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, bad * 100 + b'{"time":3,"value":3}\n')
    assert raised.value.extra == {"line": 1, "offset": 10}
    totals = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    assert totals["input_record_count"] == 200
    assert totals["input_bytes"] == len(body) + len(bad) * 100 - 1


# --------------------------------------------------------------------------- hostile input


def test_deep_nesting_is_a_malformed_document_not_a_crash():
    deep = b'{"time":1,"value":1,"x":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"
    *_, counts = post(deep + b'\n{"time":2,"value":2}')
    assert counts["processed_record_count"] == 2
    assert counts["input_record_count"] == 2


def test_ten_megabyte_single_line_document():
    big = b'{"time":1,"value":1,"blob":"' + b"x" * (10 * 1024 * 1024) + b'"}\n{"time":2,"value":2}'
    *_, counts = post(big)
    # past the 8 MiB document limit: malformed, keeping the fields read before it
    assert counts["processed_record_count"] == 2
    assert counts["input_bytes"] == len(big)


def test_ten_megabyte_line_of_many_documents():
    line = b",".join(b'{"time":%d,"value":%d}' % (i, i) for i in range(1, 500_001))
    body = b"[" + line + b"]"
    assert len(body) > 10 * 1024 * 1024
    *_, counts = post(body)
    assert counts["processed_record_count"] == 500_000


def test_invalid_utf8_and_nul_bytes_break_only_their_document():
    body = (
        b'{"time":1,"value":1}\n{"time":2,"name":"\xff\xfe"}\n'
        b'{"time":3,"value":3}\n\x00\x00\n{"time":4,"value":4}'
    )
    *_, counts = post(body)
    assert counts["processed_record_count"] == 4  # the broken one still has its time
    assert counts["invalid_date_count"] == 1  # the NUL junk
    assert counts["missing_field_count"] == 1 + 2


def test_a_lone_surrogate_in_python_text_or_documents_is_read_not_raised():
    # Python strs may hold a lone surrogate, which UTF-8 cannot: a document (dict) carries it
    # as its JSON escape, which becomes U+FFFD; text carries it as the bytes Python keeps it
    # as, invalid UTF-8 that breaks only its document. Both raised UnicodeEncodeError.
    config = {"analysis_config": {"bucket_span": "1s",
                                  "detectors": [{"function": "count", "by_field_name": "name"}]},
              "data_description": {"time_format": "epoch"}}
    service, job_id, counts = post([{"time": 1, "name": "a\ud800b"}, {"time": 2, "name": "c"}],
                                   config)
    assert (counts["processed_record_count"], counts["missing_field_count"]) == (2, 0)
    assert service.string_values(job_id) == ["a\ufffdb", "c"]
    *_, counts = post('{"time":1,"name":"\ud800"}\n{"time":2,"name":"c"}\n', config)
    assert (counts["processed_record_count"], counts["missing_field_count"]) == (2, 1)
    *_, counts = post(['{"time":1,"name":"\ud800"}\n', '{"time":2,"name":"c"}\n'], config)
    assert (counts["processed_record_count"], counts["missing_field_count"]) == (2, 1)


def test_empty_body():
    *_, counts = post(b"")
    assert counts["input_record_count"] == 0
    assert counts["input_bytes"] == 0


def test_a_file_that_does_not_exist(service, tmp_path):
    job_id = open_job(service, value_job())
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, tmp_path / "nope.ndjson")
    assert raised.value.status == 400
    assert "nope.ndjson" in raised.value.reason


def test_posting_to_a_closed_or_unknown_job_is_409(service):
    service.put_job("closed", value_job())
    for job_id in ("closed", "unknown"):
        with pytest.raises(ApiError) as raised:
            service.post_data(job_id, b"{}")
        assert raised.value.status == 409
        assert raised.value.reason == (
            f"Cannot perform requested action because job [{job_id}] is not open"
        )


def test_bad_reset_start(service):
    job_id = open_job(service, value_job())
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, b"{}", reset_start="not_a_date")
    assert raised.value.type == "parse_exception"
    assert raised.value.reason == (
        "Query param [start] with value [not_a_date] cannot be parsed as a date or converted "
        "to a number (epoch)."
    )


# --------------------------------------------------------------------------- data forms


def test_every_form_of_data_gives_the_same_counts(tmp_path):
    records = [{"time": i, "value": i * 1.5, "host": "a"} for i in range(1, 2001)]
    text = "".join(f'{{"time":{r["time"]},"value":{r["value"]},"host":"a"}}\n' for r in records)
    path = tmp_path / "data.ndjson"
    path.write_text(text)
    forms = [
        text,
        text.encode(),
        path,
        io.BytesIO(text.encode()),
        records,
        (text.encode()[i : i + 777] for i in range(0, len(text), 777)),
    ]
    results = []
    for data in forms:
        *_, counts = post(data)
        results.append(counts)
    assert all(result == results[0] for result in results)
    assert results[0]["processed_record_count"] == 2000


def test_output_arrays_hold_times_values_and_codes():
    config = {
        "analysis_config": {
            "bucket_span": "1m",
            "detectors": [
                {"function": "mean", "field_name": "rt", "partition_field_name": "airline"}
            ],
        },
        "data_description": {"time_format": "epoch_ms"},
    }
    service = adjobs.JobService()
    job_id = open_job(service, config)
    batches = []
    service.add_record_listener(job_id, lambda *arrays: batches.append(arrays))
    service.post_data(
        job_id,
        b'{"time":1000,"rt":1.5,"airline":"AAL"}{"time":2000,"rt":"2","airline":"JZA"}'
        b'{"time":3000,"airline":"AAL"}{"time":500,"rt":9,"airline":"X"}',
    )
    times, numeric, codes = (np.concatenate(parts) for parts in zip(*batches))
    assert times.tolist() == [1000, 2000, 3000, 500]
    assert numeric[:2, 0].tolist() == [1.5, 2.0]
    assert math.isnan(numeric[2, 0])
    assert numeric[3, 0] == 9.0
    strings = service.string_values(job_id)
    assert [strings[c] for c in codes[:, 0]] == ["AAL", "JZA", "AAL", "X"]


# --------------------------------------------------------------------------- CSV


def csv_job(**extra) -> dict:
    return {
        "analysis_config": {
            "bucket_span": "1h",
            "detectors": [{"function": "mean", "field_name": "value", "by_field_name": "host"}],
        },
        "data_description": {
            "format": "delimited",
            "field_delimiter": ",",
            "time_format": "epoch",
            **extra,
        },
    }


def test_csv_quotes_crlf_bom_and_short_rows():
    body = (
        b'\xef\xbb\xbftime,host,value,note\r\n'
        b'1,"a,b",1.5,"he said ""hi""\r\nover two lines"\r\n'
        b"2,c\r\n"
        b"\r\n"
        b"3,d,3,\r\n"
    )
    service, job_id, counts = post(body, csv_job())
    assert counts["processed_record_count"] == 3
    assert counts["missing_field_count"] == 1  # row 2 lacks value
    assert counts["input_field_count"] == 3 * 3
    assert service.string_values(job_id) == ["a,b", "c", "d"]


def test_csv_nul_line_counts_as_a_row_with_one_column():
    # spec §6c: header metric,value,time and a NUL line: 2 missing + 1 invalid date, f = 2
    config = csv_job()
    config["analysis_config"]["detectors"] = [{"function": "mean", "field_name": "value"}]
    *_, counts = post(b"metric,value,time\n\x00\n", config)
    assert counts["missing_field_count"] == 2
    assert counts["invalid_date_count"] == 1
    assert counts["input_field_count"] == 2


def test_csv_header_without_an_analysis_field(service):
    job_id = open_job(service, csv_job())
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, b"time,value\n1,2\n")
    assert raised.value.status == 400
    assert raised.value.reason == (
        "Field configured for analysis 'host' is not in the CSV header '[time, value]'"
    )


def test_csv_unterminated_quote_fails_and_keeps_earlier_rows(service):
    job_id = open_job(service, csv_job())
    with pytest.raises(ApiError) as raised:
        service.post_data(job_id, b'time,host,value\n1,a,1\n2,"b,2\n')
    assert raised.value.extra["line"] == 3
    totals = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    assert totals["processed_record_count"] == 1


def test_csv_empty_body_has_no_last_data_time(service):
    job_id = open_job(service, csv_job())
    response = service.post_data(job_id, b"")
    assert "last_data_time" not in response


def test_real_farequote_file_as_shipped(service):
    import json

    from conftest import FAREQUOTE, ROOT

    config = json.loads((ROOT / "examples" / "farequote.json").read_text())
    config.pop("job_id")
    job_id = open_job(service, config)
    counts = service.post_data(job_id, pathlib.Path(FAREQUOTE))
    # newest first: only the first bucket's records are in order
    assert counts["input_record_count"] == 86274
    assert counts["processed_record_count"] == 147
    assert counts["out_of_order_timestamp_count"] == 86127
    assert counts["input_bytes"] == FAREQUOTE.stat().st_size


# --------------------------------------------------------------------------- streaming

MIXED = (
    b'\xef\xbb\xbf[{"time":1,"value":1,"host":{"name":"a","tags":["x",null,{"k":2}]}},\n'
    b'{"time":2 "value":2}, {"time":"3","value":"3.5"}]\r\n'
    b'// comment {"time":99}\n'
    b'{"time":4,"value":4,\n{"time":5,"value":5}\n'
    b'junk {"time":"x"}\n'
    b'{"time":6,"value":"\\u00e9\\ud83d\\ude00", "k\\"ey":1}\n'
    b'{"time":1,"value":7}\n'
    b'/* {"time":8} */ {"time":9,"value":9} 12 "str" {"time":10}'
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_counts_do_not_depend_on_chunk_boundaries(cuts):
    boundaries = [0, *sorted(cuts), len(MIXED)]
    *_, whole = post(MIXED)
    *_, chunked = post(MIXED, chunks=boundaries)
    assert chunked == whole


def test_small_windows_give_the_same_counts():
    previous = _core.set_limits(window_bytes=16)
    try:
        *_, small = post(MIXED, chunks=list(range(0, len(MIXED), 7)) + [len(MIXED)])
    finally:
        _core.set_limits(**previous)
    *_, whole = post(MIXED)
    assert small == whole
    # 1, 2 (broken), 3, 4 (line rule), 5, 6, 9, 10 processed; junk and "x" invalid;
    # time 1 after 6 out of order
    assert whole["processed_record_count"] == 8
    assert whole["invalid_date_count"] == 2
    assert whole["out_of_order_timestamp_count"] == 1


# --------------------------------------------------------------------------- background reads


def test_a_chunk_read_in_the_background_reads_as_fed_and_guards_the_upload():
    from adjobs.config import parse_job_config
    from adjobs.ingest import plan_for

    config = parse_job_config("bg", value_job())
    plan = plan_for(config)
    body = b"".join(b'{"time":%d,"value":%d}\n' % (1_600_000_000 + i, i) for i in range(5000))
    cuts = range(0, len(body), 7_000)

    def read(background: bool):
        state = _core.JobIngestState(plan.bucket_span_ms, plan.latency_ms)
        upload = _core.Upload(plan, state)
        assert not upload.reading
        batches = []
        for start in cuts:
            chunk = bytearray(body[start:start + 7_000])
            if background:
                upload.feed_in_background(chunk)
                with pytest.raises(RuntimeError, match="wait"):
                    upload.take_batch()
                with pytest.raises(RuntimeError, match="wait"):
                    upload.feed(b"{}")
                with pytest.raises(BufferError):  # held until the read ends
                    chunk.extend(b"more")
                upload.wait()
                chunk[:] = b"x" * len(chunk)  # the chunk was copied: reusing it is fine
                chunk.extend(b"more")
                assert not upload.reading
                upload.wait()  # no read running: returns at once
            else:
                upload.feed(chunk)
            batches.append(upload.take_batch())
        upload.finish()
        batches.append(upload.take_batch())
        times, numeric, _ = (np.concatenate(parts) for parts in zip(*batches))
        return (times.tolist(), numeric[:, 0].tolist(), upload.processed_record_count,
                state.latest_ms)

    assert read(True) == read(False)
    assert read(True)[2] == 5000


def _native_threads(expected: int | None = None) -> int:
    """The process's threads; with ``expected``, given a moment to get there (a thread that
    has stopped its work still has to exit)."""
    for _ in range(100):
        count = len(os.listdir("/proc/self/task"))
        if expected is None or count == expected:
            break
        time.sleep(0.01)
    return count


def test_one_reading_thread_serves_an_upload_and_ends_with_it():
    import gc

    from adjobs.config import parse_job_config
    from adjobs.ingest import plan_for

    plan = plan_for(parse_job_config("bg", value_job()))
    body = b"".join(b'{"time":%d,"value":%d}\n' % (1_600_000_000 + i, i) for i in range(3000))
    before = _native_threads()
    for finish in (True, False, True):
        state = _core.JobIngestState(plan.bucket_span_ms, plan.latency_ms)
        upload = _core.Upload(plan, state)
        for start in range(0, len(body), 5_000):
            upload.feed_in_background(body[start:start + 5_000])
            assert _native_threads() == before + 1  # the same thread, chunk after chunk
            upload.wait()
        if finish:
            upload.finish()
            assert _native_threads(before) == before
            assert upload.take_batch()[0].size == 3000
        del upload  # an upload dropped before its end stops its thread too
        gc.collect()
        assert _native_threads(before) == before


def test_chunks_of_every_kind_of_data_start_with_a_first_chunk_of_its_own_size(tmp_path):
    from adjobs.ingest import iter_chunks

    lines = [b'{"n":%d}\n' % i for i in range(3000)]  # about 30 KB
    body = b"".join(lines)
    path = tmp_path / "body.ndjson"
    path.write_bytes(body)

    class Reader:  # read() only, no readinto
        def __init__(self) -> None:
            self.stream = io.BytesIO(body)

        def read(self, size: int) -> bytes:
            return self.stream.read(size)

    kinds = {"bytes": lambda: body, "path": lambda: path,
             "file": lambda: io.BytesIO(body), "read": Reader, "lines": lambda: iter(lines)}
    for kind, make in kinds.items():
        pieces = [bytes(piece) for piece in iter_chunks(make(), chunk_bytes=8192,
                                                        first_chunk_bytes=2048)]
        assert b"".join(pieces) == body, kind
        sizes = [len(piece) for piece in pieces]
        if kind == "lines":  # whole lines, gathered up to each size
            assert 2048 <= sizes[0] < 2048 + 20 and all(8192 <= n < 8192 + 20
                                                       for n in sizes[1:-1]), sizes
        else:
            assert sizes[:4] == [2048, 8192, 8192, 8192] and sum(sizes) == len(body), kind
        # growing from the first to chunk_bytes, by half each time
        grown = [len(piece) for piece in iter_chunks(make(), chunk_bytes=8192,
                                                     first_chunk_bytes=2048, growth=1.5)]
        expected = [2048, 3072, 4608, 6912, 8192]
        if kind == "lines":
            assert all(want <= n < want + 20 for n, want in zip(grown, expected, strict=False))
        else:
            assert grown[:5] == expected and sum(grown) == len(body), kind
            assert grown[5:] == [len(body) - sum(expected)], kind  # the rest, under 8192
    # no growth, or growth without bound: straight to chunk_bytes after the first
    for growth in (0.5, float("nan"), float("inf"), 1e308):
        assert [len(p) for p in iter_chunks(body[:300], chunk_bytes=128,
                                            first_chunk_bytes=16, growth=growth)] \
            == [16, 128, 128, 28], growth
    assert list(iter_chunks(b"", first_chunk_bytes=10)) == []
    assert [len(p) for p in iter_chunks(body[:100], chunk_bytes=64, first_chunk_bytes=512)] \
        == [64, 36]  # a first chunk is never larger than the others


def test_an_analysed_upload_from_a_file_gives_what_the_same_bytes_give(tmp_path):
    # A file is read into one reused buffer, the first chunk smaller than the others: each
    # must be read before the buffer is filled again.
    import adjobs

    rows = [b"time,value"] + [b"%d,%d" % (1_600_000_000 + 60 * i, i % 97) for i in range(90_000)]
    body = b"\n".join(rows) + b"\n"
    assert len(body) > 1 << 20
    path = tmp_path / "data.csv"
    path.write_bytes(body)
    config = {"analysis_config": {"bucket_span": "1h", "detectors": [
                  {"function": "mean", "field_name": "value"}]},
              "data_description": {"time_field": "time", "time_format": "epoch",
                                   "format": "delimited", "field_delimiter": ","}}
    found = []
    for data in (body, path):
        with adjobs.JobService() as service:
            service.put_job("j", config)
            service.open_job("j")
            counts = service.post_data("j", data)
            service.flush_job("j")
            found.append((counts["processed_record_count"], counts["input_bytes"],
                          service.get_buckets("j", size=10_000)["buckets"]))
    assert found[0][0] == found[1][0] == 90_000
    assert found[0][1] == found[1][1] == len(body)
    assert found[0][2] == found[1][2] and len(found[0][2]) == 1500


def _bg_upload():
    from adjobs.config import parse_job_config
    from adjobs.ingest import plan_for

    plan = plan_for(parse_job_config("bg", value_job()))
    state = _core.JobIngestState(plan.bucket_span_ms, plan.latency_ms)
    body = b"".join(b'{"time":%d,"value":%d}\n' % (1_600_000_000 + i, i) for i in range(6000))
    return plan, state, body


def test_a_process_forked_between_chunks_reads_on_without_its_parents_thread():
    plan, state, body = _bg_upload()
    upload = _core.Upload(plan, state)
    upload.feed_in_background(body[:50_000])
    upload.wait()  # the reading thread is started, and idle
    child = os.fork()
    if child == 0:  # the child has no such thread: it starts its own, and ends
        status = 1
        try:
            upload.feed_in_background(body[50_000:])
            upload.wait()
            upload.finish()
            status = 0 if upload.processed_record_count == 6000 else 2
        finally:
            os._exit(status)
    for _ in range(200):
        done, code = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(code) == 0
    upload.feed_in_background(body[50_000:])  # the parent's own thread goes on
    upload.wait()
    upload.finish()
    assert upload.processed_record_count == 6000


def test_an_upload_dropped_in_a_reference_cycle_mid_read_waits_for_its_thread():
    import gc

    plan, _, body = _bg_upload()

    class Kept(_core.Upload):
        pass

    before = _native_threads()
    for _ in range(20):
        upload = Kept(plan, _core.JobIngestState(plan.bucket_span_ms, plan.latency_ms))
        upload.itself = upload  # only the cycle collector frees it, while it reads
        upload.feed_in_background(bytearray(body))
        del upload
        gc.collect()
    assert _native_threads(before) == before


def test_an_upload_given_up_holds_no_thread_while_kept():
    plan, state, body = _bg_upload()
    before = _native_threads()
    upload = _core.Upload(plan, state)
    upload.feed_in_background(body)
    with pytest.raises(RuntimeError, match="wait"):
        upload.close()
    upload.wait()
    assert _native_threads() == before + 1
    upload.close()
    assert _native_threads(before) == before
    upload.feed_in_background(body[:100])  # it can still go on: a thread anew
    upload.wait()
    upload.finish()
    assert _native_threads(before) == before


def test_an_analysed_upload_whose_source_fails_leaves_no_thread_behind_its_error():
    import adjobs

    _, _, body = _bg_upload()

    def failing():
        yield body[:200_000]
        yield body[200_000:]
        raise OSError("the source broke")

    before = _native_threads()
    with adjobs.JobService() as service:
        service.put_job("j", value_job())
        service.open_job("j")
        kept = []
        for _ in range(5):
            try:
                service.post_data("j", failing())
            except OSError as error:
                kept.append(error)  # with its traceback, and the upload in it
        assert len(kept) == 5 and _native_threads(before) == before
        assert service.get_job_stats("j")["jobs"][0]["data_counts"]["processed_record_count"] == 0
