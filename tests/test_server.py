"""``adjobs serve`` with the official Elasticsearch Python client (9.x), unmodified.

Each test drives a real server subprocess (``tests/server_harness.py``): the whole job
lifecycle, the error cases the client maps to its exception classes, the API key, invalid
job ids, and a SIGTERM that closes the open jobs in the store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from elasticsearch import (
    AuthenticationException,
    BadRequestError,
    ConflictError,
    Elasticsearch,
    NotFoundError,
)
from server_harness import (
    HOUR,
    JOB_CONFIG,
    T0,
    RawClient,
    Server,
    ndjson,
    records,
    reference_counts,
    request,
    without_clock,
)

import adjobs
from adjobs.config import JOB_VERSION


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("server") / "data") as running:
        yield running


@pytest.fixture
def es(server):
    client = Elasticsearch(server.url, request_timeout=30)
    try:
        yield client
    finally:
        client.close()


def compact(docs: list[dict]) -> bytes:
    """The body elasticsearch-py 9.5 sends for ``post_data(data=[...])`` (§2.5)."""
    return json.dumps(docs, separators=(",", ":")).encode()


def test_info_and_ping_answer_like_elasticsearch(es):
    info = es.info()
    assert info["tagline"] == "You Know, for Search"
    assert info["version"]["build_flavor"] == "default"
    assert info["version"]["number"] == JOB_VERSION
    assert es.ping() is True
    assert es.ml.info()["limits"]["total_ml_processors"] == 2


def test_whole_job_lifecycle_with_exact_counts(es):
    job = "lifecycle"
    created = es.ml.put_job(job_id=job, **JOB_CONFIG)
    assert created["job_id"] == job
    assert created["analysis_config"]["bucket_span"] == "1h"
    assert es.ml.get_jobs(job_id=job)["count"] == 1
    assert es.ml.get_job_stats(job_id=job)["jobs"][0]["state"] == "closed"

    opened = es.ml.open_job(job_id=job)
    assert opened.body == {"opened": True, "node": "adjobs"}

    first_docs = records(3)  # T0, T0+30m, T0+1h
    second_text = ndjson(records(4, start_hour=2)).decode().rstrip("\n")  # no final newline
    expected = reference_counts([compact(first_docs), second_text.encode()], job_id=job)

    # A list of dicts: the 9.x client sends one compact JSON array.
    first = es.ml.post_data(job_id=job, data=first_docs)
    assert first.meta.status == 202
    assert without_clock(first.body) == expected[0]
    assert first["processed_record_count"] == 3
    assert first["input_record_count"] == 3
    assert first["processed_field_count"] == 6  # rt and host per record
    assert first["input_bytes"] == len(compact(first_docs))
    assert first["earliest_record_timestamp"] == T0 * 1000
    assert first["latest_record_timestamp"] == (T0 + HOUR) * 1000
    assert first["out_of_order_timestamp_count"] == 0

    # An NDJSON string, sent verbatim.
    second = es.ml.post_data(job_id=job, data=second_text)
    assert second.meta.status == 202
    assert without_clock(second.body) == expected[1]
    assert second["processed_record_count"] == 4
    assert second["input_bytes"] == len(second_text.encode())
    assert second["latest_record_timestamp"] == (T0 + 2 * HOUR + 3 * 1800) * 1000

    flushed = es.ml.flush_job(job_id=job)
    # Every bucket before the latest record's bucket is final.
    assert flushed.body == {"flushed": True,
                            "last_finalized_bucket_end": (T0 + 3 * HOUR) * 1000}
    flushed = es.ml.flush_job(job_id=job, calc_interim=True, advance_time=str(T0 + 5 * HOUR))
    assert flushed["last_finalized_bucket_end"] == (T0 + 5 * HOUR) * 1000

    stats = es.ml.get_job_stats(job_id=job)
    assert stats["count"] == 1
    job_stats = stats["jobs"][0]
    assert job_stats["state"] == "opened"
    totals = job_stats["data_counts"]
    assert totals["processed_record_count"] == 7
    assert totals["input_record_count"] == 7
    assert totals["processed_field_count"] == 14
    assert totals["input_bytes"] == len(compact(first_docs)) + len(second_text.encode())
    assert totals["input_field_count"] == first["input_field_count"] + second["input_field_count"]
    assert totals["out_of_order_timestamp_count"] == 0
    assert totals["earliest_record_timestamp"] == T0 * 1000
    assert totals["latest_record_timestamp"] == second["latest_record_timestamp"]

    assert es.ml.close_job(job_id=job).body == {"closed": True}
    closed = es.ml.get_job_stats(job_id=job)["jobs"][0]
    assert closed["state"] == "closed"
    assert without_clock(closed["data_counts"]) == without_clock(totals)

    assert es.ml.delete_job(job_id=job).body == {"acknowledged": True}
    with pytest.raises(NotFoundError) as missing:
        es.ml.get_jobs(job_id=job)
    assert missing.value.status_code == 404
    assert missing.value.error == "resource_not_found_exception"


def test_get_jobs_lists_every_job_sorted(es):
    for job in ("list-b", "list-a", "list-c"):
        es.ml.put_job(job_id=job, **JOB_CONFIG)
    listed = es.ml.get_jobs(job_id="list-*")
    assert listed["count"] == 3
    assert [job["job_id"] for job in listed["jobs"]] == ["list-a", "list-b", "list-c"]
    assert es.ml.get_jobs(job_id="list-a,list-c")["count"] == 2
    every = es.ml.get_jobs()
    assert {"list-a", "list-b", "list-c"} <= {job["job_id"] for job in every["jobs"]}
    assert es.ml.get_job_stats(job_id="list-*")["count"] == 3
    for job in ("list-a", "list-b", "list-c"):
        es.ml.delete_job(job_id=job)
    assert es.ml.get_jobs(job_id="list-*")["count"] == 0


def test_client_error_cases(es):
    with pytest.raises(NotFoundError) as unknown:
        es.ml.open_job(job_id="no-such-job")
    assert unknown.value.status_code == 404
    assert unknown.value.error == "resource_not_found_exception"
    assert unknown.value.body["error"]["reason"] == "No known job with id 'no-such-job'"
    with pytest.raises(NotFoundError):
        es.ml.get_job_stats(job_id="no-such-job")
    with pytest.raises(NotFoundError):
        es.ml.delete_job(job_id="no-such-job")

    # Bad configurations.
    with pytest.raises(BadRequestError) as no_detectors:
        es.ml.put_job(job_id="bad-config",
                      analysis_config={"bucket_span": "1h", "detectors": []},
                      data_description={"time_field": "time"})
    assert no_detectors.value.status_code == 400
    assert no_detectors.value.error == "illegal_argument_exception"
    assert no_detectors.value.body["error"]["reason"] == "No detectors configured"
    with pytest.raises(BadRequestError) as bad_span:
        es.ml.put_job(job_id="bad-config",
                      analysis_config={"bucket_span": "xx", "detectors": [
                          {"function": "mean", "field_name": "rt"}]},
                      data_description={"time_field": "time"})
    assert "bucket_span" in bad_span.value.body["error"]["reason"]
    with pytest.raises(NotFoundError):
        es.ml.get_jobs(job_id="bad-config")  # nothing was stored

    job = "errors"
    es.ml.put_job(job_id=job, **JOB_CONFIG)
    with pytest.raises(BadRequestError) as taken:
        es.ml.put_job(job_id=job, **JOB_CONFIG)
    assert taken.value.error == "resource_already_exists_exception"

    # Posting to a closed job (and to an unknown one, as ES 6.5+) is a 409.
    with pytest.raises(ConflictError) as closed:
        es.ml.post_data(job_id=job, data=records(2))
    assert closed.value.status_code == 409
    assert closed.value.error == "status_exception"
    assert closed.value.body["error"]["reason"] == (
        f"Cannot perform requested action because job [{job}] is not open")
    with pytest.raises(ConflictError):
        es.ml.post_data(job_id="no-such-job", data=records(2))
    with pytest.raises(ConflictError):
        es.ml.flush_job(job_id=job)

    es.ml.open_job(job_id=job)
    with pytest.raises(BadRequestError) as bad_reset:
        es.ml.post_data(job_id=job, data=records(2), reset_start="not-a-date")
    assert bad_reset.value.status_code == 400
    assert bad_reset.value.error == "parse_exception"
    assert bad_reset.value.body["error"]["reason"] == (
        "Query param [start] with value [not-a-date] cannot be parsed as a date or "
        "converted to a number (epoch).")
    # An open job is deleted only with force.
    with pytest.raises(ConflictError):
        es.ml.delete_job(job_id=job)
    counts = es.ml.get_job_stats(job_id=job)["jobs"][0]["data_counts"]
    assert counts["processed_record_count"] == 0
    assert counts["input_bytes"] == 0
    assert es.ml.delete_job(job_id=job, force=True).body == {"acknowledged": True}
    with pytest.raises(NotFoundError):
        es.ml.get_job_stats(job_id=job)


def test_malformed_upload_keeps_the_records_before_the_failure(es):
    job = "malformed"
    es.ml.put_job(job_id=job, **JOB_CONFIG)
    es.ml.open_job(job_id=job)
    body = ndjson(records(2)).decode() + '{"time": ' + "x" * 20 + "\n" * 3
    body += "{bad}\n" * 100
    with pytest.raises(BadRequestError) as malformed:
        es.ml.post_data(job_id=job, data=body)
    assert malformed.value.error == "parse_exception"
    assert malformed.value.body["error"]["reason"] == "The input JSON data is malformed."
    counts = es.ml.get_job_stats(job_id=job)["jobs"][0]["data_counts"]
    assert counts["processed_record_count"] == 2  # D6: counted records stay counted
    es.ml.close_job(job_id=job)


def test_invalid_job_ids_are_rejected_before_the_store(server, es):
    data_dir = server.data_dir
    parent = data_dir.parent

    def tree():
        return sorted(str(path.relative_to(parent)) for path in parent.rglob("*")
                      if not path.name.startswith("adjobs.db"))  # WAL files come and go

    before = tree()
    jobs_before = es.ml.get_jobs()["count"]
    for bad in ("../x", "..", "Upper", "UPPER-CASE", "a/../../x", "-dash", "x" * 65):
        for call in (
            lambda job: es.ml.put_job(job_id=job, **JOB_CONFIG),
            lambda job: es.ml.open_job(job_id=job),
            lambda job: es.ml.post_data(job_id=job, data=records(1)),
            lambda job: es.ml.delete_job(job_id=job, force=True),
            lambda job: es.ml.close_job(job_id=job),
        ):
            with pytest.raises(BadRequestError) as rejected:
                call(bad)
            assert rejected.value.status_code == 400, bad
            assert rejected.value.error == "illegal_argument_exception", bad
    # The same with the path as curl would send it, unencoded.
    for path in ("/_ml/anomaly_detectors/../x", "/_ml/anomaly_detectors/../x/_open",
                 "/_ml/anomaly_detectors/..%2F..%2Fx/_open",
                 "/_ml/anomaly_detectors/Upper/_open", "/_ml/anomaly_detectors/Upper/_data"):
        answer = request(server.port, "POST" if path.endswith(("_open", "_data")) else "PUT",
                         path, json.dumps(JOB_CONFIG), {"Content-Type": "application/json"})
        assert answer.status == 400, path
        assert answer.json()["error"]["type"] == "illegal_argument_exception", path
        assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert request(server.port, "PUT", "/_ml/anomaly_detectors/Upper",
                   json.dumps(JOB_CONFIG), {"Content-Type": "application/json"}).json()[
        "error"]["reason"] == ("Invalid job_id; 'Upper' can contain lowercase alphanumeric "
                               "(a-z and 0-9), hyphens or underscores; must start and end "
                               "with alphanumeric")
    assert tree() == before
    assert not (parent / "x.lock").exists() and not (data_dir / "x.lock").exists()
    assert es.ml.get_jobs()["count"] == jobs_before


def test_api_key_is_enforced(tmp_path):
    with Server(tmp_path / "data", "--api-key", "s3cret-key") as secured:
        port = secured.port
        for headers in ({}, {"Authorization": "ApiKey wrong"}, {"Authorization": "ApiKey "},
                        {"Authorization": "Basic czNjcmV0LWtleQ=="},
                        {"Authorization": "Bearer s3cret-key"}):
            denied = request(port, "GET", "/", headers=headers)
            assert denied.status == 401, headers
            assert denied.headers["x-elastic-product"] == "Elasticsearch"
            assert denied.json()["error"]["type"] == "security_exception"
            assert denied.json()["status"] == 401
            assert denied.json()["error"]["root_cause"][0]["type"] == "security_exception"
            assert "ApiKey" in denied.headers["www-authenticate"]
            # ES's wordings: nothing sent, or credentials that did not authenticate
            assert denied.json()["error"]["reason"] == (
                "unable to authenticate with provided credentials and anonymous access is not "
                "allowed for this request" if headers
                else "missing authentication credentials for REST request [/]")
        assert request(port, "HEAD", "/").status == 401
        assert request(port, "GET", "/_ml/anomaly_detectors").status == 401
        assert request(port, "PUT", "/_ml/anomaly_detectors/sneaky", json.dumps(JOB_CONFIG),
                       {"Content-Type": "application/json"}).status == 401
        good = {"Authorization": "ApiKey s3cret-key"}
        assert request(port, "GET", "/", headers=good).status == 200
        assert request(port, "GET", "/_ml/anomaly_detectors", headers=good).json() == {
            "count": 0, "jobs": []}  # the 401 PUT created nothing

        with Elasticsearch(secured.url, api_key="s3cret-key", request_timeout=30) as es:
            assert es.info()["tagline"] == "You Know, for Search"
            es.ml.put_job(job_id="secured", **JOB_CONFIG)
            es.ml.open_job(job_id="secured")
            assert es.ml.post_data(job_id="secured", data=records(2))[
                "processed_record_count"] == 2
            es.ml.close_job(job_id="secured")
        with Elasticsearch(secured.url, request_timeout=30) as anonymous:
            with pytest.raises(AuthenticationException) as refused:
                anonymous.ml.get_jobs()
            assert refused.value.status_code == 401
        with (Elasticsearch(secured.url, api_key="nope", request_timeout=30) as wrong,
              pytest.raises(AuthenticationException)):
            wrong.ml.get_job_stats(job_id="secured")


def test_api_key_from_the_environment(tmp_path):
    with Server(tmp_path / "data", env={"ADJOBS_API_KEY": "env-key"}) as secured:
        assert request(secured.port, "GET", "/_ml/info").status == 401
        answer = request(secured.port, "GET", "/_ml/info",
                         headers={"Authorization": "ApiKey env-key"})
        assert answer.status == 200
        assert answer.json()["limits"]["total_ml_processors"] == 2


def test_sigterm_closes_open_jobs_and_exits_0(tmp_path):
    data_dir = tmp_path / "data"
    with Server(data_dir) as server:
        with Elasticsearch(server.url, request_timeout=30) as es:
            es.ml.put_job(job_id="term", **JOB_CONFIG)
            es.ml.open_job(job_id="term")
            es.ml.post_data(job_id="term", data=records(3))
            assert es.ml.get_job_stats(job_id="term")["jobs"][0]["state"] == "opened"
        returncode = server.stop(signal.SIGTERM)
    assert "closed every open job" in server.log
    assert "Traceback" not in server.log
    with adjobs.JobService(data_dir) as service:
        stats = service.get_job_stats("term")["jobs"][0]
        assert stats["state"] == "closed"
        assert stats["data_counts"]["processed_record_count"] == 3
        assert service.store.load("term").open_since is None
        # Nobody owns the job any more: this process can open it.
        assert service.open_job("term") == {"opened": True, "node": "adjobs"}
    assert returncode == 0, f"adjobs serve exited with {returncode} after SIGTERM"


def test_sigterm_finishes_the_upload_in_flight(tmp_path):
    data_dir = tmp_path / "data"
    with Server(data_dir) as server:
        with Elasticsearch(server.url, request_timeout=30) as es:
            for job in ("term-a", "term-b"):
                es.ml.put_job(job_id=job, **JOB_CONFIG)
                es.ml.open_job(job_id=job)
            es.ml.post_data(job_id="term-a", data=records(3))
        body = ndjson(records(4, start_hour=5))
        with RawClient(server.port) as upload:
            upload.send_head("POST", "/_ml/anomaly_detectors/term-b/_data",
                             {"Content-Type": "application/x-ndjson",
                              "Content-Length": str(len(body))})
            upload.send(body[:7])
            server.process.send_signal(signal.SIGTERM)
            server.wait_for_log("Shutting down")
            upload.send(body[7:])
            answer = upload.read_response()
        assert answer.status == 202
        assert answer.json()["processed_record_count"] == 4
        returncode = server.wait()
    assert "closed every open job" in server.log
    with adjobs.JobService(data_dir) as service:
        stats = {job["job_id"]: job for job in service.get_job_stats("_all")["jobs"]}
        assert {job: stats[job]["state"] for job in stats} == {
            "term-a": "closed", "term-b": "closed"}
        assert stats["term-a"]["data_counts"]["processed_record_count"] == 3
        assert stats["term-b"]["data_counts"]["processed_record_count"] == 4
    assert returncode == 0, f"adjobs serve exited with {returncode} after SIGTERM"


def test_serve_refuses_a_bad_size(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "adjobs", "serve", "--data-dir", str(tmp_path / "d"),
         "--port", "1", "--max-content-length", "lots"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--max-content-length" in done.stderr


def test_results_apis_through_the_client(es):
    """get_buckets/records/influencers/overall_buckets as elasticsearch-py sends them
    (POST, options in the body, from/size in the query)."""
    job = "results-client"
    es.ml.put_job(
        job_id=job,
        analysis_config={
            "bucket_span": "1h",
            "detectors": [{"function": "mean", "field_name": "rt",
                           "partition_field_name": "host"}],
            "influencers": ["host"],
        },
        data_description={"time_field": "time", "time_format": "epoch"},
    )
    es.ml.open_job(job_id=job)
    docs = []
    for hour in range(200):
        for i, host in enumerate(("a", "b")):
            rt = 100.0 + (hour * 7 + i * 3) % 11  # a steady saw tooth
            if (hour, host) == (180, "a"):
                rt = 900.0
            docs.append({"time": T0 + hour * HOUR + i, "rt": rt, "host": host})
    es.ml.post_data(job_id=job, data=docs)
    es.ml.flush_job(job_id=job)
    spike = (T0 + 180 * HOUR) * 1000

    records = es.ml.get_records(job_id=job, size=1)
    assert records["count"] >= 1
    top = records["records"][0]
    assert (top["timestamp"], top["partition_field_value"]) == (spike, "a")
    assert top["actual"] == [900.0]

    buckets = es.ml.get_buckets(job_id=job, start=str(spike), end=str(spike + 1), expand=True)
    assert buckets["count"] == 1
    bucket = buckets["buckets"][0]
    assert bucket["event_count"] == 2 and bucket["anomaly_score"] > 0
    assert bucket["records"][0]["partition_field_value"] == "a"
    one = es.ml.get_buckets(job_id=job, timestamp=str(spike))
    assert one["buckets"][0]["timestamp"] == spike

    influencers = es.ml.get_influencers(job_id=job, size=1)
    assert influencers["influencers"][0]["influencer_field_value"] == "a"

    overall = es.ml.get_overall_buckets(job_id=job, top_n=1, overall_score=1)
    assert spike in [b["timestamp"] for b in overall["overall_buckets"]]
    # a group names its jobs wherever ES takes several (rest-api §1)
    es.ml.update_job(job_id=job, groups=["web"])
    by_group = es.ml.get_overall_buckets(job_id="web", top_n=1, overall_score=1)
    assert by_group["overall_buckets"] == overall["overall_buckets"]
    assert [j["job_id"] for j in es.ml.get_jobs(job_id="we*")["jobs"]] == [job]
    assert es.ml.get_job_stats(job_id="web")["jobs"][0]["job_id"] == job

    page = es.ml.get_buckets(job_id=job, page={"from": 0, "size": 2}, sort="timestamp")
    assert [b["timestamp"] for b in page["buckets"]] == [T0 * 1000, (T0 + HOUR) * 1000]
    assert page["count"] == 199

    with pytest.raises(NotFoundError):
        es.ml.get_records(job_id="no-such-job")
    with pytest.raises(BadRequestError):
        es.ml.get_buckets(job_id=job, timestamp=str(spike), start="0")
    stats = es.ml.get_job_stats(job_id=job)["jobs"][0]
    assert stats["timing_stats"]["bucket_count"] == 199
    assert stats["model_size_stats"]["total_partition_field_count"] == 2
    es.ml.close_job(job_id=job)
    es.ml.delete_job(job_id=job)
