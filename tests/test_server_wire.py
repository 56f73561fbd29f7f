"""``adjobs serve`` on the wire: raw HTTP requests the way curl and other clients send them.

Everything here goes through :mod:`http.client` or hand-written bytes on a socket
(``tests/server_harness.py``), against a real server subprocess: media types, gzip bodies,
the size limit (D11), cut-off uploads (docs/store.md: all or nothing), per-job FIFO and
the 429 past 100 waiting operations (D10), parameters, errors and the product header.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest
from server_harness import (
    HANG_GUARD,
    HOUR,
    JOB_CONFIG,
    T0,
    RawClient,
    Response,
    Server,
    gzipped,
    ndjson,
    records,
    reference_counts,
    request,
    without_clock,
)

import adjobs

JSON = {"Content-Type": "application/json"}
ML = "/_ml/anomaly_detectors"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("wire") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server whose body limit (2mb) is twice the 1 MiB feed batch, so that the first
    MiB of an over-long body has been fed to the core before it gets its 413."""
    with Server(tmp_path_factory.mktemp("limited") / "data",
                "--max-content-length", "2mb") as running:
        yield running


LIMIT = 2 * 1024 * 1024


def new_job(port: int, job: str, *, open_it: bool = True) -> None:
    created = request(port, "PUT", f"{ML}/{job}", json.dumps(JOB_CONFIG), JSON)
    assert created.status == 200, created.body
    if open_it:
        opened = request(port, "POST", f"{ML}/{job}/_open")
        assert (opened.status, opened.json()) == (200, {"opened": True, "node": "adjobs"})


def totals(port: int, job: str) -> dict:
    answer = request(port, "GET", f"{ML}/{job}/_stats")
    assert answer.status == 200, answer.body
    return answer.json()["jobs"][0]["data_counts"]


def post(port: int, job: str, body: bytes, headers: dict | None = None,
         query: str = "") -> Response:
    return request(port, "POST", f"{ML}/{job}/_data{query}", body, headers)


def assert_es_error(answer: Response, status: int, error_type: str) -> dict:
    """The ES error shape, with the product header; returns the error object."""
    assert answer.status == status, answer.body
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert answer.content_type.startswith(("application/json", "application/vnd.elasticsearch"))
    body = answer.json()
    assert set(body) == {"error", "status"}
    assert body["status"] == status and isinstance(body["status"], int)
    error = body["error"]
    assert error["type"] == error_type
    assert isinstance(error["reason"], str) and error["reason"]
    assert isinstance(error["root_cause"], list) and len(error["root_cause"]) == 1
    assert error["root_cause"][0] == {k: v for k, v in error.items() if k != "root_cause"}
    return error


def expected_for(job: str, uploads: list[bytes]) -> list[dict]:
    return reference_counts(uploads, job_id=job)


# ------------------------------------------------------------------------------------
# The basics: HEAD, the product header, the error shape


def test_head_root_is_200_without_a_body(server):
    head = request(server.port, "HEAD", "/")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["x-elastic-product"] == "Elasticsearch"
    info = request(server.port, "GET", "/")
    assert info.status == 200
    assert info.headers["x-elastic-product"] == "Elasticsearch"
    assert info.content_type == "application/json"
    assert info.json()["tagline"] == "You Know, for Search"


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "error_type"), [
    ("GET", f"{ML}/nope", None, {}, 404, "resource_not_found_exception"),
    ("GET", f"{ML}/nope/_stats", None, {}, 404, "resource_not_found_exception"),
    ("POST", f"{ML}/nope/_open", b"", {}, 404, "resource_not_found_exception"),
    ("DELETE", f"{ML}/nope/_open", None, {}, 405, "method_not_allowed_exception"),
    ("PATCH", f"{ML}/nope", b"{}", JSON, 405, "method_not_allowed_exception"),
    ("GET", "/_no_such_api", None, {}, 400, "illegal_argument_exception"),
    ("POST", f"{ML}/nope/_data", b'{"time": 1}\n', JSON, 409, "status_exception"),
    ("POST", f"{ML}/nope/_flush", b"", {}, 409, "status_exception"),
    ("PUT", f"{ML}/broken", b'{"analysis_config": ', JSON, 400, "x_content_parse_exception"),
    ("PUT", f"{ML}/broken", b"", JSON, 400, "parse_exception"),
    ("PUT", f"{ML}/broken", b"a: b\n", {"Content-Type": "application/yaml"}, 415,
     "media_type_header_exception"),
])
def test_errors_are_es_shaped_with_the_product_header(server, method, path, body, headers,
                                                      status, error_type):
    answer = request(server.port, method, path, body, headers)
    assert_es_error(answer, status, error_type)


def test_error_reasons_use_es_wording(server):
    missing = request(server.port, "GET", f"{ML}/nope")
    assert missing.json() == {
        "error": {
            "root_cause": [{"type": "resource_not_found_exception",
                            "reason": "No known job with id 'nope'"}],
            "type": "resource_not_found_exception",
            "reason": "No known job with id 'nope'",
        },
        "status": 404,
    }
    wrong_method = request(server.port, "DELETE", f"{ML}/nope/_open")
    assert wrong_method.json()["error"]["reason"] == (
        f"Incorrect HTTP method for uri [{ML}/nope/_open] and method [DELETE], allowed: [POST]")
    # HEAD on an error: the status and the header, no body.
    head = request(server.port, "HEAD", f"{ML}/nope")
    assert head.status == 404
    assert head.body == b""
    assert head.headers["x-elastic-product"] == "Elasticsearch"


# ------------------------------------------------------------------------------------
# Content types and body shapes


def test_data_without_content_type_and_with_curls_form_type(server):
    job = "no-content-type"
    new_job(server.port, job)
    first = ndjson(records(3))
    # curl -d @file strips the newlines: objects back to back on one line.
    second = b"".join(json.dumps(doc).encode() for doc in records(3, start_hour=2))
    third = ndjson(records(2, start_hour=4))
    expected = expected_for(job, [first, second, third])

    plain = post(server.port, job, first)  # http.client sends no Content-Type
    assert plain.status == 202
    assert without_clock(plain.json()) == expected[0]
    assert plain.json()["processed_record_count"] == 3
    form = post(server.port, job, second,
                {"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 202
    assert without_clock(form.json()) == expected[1]
    assert form.json()["processed_record_count"] == 3
    text = post(server.port, job, third, {"Content-Type": "text/plain; charset=UTF-8"})
    assert text.status == 202
    assert without_clock(text.json()) == expected[2]
    assert totals(server.port, job)["processed_record_count"] == 8
    # A bodyless POST with no Content-Type either (py 8.19 / 9.0-9.2 open and flush).
    assert request(server.port, "POST", f"{ML}/{job}/_flush").status == 200


@pytest.mark.parametrize("shape", ["ndjson", "array", "one-line", "no-final-newline",
                                   "pretty-array", "crlf"])
def test_data_body_shapes(server, shape):
    docs = records(3)
    bodies = {
        "ndjson": ndjson(docs),
        "array": json.dumps(docs, separators=(",", ":")).encode(),
        "one-line": b" ".join(json.dumps(doc).encode() for doc in docs) + b"\n",
        "no-final-newline": ndjson(docs).rstrip(b"\n"),
        "pretty-array": json.dumps(docs, indent=2).encode(),
        "crlf": ndjson(docs).replace(b"\n", b"\r\n"),
    }
    body = bodies[shape]
    job = f"shape-{shape}"
    new_job(server.port, job)
    answer = post(server.port, job, body, {"Content-Type": "application/x-ndjson"})
    assert answer.status == 202
    counts = answer.json()
    assert without_clock(counts) == expected_for(job, [body])[0]
    assert counts["processed_record_count"] == 3
    assert counts["input_record_count"] == 3
    assert counts["input_bytes"] == len(body)
    assert counts["latest_record_timestamp"] == (T0 + HOUR) * 1000


@pytest.mark.parametrize("version", ["7", "8", "9"])
def test_compatible_with_media_types(server, version):
    job = f"compat-{version}"
    compat_json = f"application/vnd.elasticsearch+json; compatible-with={version}"
    compat_ndjson = f"application/vnd.elasticsearch+x-ndjson; compatible-with={version}"
    echoed = f"application/vnd.elasticsearch+json;compatible-with={version}"
    created = request(server.port, "PUT", f"{ML}/{job}", json.dumps(JOB_CONFIG),
                      {"Content-Type": compat_json, "Accept": compat_json})
    assert created.status == 200
    assert created.content_type == echoed
    opened = request(server.port, "POST", f"{ML}/{job}/_open", b"",
                     {"Content-Type": compat_json, "Accept": compat_json})
    assert opened.status == 200 and opened.content_type == echoed

    first, second = ndjson(records(2)), json.dumps(records(2, start_hour=2)).encode()
    expected = expected_for(job, [first, second])
    answer = post(server.port, job, first, {"Content-Type": compat_ndjson,
                                            "Accept": compat_json})
    assert answer.status == 202
    assert answer.content_type == echoed
    assert without_clock(answer.json()) == expected[0]
    # No space, a charset, upper-case parameter name: still the same media type.
    answer = post(server.port, job, second, {
        "Content-Type": f"application/vnd.elasticsearch+json;Compatible-With={version};"
                        " charset=UTF-8",
        "Accept": "application/json"})
    assert answer.status == 202
    assert answer.content_type == "application/json"
    assert without_clock(answer.json()) == expected[1]
    # The JS client's Accept, and a plain JSON body with a compat Accept (§0 row 3).
    stats = request(server.port, "GET", f"{ML}/{job}/_stats", headers={
        "Content-Type": compat_json, "Accept": f"{compat_json},text/plain"})
    assert stats.status == 200 and stats.content_type == echoed
    assert stats.json()["jobs"][0]["data_counts"]["processed_record_count"] == 4
    flushed = request(server.port, "POST", f"{ML}/{job}/_flush", b'{"calc_interim": true}',
                      {"Content-Type": "application/json", "Accept": compat_json})
    assert flushed.status == 200 and flushed.content_type == echoed
    # Errors echo it too.
    missing = request(server.port, "GET", f"{ML}/nope", headers={"Accept": compat_json})
    assert missing.status == 404 and missing.content_type == echoed


def test_unsupported_compat_version_is_400(server):
    job = "compat-5"
    new_job(server.port, job)
    for content_type in ("application/vnd.elasticsearch+json; compatible-with=5",
                         "application/vnd.elasticsearch+x-ndjson; compatible-with=10",
                         "application/vnd.elasticsearch+json"):
        answer = post(server.port, job, ndjson(records(2)), {"Content-Type": content_type})
        error = assert_es_error(answer, 400, "media_type_header_exception")
        assert "compatible-with" in error["reason"]
    answer = request(server.port, "PUT", f"{ML}/compat-5b", json.dumps(JOB_CONFIG),
                     {"Content-Type": "application/vnd.elasticsearch+json; compatible-with=5"})
    assert_es_error(answer, 400, "media_type_header_exception")
    assert request(server.port, "GET", f"{ML}/compat-5b").status == 404
    assert totals(server.port, job)["processed_record_count"] == 0


UNREADABLE = {"yaml": "application/yaml", "x-yaml": "application/x-yaml",
              "cbor": "application/cbor", "smile": "application/smile",
              "yaml-compat": "application/vnd.elasticsearch+yaml; compatible-with=9"}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_body_types_get_415(server, name):
    content_type = UNREADABLE[name]
    job = f"type-{name}"
    yaml_config = "analysis_config:\n  bucket_span: 1h\n"
    answer = request(server.port, "PUT", f"{ML}/{job}", yaml_config,
                     {"Content-Type": content_type})
    error = assert_es_error(answer, 415, "media_type_header_exception")
    assert content_type in error["reason"]
    assert request(server.port, "GET", f"{ML}/{job}").status == 404
    new_job(server.port, job)
    answer = post(server.port, job, b"- time: 1700000000\n  rt: 1\n",
                  {"Content-Type": content_type})
    assert_es_error(answer, 415, "media_type_header_exception")
    assert totals(server.port, job)["input_bytes"] == 0


def test_bodyless_post_with_content_length_0_and_a_content_type(server):
    job = "cl-zero"
    compat = {"Content-Type": "application/vnd.elasticsearch+json; compatible-with=9"}
    new_job(server.port, job, open_it=False)
    for path, expected in ((f"{ML}/{job}/_open", {"opened": True, "node": "adjobs"}),
                           (f"{ML}/{job}/_flush", {"flushed": True})):
        for headers in (compat, JSON, {"Content-Type": "application/x-ndjson"}):
            answer = request(server.port, "POST", path, b"", headers)  # Content-Length: 0
            assert answer.status == 200, answer.body
            assert answer.json() == expected
    # An empty _data body: an upload of nothing.
    empty = post(server.port, job, b"", compat)
    assert empty.status == 202
    assert empty.json()["processed_record_count"] == 0
    assert empty.json()["input_bytes"] == 0
    # A GET with a Content-Type and no body (the JS client).
    stats = request(server.port, "GET", f"{ML}/{job}/_stats", headers=compat)
    assert stats.status == 200 and stats.json()["count"] == 1
    # No Content-Length at all, by hand.
    with RawClient(server.port) as raw:
        raw.send(f"POST {ML}/{job}/_close HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        closed = raw.read_response()
    assert (closed.status, closed.json()) == (200, {"closed": True})


# ------------------------------------------------------------------------------------
# gzip


def test_gzip_bodies_count_exactly_like_plain_ones(server):
    uploads = [ndjson(records(5)), json.dumps(records(4, start_hour=3)).encode(),
               ndjson(records(3, start_hour=6))]
    new_job(server.port, "plain")
    config = gzipped(json.dumps(JOB_CONFIG).encode())
    created = request(server.port, "PUT", f"{ML}/zipped", config,
                      {**JSON, "Content-Encoding": "gzip"})
    assert created.status == 200 and created.json()["job_id"] == "zipped"
    assert request(server.port, "POST", f"{ML}/zipped/_open").status == 200

    for i, body in enumerate(uploads):
        plain = post(server.port, "plain", body, JSON)
        if i == 1:  # zlib-wrapped deflate, as some clients send
            zipped = post(server.port, "zipped", zlib.compress(body),
                          {**JSON, "Content-Encoding": "deflate"})
        else:
            zipped = post(server.port, "zipped", gzipped(body),
                          {**JSON, "Content-Encoding": "gzip"})
        assert plain.status == zipped.status == 202
        plain_counts = without_clock(plain.json())
        zipped_counts = without_clock(zipped.json())
        assert zipped_counts["input_bytes"] == len(body)  # bytes after inflating
        assert {**zipped_counts, "job_id": "plain"} == plain_counts
    plain_totals = without_clock(totals(server.port, "plain"))
    zipped_totals = without_clock(totals(server.port, "zipped"))
    assert {**zipped_totals, "job_id": "plain"} == plain_totals
    assert plain_totals["processed_record_count"] == 12
    assert plain_totals == {**expected_totals(uploads), "job_id": "plain"}


def expected_totals(uploads: list[bytes]) -> dict:
    with adjobs.JobService() as service:
        service.put_job("plain", JOB_CONFIG)
        service.open_job("plain")
        for body in uploads:
            service.post_data("plain", body)
        return without_clock(service.get_job_stats("plain")["jobs"][0]["data_counts"])


def test_corrupt_gzip_is_400_and_counts_nothing(server):
    job = "corrupt-gzip"
    new_job(server.port, job)
    good = ndjson(records(4))
    assert post(server.port, job, good).status == 202
    before = totals(server.port, job)

    # ~4 MB of later records, so that the first MiB reaches the core before the bad end.
    late = ndjson(records(60_000, start_hour=1000, hosts=("late-1", "late-2")))
    bad_crc = bytearray(gzipped(late))
    bad_crc[-6] ^= 0xFF
    truncated = gzipped(late)[:-9]
    bodies = {
        "not gzip": late[:5000],
        "bad crc": bytes(bad_crc),
        "truncated": truncated,
        "garbage inside": gzipped(late)[:40] + b"\x00garbage\xff" * 100,
    }
    for name, body in bodies.items():
        answer = post(server.port, job, body,
                      {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
        error = assert_es_error(answer, 400, "parse_exception")
        assert "gzip" in error["reason"], name
        assert totals(server.port, job) == before, name
    unsupported = post(server.port, job, good, {"Content-Encoding": "br"})
    assert_es_error(unsupported, 415, "illegal_argument_exception")
    # The job goes on as if the broken uploads never happened: the next records, later
    # than the first upload but much earlier than the broken ones, are all in order.
    following = ndjson(records(3, start_hour=5))
    answer = post(server.port, job, gzipped(following), {"Content-Encoding": "gzip"})
    assert answer.status == 202
    assert without_clock(answer.json()) == expected_for(job, [good, following])[1]
    assert answer.json()["out_of_order_timestamp_count"] == 0
    assert totals(server.port, job)["processed_record_count"] == 7


# ------------------------------------------------------------------------------------
# Paths and parameters


def test_old_xpack_paths(server):
    xpack = "/_xpack/ml/anomaly_detectors"
    job = "xpack-job"
    created = request(server.port, "PUT", f"{xpack}/{job}", json.dumps(JOB_CONFIG), JSON)
    assert created.status == 200 and created.json()["job_id"] == job
    assert request(server.port, "POST", f"{xpack}/{job}/_open").json()["opened"] is True
    body = ndjson(records(3))
    answer = request(server.port, "POST", f"{xpack}/{job}/_data", body)
    assert answer.status == 202
    assert without_clock(answer.json()) == expected_for(job, [body])[0]
    assert request(server.port, "POST", f"{xpack}/{job}/_flush").json()["flushed"] is True
    stats = request(server.port, "GET", f"{xpack}/{job}/_stats").json()
    assert stats["jobs"][0]["data_counts"]["processed_record_count"] == 3
    assert request(server.port, "GET", f"{xpack}/{job}").json()["count"] == 1
    assert request(server.port, "GET", f"{ML}/{job}").json()["count"] == 1
    assert request(server.port, "GET", "/_xpack/ml/info").status == 200
    assert request(server.port, "POST", f"{xpack}/{job}/_close").json() == {"closed": True}
    assert request(server.port, "DELETE", f"{xpack}/{job}").json() == {"acknowledged": True}
    assert request(server.port, "GET", f"{ML}/{job}").status == 404


def test_query_and_body_parameters_are_merged(server):
    job = "merged"
    new_job(server.port, job)
    assert post(server.port, job, ndjson(records(2))).status == 202  # latest at T0 + 30m
    flush = f"{ML}/{job}/_flush"
    advance = (T0 + 10 * HOUR) * 1000
    # calc_interim in the body, advance_time in the query: both apply.
    answer = request(server.port, "POST", f"{flush}?advance_time={advance}",
                     b'{"calc_interim": true}', JSON)
    assert answer.json() == {"flushed": True, "last_finalized_bucket_end": advance}
    # start needs calc_interim: from the query alone it is refused ...
    start = (T0 + 11 * HOUR) * 1000
    refused = request(server.port, "POST", f"{flush}?start={start}", b"", JSON)
    error = assert_es_error(refused, 400, "illegal_argument_exception")
    assert error["reason"] == "Invalid flush parameters: unexpected 'start'."
    # ... and accepted with calc_interim from the body, which wins over the query's.
    accepted = request(server.port, "POST", f"{flush}?start={start}&calc_interim=false",
                       b'{"calc_interim": true}', JSON)
    assert accepted.status == 200 and accepted.json()["flushed"] is True
    # Body wins for the same parameter: skip_time from the body, not the query.
    skipped = request(server.port, "POST", f"{flush}?skip_time={T0 * 1000}",
                      json.dumps({"skip_time": str((T0 + 20 * HOUR) * 1000 + 1000)}).encode(),
                      JSON)
    assert skipped.json()["last_finalized_bucket_end"] == (T0 + 21 * HOUR) * 1000
    # reset_start/reset_end on _data come from the query.
    reset = post(server.port, job, ndjson(records(1, start_hour=30)),
                 query=f"?reset_start={T0 * 1000}&reset_end={(T0 + HOUR) * 1000}")
    assert reset.status == 202 and reset.json()["processed_record_count"] == 1
    # close with force in the body.
    closed = request(server.port, "POST", f"{ML}/{job}/_close", b'{"force": true}', JSON)
    assert closed.json() == {"closed": True}


def test_results_requests_with_odd_times_and_bodies_are_answered_not_500(server):
    job = "odd-results"
    new_job(server.port, job)
    assert post(server.port, job, ndjson(records(30))).status == 202
    flushed = request(server.port, "POST", f"{ML}/{job}/_flush")
    assert flushed.status == 200
    results = f"{ML}/{job}/results"
    stamp = (T0 + 3 * HOUR) * 1000
    # a timestamp in the path and in the query or body: the path's wins (rest-api §5)
    for path, body in ((f"{results}/buckets/{stamp}?timestamp={T0 * 1000}", b""),
                       (f"{results}/buckets/{stamp}", json.dumps(
                           {"timestamp": str(T0 * 1000)}).encode())):
        answer = request(server.port, "POST", path, body, JSON)
        assert answer.status == 200, answer.body
        assert [b["timestamp"] for b in answer.json()["buckets"]] == [stamp]
    # times past a 64-bit millisecond count: ES's parse error, on every results API
    for path in (f"{results}/buckets?start=99999999999999999999999",
                 f"{results}/records?start=-99999999999999999999",
                 f"{results}/influencers?end=9223372036854775808",
                 f"{results}/overall_buckets?end=9223372036854775808"):
        answer = request(server.port, "GET", path)
        error = assert_es_error(answer, 400, "parse_exception")
        assert "cannot be parsed as a date or converted to a number" in error["reason"]
    # the edges themselves are times: no bucket lies past them
    for query in ("start=9223372036854775807", "end=-9223372036854775808"):
        answer = request(server.port, "GET", f"{results}/overall_buckets?{query}")
        assert answer.status == 200 and answer.json()["count"] == 0, answer.body
    # a body that is not an object of parameters
    for body, token in ((b"[1, 2]", "START_ARRAY"), (b'"str"', "VALUE")):
        answer = request(server.port, "POST", f"{results}/buckets", body, JSON)
        error = assert_es_error(answer, 400, "x_content_parse_exception")
        assert error["reason"] == f"[1:1] [get_buckets] Expected START_OBJECT but was: {token}"


def test_unknown_parameters_are_400_naming_them(server):
    job = "params"
    new_job(server.port, job)
    answer = request(server.port, "GET", f"{ML}/{job}/_stats?bogus=1")
    error = assert_es_error(answer, 400, "illegal_argument_exception")
    assert error["reason"] == (
        f"request [{ML}/{job}/_stats] contains unrecognized parameter: [bogus]")
    answer = request(server.port, "POST", f"{ML}/{job}/_flush", b'{"not_a_param": true}', JSON)
    error = assert_es_error(answer, 400, "illegal_argument_exception")
    assert "[not_a_param]" in error["reason"]
    answer = post(server.port, job, ndjson(records(2)), query="?wait_for=1")
    error = assert_es_error(answer, 400, "illegal_argument_exception")
    assert "[wait_for]" in error["reason"]
    assert totals(server.port, job)["processed_record_count"] == 0
    # The generic parameters are accepted everywhere.
    answer = post(server.port, job, ndjson(records(2)),
                  query="?human=true&error_trace=true&format=json")
    assert answer.status == 202 and answer.json()["processed_record_count"] == 2


def test_filter_path_and_pretty(server):
    job = "filtered"
    new_job(server.port, job)
    assert post(server.port, job, ndjson(records(3))).status == 202
    stats = f"{ML}/{job}/_stats"
    answer = request(server.port, "GET", stats + "?filter_path=jobs.data_counts."
                     "processed_record_count,jobs.state")
    assert answer.json() == {"jobs": [{"data_counts": {"processed_record_count": 3},
                                       "state": "opened"}]}
    assert request(server.port, "GET", stats + "?filter_path=count").json() == {"count": 1}
    assert request(server.port, "GET", stats + "?filter_path=**.bucket_count").json() == {
        # The third record (one hour in) finalised the first bucket: analysed once.
        "jobs": [{"data_counts": {"bucket_count": 1}, "timing_stats": {"bucket_count": 1}}]}
    assert request(server.port, "GET", stats + "?filter_path=jobs.*.job_id").json() == {
        "jobs": [{"data_counts": {"job_id": job}, "model_size_stats": {"job_id": job},
                  "timing_stats": {"job_id": job}}]}
    pretty = request(server.port, "GET", stats + "?pretty&filter_path=jobs.job_id")
    assert pretty.body == b'{\n  "jobs": [\n    {\n      "job_id": "filtered"\n    }\n  ]\n}\n'
    pretty = request(server.port, "GET", "/_ml/info?pretty=true")
    assert pretty.body.endswith(b"}\n") and b'\n  "defaults": {\n' in pretty.body
    assert json.loads(pretty.body) == request(server.port, "GET", "/_ml/info").json()
    # filter_path applies to successes only: an error keeps its shape.
    missing = request(server.port, "GET", f"{ML}/nope/_stats?filter_path=count")
    assert_es_error(missing, 404, "resource_not_found_exception")


# ------------------------------------------------------------------------------------
# The size limit (D11)


def test_content_length_over_the_limit_is_413_and_counts_nothing(limited):
    port = limited.port
    job = "too-long"
    new_job(port, job)
    first = ndjson(records(3))
    assert post(port, job, first).status == 202
    before = totals(port, job)
    body = ndjson(records(60_000, start_hour=100))  # ~3 MB, later records
    assert len(body) > LIMIT
    # curl-style: the whole body sent with its Content-Length.
    answer = post(port, job, body, {"Content-Type": "application/x-ndjson"})
    error = assert_es_error(answer, 413, "content_too_long_exception")
    assert f"[{LIMIT}]" in error["reason"]
    assert totals(port, job) == before
    # The 413 comes from the Content-Length alone, before any of the body is sent.
    with RawClient(port) as raw:
        raw.send_head("POST", f"{ML}/{job}/_data", {"Content-Length": str(LIMIT + 1)})
        answer = raw.read_response()
    assert_es_error(answer, 413, "content_too_long_exception")
    # Other endpoints too.
    big_config = json.dumps({**JOB_CONFIG, "description": "x" * LIMIT})
    answer = request(port, "PUT", f"{ML}/too-long-config", big_config, JSON)
    assert_es_error(answer, 413, "content_too_long_exception")
    assert request(port, "GET", f"{ML}/too-long-config").status == 404
    # A body exactly at the limit is fine.
    at_limit = ndjson(records(3, start_hour=2))
    at_limit += b" " * (LIMIT - len(at_limit))
    answer = post(port, job, at_limit)
    assert answer.status == 202 and answer.json()["processed_record_count"] == 3
    assert answer.json()["input_bytes"] == LIMIT
    assert totals(port, job)["processed_record_count"] == 6
    assert totals(port, job)["out_of_order_timestamp_count"] == 0


def test_chunked_body_growing_past_the_limit_is_413_and_counts_nothing(limited):
    port = limited.port
    job = "too-long-chunked"
    new_job(port, job)
    first = ndjson(records(3))
    assert post(port, job, first).status == 202
    before = totals(port, job)

    # Chunked and under the limit: counted like any other body.
    small = ndjson(records(4, start_hour=2))
    with RawClient(port) as raw:
        raw.send_head("POST", f"{ML}/{job}/_data", {"Transfer-Encoding": "chunked",
                                                    "Content-Type": "application/x-ndjson"})
        for line in small.splitlines(keepends=True):
            raw.send_chunk(line)
        raw.send(b"0\r\n\r\n")
        answer = raw.read_response()
    assert answer.status == 202
    assert without_clock(answer.json()) == expected_for(job, [first, small])[1]
    before = totals(port, job)
    assert before["processed_record_count"] == 7

    # Growing past the limit mid-way: the 413 comes before the body ends (no final chunk
    # is ever sent), and the records of the first MiB, fed to the core, are not counted.
    late = ndjson(records(60_000, start_hour=500, hosts=("late-1", "late-2")))
    with RawClient(port) as raw:
        raw.send_head("POST", f"{ML}/{job}/_data", {"Transfer-Encoding": "chunked",
                                                    "Content-Type": "application/x-ndjson"})
        sent = 0
        piece = 32 * 1024
        while sent <= LIMIT:
            try:
                raw.send_chunk(late[sent:sent + piece])
            except OSError:  # the server may stop reading once it has answered
                break
            sent += piece
        answer = raw.read_response()
    error = assert_es_error(answer, 413, "content_too_long_exception")
    assert f"[{LIMIT}]" in error["reason"]
    assert totals(port, job) == before

    # An inflated gzip body counts toward the limit too (no gzip bombs).
    bomb = gzipped(late)
    assert len(bomb) < LIMIT < len(late)
    answer = post(port, job, bomb, {"Content-Encoding": "gzip"})
    assert_es_error(answer, 413, "content_too_long_exception")
    assert totals(port, job) == before

    # The job takes the next upload, whose records are in order: nothing of the late
    # records moved the out-of-order baseline.
    following = ndjson(records(2, start_hour=6))
    answer = post(port, job, following)
    assert answer.status == 202
    assert without_clock(answer.json()) == expected_for(job, [first, small, following])[2]
    assert answer.json()["out_of_order_timestamp_count"] == 0
    assert totals(port, job)["processed_record_count"] == 9


# ------------------------------------------------------------------------------------
# Cut-off uploads (docs/store.md: all or nothing)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_disconnecting_mid_upload_counts_nothing(server, framing):
    port = server.port
    job = f"cut-off-{framing}"
    new_job(port, job)
    first = ndjson(records(4))
    assert post(port, job, first).status == 202
    before = totals(port, job)

    # ~1.5 MB of complete records with later timestamps and new categorical values, so
    # that at least one 1 MiB batch is fed to the core, then the client goes away.
    late = ndjson(records(30_000, start_hour=1000, hosts=("cut-1", "cut-2", "cut-3")))
    disconnects = server.log.count("client disconnected mid-body")
    raw = RawClient(port)
    try:
        if framing == "chunked":
            raw.send_head("POST", f"{ML}/{job}/_data", {"Transfer-Encoding": "chunked"})
            for start in range(0, len(late), 64 * 1024):
                raw.send_chunk(late[start:start + 64 * 1024])
        else:
            raw.send_head("POST", f"{ML}/{job}/_data",
                          {"Content-Length": str(20 * len(late))})
            raw.send(late)
    finally:
        raw.close()
    server.wait_for_log("client disconnected mid-body", disconnects + 1)
    assert totals(port, job) == before

    # The job takes the next upload with exact counts; its records are later than the
    # first upload's and earlier than the cut-off ones: all in order.
    following = ndjson(records(3, start_hour=10))
    answer = post(port, job, following)
    assert answer.status == 202
    assert without_clock(answer.json()) == expected_for(job, [first, following])[1]
    assert answer.json()["out_of_order_timestamp_count"] == 0
    after = totals(port, job)
    assert after["processed_record_count"] == 7
    assert after["input_bytes"] == len(first) + len(following)

    # And the store holds the same: counts, and no categorical value of the cut-off upload.
    assert request(port, "POST", f"{ML}/{job}/_close").json() == {"closed": True}
    with adjobs.JobService(server.data_dir) as service:
        stored = service.get_job_stats(job)["jobs"][0]["data_counts"]
        assert without_clock(stored) == without_clock(after)
        assert service.string_values(job) == ["a", "b"]


# ------------------------------------------------------------------------------------
# Per-job FIFO, the 429, and parallel jobs (D10)


class HeldUpload:
    """An upload that has sent its headers and a few bytes and holds its job."""

    def __init__(self, port: int, job: str, body: bytes) -> None:
        self.body = body
        self.raw = RawClient(port)
        self.raw.send_head("POST", f"{ML}/{job}/_data", {"Content-Length": str(len(body)),
                                                         "Content-Type": "application/json"})
        self.raw.send(body[:5])

    def finish(self) -> Response:
        try:
            self.raw.send(self.body[5:])
            return self.raw.read_response()
        finally:
            self.raw.close()

    def close(self) -> None:
        self.raw.close()


def send_request(port: int, head: bytes) -> RawClient:
    raw = RawClient(port)
    raw.send(head)
    return raw


def test_operations_on_one_job_complete_in_arrival_order(server):
    port = server.port
    job = "fifo"
    new_job(port, job)
    held_body = ndjson(records(2))  # T0, T0 + 30m
    held = HeldUpload(port, job, held_body)
    pending: list[tuple[str, int, RawClient]] = []
    try:
        # Each post carries one record an hour after the previous one; each flush reports
        # the bucket of the latest record it has seen. Any reordering shows in the answers.
        for i in range(1, 21):
            doc = json.dumps({"time": T0 + (2 + i) * HOUR, "rt": 1.0, "host": "a"}).encode()
            head = (f"POST {ML}/{job}/_data HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {len(doc)}\r\n\r\n").encode() + doc
            pending.append(("post", i, send_request(port, head)))
            flush = f"POST {ML}/{job}/_flush HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            pending.append(("flush", i, send_request(port, flush.encode())))
        first = held.finish()
        assert first.status == 202
        assert without_clock(first.json()) == expected_for(job, [held_body])[0]
        for kind, i, raw in pending:
            answer = raw.read_response()
            assert answer.status in (200, 202), answer.body
            if kind == "post":
                counts = answer.json()
                assert counts["processed_record_count"] == 1, (i, counts)
                assert counts["out_of_order_timestamp_count"] == 0, (i, counts)
                assert counts["latest_record_timestamp"] == (T0 + (2 + i) * HOUR) * 1000
            else:
                assert answer.json() == {"flushed": True, "last_finalized_bucket_end":
                                         (T0 + (2 + i) * HOUR) * 1000}, i
    finally:
        held.close()
        for _kind, _i, raw in pending:
            raw.close()
    final = totals(port, job)
    assert final["processed_record_count"] == 22
    assert final["out_of_order_timestamp_count"] == 0


def test_more_than_100_waiting_operations_get_429(server):
    port = server.port
    job = "crowded"
    new_job(port, job)
    held_body = ndjson(records(3))
    held = HeldUpload(port, job, held_body)
    doc = ndjson(records(1, start_hour=5))

    def operation(i: int) -> tuple[str, Response]:
        if i % 2:
            kind, head = "flush", (f"POST {ML}/{job}/_flush HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Length: 0\r\n\r\n").encode()
        else:
            kind, head = "post", (f"POST {ML}/{job}/_data HTTP/1.1\r\nHost: x\r\n"
                                  f"Content-Length: {len(doc)}\r\n\r\n").encode() + doc
        with send_request(port, head) as raw:
            return kind, raw.read_response()

    try:
        with ThreadPoolExecutor(max_workers=101) as pool:
            futures = [pool.submit(operation, i) for i in range(101)]
            # The 101st to arrive is refused at once; the 100 others wait for the job.
            done, _ = wait(futures, timeout=HANG_GUARD, return_when=FIRST_COMPLETED)
            assert len(done) == 1
            rejected_kind, rejected = next(iter(done)).result()
            error = assert_es_error(rejected, 429, "es_rejected_execution_exception")
            assert f"[{job}]" in error["reason"]
            assert sum(future.done() for future in futures) == 1
            first = held.finish()
            answers = [future.result(timeout=HANG_GUARD) for future in futures]
    finally:
        held.close()
    assert first.status == 202 and first.json()["processed_record_count"] == 3
    statuses = Counter((kind, answer.status) for kind, answer in answers)
    assert statuses[rejected_kind, 429] == 1
    assert statuses == {("post", 202): 51 - (rejected_kind == "post"),
                        ("flush", 200): 50 - (rejected_kind == "flush"),
                        (rejected_kind, 429): 1}
    posted = [answer.json() for kind, answer in answers if answer.status == 202]
    # The same record in every post (an equal timestamp is in order); the rejected one, if
    # a post, counts nothing.
    assert all(counts["processed_record_count"] == 1 for counts in posted)
    assert all(counts["out_of_order_timestamp_count"] == 0 for counts in posted)
    final = totals(port, job)
    assert final["processed_record_count"] == 3 + len(posted)
    assert final["input_bytes"] == len(held_body) + len(posted) * len(doc)
    # The queue drained: the job answers at once again.
    assert request(port, "POST", f"{ML}/{job}/_flush").status == 200


def test_a_stalled_upload_does_not_block_other_jobs(server):
    port = server.port
    new_job(port, "stalled")
    new_job(port, "free")
    stalled_body = ndjson(records(3))
    held = HeldUpload(port, "stalled", stalled_body)
    try:
        for hour in (0, 3, 6):
            body = ndjson(records(2, start_hour=hour))
            answer = post(port, "free", body)  # completes while "stalled" is held
            assert answer.status == 202
            assert answer.json()["processed_record_count"] == 2
        assert request(port, "POST", f"{ML}/free/_flush").status == 200
        assert totals(port, "free")["processed_record_count"] == 6
        assert request(port, "POST", f"{ML}/free/_close").json() == {"closed": True}
        # Reads of the held job do not wait for it either.
        assert totals(port, "stalled")["processed_record_count"] == 0
        first = held.finish()
    finally:
        held.close()
    assert first.status == 202
    assert without_clock(first.json()) == expected_for("stalled", [stalled_body])[0]
    assert totals(port, "stalled")["processed_record_count"] == 3


def test_many_stalled_uploads_do_not_block_other_jobs(server):
    """D10: operations on different jobs run in parallel. 64 clients that stall mid-upload
    (slow networks) must not stop a 65th job, nor reads, from being served."""
    port = server.port
    jobs = [f"slow-{i}" for i in range(64)]
    for job in [*jobs, "busy-free"]:
        new_job(port, job)
    body = ndjson(records(3))
    held: list[HeldUpload] = []
    try:
        for job in jobs:
            held.append(HeldUpload(port, job, body))
        # A generous hang guard: these take milliseconds when nothing blocks them.
        stats = request(port, "GET", f"{ML}/busy-free/_stats", timeout=10)
        assert stats.status == 200
        answer = request(port, "POST", f"{ML}/busy-free/_data", body, timeout=10)
        assert answer.status == 202
        assert answer.json()["processed_record_count"] == 3
        answers = [upload.finish() for upload in held]
    finally:
        for upload in held:
            upload.close()
    assert [answer.status for answer in answers] == [202] * 64
    assert all(answer.json()["processed_record_count"] == 3 for answer in answers)


def test_percent_encoded_path_is_decoded_once(server):
    """``%25`` is a literal ``%``: ``%2561bc`` names the (invalid) id ``%61bc``, not ``abc``,
    and ``%252A`` is no wildcard."""
    port = server.port
    new_job(port, "abc", open_it=False)
    for path in (f"{ML}/%2561bc", f"{ML}/%252A", f"{ML}/%2561bc/_stats"):
        answer = request(port, "GET", path)
        error = assert_es_error(answer, 400, "illegal_argument_exception")
        assert "Invalid job_id" in error["reason"], path
    answer = request(port, "POST", f"{ML}/%2561bc/_open")
    assert_es_error(answer, 400, "illegal_argument_exception")
    assert request(port, "GET", f"{ML}/abc/_stats").json()["jobs"][0]["state"] == "closed"
